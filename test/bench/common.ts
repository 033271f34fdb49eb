/** What the benches share: figure lines, percentiles, polling, process figures from /proc and /metrics. */
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";

/** One JSON line per figure, with the load average it was measured under. */
export function report(figure: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  const load1 = Math.round(loadavg()[0]! * 10) / 10;
  process.stdout.write(`${JSON.stringify({ figure, value: Math.round(value * 100) / 100, unit, ...extra, load1 })}\n`);
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 120_000,
  everyMs = 2,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) / 1024;
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
