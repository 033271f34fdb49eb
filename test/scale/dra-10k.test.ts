/**
 * `npm run test:scale`: 10,000 devices on one node through DRA, on the sandbox (Kubernetes 1.37,
 * KWOK nodes), with a real agent and controller. The devices come from an external handler on
 * the agent's registration socket (grpc-js from discovery.proto, node-local: `shared: false`),
 * the cheapest way to make 10,000 devices appear on one node at once. Checks: every device is
 * published as a Device and a ResourceSlice entry of edge-1's pool (at most 128 per slice, one
 * generation), the Node object does not grow, a SpinApp for the last device is placed through a
 * claim allocating exactly it, and deleting the configuration leaves nothing behind.
 * Too long for `npm test` (about 3 minutes of apiserver writes), so it has its own command.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RawHandler, registerWith } from "../../discovery-handlers/external/testing/raw-handler.js";
import { deviceClassName } from "../../src/controller/dra.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, testNamespace } from "../e2e/cluster.js";
import { draClients } from "../e2e/dra-helpers.js";
import { SpindleProcess } from "../e2e/spindle-process.js";

const COUNT = 10_000;
const CONFIG = "scale-10k";
const LONG = 600_000;
const idOf = (i: number) => `plc-${String(i).padStart(5, "0")}`;

/** What of a Node devices could make grow: everything but what changes with each heartbeat. */
function nodeShape(node: k8s.V1Node): string {
  const { labels, annotations } = node.metadata ?? {};
  const { capacity, allocatable } = node.status ?? {};
  return JSON.stringify({ labels, annotations, spec: node.spec, capacity, allocatable });
}

describe("DRA: 10,000 devices on one node", () => {
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  const { core, configs, dsas, spinApps, slices, classes, devicesOf, podsOf, claimOf } = draClients(() => ns.name);
  const processes: SpindleProcess[] = [];
  let dir: string;
  let handler: RawHandler;
  let nodeBefore: string;

  const ours = () => devicesOf(CONFIG);
  const poolSlices = async () =>
    (await slices.list()).items.filter(
      (s) => s.spec.driver === "spindle.dev" && s.spec.pool.name.endsWith(`/${CONFIG}`),
    );
  const report = (figure: string, value: number, unit: string) =>
    process.stdout.write(`${JSON.stringify({ figure, value: Math.round(value * 10) / 10, unit, devices: COUNT })}\n`);

  beforeAll(async () => {
    ns = await testNamespace("scale");
    dir = await mkdtemp("/tmp/spindle-scale-");
    const registration = join(dir, "agent-registration.sock");
    // DRA (auto is DRA on this cluster); info logs: 10,000 debug lines would be what is measured.
    const env = { LOG_LEVEL: "info" };
    processes.push(
      await SpindleProcess.agent(
        "edge-1",
        ["--handlers", "usb", "--registration-socket", registration, "--placement", "auto"],
        env,
      ),
      await SpindleProcess.start(
        "controller-scale",
        ["controller", "--lease-namespace", ns.name, "--lease-seconds", "4", "--placement", "auto"],
        env,
      ),
    );
    await eventually("the registration socket", async () => existsSync(registration));
    handler = await RawHandler.start(join(dir, "scale.sock"));
    await registerWith(registration, { name: "scale", endpoint: handler.socket, shared: false });
    nodeBefore = nodeShape(await core.readNode({ name: "edge-1" }));
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: CONFIG },
      spec: { discoveryHandler: { name: "scale", discoveryDetails: {} }, capacity: 1, offlineGraceSeconds: 5 },
    });
  }, 900_000);

  afterAll(async () => {
    await configs.delete(CONFIG).catch(() => undefined);
    for (const p of processes) await p.stop();
    await handler?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    await ns?.remove();
  });

  it(
    "publishes all 10,000 as Devices and ResourceSlice entries of edge-1's pool, and the Node does not grow",
    async () => {
      const started = Date.now();
      handler.list(
        Array.from({ length: COUNT }, (_, i) => ({
          id: idOf(i),
          properties: { PLC_SERIAL: `S${i}`, PLC_ADDRESS: `10.0.${i >> 8}.${i & 255}` },
        })),
      );
      await eventually("10,000 Devices", async () => (await ours()).length === COUNT, LONG);
      report("scale_devices_published_s", (Date.now() - started) / 1000, "s");
      const entries = await eventually(
        "10,000 slice entries",
        async () => {
          const list = await poolSlices();
          const n = list.reduce((sum, s) => sum + s.spec.devices.length, 0);
          return n === COUNT ? list : undefined;
        },
        LONG,
      );
      report("scale_slices_published_s", (Date.now() - started) / 1000, "s");

      expect(new Set(entries.map((s) => s.spec.pool.name))).toEqual(new Set([`nodes/edge-1/${CONFIG}`]));
      expect(entries.every((s) => s.spec.nodeName === "edge-1")).toBe(true);
      expect(Math.max(...entries.map((s) => s.spec.devices.length))).toBeLessThanOrEqual(128);
      expect(entries.length).toBe(Math.ceil(COUNT / 128));
      // One generation, and every slice of the pool counted in it.
      expect(new Set(entries.map((s) => s.spec.pool.generation)).size).toBe(1);
      expect(entries.every((s) => s.spec.pool.resourceSliceCount === entries.length)).toBe(true);
      // Every device once, with its properties as attributes.
      const names = entries.flatMap((s) => s.spec.devices.map((d) => d.name));
      expect(new Set(names).size).toBe(COUNT);
      const last = entries
        .flatMap((s) => s.spec.devices)
        .find((d) => (d.attributes.PLC_SERIAL as { string?: string } | undefined)?.string === `S${COUNT - 1}`);
      expect(last?.attributes.PLC_ADDRESS).toEqual({ string: `10.0.${(COUNT - 1) >> 8}.${(COUNT - 1) & 255}` });
      const bytes = entries.reduce((sum, s) => sum + JSON.stringify(s).length, 0);
      report("scale_resourceslice_bytes_per_device", bytes / COUNT, "bytes");

      // The Node carries none of it: no extended resource, no annotation, no label.
      expect(nodeShape(await core.readNode({ name: "edge-1" }))).toBe(nodeBefore);
    },
    LONG * 2,
  );

  it(
    "places a SpinApp for the last of them through a claim allocating exactly that device",
    async () => {
      const lastDevice = (await ours()).find((d) => d.spec.properties.PLC_SERIAL === `S${COUNT - 1}`)!;
      const name = lastDevice.metadata!.name!;
      const cls = await eventually(
        "its DeviceClass",
        () => classes.get(deviceClassName(name)).catch(() => undefined),
        LONG,
      );
      expect(cls.spec?.extendedResourceName).toBe(`spindle.dev/${name}`);
      await dsas.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceSpinApp",
        metadata: { name: "last-plc", namespace: ns.name },
        spec: {
          deviceConfiguration: CONFIG,
          selector: { matchProperties: { PLC_SERIAL: `S${COUNT - 1}` } },
          template: { spec: { image: "ghcr.io/acme/plc:v1", executor: EXECUTOR, replicas: 1 } },
        },
      });
      const app = await eventually(
        "one SpinApp",
        async () => {
          const list = (await spinApps.list(ns.name)).items;
          return list.length === 1 ? list[0] : undefined;
        },
        LONG,
      );
      expect(app.metadata?.labels?.["spindle.dev/device"]).toBe(name);
      const pod = await eventually(
        "a Running pod",
        async () => (await podsOf(app.metadata!.name!)).find((p) => p.status?.phase === "Running"),
        LONG,
      );
      expect(pod.spec?.nodeName).toBe("edge-1");
      const claim = await claimOf(pod);
      expect(claim?.status?.allocation?.devices?.results).toEqual([
        expect.objectContaining({ pool: `nodes/edge-1/${CONFIG}`, device: `${name}-0` }),
      ]);
    },
    LONG * 2,
  );

  it(
    "deleting the configuration leaves no Device, slice or DeviceClass of it",
    async () => {
      await dsas.delete("last-plc", ns.name).catch(() => undefined);
      const started = Date.now();
      await configs.delete(CONFIG);
      await eventually("no Device", async () => (await ours()).length === 0, LONG);
      await eventually("no slice", async () => (await poolSlices()).length === 0, LONG);
      await eventually(
        "no DeviceClass of it",
        async () => !(await classes.list()).items.some((c) => c.metadata?.name?.startsWith(CONFIG)),
        LONG,
      );
      report("scale_configuration_deleted_s", (Date.now() - started) / 1000, "s");
      // No write the apiserver refused on the way (a slice over its device limit, say).
      const refused = processes.flatMap((p) => p.entries()).filter((e) => e.level === 40 || e.level === 50);
      expect(refused.map((e) => `${e.msg}: ${e.err ?? ""}`).slice(0, 5)).toEqual([]);
    },
    LONG * 2,
  );
});
