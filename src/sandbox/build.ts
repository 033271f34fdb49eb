import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdir, readdir, readFile, rename, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { acquireLock, alive } from "./build-lock.js";
import { BuildProgress, formatDuration } from "./build-progress.js";

const run = promisify(execFile);

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const TOOLS_DIR = join(REPO, "tools");
const MIN_GO = [1, 26] as const;

export type ModuleName = "kubernetes" | "kwok" | "helm" | "spin-operator" | "otelcol";

/** One pinned Go module under tools/ and what it builds. */
interface ToolModule {
  module: ModuleName;
  /** binary name -> Go package */
  binaries: Record<string, string>;
  ldflags?: string;
  /** Files copied from a dependency's module directory into the cache beside the binaries. */
  copyFrom?: {
    module: string;
    paths: string[];
    /** A folder the listed files go into (by their base names), named in Binaries as `key`; default: the CRD folder. */
    into?: { dir: string; key: "kwokStages" };
  };
  /** A cold build measured on 2 cores (empty Go caches), for the estimate users see. */
  coldSeconds: number;
  /** Built only when asked for by name (not part of ALL_MODULES). */
  onDemand?: boolean;
}

const K8S_VERSION = "v1.37.2";
const k8sLdflags = ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"]
  .map((p) => `-X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=1 -X ${p}.gitMinor=37 -X ${p}.gitTreeState=clean`)
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
    coldSeconds: 470,
  },
  {
    module: "kwok",
    binaries: { kwok: "sigs.k8s.io/kwok/cmd/kwok" },
    // KWOK 0.8 has no built-in stages: the sandbox passes these (its own defaults before 0.8).
    copyFrom: {
      module: "sigs.k8s.io/kwok",
      paths: [
        "kustomize/stage/node/fast/node-initialize.yaml",
        "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
        "kustomize/stage/pod/fast/pod-ready.yaml",
        "kustomize/stage/pod/fast/pod-complete.yaml",
        "kustomize/stage/pod/fast/pod-delete.yaml",
      ],
      into: { dir: "stages", key: "kwokStages" },
    },
    coldSeconds: 130,
  },
  { module: "helm", binaries: { helm: "helm.sh/helm/v3/cmd/helm" }, coldSeconds: 125 },
  {
    module: "spin-operator",
    binaries: { "spin-operator": "github.com/spinkube/spin-operator/cmd" },
    copyFrom: { module: "github.com/spinkube/spin-operator", paths: ["config/crd/bases"] },
    coldSeconds: 150,
  },
  // The trace backend of the OTel e2e test and `spindle dev --otel` (tools/otelcol/main.go).
  { module: "otelcol", binaries: { otelcol: "spindle.dev/tools/otelcol" }, coldSeconds: 170, onDemand: true },
];

/** Every module but the on-demand ones (otelcol: only the OTel e2e test and `spindle dev --otel` build it). */
export const ALL_MODULES: readonly ModuleName[] = TOOL_MODULES.filter((t) => !t.onDemand).map((t) => t.module);
/** What the sandbox control plane runs (`spindle dev`, `spindle sandbox`, the e2e setup): no helm. */
export const CONTROL_PLANE_MODULES: readonly ModuleName[] = ["kubernetes", "kwok", "spin-operator"];

/**
 * How many modules compile at once (`SPINDLE_BUILD_PARALLEL_MODULES`, default 1). A module's
 * download (network) always overlaps with the compile of the module before it. Compiles run one
 * after the other by default: the modules pin different Kubernetes versions, so they share
 * almost no compiled packages, two cold builds started together each compile the standard
 * library, and `go build` already runs two compiles at once. Two at once was not shown faster on
 * 2 cores (docs/decisions.md).
 */
const COMPILE_SLOTS = Math.max(1, Number.parseInt(process.env.SPINDLE_BUILD_PARALLEL_MODULES ?? "1", 10) || 1);

/** Paths of the binaries of the modules asked for; `spinOperatorCrds` when spin-operator was. */
export type Binaries = Record<string, string> & { spinOperatorCrds?: string; kwokStages?: string };

export interface EnsureOptions {
  /** Build only these modules' binaries (default: all). */
  modules?: readonly ModuleName[];
  /** A live progress line on an interactive terminal; plain lines through `log` otherwise (default). */
  progress?: boolean;
}

export function cacheRoot(): string {
  if (process.env.SPINDLE_CACHE) return process.env.SPINDLE_CACHE;
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "spindle");
}

/**
 * The cache folder of a module: keyed by its go.mod and go.sum (and its own .go files, for a
 * module with a main package of its own), so a new pin or a changed main.go builds anew.
 */
export async function moduleCacheDir(tool: ToolModule): Promise<string> {
  const dir = join(TOOLS_DIR, tool.module);
  const hash = createHash("sha256");
  for (const f of ["go.mod", "go.sum"]) hash.update(await readFile(join(dir, f)));
  for (const f of (await readdir(dir)).filter((f) => f.endsWith(".go")).sort())
    hash.update(f).update(await readFile(join(dir, f)));
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
 * The file name `go build -o dir/` gives a main package: its last path element, or the one
 * before a major-version suffix (`go.etcd.io/etcd/server/v3` -> `server`), as cmd/go does.
 */
export function goExecName(importPath: string): string {
  const parts = importPath.split("/");
  const last = parts.at(-1) ?? importPath;
  return /^v([2-9]|[1-9]\d+)$/.test(last) && parts.length > 1 ? parts.at(-2)! : last;
}

/** The value of `work` and how long it took from now (time spent waiting for a slot left out). */
async function timed<T>(work: Promise<T>): Promise<[T, number]> {
  const started = Date.now();
  return [await work, Date.now() - started];
}

/** Runs `task` when one of `slots` is free; a tiny semaphore. */
function limiter(slots: number): <T>(task: () => Promise<T>) => Promise<T> {
  let free = slots;
  const waiting: (() => void)[] = [];
  return async (task) => {
    if (free > 0) free--;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else free++;
    }
  };
}

/**
 * Returns the paths of the binaries of `options.modules` (default all), building the ones
 * missing from the cache. Each module first downloads its dependencies (`go list -deps`, which
 * also counts the packages to compile), then compiles all its binaries in one `go build`; the
 * next module's download runs while this one compiles. A cold build takes minutes on 2 cores;
 * a warm call is a few file checks.
 */
export async function ensureBinaries(
  log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  options: EnsureOptions = {},
): Promise<Binaries> {
  const wanted = new Set(options.modules ?? ALL_MODULES);
  const paths: Binaries = {};
  const missing: { tool: ToolModule; dir: string }[] = [];
  for (const tool of TOOL_MODULES.filter((t) => wanted.has(t.module))) {
    const dir = await moduleCacheDir(tool);
    if (!complete(tool, dir)) missing.push({ tool, dir });
    for (const b of Object.keys(tool.binaries)) paths[b] = join(dir, b);
    if (tool.copyFrom?.into) paths[tool.copyFrom.into.key] = join(dir, tool.copyFrom.into.dir);
    else if (tool.copyFrom) paths.spinOperatorCrds = join(dir, "crds");
  }
  if (missing.length === 0) return paths;

  log(`using ${await checkGo()}`);
  const estimate = missing.reduce((sum, m) => sum + m.tool.coldSeconds, 0) * 1000;
  log(
    `first run: building ${missing.flatMap((m) => Object.keys(m.tool.binaries)).join(", ")} from the Go modules in tools/ ` +
      `(about ${formatDuration(estimate)} on 2 cores with nothing cached; then cached in ${join(cacheRoot(), "bin")})`,
  );
  const progress = new BuildProgress({ live: options.progress === true && BuildProgress.isTerminal(), log });
  for (const { tool } of missing) progress.add(tool.module);
  const started = Date.now();
  const abort = new AbortController();
  const download = limiter(1);
  const compile = limiter(COMPILE_SLOTS);
  try {
    await Promise.all(
      missing.map(async ({ tool, dir }) => {
        let release: (() => Promise<void>) | undefined;
        try {
          // One build of a module at a time across processes: several test runs or `spindle dev`s
          // started on a cold cache would otherwise each compile Kubernetes on the same 2 cores.
          await mkdir(dirname(dir), { recursive: true });
          release = await acquireLock(
            `${dir}.lock`,
            (holder) => {
              progress.phase(tool.module, "waiting");
              progress.print(`tools/${tool.module} is being built by process ${holder}; waiting for it`);
            },
            abort.signal,
          );
          if (complete(tool, dir)) {
            progress.phase(tool.module, "done");
            progress.print(`tools/${tool.module} was built by another process`);
            return;
          }
          const [total, downloadMs] = await download(() => timed(listPackages(tool, progress, abort.signal)));
          const [, buildMs] = await compile(() => timed(buildModule(tool, dir, total, progress, abort.signal)));
          progress.print(
            `built tools/${tool.module} in ${formatDuration(downloadMs + buildMs)} ` +
              `(download ${formatDuration(downloadMs)}, compile and link ${formatDuration(buildMs)})`,
          );
        } catch (err) {
          abort.abort();
          throw err;
        } finally {
          await release?.();
        }
      }),
    );
  } finally {
    progress.stop();
  }
  log(`sandbox binaries built in ${formatDuration(Date.now() - started)}`);
  return paths;
}

function complete(tool: ToolModule, dir: string): boolean {
  return (
    Object.keys(tool.binaries).every((b) => existsSync(join(dir, b))) &&
    (!tool.copyFrom?.into || existsSync(join(dir, tool.copyFrom.into.dir)))
  );
}

/** Downloads what `tool`'s binaries import and returns how many packages that is. */
async function listPackages(tool: ToolModule, progress: BuildProgress, signal: AbortSignal): Promise<number> {
  progress.phase(tool.module, "downloading");
  const cwd = join(TOOLS_DIR, tool.module);
  try {
    const { stdout } = await run("go", ["list", "-deps", "-f", "{{.ImportPath}}", ...Object.values(tool.binaries)], {
      cwd,
      env: goEnv(),
      maxBuffer: 64 * 1024 * 1024,
      signal,
    });
    progress.phase(tool.module, "queued"); // for a compile slot
    // `unsafe` is part of the graph but never compiled.
    return stdout.split("\n").filter((l) => l && l !== "unsafe").length;
  } catch (err) {
    throw buildError(tool, "downloading the modules of", err);
  }
}

async function buildModule(
  tool: ToolModule,
  dir: string,
  total: number,
  progress: BuildProgress,
  signal: AbortSignal,
): Promise<void> {
  const cwd = join(TOOLS_DIR, tool.module);
  const staging = `${dir}.partial-${process.pid}`;
  // Staging folders of builds that were killed (their process is gone) are litter.
  for (const f of await readdir(dirname(dir))) {
    const pid = Number(f.slice(`${basename(dir)}.partial-`.length));
    if (f.startsWith(`${basename(dir)}.partial-`) && Number.isInteger(pid) && pid > 0 && !alive(pid)) {
      await rm(join(dirname(dir), f), { recursive: true, force: true });
    }
  }
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  progress.phase(tool.module, "compiling", total);
  const mains = new Set(Object.values(tool.binaries));
  try {
    // One `go build` for all of a module's binaries: their links overlap with the compiles
    // still running, and the package graph is loaded once.
    await goBuild(
      ["build", "-v", "-trimpath", "-ldflags", `-s -w ${tool.ldflags ?? ""}`.trim(), "-o", `${staging}/`, ...mains],
      cwd,
      signal,
      (pkg) => {
        progress.compiled(tool.module);
        if (mains.delete(pkg) && mains.size === 0) progress.phase(tool.module, "linking");
      },
    );
    for (const [name, pkg] of Object.entries(tool.binaries)) {
      const built = join(staging, goExecName(pkg));
      if (!existsSync(built)) throw new Error(`go build wrote no ${built} for ${pkg}`);
      if (goExecName(pkg) !== name) await rename(built, join(staging, name));
    }
    if (tool.copyFrom) {
      const { stdout } = await run("go", ["list", "-m", "-f", "{{.Dir}}", tool.copyFrom.module], { cwd, env: goEnv() });
      const into = tool.copyFrom.into;
      for (const p of tool.copyFrom.paths)
        await cp(join(stdout.trim(), p), into ? join(staging, into.dir, basename(p)) : join(staging, "crds"), {
          recursive: true,
        });
    }
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw buildError(tool, "building", err);
  }
  await mkdir(dirname(dir), { recursive: true });
  await rm(dir, { recursive: true, force: true });
  await rename(staging, dir);
  progress.phase(tool.module, "done");
}

/** Runs go with stderr read line by line: `-v` names each package as it is compiled. */
function goBuild(args: string[], cwd: string, signal: AbortSignal, onPackage: (pkg: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("go", args, { cwd, env: goEnv(), stdio: ["ignore", "ignore", "pipe"], signal });
    const tail: string[] = [];
    createInterface({ input: child.stderr }).on("line", (line) => {
      // Package paths are bare words; anything else (errors, `# pkg` headers) is kept for the message.
      if (/^[\w.\-~/]+$/.test(line)) onPackage(line);
      else tail.push(line);
      if (tail.length > 40) tail.shift();
    });
    child.on("error", reject);
    child.on("close", (code, sig) => {
      if (code === 0) resolve();
      else reject(Object.assign(new Error(`go build exited with ${code ?? sig}`), { stderr: tail.join("\n") }));
    });
  });
}

function buildError(tool: ToolModule, doing: string, err: unknown): Error {
  const e = err as { stderr?: string; message: string };
  const detail = (e.stderr || e.message).trim().split("\n").slice(-25).join("\n");
  return new Error(
    `${doing} tools/${tool.module} failed:\n${detail}\nCheck that the Go module proxy is reachable (GOPROXY) and that go.mod/go.sum in tools/${tool.module} are intact.`,
  );
}
