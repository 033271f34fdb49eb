/**
 * `npx tsx test/bench/startup.ts` (the first step of `npm run bench`): what starting Spindle costs,
 * from the production build (dist/, built first from the current sources) and from the sources
 * through tsx. Prints one JSON line per figure; it passes or fails nothing. No cluster: the idle
 * processes talk to the stand-in apiserver of test/stub-apiserver.ts (every collection empty).
 *
 * - node_startup: `node -e ""`, the floor under every figure below;
 * - agent_help_{dist,sources}: wall time of `spindle agent --help` (target ≤ 300 ms), median of
 *   STARTUP_RUNS runs (default 15), dist and sources interleaved;
 * - {agent,controller}_rss_idle_{dist,sources}: VmRSS of `spindle agent` / `spindle controller`
 *   STARTUP_SETTLE_MS (default 3000) after it has started, with nothing to discover or reconcile;
 *   median of 3 processes; the dist processes with the chart's NODE_OPTIONS.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { resolve } from "node:path";
import { parse } from "yaml";
import { build } from "../../scripts/build.js";
import { startStubApiserver } from "../stub-apiserver.js";
import { IMAGE_ENV } from "./common.js";

const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");
const RUNS = Number(process.env.STARTUP_RUNS ?? 15);
const SETTLE_MS = Number(process.env.STARTUP_SETTLE_MS ?? 3000);

/** How bin/spindle.js is told to run the build or the sources. */
const FROM = {
  dist: { NODE_ENV: "production" },
  sources: { NODE_ENV: "development", SPINDLE_FROM_SOURCE: "1" },
} as const;

/** One figure; `load1` (the 1-minute load average when it was taken) tells how busy the machine was. */
function report(figure: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  const load1 = Math.round(loadavg()[0]! * 10) / 10;
  process.stdout.write(`${JSON.stringify({ figure, value: Math.round(value * 10) / 10, unit, ...extra, load1 })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

function wallMs(args: string[], env: NodeJS.ProcessEnv = {}): number {
  const started = performance.now();
  const r = spawnSync(process.execPath, args, { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  const ms = performance.now() - started;
  if (r.status !== 0) throw new Error(`bench: node ${args.join(" ")} exited with ${r.status}: ${r.stderr}`);
  return ms;
}

/** Starts `spindle <args>`, waits for `ready` in its log, lets it settle, and returns its RSS. */
async function idleRss(args: string[], ready: RegExp, env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise((r) => child.once("exit", r));
  try {
    let log = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bench: spindle ${args[0]} did not start: ${log}`)), 60_000);
      child.stderr!.on("data", (chunk: Buffer) => {
        log += chunk.toString("utf8");
        if (ready.test(log)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`bench: spindle ${args[0]} exited with ${code}: ${log}`)));
    });
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    return rssMiB(child.pid!);
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
}

const CHART_VALUES = parse(
  readFileSync(resolve(import.meta.dirname, "../../charts/spindle/values.yaml"), "utf8"),
) as Record<string, { nodeOptions?: string }>;

const buildStarted = performance.now();
await build();
report("build", performance.now() - buildStarted, "ms");

const node: number[] = [];
const help: Record<keyof typeof FROM, number[]> = { dist: [], sources: [] };
for (let i = 0; i < RUNS; i++) {
  node.push(wallMs(["-e", ""]));
  for (const from of ["dist", "sources"] as const) help[from].push(wallMs([BIN, "agent", "--help"], FROM[from]));
}
report("node_startup", median(node), "ms", { n: RUNS });
for (const from of ["dist", "sources"] as const)
  report(`agent_help_${from}`, median(help[from]), "ms", { n: RUNS, min: Math.round(Math.min(...help[from])) });

const api = await startStubApiserver();
try {
  const commands = [
    { name: "agent", args: ["agent", "--node", "bench-node"], ready: /"msg":"agent started"/ },
    { name: "controller", args: ["controller"], ready: /"msg":"controller started"/ },
  ];
  for (const { name, args, ready } of commands)
    for (const from of ["dist", "sources"] as const) {
      const samples: number[] = [];
      // The build runs as the chart runs it, with its V8 flags (values.yaml <command>.nodeOptions).
      const nodeOptions = from === "dist" ? (CHART_VALUES[name]?.nodeOptions ?? "") : "";
      for (let i = 0; i < 3; i++)
        samples.push(
          await idleRss(args, ready, {
            KUBECONFIG: api.kubeconfig,
            NODE_OPTIONS: nodeOptions,
            ...(from === "dist" ? IMAGE_ENV : {}),
            ...FROM[from],
          }),
        );
      report(`${name}_rss_idle_${from}`, median(samples), "MiB", {
        n: samples.length,
        settle_ms: SETTLE_MS,
        apiserver: "stub",
      });
    }
} finally {
  await api.close();
}
