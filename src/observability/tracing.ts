/**
 * OpenTelemetry traces, off unless an exporter is configured with the standard `OTEL_*`
 * environment variables. Off, this module loads nothing of OpenTelemetry (not even
 * `@opentelemetry/api`): every span is one shared no-op object, so an agent without tracing pays
 * neither memory nor time for it. On, `startTracing` imports the SDK and an OTLP/HTTP protobuf
 * exporter once, at startup.
 *
 * Spans are parented explicitly by W3C `traceparent` strings, not through an async context: the
 * contexts Spindle carries cross processes anyway (on a Device and a SpinApp, as the
 * `spindle.dev/traceparent` annotation), and no context manager has to follow every await.
 */
import type * as Api from "@opentelemetry/api";

/** Where the trace context of the discovery that last changed a Device (or SpinApp) is kept. */
export const TRACEPARENT_ANNOTATION = "spindle.dev/traceparent";

export type Attributes = Record<string, string | number | boolean | undefined>;

export interface SpanOptions {
  /** The parent's W3C traceparent; a new trace when absent or malformed. */
  parent?: string;
  /** Spans this one follows from without being their child (traceparents; malformed ones dropped). */
  links?: (string | undefined)[];
  attributes?: Attributes;
  kind?: "internal" | "client" | "producer" | "consumer";
  /** When it started (ms since the epoch), if before now. */
  startTime?: number;
}

export interface SpanHandle {
  /** This span's W3C traceparent, to carry on; undefined when tracing is off. */
  readonly traceparent: string | undefined;
  setAttributes(attributes: Attributes): void;
  /** Marks the span failed (status ERROR) with the error's message. */
  fail(err: unknown): void;
  end(): void;
}

const NOOP_SPAN: SpanHandle = {
  traceparent: undefined,
  setAttributes: () => {},
  fail: () => {},
  end: () => {},
};

// --- W3C Trace Context (https://www.w3.org/TR/trace-context/#traceparent-header) -------------

export interface TraceParent {
  traceId: string;
  spanId: string;
  /** Bit 0: sampled. */
  flags: number;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * A traceparent header value, or undefined when it is not one. An annotation is anyone's to
 * edit, so a bad value is ignored (a new trace starts), never an error.
 */
export function parseTraceparent(value: string | undefined): TraceParent | undefined {
  if (!value || value.length > 512) return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string?];
  // Version ff is invalid; version 00 has exactly four fields; later versions may add fields.
  if (version === "ff" || (version === "00" && rest !== undefined)) return undefined;
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, flags: Number.parseInt(flags, 16) };
}

export function formatTraceparent(t: TraceParent): string {
  return `00-${t.traceId}-${t.spanId}-${(t.flags & 0xff).toString(16).padStart(2, "0")}`;
}

// --- configuration from the environment -------------------------------------------------------

export type TracingConfig = { enabled: true; endpoint: string } | { enabled: false; reason: string; warn?: boolean };

const truthy = (v: string | undefined) => v?.trim().toLowerCase() === "true";

/**
 * Whether to export traces, by the OpenTelemetry SDK environment variables:
 * OTEL_SDK_DISABLED=true wins; OTEL_TRACES_EXPORTER=none turns traces off, `otlp` on (to
 * http://localhost:4318 when no endpoint is set, the spec's default); otherwise traces are on
 * when an OTLP endpoint is set (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
 * OTEL_EXPORTER_OTLP_ENDPOINT). Only OTLP over HTTP/protobuf is shipped.
 */
export function tracingConfigFromEnv(env: NodeJS.ProcessEnv = process.env): TracingConfig {
  if (truthy(env.OTEL_SDK_DISABLED)) return { enabled: false, reason: "OTEL_SDK_DISABLED=true" };
  const exporters = (env.OTEL_TRACES_EXPORTER ?? "")
    .split(",")
    .map((e) => e.trim().toLowerCase())
    .filter(Boolean);
  if (exporters.includes("none")) return { enabled: false, reason: "OTEL_TRACES_EXPORTER=none" };
  const unsupported = exporters.filter((e) => e !== "otlp");
  if (unsupported.length > 0)
    return {
      enabled: false,
      warn: true,
      reason: `OTEL_TRACES_EXPORTER=${unsupported.join(",")} is not supported: Spindle exports traces with otlp only`,
    };
  const tracesEndpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  const endpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (!tracesEndpoint && !endpoint && exporters.length === 0)
    return { enabled: false, reason: "no exporter configured (OTEL_EXPORTER_OTLP_ENDPOINT is not set)" };
  const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf")
    .trim()
    .toLowerCase();
  if (protocol !== "http/protobuf")
    return {
      enabled: false,
      warn: true,
      reason: `OTEL_EXPORTER_OTLP_PROTOCOL=${protocol} is not supported: Spindle exports OTLP over http/protobuf (port 4318)`,
    };
  // As the exporter resolves it: the signal's own endpoint is used as is, the general one gets /v1/traces.
  const resolved = tracesEndpoint
    ? tracesEndpoint
    : `${(endpoint || "http://localhost:4318").replace(/\/+$/, "")}/v1/traces`;
  return { enabled: true, endpoint: resolved };
}

/**
 * Resource attributes by the Kubernetes semantic conventions, from the env the chart sets through
 * the downward API (NODE_NAME, POD_NAME, POD_NAMESPACE, POD_UID). OTEL_RESOURCE_ATTRIBUTES and
 * OTEL_SERVICE_NAME, read by the SDK, win over these.
 */
export function resourceAttributes(
  service: { name: string; version: string; nodeName?: string },
  env: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const attributes: Record<string, string | undefined> = {
    "service.name": service.name,
    "service.namespace": "spindle",
    "service.version": service.version,
    "k8s.node.name": service.nodeName ?? env.NODE_NAME,
    "k8s.pod.name": env.POD_NAME,
    "k8s.pod.uid": env.POD_UID,
    "k8s.namespace.name": env.POD_NAMESPACE,
  };
  return Object.fromEntries(Object.entries(attributes).filter((e): e is [string, string] => !!e[1]));
}

// --- the tracer --------------------------------------------------------------------------------

interface Active {
  api: typeof Api;
  tracer: Api.Tracer;
  shutdown: () => Promise<void>;
}

let active: Active | undefined;

export function tracingEnabled(): boolean {
  return active !== undefined;
}

export interface TracingLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * Starts exporting traces when the environment configures an exporter; otherwise does nothing
 * and loads nothing. Returns the function that flushes and stops it (call it on shutdown).
 */
export async function startTracing(
  serviceName: string,
  log: TracingLog,
  options: { nodeName?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<() => Promise<void>> {
  const env = options.env ?? process.env;
  const config = tracingConfigFromEnv(env);
  if (!config.enabled) {
    if (config.warn) log.warn({ reason: config.reason }, "traces are not exported");
    return async () => {};
  }
  if (active) return active.shutdown;
  const [api, { BasicTracerProvider, BatchSpanProcessor }, resources, { OTLPTraceExporter }, pkg] = await Promise.all([
    import("@opentelemetry/api"),
    import("@opentelemetry/sdk-trace-base").then(commonJs),
    import("@opentelemetry/resources").then(commonJs),
    import("@opentelemetry/exporter-trace-otlp-proto").then(commonJs),
    import("../../package.json", { with: { type: "json" } }),
  ]);
  const service = { name: serviceName, version: pkg.default.version, nodeName: options.nodeName };
  // Export failures are the SDK's diagnostics: surface them (rate-limited by the exporter's retries).
  api.diag.setLogger(
    {
      error: (message, ...args) => log.warn({ otel: args.map(String).join(" ") }, `opentelemetry: ${message}`),
      warn: (message, ...args) => log.warn({ otel: args.map(String).join(" ") }, `opentelemetry: ${message}`),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    api.DiagLogLevel.WARN,
  );
  const resource = resources
    .defaultResource()
    .merge(resources.resourceFromAttributes(resourceAttributes(service, env)))
    .merge(resources.detectResources({ detectors: [resources.envDetector] }));
  // The endpoint as resolved above (the same rule as the exporter's); the exporter and the batch
  // processor read the rest of their OTEL_EXPORTER_OTLP_* and OTEL_BSP_* variables (headers,
  // timeout, compression, batch sizes); the provider reads OTEL_TRACES_SAMPLER(_ARG) and the limits.
  const provider = new BasicTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: config.endpoint }))],
  });
  let stopped: Promise<void> | undefined;
  const shutdown = () => {
    stopped ??= (async () => {
      active = undefined;
      try {
        await provider.shutdown(); // flushes what is queued
      } catch (err) {
        log.warn({ err: String(err) }, "flushing traces failed");
      }
    })();
    return stopped;
  };
  active = { api, tracer: provider.getTracer("spindle", service.version), shutdown };
  log.info(
    { endpoint: config.endpoint, service: service.name, attributes: resourceAttributes(service, env) },
    "exporting traces (OTLP over HTTP/protobuf)",
  );
  return shutdown;
}

/**
 * The exports of a CommonJS package loaded with import(): Node gives them as named exports and
 * as `default`; the production bundle (esbuild, split chunks) as `default` only.
 */
function commonJs<T extends object>(namespace: T): T {
  return ((namespace as { default?: T }).default ?? namespace) as T;
}

function spanContextOf(traceparent: string | undefined): Api.SpanContext | undefined {
  const t = parseTraceparent(traceparent);
  return t ? { traceId: t.traceId, spanId: t.spanId, traceFlags: t.flags, isRemote: true } : undefined;
}

/** A span; the shared no-op span when tracing is off (then this costs one branch). */
export function startSpan(name: string, options: SpanOptions = {}): SpanHandle {
  if (!active) return NOOP_SPAN;
  const { api, tracer } = active;
  const parent = spanContextOf(options.parent);
  const context = parent ? api.trace.setSpanContext(api.ROOT_CONTEXT, parent) : api.ROOT_CONTEXT;
  const links: Api.Link[] = [];
  for (const l of options.links ?? []) {
    const c = spanContextOf(l);
    if (c && c.spanId !== parent?.spanId) links.push({ context: c });
  }
  const kind = {
    internal: api.SpanKind.INTERNAL,
    client: api.SpanKind.CLIENT,
    producer: api.SpanKind.PRODUCER,
    consumer: api.SpanKind.CONSUMER,
  }[options.kind ?? "internal"];
  const span = tracer.startSpan(
    name,
    {
      kind,
      links,
      attributes: clean(options.attributes),
      ...(options.startTime ? { startTime: options.startTime } : {}),
    },
    context,
  );
  const c = span.spanContext();
  const traceparent = api.isSpanContextValid(c)
    ? formatTraceparent({ traceId: c.traceId, spanId: c.spanId, flags: c.traceFlags })
    : undefined;
  return {
    traceparent,
    setAttributes: (attributes) => span.setAttributes(clean(attributes) ?? {}),
    fail: (err) => {
      const message = err instanceof Error ? err.message : String(err);
      span.setStatus({ code: api.SpanStatusCode.ERROR, message });
      span.recordException(err instanceof Error ? err : message);
    },
    end: () => span.end(),
  };
}

/** Runs `fn` in a span that ends when it settles, failed when it throws. */
export async function withSpan<T>(
  name: string,
  options: SpanOptions,
  fn: (span: SpanHandle) => Promise<T>,
): Promise<T> {
  const span = startSpan(name, options);
  try {
    return await fn(span);
  } catch (err) {
    span.fail(err);
    throw err;
  } finally {
    span.end();
  }
}

function clean(attributes: Attributes | undefined): Api.Attributes | undefined {
  if (!attributes) return undefined;
  const out: Api.Attributes = {};
  for (const [k, v] of Object.entries(attributes)) if (v !== undefined) out[k] = v;
  return out;
}
