import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { acquireLock } from "./build-lock.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "spindle-lock-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A process that exits when told to, and its pid once it runs. */
function otherProcess() {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
  return {
    pid: child.pid!,
    exit: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => resolve());
        child.kill();
      }),
  };
}

describe("acquireLock", () => {
  it("takes a free lock with its own pid, and release frees it", async () => {
    const path = join(dir, "m.lock");
    const release = await acquireLock(path, () => expect.fail("nobody holds it"));
    expect((await readFile(path, "utf8")).trim()).toBe(String(process.pid));
    await release();
    expect(existsSync(path)).toBe(false);
  });

  it("waits while a live process holds it, then takes it", async () => {
    const path = join(dir, "m.lock");
    const other = otherProcess();
    try {
      await writeFile(path, `${other.pid}\n`);
      const waitedFor: number[] = [];
      let acquired = false;
      const acquiring = acquireLock(path, (pid) => waitedFor.push(pid), undefined, 20).then((release) => {
        acquired = true;
        return release;
      });
      await new Promise((r) => setTimeout(r, 200));
      expect(acquired).toBe(false);
      expect(waitedFor).toEqual([other.pid]);
      await rm(path); // the other process finished its build
      const release = await acquiring;
      expect((await readFile(path, "utf8")).trim()).toBe(String(process.pid));
      await release();
    } finally {
      await other.exit();
    }
  });

  it("takes over the lock of a process that died", async () => {
    const path = join(dir, "m.lock");
    const other = otherProcess();
    await other.exit();
    await writeFile(path, `${other.pid}\n`);
    const release = await acquireLock(path, () => expect.fail("a dead holder is not waited for"), undefined, 20);
    expect((await readFile(path, "utf8")).trim()).toBe(String(process.pid));
    await release();
  });

  it("gives up when aborted while waiting", async () => {
    const path = join(dir, "m.lock");
    const other = otherProcess();
    try {
      await writeFile(path, `${other.pid}\n`);
      const abort = new AbortController();
      const acquiring = acquireLock(path, () => abort.abort(), abort.signal, 20);
      await expect(acquiring).rejects.toThrow();
      expect((await readFile(path, "utf8")).trim()).toBe(String(other.pid));
    } finally {
      await other.exit();
    }
  });
});
