/**
 * `npm run bench`: measures Spindle on the sandbox control plane with real agent and controller
 * processes, a real Mosquitto and USB fixture trees. Prints one JSON line per figure; it passes or
 * fails nothing. BENCH_DEVICES (default 1000) sets the size of the scale runs. The processes run
 * as the chart runs them: the production build (dist/, built first) with the chart's NODE_OPTIONS
 * and the image's MALLOC_ARENA_MAX.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { parse } from "yaml";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { build } from "../../scripts/build.js";
import { Api } from "../../src/k8s/api.js";
import { DEVICE_CONFIGURATIONS, DEVICE_SPIN_APPS, ResourceClient } from "../../src/k8s/resources.js";
import { applyObject } from "../../src/sandbox/client-node.js";
import { ControlPlane, EXECUTOR, spinAppExecutor } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { cpuSeconds, IMAGE_ENV, metric, percentile, reportWith, rssMiB, sleep, untilWith } from "./common.js";

const SCALE = Number(process.env.BENCH_DEVICES ?? 1000);
const LARGE = Number(process.env.BENCH_LARGE_DEVICES ?? 10000);
const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");

// This bench's lines keep one decimal and no load1, so runs compare with the recorded figures.
const report = reportWith({ decimals: 1, load1: false });
const until = untilWith({ timeoutMs: 600_000, everyMs: 20 });

/** V8 heap in use, from the process's own /metrics. */
async function heapMiB(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = /^spindle_process_nodejs_heap_size_used_bytes (\S+)/m.exec(text);
  return Number(m?.[1] ?? Number.NaN) / 1024 / 1024;
}

/**
 * Spindle's own API writes so far, from a process's /metrics. The sum of apiWritesBy, not
 * common.ts's apiWrites (any label set), so every write figure here counts the same series.
 */
async function apiWrites(port: number): Promise<number> {
  return Object.values(await apiWritesBy(port)).reduce((a, b) => a + b, 0);
}

/** The same, by resource and verb ("devicespinapps/status apply": 3, ...). */
async function apiWritesBy(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^spindle_api_writes_total\{resource="([^"]+)",verb="([^"]+)"\} (\d+)/gm)) {
    out[`${m[1]} ${m[2]}`] = Number(m[3]);
  }
  return out;
}

function difference(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(
    Object.entries(after)
      .map(([k, v]) => [k, v - (before[k] ?? 0)])
      .filter(([, v]) => v !== 0),
  );
}

async function readySpinApps(kc: k8s.KubeConfig): Promise<number> {
  const list = (await kc.makeApiClient(k8s.CustomObjectsApi).listNamespacedCustomObject({
    group: "core.spinkube.dev",
    version: "v1alpha1",
    plural: "spinapps",
    namespace: "bench",
  })) as { items: { status?: { readyReplicas?: number } }[] };
  return list.items.filter((s) => (s.status?.readyReplicas ?? 0) >= 1).length;
}

/** The chart's V8 flags per command (values.yaml `<command>.nodeOptions`). */
const CHART_VALUES = parse(
  readFileSync(resolve(import.meta.dirname, "../../charts/spindle/values.yaml"), "utf8"),
) as Record<string, { nodeOptions?: string }>;

/** Where each process's warnings and errors go: a process that dies says why there. */
const LOG_DIR = mkdtempSync(join(tmpdir(), "spindle-bench-"));

/** The node process behind `spindle` (bin/spindle.js runs the build in the same process). */
function spindle(args: string[], kubeconfig: string): ChildProcess {
  const log = openSync(join(LOG_DIR, `${[args[0], args[2]].filter(Boolean).join("-")}-${Date.now()}.log`), "w");
  return spawn(process.execPath, [BIN, ...args], {
    env: {
      ...process.env,
      KUBECONFIG: kubeconfig,
      LOG_LEVEL: "warn",
      NODE_ENV: "production",
      NODE_OPTIONS: CHART_VALUES[args[0]!]?.nodeOptions ?? "",
      ...IMAGE_ENV,
    },
    stdio: ["ignore", log, log],
  });
}

/** TLS connections a process opened to the apiserver so far (its /metrics). */
async function connectionsOpened(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/^spindle_api_connections_opened (\S+)/m.exec(text)?.[1] ?? Number.NaN);
}

/**
 * Watches a collection, recording when each object was first seen and counting every event. A
 * watch that ends (the apiserver closes watches after a while) resumes from the last
 * resourceVersion, so no event is missed or counted twice.
 */
async function watchFirstSeen(
  kc: k8s.KubeConfig,
  path: string,
  key: (o: Record<string, unknown>) => string | undefined,
) {
  const seen = new Map<string, number>();
  let events = 0;
  let resourceVersion: string | undefined;
  let stopped = false;
  let request: { abort(): void } | undefined;
  const start = async (): Promise<void> => {
    request = await new k8s.Watch(kc).watch(
      path,
      resourceVersion ? { resourceVersion, allowWatchBookmarks: true } : { allowWatchBookmarks: true },
      (type, obj: Record<string, unknown>) => {
        resourceVersion =
          (obj.metadata as { resourceVersion?: string } | undefined)?.resourceVersion ?? resourceVersion;
        if (type === "BOOKMARK") return;
        events++;
        const k = key(obj);
        if (k && !seen.has(k)) seen.set(k, Date.now());
      },
      () => {
        if (!stopped) setTimeout(() => void start().catch(() => undefined), 100);
      },
    );
  };
  await start();
  return {
    seen,
    events: () => events,
    stop: () => {
      stopped = true;
      request?.abort();
    },
  };
}

async function main(): Promise<void> {
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  const kc = cp.kubeConfig();
  const broker = await startMosquitto();
  const sim = new MqttDeviceSimulator({ url: broker.url });
  const usb = await UsbFixture.create();
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "bench");
  const dsas = new ResourceClient(kc, DEVICE_SPIN_APPS, "bench");
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const children: ChildProcess[] = [];
  const cleanup = async () => {
    for (const c of children) c.kill("SIGTERM");
    await sleep(1000);
    await sim.close();
    await broker.stop();
    await usb.dispose();
    await cp.stop();
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      void cleanup().finally(() => process.exit(130));
    });
  }
  try {
    await core.createNamespace({ body: { metadata: { name: "bench" } } });
    await applyObject(kc, spinAppExecutor("bench"), "bench");
    const agentPort = await freePort();
    const controllerPort = await freePort();
    const agent = spindle(["agent", "--node", "edge-1", "--http-address", `127.0.0.1:${agentPort}`], cp.kubeconfigPath);
    const controller = spindle(["controller", "--http-address", `127.0.0.1:${controllerPort}`], cp.kubeconfigPath);
    children.push(agent, controller);
    const dc = (name: string, handler: string, details: Record<string, unknown>, capacity = 1) =>
      configs.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name },
        spec: { discoveryHandler: { name: handler, discoveryDetails: details }, capacity, offlineGraceSeconds: 60 },
      } as never);
    await dc("bench-usb", "usb", { sysfsRoot: usb.sysfsRoot });
    await dc("bench-mqtt", "mqtt", { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } });
    await dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "bench-app", namespace: "bench" },
      spec: {
        deviceConfiguration: "bench-mqtt",
        template: { spec: { image: "ghcr.io/acme/app:v1", executor: EXECUTOR, replicas: 1 } },
      },
    } as never);

    const devices = await watchFirstSeen(kc, "/apis/spindle.dev/v1alpha1/devices", (o) => {
      const p = (o.spec as { properties?: Record<string, string> } | undefined)?.properties;
      return p?.MQTT_DEVICE_ID ?? p?.USB_SERIAL;
    });
    const spinApps = await watchFirstSeen(kc, "/apis/core.spinkube.dev/v1alpha1/namespaces/bench/spinapps", (o) => {
      const vars = (o.spec as { variables?: { name: string; value?: string }[] }).variables ?? [];
      return vars.find((v) => v.name === "mqtt_device_id")?.value;
    });
    await sleep(3000); // agent and controller up

    // 1. Latency, one device at a time: USB plug -> Device; MQTT birth -> Device -> SpinApp.
    const usbLatency: number[] = [];
    for (let i = 0; i < 50; i++) {
      const serial = `LAT${i}`;
      const t0 = Date.now();
      await usb.plug({ port: `1-${i + 1}`, vendorId: "0403", productId: "6001", serial });
      await until(`USB ${serial}`, () => devices.seen.has(serial));
      usbLatency.push(devices.seen.get(serial)! - t0);
    }
    report("usb_plug_to_device_p50", percentile(usbLatency, 50), "ms", { n: usbLatency.length });
    report("usb_plug_to_device_p99", percentile(usbLatency, 99), "ms", { n: usbLatency.length });

    const mqttLatency: number[] = [];
    const appLatency: number[] = [];
    for (let i = 0; i < 50; i++) {
      const id = `lat_${i}`;
      const t0 = Date.now();
      await sim.homeAssistant({ id, component: "sensor", manufacturer: "Bench" });
      await until(`MQTT ${id}`, () => devices.seen.has(id));
      await until(`SpinApp for ${id}`, () => spinApps.seen.has(id));
      mqttLatency.push(devices.seen.get(id)! - t0);
      appLatency.push(spinApps.seen.get(id)! - t0);
    }
    report("mqtt_birth_to_device_p50", percentile(mqttLatency, 50), "ms", { n: 50 });
    report("mqtt_birth_to_device_p99", percentile(mqttLatency, 99), "ms", { n: 50 });
    report("device_appears_to_spinapp_p50", percentile(appLatency, 50), "ms", {
      n: 50,
      includes: "agent + controller",
    });
    report("device_appears_to_spinapp_p99", percentile(appLatency, 99), "ms", {
      n: 50,
      includes: "agent + controller",
    });

    // 2. Raw create rate of this apiserver, for comparison: SCALE ConfigMaps, 16 in parallel.
    const rawStart = Date.now();
    const queue = Array.from({ length: SCALE }, (_, i) => i);
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
          await core.createNamespacedConfigMap({
            namespace: "bench",
            body: { metadata: { name: `raw-${i}` }, data: { i: String(i) } },
          });
        }
      }),
    );
    const rawRate = SCALE / ((Date.now() - rawStart) / 1000);
    report("apiserver_raw_creates", rawRate, "objects/s", { n: SCALE });

    // 3. Scale: SCALE MQTT devices appear at once -> SCALE Devices -> SCALE SpinApps.
    const before = spinApps.seen.size;
    const scaleStart = Date.now();
    const client = await sim.connectClient();
    for (let i = 0; i < SCALE; i++) {
      const id = `dev_${i}`;
      await client.publishAsync(
        `homeassistant/sensor/${id}/config`,
        JSON.stringify({
          unique_id: id,
          name: id,
          state_topic: `sim/${id}/state`,
          device: { identifiers: [id], manufacturer: "Bench" },
        }),
        { retain: true, qos: 0 },
      );
    }
    await until(`${SCALE} SpinApps`, () => spinApps.seen.size >= before + SCALE, 900_000);
    const seconds = (Date.now() - scaleStart) / 1000;
    // Each bound device takes three writes: Device apply, Device status (slot), SpinApp apply.
    report("devices_to_spinapps_cold", SCALE / seconds, "devices/s", {
      n: SCALE,
      seconds: Math.round(seconds),
      ratio_of_raw_creates: Math.round(((SCALE * 3) / seconds / rawRate) * 100) / 100,
    });
    report("agent_tls_connections", await connectionsOpened(agentPort), "connections", {
      since: "start, through the cold start",
    });
    report("controller_tls_connections", await connectionsOpened(controllerPort), "connections", {
      since: "start, through the cold start",
    });
    report("agent_rss", rssMiB(agent.pid!), "MiB", {
      devices: SCALE + 100,
      heap_used_mib: Math.round(await heapMiB(agentPort)),
    });
    report("controller_rss", rssMiB(controller.pid!), "MiB", {
      devices: SCALE + 100,
      spinApps: SCALE + 50,
      heap_used_mib: Math.round(await heapMiB(controllerPort)),
    });

    // 4. Steady state: no device changes for 60 s -> Spindle's own API writes (the agent's and
    // controller's spindle_api_writes_total) and agent CPU. spin-operator may still be rolling
    // out Deployments and updating SpinApp status; its writes are not Spindle's.
    await sleep(5000);
    const agentBefore = await apiWritesBy(agentPort);
    const controllerBefore = await apiWritesBy(controllerPort);
    const cpuBefore = cpuSeconds(agent.pid!);
    await sleep(60_000);
    const byResource = {
      ...difference(await apiWritesBy(agentPort), agentBefore),
      ...difference(await apiWritesBy(controllerPort), controllerBefore),
    };
    const steady = Object.values(byResource).reduce((a, b) => a + b, 0);
    report("steady_state_writes", steady, "writes/min", {
      by: byResource,
      ready_spinapps: await readySpinApps(kc),
      note: "devicespinapps/status writes follow SpinApp readiness, which spin-operator and KWOK are still rolling out",
    });
    report("agent_cpu_steady", ((cpuSeconds(agent.pid!) - cpuBefore) / 60) * 100, "% of one core", {
      devices: SCALE + 100,
    });
    // RSS again after the quiet minute: steady state, not the tail of the cold start.
    report("agent_rss_steady", rssMiB(agent.pid!), "MiB", {
      devices: SCALE + 100,
      heap_used_mib: Math.round(await heapMiB(agentPort)),
    });
    report("controller_rss_steady", rssMiB(controller.pid!), "MiB", {
      devices: SCALE + 100,
      spinApps: SCALE + 50,
      heap_used_mib: Math.round(await heapMiB(controllerPort)),
    });

    devices.stop();
    spinApps.stop();
  } finally {
    await cleanup();
  }
}

/** The agent's own count of devices it publishes for one configuration (its /metrics). */
async function publishedBy(port: number, configuration: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = new RegExp(`^spindle_devices\\{configuration="${configuration}"\\} (\\d+)`, "m").exec(text);
  return Number(m?.[1] ?? 0);
}

/**
 * Memory and steady state at LARGE devices, on a fresh sandbox: one MQTT configuration and no
 * DeviceSpinApp (a 2-core sandbox cannot run 10,000 SpinApps' Deployments and pods as well).
 */
async function largeRun(): Promise<void> {
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  // Subscribing delivers all 10,000 retained configs at once; Mosquitto's default queue (1,000
  // messages beyond those in flight, per client) would drop the rest (README: MQTT brokers).
  // Saved as a broker is in production (every 30 min), not after every change as the test
  // broker is: saving 10,000 retained messages per PUBACK kept Mosquitto from answering PINGREQs
  // for 15 s and more, and the agent's session timed out every 46 s.
  const broker = await startMosquitto({
    config: ["max_queued_messages 0", "autosave_on_changes false", "autosave_interval 1800"],
  });
  const sim = new MqttDeviceSimulator({ url: broker.url });
  const children: ChildProcess[] = [];
  try {
    const agentPort = await freePort();
    const controllerPort = await freePort();
    const idlePort = await freePort();
    const agent = spindle(["agent", "--node", "edge-1", "--http-address", `127.0.0.1:${agentPort}`], cp.kubeconfigPath);
    const controller = spindle(["controller", "--http-address", `127.0.0.1:${controllerPort}`], cp.kubeconfigPath);
    // An agent whose node publishes none of the cluster's Devices (it runs no MQTT discovery).
    const idleAgent = spindle(
      ["agent", "--node", "edge-2", "--handlers", "usb", "--http-address", `127.0.0.1:${idlePort}`],
      cp.kubeconfigPath,
    );
    children.push(agent, controller, idleAgent);
    const client = await sim.connectClient();
    for (let i = 0; i < LARGE; i++) {
      const id = `big_${i}`;
      await client.publishAsync(
        `homeassistant/sensor/${id}/config`,
        JSON.stringify({ unique_id: id, state_topic: `sim/${id}/state` }),
        { retain: true, qos: 1 },
      );
    }
    await new ResourceClient(cp.kubeConfig(), DEVICE_CONFIGURATIONS, "bench").apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "bench-large" },
      spec: {
        discoveryHandler: {
          name: "mqtt",
          discoveryDetails: { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
        },
        offlineGraceSeconds: 60,
      },
    } as never);
    const started = Date.now();
    await until(
      `${LARGE} Devices published`,
      async () => (await publishedBy(agentPort, "bench-large").catch(() => 0)) >= LARGE,
      1_800_000,
      1000,
    );
    // Every Device in the cluster (a one-item list's remainingItemCount: no 10,000-item reads).
    const devicesInCluster = async () => {
      const page = await Api.for(cp.kubeConfig()).request<{
        items: unknown[];
        metadata: { remainingItemCount?: number };
      }>("GET", "/apis/spindle.dev/v1alpha1/devices", { query: { limit: 1 } });
      return page.items.length + (page.metadata.remainingItemCount ?? 0);
    };
    await until(
      "the agent's queue to drain",
      async () => (await devicesInCluster().catch(() => 0)) >= LARGE,
      1_800_000,
      1000,
    );
    report("agent_publish_large", LARGE / ((Date.now() - started) / 1000), "devices/s", {
      n: LARGE,
      note: "retained configs already on the broker",
    });
    await sleep(20_000);
    report("agent_rss_large", rssMiB(agent.pid!), "MiB", {
      devices: LARGE,
      heap_used_mib: Math.round(await heapMiB(agentPort)),
    });
    report("controller_rss_large", rssMiB(controller.pid!), "MiB", {
      devices: LARGE,
      heap_used_mib: Math.round(await heapMiB(controllerPort)),
    });
    report("agent_rss_no_own_devices_large", rssMiB(idleAgent.pid!), "MiB", {
      cluster_devices: LARGE,
      heap_used_mib: Math.round(await heapMiB(idlePort)),
    });
    const before = (await apiWrites(agentPort)) + (await apiWrites(controllerPort));
    await sleep(60_000);
    const steady = (await apiWrites(agentPort)) + (await apiWrites(controllerPort)) - before;
    report("steady_state_writes_large", steady, "writes/min", { devices: LARGE });

    // A full write burst: one DeviceSpinApp binds every Device (a slot each, a SpinApp each).
    // spin-operator is stopped first: 10,000 Deployments and pods do not fit a 2-core sandbox,
    // and the controller's writes are the same without them (the sandbox runs no webhooks).
    await cp.stopComponent("spin-operator");
    const kc = cp.kubeConfig();
    await kc.makeApiClient(k8s.CoreV1Api).createNamespace({ body: { metadata: { name: "bench" } } });
    await new ResourceClient(kc, DEVICE_SPIN_APPS, "bench").apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "bench-burst", namespace: "bench" },
      spec: {
        deviceConfiguration: "bench-large",
        template: { spec: { image: "ghcr.io/acme/app:v1", executor: EXECUTOR, replicas: 1 } },
      },
    } as never);
    const burstStart = Date.now();
    const controllerWrites = await apiWrites(controllerPort);
    let peak = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssMiB(controller.pid!));
    }, 500);
    await until(
      `${LARGE} SpinApps and slots written`,
      async () => (await apiWrites(controllerPort)) - controllerWrites >= 2 * LARGE,
      1_800_000,
      1000,
    );
    const written = Date.now();
    report("controller_burst_large", LARGE / ((written - burstStart) / 1000), "devices bound/s", {
      n: LARGE,
      writes: (await apiWrites(controllerPort)) - controllerWrites,
    });
    await sleep(20_000);
    const at20 = rssMiB(controller.pid!);
    // Caught up: the echo of the writes (20,000 watch events) planned, no reconcile for 5 s; then
    // the settled collection (2 s after the last work).
    let reconciles = await metric(controllerPort, "spindle_reconcile_duration_seconds_count");
    let quietSince = Date.now();
    while (Date.now() - quietSince < 5000) {
      await sleep(500);
      const now = await metric(controllerPort, "spindle_reconcile_duration_seconds_count");
      if (now !== reconciles) quietSince = Date.now();
      reconciles = now;
    }
    await sleep(3000);
    clearInterval(sampler);
    report("controller_rss_after_burst_large", rssMiB(controller.pid!), "MiB", {
      devices: LARGE,
      spinApps: LARGE,
      heap_used_mib: Math.round(await heapMiB(controllerPort)),
      caught_up_s: Math.round((Date.now() - written) / 1000),
      rss_20s_after_writes_mib: Math.round(at20),
      peak_rss_mib: Math.round(peak),
    });
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await sleep(1000);
    await sim.close();
    await broker.stop();
    await cp.stop();
  }
}

// `tsx test/bench/bench.ts large` runs only the 10,000-device part.
process.stderr.write(`bench: agent and controller logs in ${LOG_DIR}\n`);
await build();
if (!process.argv.includes("large")) await main();
if (LARGE > 0) await largeRun();
process.exit(0);
