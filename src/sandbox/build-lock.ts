import { readFile, rm, stat, writeFile } from "node:fs/promises";

/** Whether a process with this id runs on this machine; EPERM means it runs as another user. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function readLock(path: string): Promise<string> {
  return readFile(path, "utf8").then(
    (t) => t.trim(),
    () => "",
  );
}

/**
 * A lock file between processes: `path` holds the holder's pid. A lock whose process is gone is
 * stale and taken over; while a live process holds it, `onWait(pid)` is called once per holder
 * and the file is checked every `pollMs`. Returns the release function.
 */
export async function acquireLock(
  path: string,
  onWait: (holder: number) => void,
  signal?: AbortSignal,
  pollMs = 1000,
): Promise<() => Promise<void>> {
  let waitingFor: number | undefined;
  for (;;) {
    signal?.throwIfAborted();
    try {
      await writeFile(path, `${process.pid}\n`, { flag: "wx" });
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const text = await readLock(path);
    const holder = Number.parseInt(text, 10);
    if (!Number.isInteger(holder) || !alive(holder)) {
      // A dead holder's lock is stale. An empty one may be being written this instant, so it is
      // stale only once it is older than 2 s. Read again right before removing it, so a lock
      // another waiter has just taken over is left alone.
      const written = (await stat(path).catch(() => undefined))?.mtimeMs ?? 0;
      const stale = Number.isInteger(holder) || Date.now() - written > 2000;
      if (stale && (await readLock(path)) === text) await rm(path, { force: true });
      if (stale) continue;
    } else if (holder !== waitingFor) {
      waitingFor = holder;
      onWait(holder);
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
