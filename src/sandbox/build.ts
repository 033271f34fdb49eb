import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdir, readFile, rename, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const TOOLS_DIR = join(REPO, "tools");
const MIN_GO = [1, 24] as const;

/** One pinned Go module under tools/ and what it builds. */
interface ToolModule {
  module: string;
  /** binary name -> Go package */
  binaries: Record<string, string>;
  ldflags?: string;
  /** Files copied from a dependency's module directory into the cache beside the binaries. */
  copyFrom?: { module: string; paths: string[] };
}

const K8S_VERSION = "v1.34.10";
const k8sLdflags = ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"]
  .map((p) => `-X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=1 -X ${p}.gitMinor=34 -X ${p}.gitTreeState=clean`)
  .join(" ");

export const TOOL_MODULES: ToolModule[] = [
  {
    module: "kubernetes",
    binaries: {
      "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
      "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
      "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
      kubectl: "k8s.io/kubernetes/cmd/kubectl",
      etcd: "go.etcd.io/etcd/server/v3",
    },
    ldflags: k8sLdflags,
  },
  { module: "kwok", binaries: { kwok: "sigs.k8s.io/kwok/cmd/kwok" } },
  { module: "helm", binaries: { helm: "helm.sh/helm/v3/cmd/helm" } },
  {
    module: "spin-operator",
    binaries: { "spin-operator": "github.com/spinkube/spin-operator/cmd" },
    copyFrom: { module: "github.com/spinkube/spin-operator", paths: ["config/crd/bases"] },
  },
];

export type Binaries = Record<string, string> & { spinOperatorCrds: string };

export function cacheRoot(): string {
  if (process.env.SPINDLE_CACHE) return process.env.SPINDLE_CACHE;
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "spindle");
}

/** The cache folder of a module: keyed by its go.mod and go.sum, so a new pin builds anew. */
async function moduleCacheDir(tool: ToolModule): Promise<string> {
  const dir = join(TOOLS_DIR, tool.module);
  const hash = createHash("sha256");
  for (const f of ["go.mod", "go.sum"]) hash.update(await readFile(join(dir, f)));
  return join(cacheRoot(), "bin", `${tool.module}-${hash.digest("hex").slice(0, 16)}`);
}

async function checkGo(): Promise<string> {
  let out: string;
  try {
    out = (await run("go", ["version"], { env: goEnv() })).stdout;
  } catch {
    throw new Error(
      "Go is not installed (no `go` on PATH). Spindle builds its sandbox control plane from pinned Go modules: install Go >= 1.24 (https://go.dev/dl or the distribution's golang package) and retry.",
    );
  }
  const m = /go(\d+)\.(\d+)/.exec(out);
  const [major, minor] = [Number(m?.[1] ?? 0), Number(m?.[2] ?? 0)];
  if (major < MIN_GO[0] || (major === MIN_GO[0] && minor < MIN_GO[1])) {
    throw new Error(`Go ${major}.${minor} is too old: the pinned Kubernetes modules need Go >= ${MIN_GO.join(".")}.`);
  }
  return out.trim();
}

function goEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GOTOOLCHAIN: "local", CGO_ENABLED: "0", GOFLAGS: "-mod=readonly -buildvcs=false" };
}

/**
 * Returns the path of every binary, building the ones missing from the cache. A cold build of
 * Kubernetes takes many minutes on two cores; later calls are a few file checks.
 */
export async function ensureBinaries(
  log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Promise<Binaries> {
  const paths: Record<string, string> = {};
  let goChecked = false;
  for (const tool of TOOL_MODULES) {
    const dir = await moduleCacheDir(tool);
    const complete = Object.keys(tool.binaries).every((b) => existsSync(join(dir, b)));
    if (!complete) {
      if (!goChecked) {
        log(`using ${await checkGo()}`);
        goChecked = true;
      }
      await buildModule(tool, dir, log);
    }
    for (const b of Object.keys(tool.binaries)) paths[b] = join(dir, b);
    if (tool.copyFrom) paths.spinOperatorCrds = join(dir, "crds");
  }
  return paths as Binaries;
}

async function buildModule(tool: ToolModule, dir: string, log: (line: string) => void): Promise<void> {
  const cwd = join(TOOLS_DIR, tool.module);
  const staging = `${dir}.partial-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  const started = Date.now();
  log(`building ${Object.keys(tool.binaries).join(", ")} from tools/${tool.module} (first run only; cached in ${dir})`);
  const args = ["build", "-trimpath", "-ldflags", `-s -w ${tool.ldflags ?? ""}`.trim()];
  try {
    // One `go build` per binary so each gets its own name (etcd's package is named "v3").
    for (const [name, pkg] of Object.entries(tool.binaries)) {
      await run("go", [...args, "-o", join(staging, name), pkg], {
        cwd,
        env: goEnv(),
        maxBuffer: 64 * 1024 * 1024,
      });
    }
    if (tool.copyFrom) {
      const { stdout } = await run("go", ["list", "-m", "-f", "{{.Dir}}", tool.copyFrom.module], { cwd, env: goEnv() });
      for (const p of tool.copyFrom.paths) await cp(join(stdout.trim(), p), join(staging, "crds"), { recursive: true });
    }
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    const detail = (e.stderr ?? e.message).trim().split("\n").slice(-25).join("\n");
    throw new Error(
      `building tools/${tool.module} failed:\n${detail}\nCheck that the Go module proxy is reachable (GOPROXY) and that go.mod/go.sum in tools/${tool.module} are intact.`,
    );
  }
  await mkdir(dirname(dir), { recursive: true });
  await rm(dir, { recursive: true, force: true });
  await rename(staging, dir);
  log(`built tools/${tool.module} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}
