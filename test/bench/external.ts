/**
 * `npx tsx test/bench/external.ts` (part of `npm run bench`): how fast a change in an external
 * handler's list (Akri v0, over a unix socket) becomes a Device, against the same figure for a
 * built-in, event-driven handler (MQTT Home Assistant birth, through a real Mosquitto). One
 * production agent (the bundle, built here into a scratch directory) runs both, on a sandbox
 * control plane; samples of the two alternate, so both see the same load. Prints one JSON line
 * per figure; it passes or fails nothing.
 *
 * - external_list_to_device_p50/p99: the handler (grpc-js from discovery.proto, in this process)
 *   sends its list with one device more → that Device's ADDED event on a watch, with
 *   BENCH_EXTERNAL_DEVICES (default 100) devices in every list.
 * - external_list_to_device_gone_p50/p99: the list without it → the DELETED event (grace 0).
 * - mqtt_birth_to_device_p50/p99: a Home Assistant discovery message → the Device's ADDED event.
 * - external_adapter_list_to_set_p50/p99: the agent's adapter alone (registration server and
 *   ExternalHandler in this process, no apiserver): its share of the latency.
 *
 * BENCH_EXTERNAL_SAMPLES (default 50) sets the samples per figure.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, openSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { pino } from "pino";
import { startRegistrationServer } from "../../discovery-handlers/external/registration-server.js";
import { type RawDevice, RawHandler, registerWith } from "../../discovery-handlers/external/testing/raw-handler.js";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { build } from "../../scripts/build.js";
import { DEVICE_CONFIGURATIONS, ResourceClient } from "../../src/k8s/resources.js";
import { ControlPlane } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { percentile, report, sleep, until } from "./common.js";

const SAMPLES = Number(process.env.BENCH_EXTERNAL_SAMPLES ?? 50);
const BACKGROUND = Number(process.env.BENCH_EXTERNAL_DEVICES ?? 100);
const SCRATCH_DIST = resolve(import.meta.dirname, "../../node_modules/.cache/spindle-bench-external/dist");

const background: RawDevice[] = Array.from({ length: BACKGROUND }, (_, i) => ({
  id: `bg-${i}`,
  properties: { BENCH_ID: `bg-${i}`, BENCH_URL: `http://10.0.${i >> 8}.${i & 255}` },
}));
const measured = (k: number): RawDevice => ({ id: `m-${k}`, properties: { BENCH_ID: `m-${k}` } });

/** The adapter alone: list sent → the set yielded by ExternalHandler.discover, in this process. */
async function adapterLatency(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "spindle-bench-ext-"));
  const log = pino({ level: "silent" });
  const agent = await startRegistrationServer({
    socketPath: join(dir, "agent-registration.sock"),
    builtIn: new Set(),
    log,
  });
  const raw = await RawHandler.start(join(dir, "bench.sock"));
  const abort = new AbortController();
  try {
    await registerWith(join(dir, "agent-registration.sock"), { name: "bench", endpoint: raw.socket });
    let latest = new Set<string>();
    const done = (async () => {
      const handler = agent.registry.get("bench")!;
      for await (const set of handler.discover({ details: {}, properties: {}, signal: abort.signal, log }))
        latest = new Set(set.map((d) => d.id));
    })();
    raw.list(background);
    await until("the first set", () => latest.size === BACKGROUND);
    const added: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const t0 = performance.now();
      raw.list([...background, measured(k)]);
      await until(`m-${k}`, () => latest.has(`m-${k}`));
      added.push(performance.now() - t0);
    }
    report("external_adapter_list_to_set_p50", percentile(added, 50), "ms", { devices: BACKGROUND, n: SAMPLES });
    report("external_adapter_list_to_set_p99", percentile(added, 99), "ms", { devices: BACKGROUND, n: SAMPLES });
    abort.abort();
    await done;
  } finally {
    abort.abort();
    await raw.close();
    await agent.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Devices by BENCH_ID or MQTT_DEVICE_ID: when each was added and deleted. Resumes after a watch ends. */
async function watchDevices(kc: k8s.KubeConfig) {
  const added = new Map<string, number>();
  const deleted = new Map<string, number>();
  let resourceVersion: string | undefined;
  let stopped = false;
  let request: { abort(): void } | undefined;
  const start = async (): Promise<void> => {
    request = await new k8s.Watch(kc).watch(
      "/apis/spindle.dev/v1alpha1/devices",
      resourceVersion ? { resourceVersion, allowWatchBookmarks: true } : { allowWatchBookmarks: true },
      (type, obj: { metadata?: { resourceVersion?: string }; spec?: { properties?: Record<string, string> } }) => {
        resourceVersion = obj.metadata?.resourceVersion ?? resourceVersion;
        const p = obj.spec?.properties;
        const key = p?.BENCH_ID ?? p?.MQTT_DEVICE_ID;
        if (type === "BOOKMARK" || !key) return;
        if (type === "ADDED") added.set(key, Date.now());
        if (type === "DELETED") deleted.set(key, Date.now());
      },
      () => {
        if (!stopped) setTimeout(() => void start().catch(() => undefined), 100);
      },
    );
  };
  await start();
  return {
    added,
    deleted,
    stop: () => {
      stopped = true;
      request?.abort();
    },
  };
}

async function main(): Promise<void> {
  await adapterLatency();
  await build(SCRATCH_DIST);
  const bundle = resolve(SCRATCH_DIST, "cli.js");
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  const kc = cp.kubeConfig();
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "bench-external");
  const broker = await startMosquitto();
  const sim = new MqttDeviceSimulator({ url: broker.url });
  const dir = await mkdtemp(join(tmpdir(), "spindle-bench-ext-"));
  const registration = join(dir, "agent-registration.sock");
  const logFile = join(tmpdir(), "spindle-bench-external-agent.log");
  const logFd = openSync(logFile, "w");
  const port = await freePort();
  const agent: ChildProcess = spawn(
    process.execPath,
    [
      bundle,
      "agent",
      "--node",
      "edge-1",
      "--handlers",
      "mqtt",
      "--registration-socket",
      registration,
      "--http-address",
      `127.0.0.1:${port}`,
    ],
    {
      env: { ...process.env, KUBECONFIG: cp.kubeconfigPath, LOG_LEVEL: "warn", NODE_ENV: "production" },
      stdio: ["ignore", "ignore", logFd],
    },
  );
  closeSync(logFd);
  process.stderr.write(`[bench] agent logs to ${logFile}\n`);
  const raw = await RawHandler.start(join(dir, "bench.sock"));
  let devices: Awaited<ReturnType<typeof watchDevices>> | undefined;
  try {
    await until("the registration socket", () => existsSync(registration), 60_000);
    await registerWith(registration, { name: "bench-ext", endpoint: raw.socket, shared: true });
    const dc = (name: string, handler: string, details: Record<string, unknown>) =>
      configs.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name },
        spec: { discoveryHandler: { name: handler, discoveryDetails: details }, offlineGraceSeconds: 0 },
      } as never);
    devices = await watchDevices(kc);
    raw.list(background);
    await dc("bench-external", "bench-ext", {});
    await dc("bench-mqtt", "mqtt", { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } });
    await until("the background devices", () => background.every((d) => devices!.added.has(d.id)), 300_000);
    // The MQTT discovery subscribed (its first device seen) before anything is measured.
    await sim.homeAssistant({ id: "warmup", component: "sensor", manufacturer: "Bench" });
    await until("the MQTT warm-up device", () => devices!.added.has("warmup"));

    const external: number[] = [];
    const gone: number[] = [];
    const mqtt: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      let t0 = Date.now();
      raw.list([...background, measured(k)]);
      await until(`m-${k}`, () => devices!.added.has(`m-${k}`));
      external.push(devices.added.get(`m-${k}`)! - t0);
      await sleep(50);
      t0 = Date.now();
      raw.list(background);
      await until(`m-${k} gone`, () => devices!.deleted.has(`m-${k}`));
      gone.push(devices.deleted.get(`m-${k}`)! - t0);
      await sleep(50);
      const id = `mqtt_${k}`;
      t0 = Date.now();
      await sim.homeAssistant({ id, component: "sensor", manufacturer: "Bench" });
      await until(`MQTT ${id}`, () => devices!.added.has(id));
      mqtt.push(devices.added.get(id)! - t0);
      await sleep(50);
    }
    const extra = { devices: BACKGROUND, n: SAMPLES };
    report("external_list_to_device_p50", percentile(external, 50), "ms", extra);
    report("external_list_to_device_p99", percentile(external, 99), "ms", extra);
    report("external_list_to_device_gone_p50", percentile(gone, 50), "ms", extra);
    report("external_list_to_device_gone_p99", percentile(gone, 99), "ms", extra);
    report("mqtt_birth_to_device_p50", percentile(mqtt, 50), "ms", { n: SAMPLES, handler: "built-in mqtt" });
    report("mqtt_birth_to_device_p99", percentile(mqtt, 99), "ms", { n: SAMPLES, handler: "built-in mqtt" });
  } finally {
    devices?.stop();
    agent.kill("SIGTERM");
    await sleep(1000);
    await raw.close();
    await sim.close();
    await broker.stop();
    await cp.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
