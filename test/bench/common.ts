/** What the benches share: figure lines, percentiles, polling, process figures from /proc and /metrics. */
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { resolve } from "node:path";

/**
 * A `report` with its own rounding and with or without `load1`: bench.ts and onvif.ts keep the
 * line format their recorded figures were taken with.
 */
export function reportWith({ decimals = 2, load1 = true }: { decimals?: number; load1?: boolean } = {}) {
  const scale = 10 ** decimals;
  return (figure: string, value: number, unit: string, extra: Record<string, unknown> = {}): void => {
    const line = { figure, value: Math.round(value * scale) / scale, unit, ...extra };
    const withLoad = load1 ? { ...line, load1: Math.round(loadavg()[0]! * 10) / 10 } : line;
    process.stdout.write(`${JSON.stringify(withLoad)}\n`);
  };
}

/** One JSON line per figure, with the load average it was measured under. */
export const report = reportWith();

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An `until` with other defaults, for benches whose waits were tuned before this module. */
export function untilWith(defaults: { timeoutMs: number; everyMs: number }) {
  return async (
    // A function is read only on timeout, so it can say how far the wait got.
    what: string | (() => string),
    check: () => boolean | Promise<boolean>,
    timeoutMs = defaults.timeoutMs,
    everyMs = defaults.everyMs,
  ): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) {
        throw new Error(`bench: timed out waiting for ${typeof what === "string" ? what : what()}`);
      }
      await sleep(everyMs);
    }
  };
}

export const until = untilWith({ timeoutMs: 120_000, everyMs: 2 });

export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) / 1024;
}

/** utime + stime of a process, in seconds (clock ticks of 1/100 s). */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Spindle's own API writes so far, from a process's /metrics. */
export async function apiWrites(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(/^spindle_api_writes_total\{[^}]*\} (\d+)/gm)) sum += Number(m[1]);
  return sum;
}

/** A gauge or counter of a process's /metrics, summed over its labels. */
export async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, "gm"))) sum += Number(m[1]);
  return sum;
}

/** The environment the image gives every process (the Dockerfile's `ENV MALLOC_ARENA_MAX`), read from it. */
export const IMAGE_ENV: Record<string, string> = {
  MALLOC_ARENA_MAX:
    /^ENV MALLOC_ARENA_MAX=(\S+)$/m.exec(readFileSync(resolve(import.meta.dirname, "../../Dockerfile"), "utf8"))?.[1] ??
    "",
};
