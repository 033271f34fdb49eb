/**
 * `npx tsx test/bench/dra.ts` (part of `npm run bench`): DRA placement on the sandbox
 * (Kubernetes 1.37, KWOK nodes), production agent and controller. Prints one JSON line per
 * figure; it passes or fails nothing.
 *
 * - dra_device_to_pod_running_p50/p99: a USB device plugged (sysfs fixture) → the pod of its
 *   SpinApp Running, its device allocated by the scheduler through a ResourceClaim;
 *   BENCH_DRA_SAMPLES (default 20) samples.
 * - dra_publish_large: BENCH_LARGE_DEVICES (default 10,000) node-local devices on edge-1 (an
 *   external handler's one list) → all of them entries of edge-1's ResourceSlices;
 *   dra_devices_published_large: the same up to the Devices alone.
 * - dra_resourceslice_bytes_per_device: JSON bytes of that pool's slices per device.
 * - dra_node_bytes_before/after: edge-1's Node (labels, annotations, spec, capacity, allocatable)
 *   before and after: DRA leaves it alone.
 * - dra_steady_state_writes: agent + controller API writes per minute over 60 s with all of it
 *   published and nothing changing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { RawHandler, registerWith } from "../../discovery-handlers/external/testing/raw-handler.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { build } from "../../scripts/build.js";
import { CONFIGURATION_LABEL } from "../../src/agent/device-publisher.js";
import type { Slice } from "../../src/agent/resource-slices.js";
import { RESOURCE_SLICES } from "../../src/k8s/dra.js";
import { DEVICE_CONFIGURATIONS, DEVICE_SPIN_APPS, ResourceClient } from "../../src/k8s/resources.js";
import { applyObject } from "../../src/sandbox/client-node.js";
import { ControlPlane, EXECUTOR, spinAppExecutor } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { apiWrites, percentile, report, sleep, until } from "./common.js";

const SAMPLES = Number(process.env.BENCH_DRA_SAMPLES ?? 20);
const LARGE = Number(process.env.BENCH_LARGE_DEVICES ?? 10_000);
const SCRATCH_DIST = resolve(import.meta.dirname, "../../node_modules/.cache/spindle-bench-dra/dist");
const NS = "bench-dra";

function nodeBytes(node: k8s.V1Node): number {
  const { labels, annotations } = node.metadata ?? {};
  const { capacity, allocatable } = node.status ?? {};
  return JSON.stringify({ labels, annotations, spec: node.spec, capacity, allocatable }).length;
}

async function main(): Promise<void> {
  await build(SCRATCH_DIST);
  const bundle = resolve(SCRATCH_DIST, "cli.js");
  const cp = await ControlPlane.start({ log: (l) => process.stderr.write(`[sandbox] ${l}\n`) });
  const kc = cp.kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "bench-dra");
  const dsas = new ResourceClient(kc, DEVICE_SPIN_APPS, "bench-dra");
  const slices = new ResourceClient<Slice & k8s.KubernetesObject & Record<string, unknown>>(
    kc,
    RESOURCE_SLICES,
    "bench-dra",
  );
  const usb = await UsbFixture.create();
  const dir = await mkdtemp(join(tmpdir(), "spindle-bench-dra-"));
  const registration = join(dir, "agent-registration.sock");
  const agentPort = await freePort();
  const controllerPort = await freePort();
  const env = { ...process.env, KUBECONFIG: cp.kubeconfigPath, LOG_LEVEL: "warn", NODE_ENV: "production" };
  const children: ChildProcess[] = [
    spawn(
      process.execPath,
      [bundle, "agent", "--node", "edge-1", "--handlers", "usb", "--registration-socket", registration],
      { env: { ...env, SPINDLE_HTTP_ADDRESS: `127.0.0.1:${agentPort}` }, stdio: "ignore" },
    ),
    spawn(process.execPath, [bundle, "controller", "--http-address", `127.0.0.1:${controllerPort}`], {
      env,
      stdio: "ignore",
    }),
  ];
  const raw = await RawHandler.start(join(dir, "bench.sock"));
  try {
    await core.createNamespace({ body: { metadata: { name: NS } } });
    await applyObject(kc, spinAppExecutor(NS), "bench-dra");
    const dc = (name: string, handler: string, details: Record<string, unknown>) =>
      configs.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name },
        spec: { discoveryHandler: { name: handler, discoveryDetails: details }, capacity: 1, offlineGraceSeconds: 0 },
      } as never);

    // Device → pod Running, through a claim the scheduler allocates.
    await dc("bench-dra-usb", "usb", { sysfsRoot: usb.sysfsRoot });
    await dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "reader", namespace: NS },
      spec: {
        deviceConfiguration: "bench-dra-usb",
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1 } },
      },
    } as never);
    const running = async () =>
      (await core.listNamespacedPod({ namespace: NS })).items.filter((p) => p.status?.phase === "Running").length;
    const latencies: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const t0 = Date.now();
      await usb.plug({ port: `1-${k + 1}`, vendorId: "0403", productId: "6001", serial: `B${k}` });
      await until(`pod ${k + 1} Running`, async () => (await running()) === k + 1, 120_000, 20);
      latencies.push(Date.now() - t0);
    }
    report("dra_device_to_pod_running_p50", percentile(latencies, 50), "ms", { n: SAMPLES });
    report("dra_device_to_pod_running_p99", percentile(latencies, 99), "ms", { n: SAMPLES });

    // 10,000 node-local devices on edge-1.
    await until("the registration socket", () => existsSync(registration), 60_000);
    await registerWith(registration, { name: "bench-large", endpoint: raw.socket, shared: false });
    const before = nodeBytes(await core.readNode({ name: "edge-1" }));
    const poolSlices = async () =>
      (await slices.list()).items.filter((s) => s.spec.pool.name === "nodes/edge-1/bench-dra-large");
    const started = Date.now();
    raw.list(
      Array.from({ length: LARGE }, (_, i) => ({
        id: `plc-${i}`,
        properties: { PLC_SERIAL: `S${i}`, PLC_ADDRESS: `10.0.${i >> 8}.${i & 255}` },
      })),
    );
    await dc("bench-dra-large", "bench-large", {});
    // How many Devices exist: counted page by page, since with a label selector the apiserver
    // gives no remainingItemCount.
    const custom = kc.makeApiClient(k8s.CustomObjectsApi);
    const devicesOfLarge = async () => {
      let n = 0;
      let token: string | undefined;
      do {
        const page = (await custom.listClusterCustomObject({
          group: "spindle.dev",
          version: "v1alpha1",
          plural: "devices",
          labelSelector: `${CONFIGURATION_LABEL}=bench-dra-large`,
          limit: 2000,
          _continue: token,
        })) as { items: unknown[]; metadata?: { continue?: string } };
        n += page.items.length;
        token = page.metadata?.continue || undefined;
      } while (token);
      return n;
    };
    await until("the Devices", async () => (await devicesOfLarge()) >= LARGE, 900_000, 1000);
    report("dra_devices_published_large", LARGE / ((Date.now() - started) / 1000), "devices/s", { devices: LARGE });
    let published: Slice[] = [];
    await until(
      "the slice entries",
      async () => {
        published = await poolSlices();
        return published.reduce((n, s) => n + s.spec.devices.length, 0) === LARGE;
      },
      900_000,
      500,
    );
    const seconds = (Date.now() - started) / 1000;
    report("dra_publish_large", LARGE / seconds, "devices/s", { devices: LARGE, seconds: Math.round(seconds) });
    const bytes = published.reduce((n, s) => n + JSON.stringify(s).length, 0);
    report("dra_resourceslice_bytes_per_device", bytes / LARGE, "bytes", { slices: published.length });
    report("dra_node_bytes_before", before, "bytes");
    report("dra_node_bytes_after", nodeBytes(await core.readNode({ name: "edge-1" })), "bytes", { devices: LARGE });

    // Let the controller's DeviceClasses catch up, then count writes while nothing changes.
    let last = -1;
    for (;;) {
      const now = (await apiWrites(agentPort)) + (await apiWrites(controllerPort));
      if (now === last) break;
      last = now;
      await sleep(5000);
    }
    const w0 = (await apiWrites(agentPort)) + (await apiWrites(controllerPort));
    await sleep(60_000);
    const w1 = (await apiWrites(agentPort)) + (await apiWrites(controllerPort));
    report("dra_steady_state_writes", w1 - w0, "writes/min", { devices: LARGE + SAMPLES });
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await sleep(1000);
    await raw.close();
    await usb.dispose();
    await cp.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
