/**
 * OpenTelemetry traces from a plugged device to its SpinApp, against a real OpenTelemetry
 * Collector (tools/otelcol: OTLP/HTTP receiver, file exporter) built on demand, real agent and
 * controller processes and the sandbox's real spin-operator.
 */
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { parseTraceparent, TRACEPARENT_ANNOTATION as TRACEPARENT } from "../../src/observability/tracing.js";
import { applyObject } from "../../src/sandbox/client-node.js";
import { EXECUTOR, RUNTIME_CLASS } from "../../src/sandbox/control-plane.js";
import {
  type Collector,
  type ExportedSpan,
  formatTrace,
  readExportedSpans,
  startCollector,
} from "../../src/sandbox/otel-collector.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

describe("OpenTelemetry: one trace from the device's discovery to its SpinApp", () => {
  const kc = kubeConfig();
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const dsas = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const processes: SpindleProcess[] = [];
  let collector: Collector;
  let usb: UsbFixture;
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  let untracedLoads: string;

  /** Env of a traced process, as the chart sets it (downward API) plus the OTLP endpoint. */
  const traced = (pod: string, node?: string): NodeJS.ProcessEnv => ({
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint,
    OTEL_BSP_SCHEDULE_DELAY: "200", // export within 200 ms, not the default 5 s
    POD_NAME: pod,
    POD_NAMESPACE: "spindle-system",
    POD_UID: `uid-${pod}`,
    ...(node ? { NODE_NAME: node } : {}),
  });
  const spans = () => readExportedSpans(collector.tracesFile);
  const deviceOf = async (node: string) =>
    (await devices.list()).items.find((d) => d.spec.configurationName === "otel-usb" && d.spec.nodes.includes(node));
  const appFor = async (device: string) =>
    (await spinApps.list(ns.name)).items.find((a) => a.metadata?.labels?.["spindle.dev/device"] === device);

  beforeAll(async () => {
    collector = await startCollector(await mkdtemp(join(tmpdir(), "spindle-otel-")));
    ns = await testNamespace("otel");
    usb = await UsbFixture.create();
    // The Wasm app's own OTLP settings live on a SpinAppExecutor (SpinKube has no env passthrough).
    await applyObject(
      kc,
      {
        apiVersion: "core.spinkube.dev/v1alpha1",
        kind: "SpinAppExecutor",
        metadata: { name: `${EXECUTOR}-otel`, namespace: ns.name },
        spec: {
          createDeployment: true,
          deploymentConfig: { runtimeClassName: RUNTIME_CLASS, otel: { exporter_otlp_endpoint: collector.endpoint } },
        },
      } as k8s.KubernetesObject,
      "spindle-test",
    );
    // edge-2's agent and the controller export traces; edge-1's agent has no exporter configured
    // and records every module it loads.
    const recorderDir = await loadRecorderDir();
    const recorder = join(recorderDir, "register.mjs");
    untracedLoads = join(recorderDir, "loads.log");
    await writeFile(untracedLoads, "");
    processes.push(
      await SpindleProcess.agent("edge-2", ["--handlers", "usb"], traced("spindle-agent-e2")),
      await SpindleProcess.agent("edge-1", ["--handlers", "usb"], {
        NODE_OPTIONS: `--import ${recorder}`,
        SPINDLE_LOAD_LOG: untracedLoads,
        OTEL_EXPORTER_OTLP_HEADERS: "x=y", // not an exporter: still off
      }),
      await SpindleProcess.start(
        "controller-otel",
        ["controller", "--lease-namespace", ns.name, "--lease-seconds", "4", "--identity", "otel-ctl"],
        traced("spindle-controller-0", "control-plane"),
      ),
    );
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "otel-usb" },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot, pollSeconds: 1 } },
        capacity: 1,
        offlineGraceSeconds: 2,
      },
    });
    await dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "reader", namespace: ns.name },
      spec: {
        deviceConfiguration: "otel-usb",
        telemetry: { executor: `${EXECUTOR}-otel` },
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1 } },
      },
    });
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    await configs.delete("otel-usb").catch(() => undefined);
    await usb?.dispose();
    await ns?.remove();
    await collector?.stop();
  });

  /** The spans of the trace the SpinApp of `device` was applied in, once it is complete. */
  const traceOfApp = async (device: string, serial: string): Promise<ExportedSpan[]> =>
    eventually(
      `a trace from discovery to the SpinApp apply (serial ${serial})`,
      async () => {
        const all = spans();
        const apply = all.find(
          (s) =>
            s.name === "apply SpinApp" &&
            s.attributes["spindle.device"] === device &&
            s.resource["service.name"] === "spindle-controller",
        );
        if (!apply) return undefined;
        const trace = all.filter((s) => s.traceId === apply.traceId);
        return trace.some((s) => s.name === "discovery set") ? trace : undefined;
      },
      60_000,
    );

  it("plug a device: discovery set -> apply Device -> apply SpinApp in one trace, with Kubernetes resource attributes", async () => {
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "OT1", product: "Reader A" });
    const device = await eventually("edge-2's Device", () => deviceOf("edge-2"));
    const name = device.metadata!.name!;
    const app = await eventually("its SpinApp", () => appFor(name));
    const trace = await traceOfApp(name, "OT1");

    const discovery = trace.find((s) => s.name === "discovery set")!;
    const write = trace.find((s) => s.name === "apply Device" && s.attributes["spindle.device"] === name)!;
    const apply = trace.find((s) => s.name === "apply SpinApp" && s.attributes["spindle.device"] === name)!;
    expect(discovery.parentSpanId, "the discovery starts the trace").toBeUndefined();
    expect(write.parentSpanId).toBe(discovery.spanId);
    expect(apply.parentSpanId, "the SpinApp apply is a child of the Device write").toBe(write.spanId);
    expect(discovery.attributes).toMatchObject({ "spindle.configuration": "otel-usb", "spindle.handler": "usb" });
    expect(apply.attributes).toMatchObject({
      "spindle.spinapp": `${ns.name}/${app.metadata!.name}`,
      "spindle.create": true,
    });
    // The reconcile that wrote it is a link (its own trace). It ends, and is exported, after the apply
    // it links from: wait for it.
    const reconcile = await eventually("the reconcile that applied it", async () =>
      spans().find((s) => s.name === "reconcile" && apply.links.some((l) => l.spanId === s.spanId)),
    );
    expect(reconcile.name).toBe("reconcile");

    expect(discovery.resource).toMatchObject({
      "service.name": "spindle-agent",
      "service.namespace": "spindle",
      "k8s.node.name": "edge-2",
      "k8s.pod.name": "spindle-agent-e2",
      "k8s.pod.uid": "uid-spindle-agent-e2",
      "k8s.namespace.name": "spindle-system",
      "telemetry.sdk.language": "nodejs",
    });
    expect(discovery.resource["service.version"]).toMatch(/^\d+\.\d+\.\d+/);
    expect(apply.resource).toMatchObject({
      "service.name": "spindle-controller",
      "k8s.node.name": "control-plane",
      "k8s.pod.name": "spindle-controller-0",
      "k8s.namespace.name": "spindle-system",
    });

    // The context is kept on the Device (the write span) and on the SpinApp (the apply span).
    expect(parseTraceparent(device.metadata!.annotations![TRACEPARENT])).toMatchObject({
      traceId: write.traceId,
      spanId: write.spanId,
    });
    const applied = await eventually("the SpinApp's trace annotation", async () => {
      const a = await appFor(name);
      return a?.metadata?.annotations?.[TRACEPARENT] ? a : undefined;
    });
    expect(parseTraceparent(applied.metadata!.annotations![TRACEPARENT])).toMatchObject({
      traceId: apply.traceId,
      spanId: apply.spanId,
    });
    // The trace ends when the app's Deployment is ready: a child of the apply, from the SpinApp's status.
    const ready = await eventually("the SpinApp ready span", async () =>
      spans().find((s) => s.name === "SpinApp ready" && s.attributes["spindle.device"] === name),
    );
    expect(ready.traceId).toBe(discovery.traceId);
    // A child of the apply whose context the SpinApp carried when it became ready (the first,
    // or a later apply in the same trace).
    const applies = spans().filter((s) => s.name === "apply SpinApp" && s.attributes["spindle.device"] === name);
    expect(
      applies.map((s) => s.spanId),
      "SpinApp ready is a child of an apply of it",
    ).toContain(ready.parentSpanId);
    expect(ready.attributes["spindle.ready_replicas"]).toBeGreaterThanOrEqual(1);
    process.stdout.write(`\n${formatTrace(spans(), discovery.traceId)}\n\n`);
  });

  it("the DeviceSpinApp's telemetry setting gives the Wasm app Spin's OTLP endpoint and its device as pod labels", async () => {
    const name = (await deviceOf("edge-2"))!.metadata!.name!;
    const app = (await appFor(name))!;
    const deployment = await eventually("the app's Deployment", () =>
      apps.readNamespacedDeployment({ name: app.metadata!.name!, namespace: ns.name }).catch(() => undefined),
    );
    expect(deployment.spec?.template.spec?.containers[0]?.env).toContainEqual({
      name: "OTEL_EXPORTER_OTLP_ENDPOINT",
      value: collector.endpoint,
    });
    expect(deployment.spec?.template.metadata?.labels).toMatchObject({
      "spindle.dev/device": name,
      "spindle.dev/device-spin-app": "reader",
    });
  });

  it("steady state: repeated discovery sets rewrite neither the Device nor the SpinApp; a change carries a new trace", async () => {
    await new Promise((r) => setTimeout(r, 1000)); // what is still on its way to the collector
    const before = (await deviceOf("edge-2"))!;
    const name = before.metadata!.name!;
    const appBefore = (await appFor(name))!;
    const spansBefore = spans().length;
    await new Promise((r) => setTimeout(r, 4000)); // four polls of an unchanged tree
    const after = (await deviceOf("edge-2"))!;
    // Spin-operator and the controller write statuses (resourceVersion moves); the spec and the
    // annotation do not, and neither the agent nor the controller wrote (every write has a span).
    expect(after.metadata!.generation, "no Device spec write without a change").toBe(before.metadata!.generation);
    expect(after.metadata!.annotations![TRACEPARENT]).toBe(before.metadata!.annotations![TRACEPARENT]);
    const appAfter = (await appFor(name))!;
    expect(appAfter.metadata!.annotations![TRACEPARENT]).toBe(appBefore.metadata!.annotations![TRACEPARENT]);
    expect(appAfter.metadata!.generation).toBe(appBefore.metadata!.generation);
    expect(
      spans()
        .slice(spansBefore)
        .filter(
          (s) =>
            s.resource["k8s.node.name"] === "edge-2" ||
            (s.name === "apply SpinApp" && s.attributes["spindle.device"] === name),
        )
        .map((s) => s.name),
      "unchanged sets make no spans and no writes",
    ).toEqual([]);

    // A changed device (new product string) is a new discovery, a Device write and a SpinApp update.
    await usb.unplug("1-1");
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "OT1", product: "Reader B" });
    const changed = await eventually("the Device updated", async () => {
      const d = await deviceOf("edge-2");
      return d && d.metadata!.annotations![TRACEPARENT] !== before.metadata!.annotations![TRACEPARENT] ? d : undefined;
    });
    expect(changed.metadata!.name).toBe(name);
    const trace = await eventually("the update's trace", async () => {
      const t = parseTraceparent(changed.metadata!.annotations![TRACEPARENT])!;
      const all = spans().filter((s) => s.traceId === t.traceId);
      return all.some((s) => s.name === "apply SpinApp" && s.attributes["spindle.create"] === false) ? all : undefined;
    });
    expect(trace.map((s) => s.name).sort()).toEqual(["apply Device", "apply SpinApp", "discovery set"]);
  });

  it("with no exporter configured: no trace annotation, no span, and no OpenTelemetry SDK module loaded", async () => {
    const device = await eventually("edge-1's Device", () => deviceOf("edge-1"));
    expect(device.metadata!.annotations?.[TRACEPARENT]).toBeUndefined();
    expect(spans().filter((s) => s.resource["k8s.node.name"] === "edge-1")).toEqual([]);
    const loaded = (await readFile(untracedLoads, "utf8")).split("\n").filter(Boolean);
    expect(
      loaded.some((u) => u.includes("/src/agent/device-publisher.ts")),
      "sanity: the recorder sees the agent's modules",
    ).toBe(true);
    // @opentelemetry/api alone may be there: prom-client requires it (exemplars), and it is a no-op.
    expect(loaded.filter((u) => u.includes("/@opentelemetry/") && !u.includes("/@opentelemetry/api/"))).toEqual([]);
  });
});

/** A module-resolution hook that appends every URL the process resolves to $SPINDLE_LOAD_LOG. */
async function loadRecorderDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "spindle-loads-"));
  await writeFile(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs";
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(process.env.SPINDLE_LOAD_LOG, result.url + "\\n");
  return result;
}\n`,
  );
  await writeFile(
    join(dir, "register.mjs"),
    `import { register } from "node:module";\nregister("./hooks.mjs", import.meta.url);\n`,
  );
  return dir;
}
