/**
 * `npx tsx test/bench/usb.ts` (part of `npm run bench`): the agent at rest and the USB handler's
 * latency, on a sandbox control plane with real agent processes running the production bundle
 * (built here from the current sources into a scratch directory, so dist/ is left alone), a USB
 * fixture tree and a real Mosquitto. Prints one JSON line per figure; it passes or fails nothing.
 *
 * - usb_plug_to_device_p50/p99 and usb_unplug_to_device_gone_p50/p99 with 10, 100 and 1,000
 *   devices present: a device's entries renamed into the tree → its Device seen by a watch,
 *   and removed → the Device's DELETED event (offlineGraceSeconds 0). Goal: at 1,000 within 2×
 *   of 10.
 * - usb_handler_plug_to_set_p50/p99, usb_handler_unplug_to_set_p50/p99: the same, for the handler
 *   alone in this process (no apiserver): its share of the latency. BENCH_USB_HANDLER_ONLY=1
 *   stops after these.
 * - agent_cpu_rest_usb: CPU of the agent (% of one core over 60 s) with 1,000 USB devices and
 *   the default 5 s poll; agent_cpu_rest_mqtt: the same with 1,100 MQTT (Home Assistant)
 *   devices. Goal: ≤ 1 %.
 *
 * BENCH_USB_AGENT=<path/to/cli.js> runs that bundle instead (to measure an older build);
 * BENCH_USB_SAMPLES (default 30) sets the samples per latency figure, BENCH_USB_SIZES (default
 * 10,100,1000) the device counts, BENCH_USB_REST_SECONDS (default 60) the length of each rest
 * measurement, BENCH_USB_NODE_ARGS extra node flags for the agents.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { pino } from "pino";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { usbDetails } from "../../discovery-handlers/usb/details.js";
import { usbHandler } from "../../discovery-handlers/usb/handler.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { build } from "../../scripts/build.js";
import { DEVICE_CONFIGURATIONS, ResourceClient } from "../../src/k8s/resources.js";
import { ControlPlane } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { apiWrites, cpuSeconds, percentile, report, rssMiB, sleep, untilWith } from "./common.js";

const SIZES = (process.env.BENCH_USB_SIZES ?? "10,100,1000").split(",").map(Number);
const MQTT_DEVICES = 1100;
const SAMPLES = Number(process.env.BENCH_USB_SAMPLES ?? 30);
const REST_SECONDS = Number(process.env.BENCH_USB_REST_SECONDS ?? 60);
/** Extra node flags for the agents, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to see where their time goes. */
const NODE_ARGS = (process.env.BENCH_USB_NODE_ARGS ?? "").split(" ").filter(Boolean);
/** Inside the repository, so the bundle finds the native `usb` module in node_modules. */
const SCRATCH_DIST = resolve(import.meta.dirname, "../../node_modules/.cache/spindle-bench-usb/dist");

const until = untilWith({ timeoutMs: 300_000, everyMs: 5 });

/** Resolves once the agent has written nothing for `quietMs`: its queue and node status are done. */
async function quiet(port: number, quietMs = 5000): Promise<void> {
  let last = await apiWrites(port);
  let since = Date.now();
  await until(
    "the agent to go quiet",
    async () => {
      const now = await apiWrites(port);
      if (now !== last) {
        last = now;
        since = Date.now();
      }
      return Date.now() - since >= quietMs;
    },
    600_000,
  );
}

/** A production agent for one node and one handler; its warnings and errors go to a log file in tmpdir. */
function startAgent(bundle: string, node: string, handler: string, kubeconfig: string, httpPort: number) {
  const logFile = join(tmpdir(), `spindle-bench-usb-agent-${node}.log`);
  const log = openSync(logFile, "w");
  const child: ChildProcess = spawn(
    process.execPath,
    [...NODE_ARGS, bundle, "agent", "--node", node, "--handlers", handler, "--http-address", `127.0.0.1:${httpPort}`],
    {
      env: { ...process.env, KUBECONFIG: kubeconfig, LOG_LEVEL: "warn", NODE_ENV: "production" },
      stdio: ["ignore", "ignore", log],
    },
  );
  closeSync(log);
  process.stderr.write(`[bench] agent ${node} (${handler}) logs to ${logFile}\n`);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return {
    pid: () => child.pid!,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Agent CPU over REST_SECONDS, in % of one core. */
async function restCpu(pid: number): Promise<number> {
  const before = cpuSeconds(pid);
  await sleep(REST_SECONDS * 1000);
  return ((cpuSeconds(pid) - before) / REST_SECONDS) * 100;
}

/**
 * Devices by a key property, as a watch sees them: when each was added and deleted, and which are
 * there now. A watch that ends resumes from the last resourceVersion.
 */
async function watchDevices(kc: k8s.KubeConfig, key: (p: Record<string, string>) => string | undefined) {
  const added = new Map<string, number>();
  const deleted = new Map<string, number>();
  const present = new Set<string>();
  let resourceVersion: string | undefined;
  let stopped = false;
  let request: { abort(): void } | undefined;
  const start = async (): Promise<void> => {
    request = await new k8s.Watch(kc).watch(
      "/apis/spindle.dev/v1alpha1/devices",
      resourceVersion ? { resourceVersion, allowWatchBookmarks: true } : { allowWatchBookmarks: true },
      (type, obj: { metadata?: { resourceVersion?: string }; spec?: { properties?: Record<string, string> } }) => {
        resourceVersion = obj.metadata?.resourceVersion ?? resourceVersion;
        const k = obj.spec?.properties ? key(obj.spec.properties) : undefined;
        if (type === "BOOKMARK" || k === undefined) return;
        if (type === "DELETED") {
          present.delete(k);
          deleted.set(k, Date.now());
        } else {
          present.add(k);
          if (type === "ADDED") added.set(k, Date.now());
        }
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
    present,
    stop: () => {
      stopped = true;
      request?.abort();
    },
  };
}

/**
 * Background device `i`, on buses 1 to 10: a bus holds at most 127 devices (devnum is 7 bits), so
 * 100 a bus, at ports <bus>-1.1 ... <bus>-10.10. The measured device has bus 20 to itself.
 */
const backgroundPort = (i: number) => {
  const bus = 1 + Math.floor(i / 100);
  const j = i % 100;
  return `${bus}-${1 + Math.floor(j / 10)}.${1 + (j % 10)}`;
};
const MEASURED_PORT = "20-1";

/**
 * The handler alone, in this process: plug → a set with the device, unplug → a set without it,
 * with `size` devices present. No apiserver, so this is the handler's share of the latency.
 */
async function handlerLatency(size: number): Promise<void> {
  const tree = await UsbFixture.create();
  const abort = new AbortController();
  let latest: Set<string> = new Set();
  const silent = pino({ level: "silent" });
  try {
    for (let i = 0; i < size; i++) {
      await tree.plug({ port: backgroundPort(i), vendorId: "0403", productId: "6001", serial: `BG${i}` });
    }
    const details = usbDetails.parse({ sysfsRoot: tree.sysfsRoot });
    const done = (async () => {
      for await (const set of usbHandler.discover({ details, properties: {}, signal: abort.signal, log: silent })) {
        latest = new Set(set.map((d) => d.properties.USB_SERIAL ?? ""));
      }
    })();
    await until("the first set", () => latest.size >= size);
    const plugged: number[] = [];
    const gone: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const serial = `H${k}`;
      let t0 = performance.now();
      await tree.plug({ port: MEASURED_PORT, vendorId: "2341", productId: "0043", serial });
      await until(serial, () => latest.has(serial));
      plugged.push(performance.now() - t0);
      await sleep(50);
      t0 = performance.now();
      await tree.unplug(MEASURED_PORT);
      await until(`${serial} gone`, () => !latest.has(serial));
      gone.push(performance.now() - t0);
      await sleep(50);
    }
    report("usb_handler_plug_to_set_p50", percentile(plugged, 50), "ms", { devices: size, n: SAMPLES });
    report("usb_handler_plug_to_set_p99", percentile(plugged, 99), "ms", { devices: size, n: SAMPLES });
    report("usb_handler_unplug_to_set_p50", percentile(gone, 50), "ms", { devices: size, n: SAMPLES });
    report("usb_handler_unplug_to_set_p99", percentile(gone, 99), "ms", { devices: size, n: SAMPLES });
    abort.abort();
    await done;
  } finally {
    abort.abort();
    await tree.dispose();
  }
}

async function main(): Promise<void> {
  // 0. The handler's own share, before any process of the sandbox competes for the cores.
  for (const size of SIZES) await handlerLatency(size);
  if (process.env.BENCH_USB_HANDLER_ONLY) return;
  let bundle = process.env.BENCH_USB_AGENT;
  if (!bundle) {
    await build(SCRATCH_DIST);
    bundle = resolve(SCRATCH_DIST, "cli.js");
  }
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  const kc = cp.kubeConfig();
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "bench-usb");
  const usb = await UsbFixture.create();
  const broker = await startMosquitto();
  const sim = new MqttDeviceSimulator({ url: broker.url });
  const agents: ReturnType<typeof startAgent>[] = [];
  const watches: { stop(): void }[] = [];
  const cleanup = async () => {
    for (const w of watches) w.stop();
    await Promise.allSettled(agents.map((a) => a.stop()));
    await sim.close();
    await broker.stop();
    await usb.dispose();
    await cp.stop();
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => void cleanup().finally(() => process.exit(130)));
  }
  try {
    const usbDevices = await watchDevices(kc, (p) => p.USB_SERIAL);
    watches.push(usbDevices);
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "bench-usb" },
      // Default details (5 s poll); no grace, so an unplug deletes the Device at once.
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot } },
        offlineGraceSeconds: 0,
      },
    } as never);
    const usbPort = await freePort();
    const usbAgent = startAgent(bundle, "edge-1", "usb", cp.kubeconfigPath, usbPort);
    agents.push(usbAgent);

    // 1. Latency of one device with 10, 100, 1,000 others present.
    let background = 0;
    for (const size of SIZES) {
      for (; background < size; background++) {
        await usb.plug({
          port: backgroundPort(background),
          vendorId: "0403",
          productId: "6001",
          serial: `BG${background}`,
          manufacturer: "FTDI",
          product: "FT232R USB UART",
        });
      }
      await until(
        () => `${size} USB Devices (${usbDevices.present.size} so far)`,
        () => usbDevices.present.size >= size,
      );
      await quiet(usbPort);
      const plugged: number[] = [];
      const gone: number[] = [];
      for (let k = 0; k < SAMPLES; k++) {
        const serial = `LAT${size}x${k}`;
        let t0 = Date.now();
        await usb.plug({ port: MEASURED_PORT, vendorId: "2341", productId: "0043", serial, product: "Uno" });
        await until(`Device for ${serial}`, () => usbDevices.added.has(serial), 60_000);
        plugged.push(usbDevices.added.get(serial)! - t0);
        await sleep(100);
        t0 = Date.now();
        await usb.unplug(MEASURED_PORT);
        await until(`Device ${serial} gone`, () => usbDevices.deleted.has(serial), 60_000);
        gone.push(usbDevices.deleted.get(serial)! - t0);
        await sleep(100);
      }
      for (const [name, values] of [
        ["usb_plug_to_device", plugged],
        ["usb_unplug_to_device_gone", gone],
      ] as const) {
        report(`${name}_p50`, percentile(values, 50), "ms", { devices: size, n: values.length });
        report(`${name}_p99`, percentile(values, 99), "ms", { devices: size, n: values.length });
      }
    }

    // 2. At rest with 1,000 USB devices.
    await quiet(usbPort);
    report("agent_cpu_rest_usb", await restCpu(usbAgent.pid()), "% of one core", {
      devices: background,
      seconds: REST_SECONDS,
      poll_seconds: 5,
    });
    report("agent_rss_usb", rssMiB(usbAgent.pid()), "MiB", { devices: background });
    await usbAgent.stop();

    // 3. At rest with 1,100 MQTT devices (retained Home Assistant configs), on another node.
    const mqttDevices = await watchDevices(kc, (p) => p.MQTT_DEVICE_ID);
    watches.push(mqttDevices);
    const client = await sim.connectClient();
    for (let i = 0; i < MQTT_DEVICES; i++) {
      const id = `rest_${i}`;
      await client.publishAsync(
        `homeassistant/sensor/${id}/config`,
        JSON.stringify({ unique_id: id, name: id, state_topic: `sim/${id}/state`, device: { identifiers: [id] } }),
        { retain: true, qos: 0 },
      );
    }
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "bench-mqtt" },
      spec: {
        discoveryHandler: {
          name: "mqtt",
          discoveryDetails: { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
        },
        offlineGraceSeconds: 60,
      },
    } as never);
    const mqttPort = await freePort();
    const mqttAgent = startAgent(bundle, "edge-2", "mqtt", cp.kubeconfigPath, mqttPort);
    agents.push(mqttAgent);
    await until(`${MQTT_DEVICES} MQTT Devices`, () => mqttDevices.present.size >= MQTT_DEVICES, 900_000);
    await quiet(mqttPort);
    report("agent_cpu_rest_mqtt", await restCpu(mqttAgent.pid()), "% of one core", {
      devices: MQTT_DEVICES,
      seconds: REST_SECONDS,
    });
    report("agent_rss_mqtt", rssMiB(mqttAgent.pid()), "MiB", { devices: MQTT_DEVICES });
  } finally {
    await cleanup();
  }
}

await main();
process.exit(0);
