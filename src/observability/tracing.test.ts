import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  formatTraceparent,
  parseTraceparent,
  resourceAttributes,
  startSpan,
  startTracing,
  tracingConfigFromEnv,
  tracingEnabled,
} from "./tracing.js";

const TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

describe("traceparent", () => {
  it("parses and formats W3C traceparent values", () => {
    expect(parseTraceparent(TP)).toEqual({
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      flags: 1,
    });
    expect(formatTraceparent(parseTraceparent(TP)!)).toBe(TP);
    expect(formatTraceparent({ traceId: "a".repeat(32), spanId: "b".repeat(16), flags: 0 })).toBe(
      `00-${"a".repeat(32)}-${"b".repeat(16)}-00`,
    );
  });

  it("accepts later versions with more fields, and trims", () => {
    expect(parseTraceparent(`01-${TP.slice(3)}-what-comes-next`)?.spanId).toBe("00f067aa0ba902b7");
    expect(parseTraceparent(` ${TP} `)?.traceId).toBe("4bf92f3577b34da6a3ce929d0e0e4736");
  });

  it.each([
    ["empty", ""],
    ["undefined", undefined],
    ["version ff", `ff-${TP.slice(3)}`],
    ["version 00 with extra fields", `${TP}-extra`],
    ["all-zero trace id", `00-${"0".repeat(32)}-00f067aa0ba902b7-01`],
    ["all-zero span id", `00-4bf92f3577b34da6a3ce929d0e0e4736-${"0".repeat(16)}-01`],
    ["upper case", TP.toUpperCase()],
    ["short trace id", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"],
    ["garbage", "not a traceparent"],
    ["huge", `${TP}${"-x".repeat(400)}`],
  ])("rejects %s (a hand-edited annotation starts a new trace)", (_, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });
});

describe("tracingConfigFromEnv", () => {
  it("is off with no exporter configured", () => {
    expect(tracingConfigFromEnv({})).toMatchObject({ enabled: false });
    expect(tracingConfigFromEnv({ OTEL_SERVICE_NAME: "x", OTEL_EXPORTER_OTLP_HEADERS: "a=b" })).toMatchObject({
      enabled: false,
    });
  });

  it("is on with an OTLP endpoint, resolved as the exporter does", () => {
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318/" })).toEqual({
      enabled: true,
      endpoint: "http://c:4318/v1/traces",
    });
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4318/custom" })).toEqual({
      enabled: true,
      endpoint: "http://c:4318/custom",
    });
    expect(
      tracingConfigFromEnv({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://b:4318/v1/traces",
      }),
    ).toEqual({ enabled: true, endpoint: "http://b:4318/v1/traces" });
  });

  it("is on with OTEL_TRACES_EXPORTER=otlp alone, to the spec's default endpoint", () => {
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: "otlp" })).toEqual({
      enabled: true,
      endpoint: "http://localhost:4318/v1/traces",
    });
  });

  it("OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none win over an endpoint", () => {
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_EXPORTER: "otlp" };
    expect(tracingConfigFromEnv({ ...endpoint, OTEL_SDK_DISABLED: "TRUE" })).toMatchObject({ enabled: false });
    expect(tracingConfigFromEnv({ ...endpoint, OTEL_SDK_DISABLED: "false" })).toMatchObject({ enabled: true });
    expect(tracingConfigFromEnv({ ...endpoint, OTEL_TRACES_EXPORTER: "none" })).toMatchObject({ enabled: false });
  });

  it("refuses, with a warning, what it cannot export", () => {
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: "zipkin" })).toMatchObject({ enabled: false, warn: true });
    expect(
      tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }),
    ).toMatchObject({ enabled: false, warn: true });
    expect(
      tracingConfigFromEnv({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf",
      }),
    ).toMatchObject({ enabled: true });
  });
});

describe("resourceAttributes", () => {
  it("names the service and its Kubernetes place from the downward-API env", () => {
    expect(
      resourceAttributes(
        { name: "spindle-agent", version: "1.2.3", nodeName: "edge-1" },
        { NODE_NAME: "other", POD_NAME: "spindle-agent-x7", POD_NAMESPACE: "spindle", POD_UID: "u-1" },
      ),
    ).toEqual({
      "service.name": "spindle-agent",
      "service.namespace": "spindle",
      "service.version": "1.2.3",
      "k8s.node.name": "edge-1",
      "k8s.pod.name": "spindle-agent-x7",
      "k8s.pod.uid": "u-1",
      "k8s.namespace.name": "spindle",
    });
    expect(resourceAttributes({ name: "spindle-controller", version: "1" }, { NODE_NAME: "n" })).toEqual({
      "service.name": "spindle-controller",
      "service.namespace": "spindle",
      "service.version": "1",
      "k8s.node.name": "n",
    });
  });
});

/** A plain OTLP/HTTP endpoint on 127.0.0.1 that keeps what it is sent. */
async function otlpReceiver() {
  const requests: { path: string; type: string; body: Buffer }[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({ path: req.url ?? "", type: req.headers["content-type"] ?? "", body: Buffer.concat(chunks) });
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return { requests, endpoint: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) };
}

describe("startSpan", () => {
  let stop: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await stop?.();
    stop = undefined;
  });
  const log = { info: () => {}, warn: () => {} };

  it("with no exporter configured: no-op spans, no traceparent, nothing started", async () => {
    stop = await startTracing("spindle-test", log, { env: {} });
    expect(tracingEnabled()).toBe(false);
    const span = startSpan("x", { parent: TP });
    expect(span.traceparent).toBeUndefined();
    span.setAttributes({ a: 1 });
    span.fail(new Error("e"));
    span.end();
  });

  it("with an endpoint: children of their parent traceparent, exported as OTLP/HTTP protobuf and flushed on stop", async () => {
    const receiver = await otlpReceiver();
    try {
      stop = await startTracing("spindle-test", log, {
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, NODE_NAME: "edge-9" },
      });
      expect(tracingEnabled()).toBe(true);
      const parent = startSpan("discovery set", { kind: "producer" });
      const parsed = parseTraceparent(parent.traceparent);
      expect(parsed?.flags).toBe(1);
      const child = startSpan("apply Device", { parent: parent.traceparent, links: [TP, "bad"] });
      expect(parseTraceparent(child.traceparent)?.traceId).toBe(parsed?.traceId);
      expect(parseTraceparent(child.traceparent)?.spanId).not.toBe(parsed?.spanId);
      // A malformed parent starts a new trace instead of failing.
      expect(parseTraceparent(startSpan("y", { parent: "garbage" }).traceparent)?.traceId).not.toBe(parsed?.traceId);
      child.end();
      parent.end();
      await stop(); // flushes the batch
      stop = undefined;
      expect(tracingEnabled()).toBe(false);
      expect(receiver.requests.map((r) => [r.path, r.type])).toEqual([["/v1/traces", "application/x-protobuf"]]);
      const body = receiver.requests[0]!.body;
      for (const text of ["discovery set", "apply Device", "spindle-test", "edge-9", "k8s.node.name"])
        expect(body.includes(Buffer.from(text)), text).toBe(true);
      // The parent's span id (bytes) is in the batch as the child's parentSpanId.
      expect(body.includes(Buffer.from(parsed!.spanId, "hex"))).toBe(true);
    } finally {
      await receiver.close();
    }
  });
});
