import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { stringify } from "yaml";
import { ensureBinaries } from "./build.js";
import { freePort, ManagedProcess, waitFor } from "./processes.js";

/**
 * A real OpenTelemetry Collector (tools/otelcol: an OTLP/HTTP receiver on 127.0.0.1 and a file
 * exporter), for the OTel e2e test and `spindle dev --otel`. Each line of `tracesFile` is one
 * OTLP/JSON `ExportTraceServiceRequest` batch, as the collector's file exporter writes them.
 */
export interface Collector {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT: http://127.0.0.1:<port> (the SDKs append /v1/traces). */
  endpoint: string;
  tracesFile: string;
  process: ManagedProcess;
  stop(): Promise<void>;
}

export async function startCollector(
  dir: string,
  log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Promise<Collector> {
  const { otelcol } = await ensureBinaries(log, { modules: ["otelcol"] });
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const tracesFile = join(dir, "traces.jsonl");
  const config = join(dir, "otelcol.yaml");
  await writeFile(
    config,
    stringify({
      receivers: { otlp: { protocols: { http: { endpoint: `127.0.0.1:${port}` } } } },
      // Flushed every 100 ms so a reader sees a batch soon after it arrived.
      exporters: { file: { path: tracesFile, flush_interval: "100ms" } },
      service: {
        // No metrics endpoint of its own (it would take port 8888).
        telemetry: { metrics: { level: "none" }, logs: { level: "info" } },
        pipelines: { traces: { receivers: ["otlp"], exporters: ["file"] } },
      },
    }),
  );
  const child = new ManagedProcess("otelcol", otelcol!, ["--config", `file:${config}`], dir);
  const logText = () => (existsSync(child.logFile) ? readFileSync(child.logFile, "utf8") : "");
  await waitFor(
    "the OpenTelemetry Collector",
    () => {
      if (!child.alive) throw new Error(`otelcol exited with ${child.exitCode}`);
      return logText().includes("Everything is ready");
    },
    30_000,
    () => child.tail(20),
  ).catch(async (err) => {
    await child.stop();
    throw err;
  });
  return { endpoint: `http://127.0.0.1:${port}`, tracesFile, process: child, stop: () => child.stop() };
}

/** One span as read back from the collector's file (OTLP/JSON), with its resource's attributes. */
export interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  /** Nanoseconds since the epoch, as OTLP/JSON writes them (strings of up to 19 digits). */
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: Record<string, unknown>;
  links: { traceId: string; spanId: string }[];
  resource: Record<string, unknown>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };

const anyValue = (v: AnyValue): unknown =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.boolValue ?? v.doubleValue));
const record = (kvs: KeyValue[] | undefined) => Object.fromEntries((kvs ?? []).map((a) => [a.key, anyValue(a.value)]));

/** Every span in a file written by the collector's file exporter. */
export function readExportedSpans(tracesFile: string): ExportedSpan[] {
  if (!existsSync(tracesFile)) return [];
  const spans: ExportedSpan[] = [];
  for (const line of readFileSync(tracesFile, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const batch = JSON.parse(line) as {
      resourceSpans?: {
        resource?: { attributes?: KeyValue[] };
        scopeSpans?: {
          spans?: {
            traceId: string;
            spanId: string;
            parentSpanId?: string;
            name: string;
            startTimeUnixNano: string;
            endTimeUnixNano: string;
            attributes?: KeyValue[];
            links?: { traceId: string; spanId: string }[];
          }[];
        }[];
      }[];
    };
    for (const rs of batch.resourceSpans ?? []) {
      const resource = record(rs.resource?.attributes);
      for (const ss of rs.scopeSpans ?? [])
        for (const s of ss.spans ?? [])
          spans.push({
            traceId: s.traceId,
            spanId: s.spanId,
            ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}),
            name: s.name,
            startTimeUnixNano: s.startTimeUnixNano,
            endTimeUnixNano: s.endTimeUnixNano,
            attributes: record(s.attributes),
            links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })),
            resource,
          });
    }
  }
  return spans;
}

/**
 * One trace as indented text: each span under its parent, with its service, its start after the
 * trace's first span and its duration, its attributes, and the spans it links to.
 */
export function formatTrace(spans: ExportedSpan[], traceId: string): string {
  const mine = spans.filter((s) => s.traceId === traceId);
  const ms = (ns: string) => Number(BigInt(ns) / 1000n) / 1000;
  const t0 = Math.min(...mine.map((s) => ms(s.startTimeUnixNano)));
  const ids = new Set(mine.map((s) => s.spanId));
  const lines = [`trace ${traceId}`];
  const walk = (parent: string | undefined, depth: number) => {
    const children = mine
      .filter((s) => (parent ? s.parentSpanId === parent : !s.parentSpanId || !ids.has(s.parentSpanId)))
      .sort((a, b) => ms(a.startTimeUnixNano) - ms(b.startTimeUnixNano));
    for (const s of children) {
      const start = ms(s.startTimeUnixNano) - t0;
      const took = ms(s.endTimeUnixNano) - ms(s.startTimeUnixNano);
      const attrs = Object.entries(s.attributes)
        .map(([k, v]) => `${k}=${v}`)
        .join(" ");
      const links = s.links.map((l) => `${l.traceId.slice(0, 8)}…/${l.spanId}`).join(", ");
      lines.push(
        `${"  ".repeat(depth)}${depth ? "└─ " : ""}${s.name}  [${s.resource["service.name"]} on ${s.resource["k8s.node.name"] ?? "?"}]  ` +
          `+${start.toFixed(1)} ms, ${took.toFixed(1)} ms  ${attrs}${links ? `  links: ${links}` : ""}`,
      );
      walk(s.spanId, depth + 1);
    }
  };
  walk(undefined, 0);
  return lines.join("\n");
}
