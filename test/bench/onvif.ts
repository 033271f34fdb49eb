/**
 * `npx tsx test/bench/onvif.ts`: the ONVIF handler on its own sandbox control plane, with a real
 * agent process and fake cameras (all in this process) on 127.77.x.y, multicast over loopback.
 * Prints one JSON line per figure; it passes or fails nothing.
 *
 * - onvif_hello_to_device_p50/p99: a camera's Hello → its Device seen by a watch (target ≤ 250 ms);
 *   each sample includes the handler's reads of the camera (5-6 SOAP calls) and the apply.
 * - onvif_cold_start_50_cameras: agent process spawned → all 50 cameras published as Devices.
 * - onvif_agent_rss_*: VmRSS of the agent process, idle and with 50 and 200 cameras.
 *
 * Every configuration is narrowed to a scope unique to this run, so cameras of other processes
 * on this machine's loopback do not count.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import * as k8s from "@kubernetes/client-node";
import { FakeCamera, fakeUuid } from "../../discovery-handlers/onvif/fake-camera.js";
import { DEVICE_CONFIGURATIONS, ResourceClient } from "../../src/k8s/resources.js";
import { ControlPlane } from "../../src/sandbox/control-plane.js";
import { percentile, reportWith, rssMiB, sleep, untilWith } from "./common.js";

const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");
const SCOPE = `onvif://www.onvif.org/location/bench-${randomBytes(4).toString("hex")}`;
const COLD = 50;
const LATENCY = 50;
const TOTAL = 200;

// This bench's lines keep one decimal, so runs compare with the recorded figures.
const report = reportWith({ decimals: 1 });
const until = untilWith({ timeoutMs: 120_000, everyMs: 5 });

/** A loopback address of its own for camera `i` (127.77.0.1 ... 127.77.0.250, 127.77.1.1 ...). */
const cameraIp = (i: number) => `127.77.${Math.floor(i / 250)}.${(i % 250) + 1}`;

/** `spindle agent` with info logs parsed, to know when its discovery started. */
function agent(node: string, kubeconfig: string) {
  const child: ChildProcess = spawn(process.execPath, [BIN, "agent", "--node", node, "--handlers", "onvif"], {
    env: { ...process.env, KUBECONFIG: kubeconfig, LOG_LEVEL: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const marks = new Map<string, number>();
  const tail: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (line) => {
    tail.push(line);
    if (tail.length > 20) tail.shift();
    try {
      const entry = JSON.parse(line) as { msg?: string; level?: number };
      if (entry.msg && !marks.has(entry.msg)) marks.set(entry.msg, Date.now());
      if ((entry.level ?? 0) >= 50) process.stderr.write(`[agent ${node}] ${line}\n`);
    } catch {
      process.stderr.write(`[agent ${node}] ${line}\n`);
    }
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return {
    child,
    marks,
    tail,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function main(): Promise<void> {
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  const kc = cp.kubeConfig();
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "bench");
  const cameras: FakeCamera[] = [];
  const agents: ReturnType<typeof agent>[] = [];
  const seen = new Map<string, number>();
  let watch: { abort(): void } | undefined;
  try {
    watch = await new k8s.Watch(kc).watch(
      "/apis/spindle.dev/v1alpha1/devices",
      {},
      (type, obj: { spec?: { properties?: Record<string, string> } }) => {
        const uuid = obj.spec?.properties?.ONVIF_DEVICE_UUID;
        if (type === "ADDED" && uuid && !seen.has(uuid)) seen.set(uuid, Date.now());
      },
      () => undefined,
    );
    const camera = async (hello: boolean) => {
      const cam = await FakeCamera.start({
        uuid: fakeUuid(),
        ip: cameraIp(cameras.length),
        interface: "127.0.0.1",
        scopes: [SCOPE, "onvif://www.onvif.org/type/video_encoder", "onvif://www.onvif.org/Profile/Streaming"],
        mac: `02:77:00:00:${(cameras.length >> 8).toString(16).padStart(2, "0")}:${(cameras.length & 255).toString(16).padStart(2, "0")}`,
        hello,
      });
      cameras.push(cam);
      return cam;
    };

    // 0. An idle agent (no configuration yet) for the baseline RSS.
    const idle = agent("edge-2", cp.kubeconfigPath);
    agents.push(idle);
    await until("the idle agent to start", () => idle.marks.has("agent started"), 60_000);
    await sleep(3000);
    report("onvif_agent_rss_idle", rssMiB(idle.child.pid!), "MiB", { cameras: 0 });
    await idle.stop();
    agents.splice(agents.indexOf(idle), 1);

    // 1. Cold start: 50 cameras already there, the configuration applied, then the agent starts.
    for (let i = 0; i < COLD; i++) await camera(false);
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "bench-onvif" },
      // Default probe window and timeouts; one probe round per hour, so later cameras count only by Hello.
      spec: {
        discoveryHandler: {
          name: "onvif",
          discoveryDetails: {
            interface: "127.0.0.1",
            probeIntervalSeconds: 3600,
            scopes: { action: "Include", items: [SCOPE] },
          },
        },
        offlineGraceSeconds: 60,
      },
    } as never);
    const spawnedAt = Date.now();
    const edge1 = agent("edge-1", cp.kubeconfigPath);
    agents.push(edge1);
    await until(`${COLD} cold-start Devices`, () => cameras.every((c) => seen.has(c.id)));
    const lastSeen = Math.max(...cameras.map((c) => seen.get(c.id)!));
    const discoveryStarted = edge1.marks.get("discovery started");
    report("onvif_cold_start_50_cameras", lastSeen - spawnedAt, "ms", {
      n: COLD,
      from: "agent process spawned",
      discovery_started_after_ms: discoveryStarted === undefined ? null : discoveryStarted - spawnedAt,
      first_device_after_ms: Math.min(...cameras.map((c) => seen.get(c.id)!)) - spawnedAt,
    });
    await sleep(3000);
    report("onvif_agent_rss_50_cameras", rssMiB(edge1.child.pid!), "MiB", { cameras: COLD });

    // 2. Hello → Device, one camera at a time (the camera listens before it says Hello).
    const latency: number[] = [];
    for (let i = 0; i < LATENCY; i++) {
      const cam = await camera(false);
      const t0 = Date.now();
      await cam.sendHello();
      await until(`Device of camera ${cam.id}`, () => seen.has(cam.id), 30_000);
      latency.push(seen.get(cam.id)! - t0);
      await sleep(50);
    }
    report("onvif_hello_to_device_p50", percentile(latency, 50), "ms", { n: latency.length, target: 250 });
    report("onvif_hello_to_device_p99", percentile(latency, 99), "ms", { n: latency.length, target: 250 });
    report("onvif_hello_to_device_max", Math.max(...latency), "ms", { n: latency.length });

    // 3. 200 cameras: the rest arrive by Hello, all at once.
    const burstAt = Date.now();
    const burst = [];
    while (cameras.length < TOTAL) burst.push(await camera(true));
    await until(`${TOTAL} Devices`, () => cameras.every((c) => seen.has(c.id)));
    report("onvif_hello_burst_100_cameras", Math.max(...burst.map((c) => seen.get(c.id)!)) - burstAt, "ms", {
      n: burst.length,
      from: "first camera started",
    });
    await sleep(5000);
    report("onvif_agent_rss_200_cameras", rssMiB(edge1.child.pid!), "MiB", { cameras: TOTAL });
  } catch (err) {
    for (const a of agents) process.stderr.write(`[agent] last log lines:\n${a.tail.join("\n")}\n`);
    throw err;
  } finally {
    watch?.abort();
    for (const a of agents) await a.stop();
    await Promise.all(cameras.map((c) => c.stop({ bye: false })));
    await configs.delete("bench-onvif").catch(() => undefined);
    await cp.stop();
  }
}

try {
  await main();
  process.exit(0);
} catch (err) {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
