/**
 * `npm run chaos`: the chaos test (test/e2e/chaos.test.ts, runner in test/chaos.ts) with many
 * seeds: CHAOS_SEEDS (a count, default 20, or a comma-separated list to replay seeds) and
 * CHAOS_OPERATIONS (default 60) per run. Prints the figures as a table and rewrites the
 * `## Chaos` section of docs/reliability.md with them (the rest of the file is left as it is).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const DOC = join(ROOT, "docs", "reliability.md");
const seeds = process.env.CHAOS_SEEDS?.trim() || "20";
const operations = process.env.CHAOS_OPERATIONS?.trim() || "60";
const report = join(mkdtempSync(join(tmpdir(), "spindle-chaos-")), "runs.jsonl");
writeFileSync(report, "");

interface Run {
  seed: number;
  operations: number;
  operationsByKind: Record<string, number>;
  faults: { errors: number; resets: number; watchCloses: number; delays: number; firstListFailures: number };
  requests: number;
  convergenceSeconds: number;
  converged: boolean;
  violations: number;
}

const started = Date.now();
const vitest = spawnSync(
  join(ROOT, "node_modules/.bin/vitest"),
  ["run", "--project", "e2e", "test/e2e/chaos.test.ts"],
  {
    cwd: ROOT,
    env: { ...process.env, CHAOS_SEEDS: seeds, CHAOS_OPERATIONS: operations, CHAOS_REPORT: report },
    stdio: ["ignore", "inherit", "inherit"],
  },
);
const minutes = (Date.now() - started) / 60_000;
const runs = readFileSync(report, "utf8")
  .split("\n")
  .filter(Boolean)
  .map((l) => JSON.parse(l) as Run);

const sum = (f: (r: Run) => number) => runs.reduce((n, r) => n + f(r), 0);
const times = runs.map((r) => r.convergenceSeconds).sort((a, b) => a - b);
const median =
  times.length === 0 ? 0 : (times[Math.floor((times.length - 1) / 2)]! + times[Math.ceil((times.length - 1) / 2)]!) / 2;
const worst = times.length === 0 ? 0 : times[times.length - 1]!;
const worstRun = runs.find((r) => r.convergenceSeconds === worst);
const faults = {
  "429/500/503 responses": sum((r) => r.faults.errors),
  // Over HTTP/2 a reset is the request's stream (RST_STREAM); over HTTP/1.1 its TCP connection.
  "request resets (HTTP/2 stream resets)": sum((r) => r.faults.resets),
  "watches closed early": sum((r) => r.faults.watchCloses),
  "delayed responses": sum((r) => r.faults.delays),
  "failed first lists": sum((r) => r.faults.firstListFailures),
};
const totalFaults = Object.values(faults).reduce((a, b) => a + b, 0);
const kinds = new Map<string, number>();
for (const r of runs) for (const [k, n] of Object.entries(r.operationsByKind)) kinds.set(k, (kinds.get(k) ?? 0) + n);
const expected = seeds.includes(",") ? seeds.split(",").length : Number(seeds);
const violations = sum((r) => r.violations);
const slow = runs.filter((r) => !r.converged || r.convergenceSeconds > 30).length;

const command = `CHAOS_SEEDS=${seeds} CHAOS_OPERATIONS=${operations} npm run chaos`;
const section = [
  "## Chaos",
  "",
  `Produced by \`${command}\` on ${new Date().toISOString().slice(0, 10)} (${minutes.toFixed(1)} min).`,
  "Each run: agents on edge-1 and edge-2 and two controllers (Lease 4 s), all through one seeded",
  "fault-injecting proxy (`test/fault-proxy.ts`), a fresh namespace, two USB fixture trees with a",
  "DeviceConfiguration each; random operations a few hundred ms apart, then a final round (devices",
  "plugged and bound on both configurations, SpinApps edited and deleted by hand); then the faults stop and the",
  "apiserver is polled until every invariant holds for 2 s (`test/chaos.ts`): Devices match the plugged",
  "devices; `plan()` over the listed objects has no SpinApp, slot or Device write left; no device",
  "over-allocated, allocations match replicas, no duplicate SpinApp per device, `usb_serial`, the image",
  "and the owner reference match the Device and DeviceSpinApp; Node extended resources match the Devices; a DeviceSpinApp left",
  "invalid keeps the SpinApps it ran.",
  "",
  "| figure | value |",
  "| --- | --- |",
  `| runs | ${runs.length}${runs.length !== expected ? ` (of ${expected} started)` : ""} |`,
  `| operations | ${sum((r) => r.operations)} (${operations} random per run, plus the final round) |`,
  ...[...kinds].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `| operations: ${k} | ${n} |`),
  `| API requests through the proxy | ${sum((r) => r.requests)} |`,
  `| faults injected | ${totalFaults} |`,
  ...Object.entries(faults).map(([k, n]) => `| faults: ${k} | ${n} |`),
  `| worst convergence after the faults stop | ${worst.toFixed(2)} s${worstRun ? ` (seed ${worstRun.seed})` : ""} |`,
  `| median convergence | ${median.toFixed(2)} s |`,
  `| runs not converged within 30 s | ${slow} |`,
  `| invariant violations | ${violations} |`,
  "",
].join("\n");

const doc = existsSync(DOC) ? readFileSync(DOC, "utf8") : "# Reliability\n";
const at = doc.search(/^## Chaos\s*$/m);
let next = -1;
if (at >= 0) {
  const rest = doc.slice(at + 1).search(/^## /m);
  next = rest >= 0 ? at + 1 + rest : -1;
}
const updated =
  at < 0
    ? `${doc.replace(/\s*$/, "")}\n\n${section}`
    : `${doc.slice(0, at)}${section}${next >= 0 ? `\n${doc.slice(next)}` : ""}`;
writeFileSync(DOC, updated);
process.stdout.write(`\n${section}\nruns: ${report}\n`);
const ok = runs.length === expected && violations === 0 && slow === 0;
process.exit(vitest.status !== 0 ? (vitest.status ?? 1) : ok ? 0 : 1);
