import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CONTROL_PLANE_MODULES, ensureBinaries, moduleCacheDir, TOOL_MODULES } from "./build.js";

// A cache laid out by hand (empty files as binaries), so nothing here runs a Go build.
let cache: string;
const saved = process.env.SPINDLE_CACHE;
beforeEach(async () => {
  cache = await mkdtemp(join(tmpdir(), "spindle-cache-"));
  process.env.SPINDLE_CACHE = cache;
});
afterEach(async () => {
  if (saved === undefined) delete process.env.SPINDLE_CACHE;
  else process.env.SPINDLE_CACHE = saved;
  await rm(cache, { recursive: true, force: true });
});

async function fakeBuilt(module: string): Promise<string> {
  const tool = TOOL_MODULES.find((t) => t.module === module)!;
  const dir = await moduleCacheDir(tool);
  await mkdir(dir, { recursive: true });
  for (const b of Object.keys(tool.binaries)) await writeFile(join(dir, b), "");
  // What a build copies out of the module (kwok's stages) is part of a complete build.
  if (tool.copyFrom?.into) await mkdir(join(dir, tool.copyFrom.into.dir), { recursive: true });
  return dir;
}

describe("ensureBinaries", () => {
  it("returns only the binaries of the modules asked for: the control plane needs no helm", async () => {
    for (const m of CONTROL_PLANE_MODULES) await fakeBuilt(m);
    const lines: string[] = [];
    const bin = await ensureBinaries((l) => lines.push(l), { modules: CONTROL_PLANE_MODULES });
    expect(Object.keys(bin).sort()).toEqual(
      [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
        "kwokStages",
        "spin-operator",
        "spinOperatorCrds",
      ].sort(),
    );
    expect(lines).toEqual([]); // warm: nothing to say, nothing built (helm is not in the cache)
  });

  it("waits for another process building the same module instead of building it too", async () => {
    const dir = await moduleCacheDir(TOOL_MODULES.find((t) => t.module === "kwok")!);
    await mkdir(join(cache, "bin"), { recursive: true });
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
    try {
      await writeFile(`${dir}.lock`, `${other.pid}\n`);
      setTimeout(async () => {
        await fakeBuilt("kwok"); // the other process finishes its build
        await rm(`${dir}.lock`);
      }, 1500);
      const lines: string[] = [];
      const bin = await ensureBinaries((l) => lines.push(l), { modules: ["kwok"] });
      expect(bin.kwok).toBe(join(dir, "kwok"));
      expect(lines).toContain(`tools/kwok is being built by process ${other.pid}; waiting for it`);
      expect(lines).toContain("tools/kwok was built by another process");
      expect(lines.some((l) => l.startsWith("tools/kwok: downloading") || l.startsWith("built tools/kwok"))).toBe(
        false,
      );
    } finally {
      other.kill();
    }
  });
});
