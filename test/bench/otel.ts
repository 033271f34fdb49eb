/**
 * `npx tsx test/bench/otel.ts`: what tracing costs. Prints one JSON line per figure; passes or
 * fails nothing. No cluster: the publisher and the idle agents talk to the stand-in apiserver of
 * test/stub-apiserver.ts; spans go to a plain OTLP/HTTP sink on 127.0.0.1.
 *
 * - span_noop_ns / call_baseline_ns: one startSpan()+end() with no exporter configured, next to
 *   an empty function call (the floor: what "no tracing code" would cost);
 * - span_exported_ns: the same with tracing on (BatchSpanProcessor, OTLP/HTTP protobuf);
 * - publisher_report_{changed,unchanged}_{off,on}: DevicePublisher.report() of a set of
 *   OTEL_BENCH_DEVICES (default 1000) devices that all changed / none changed, µs per set;
 * - agent_rss_idle_{off,on}: VmRSS of an idle `spindle agent` (production build, the chart's
 *   NODE_OPTIONS), without and with an exporter configured; median of 3;
 * - agent_static_otel_{sdk,api}_bytes: bytes of @opentelemetry code the agent's chunk imports
 *   statically (the SDK is a dynamic import: 0 means it is loaded only when tracing is on; the
 *   api is prom-client's dependency).
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { resolve } from "node:path";
import { parse } from "yaml";
import type { DiscoveredDevice } from "../../discovery-handlers/handler.js";
import { build } from "../../scripts/build.js";
import { DevicePublisher } from "../../src/agent/device-publisher.js";
import type { DeviceConfiguration } from "../../src/api/device-configuration.js";
import { createLogger } from "../../src/log/logger.js";
import { startSpan, startTracing } from "../../src/observability/tracing.js";
import { loadClientNodeConfig } from "../../src/sandbox/client-node.js";
import { startStubApiserver } from "../stub-apiserver.js";
import { IMAGE_ENV, median, report, sleep } from "./common.js";

const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");
const DEVICES = Number(process.env.OTEL_BENCH_DEVICES ?? 1000);
const ROOT = resolve(import.meta.dirname, "../..");

/** ns per call of `fn`, median of 5 rounds of `n` calls. */
function nsPerCall(fn: () => void, n = 200_000): number {
  const rounds: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn();
    rounds.push(Number(process.hrtime.bigint() - t) / n);
  }
  return median(rounds);
}

/** An OTLP/HTTP endpoint that accepts and drops everything. */
async function sink() {
  let requests = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      requests++;
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests: () => requests,
    close: () => new Promise((r) => server.close(r)),
  };
}

const api = await startStubApiserver();
const otlp = await sink();
const log = createLogger("bench", "silent");
try {
  // --- spans --------------------------------------------------------------------------------
  let sinkhole = 0;
  const empty = (x: number) => {
    sinkhole += x;
  };
  report(
    "call_baseline_ns",
    nsPerCall(() => empty(1)),
    "ns",
  );
  report(
    "span_noop_ns",
    nsPerCall(() => startSpan("x", { attributes: { a: 1 } }).end()),
    "ns",
  );

  // --- the publisher's report() ---------------------------------------------------------------
  const configuration = {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceConfiguration",
    metadata: { name: "bench", uid: "u" },
    spec: {
      discoveryHandler: { name: "usb", discoveryDetails: {} },
      capacity: 1,
      offlineGraceSeconds: 3600,
      properties: {},
    },
  } as unknown as DeviceConfiguration;
  const sets = (generation: number): DiscoveredDevice[] =>
    Array.from({ length: DEVICES }, (_, i) => ({
      id: `dev-${i}`,
      properties: { USB_SERIAL: `S${i}`, USB_PRODUCT: `gen ${generation}` },
      shared: false,
    })) as DiscoveredDevice[];
  const benchReport = (label: string) => {
    const publisher = new DevicePublisher(
      loadClientNodeConfig(api.kubeconfig),
      "bench-node",
      log,
      { record: async () => {} } as never,
      () => configuration,
    );
    const prepared = Array.from({ length: 22 }, (_, g) => sets(g));
    // Warm-up, then back-to-back sets (no await: the write queue does not run in between).
    publisher.report("bench", "usb", false, prepared[0]!);
    const changed: number[] = [];
    const unchanged: number[] = [];
    for (let g = 1; g < prepared.length; g++) {
      let t = performance.now();
      publisher.report("bench", "usb", false, prepared[g]!);
      changed.push(performance.now() - t);
      t = performance.now();
      publisher.report("bench", "usb", false, prepared[g]!);
      unchanged.push(performance.now() - t);
    }
    report(`publisher_report_changed_${label}`, median(changed) * 1000, "µs/set", { devices: DEVICES });
    report(`publisher_report_unchanged_${label}`, median(unchanged) * 1000, "µs/set", { devices: DEVICES });
    void publisher.stop();
  };
  benchReport("off");

  const stop = await startTracing("spindle-bench", log, {
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint },
  });
  report(
    "span_exported_ns",
    nsPerCall(() => startSpan("x", { attributes: { a: 1 } }).end(), 20_000),
    "ns",
  );
  benchReport("on");
  await stop();
  report("otlp_requests_sent", otlp.requests(), "requests");
  void sinkhole;

  // --- the agent, idle --------------------------------------------------------------------------
  const metafile = await build();
  const agentChunk = Object.entries(metafile.outputs).find(([, o]) => o.entryPoint === "src/commands/agent.ts")![0];
  const outputs = new Map(Object.entries(metafile.outputs).map(([k, v]) => [resolve(ROOT, k), v]));
  const seen = new Set<string>();
  let staticOtel = 0;
  let staticApi = 0;
  const visit = (path: string) => {
    if (seen.has(path)) return;
    seen.add(path);
    const o = outputs.get(path)!;
    for (const [input, { bytesInOutput }] of Object.entries(o.inputs))
      if (input.includes("node_modules/@opentelemetry/api/")) staticApi += bytesInOutput;
      else if (input.includes("node_modules/@opentelemetry/")) staticOtel += bytesInOutput;
    for (const i of o.imports) if (!i.external && i.kind === "import-statement") visit(resolve(ROOT, i.path));
  };
  visit(resolve(ROOT, agentChunk));
  // prom-client requires @opentelemetry/api (for exemplars) whether or not Spindle traces.
  report("agent_static_otel_sdk_bytes", staticOtel, "bytes");
  report("agent_static_otel_api_bytes", staticApi, "bytes", { via: "prom-client" });

  const values = parse(readFileSync(resolve(ROOT, "charts/spindle/values.yaml"), "utf8")) as {
    agent?: { nodeOptions?: string };
  };
  const idleRss = async (env: NodeJS.ProcessEnv): Promise<number> => {
    const child = spawn(process.execPath, [BIN, "agent", "--node", "bench-node"], {
      env: {
        ...process.env,
        NODE_ENV: "production",
        LOG_LEVEL: "info",
        KUBECONFIG: api.kubeconfig,
        NODE_OPTIONS: values.agent?.nodeOptions ?? "",
        ...IMAGE_ENV,
        ...env,
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      let text = "";
      await new Promise<void>((ok, fail) => {
        const timer = setTimeout(() => fail(new Error(`agent did not start: ${text}`)), 60_000);
        child.stderr!.on("data", (c: Buffer) => {
          text += c.toString();
          if (text.includes('"msg":"agent started"')) {
            if (env.OTEL_EXPORTER_OTLP_ENDPOINT && !text.includes("exporting traces"))
              return fail(new Error(`tracing did not start: ${text}`));
            clearTimeout(timer);
            ok();
          }
        });
      });
      await sleep(3000);
      // Not common.ts's rssMiB: an exited, unreaped agent has no VmRSS line, NaN here rather than 0.
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
      return Number(m?.[1]) / 1024;
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  };
  const off: number[] = [];
  const on: number[] = [];
  for (let i = 0; i < 3; i++) {
    off.push(await idleRss({}));
    on.push(await idleRss({ OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint }));
  }
  report("agent_rss_idle_off", median(off), "MiB", { n: 3, samples: off.map((v) => Math.round(v * 10) / 10) });
  report("agent_rss_idle_on", median(on), "MiB", { n: 3, samples: on.map((v) => Math.round(v * 10) / 10) });
} finally {
  await otlp.close();
  await api.close();
}
