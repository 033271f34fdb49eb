import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { type MosquittoBroker, startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { deviceClassName } from "../../src/controller/dra.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { readSnapshot } from "../../src/status/snapshot.js";
import { eventually, testNamespace } from "./cluster.js";
import { type Claim, draClients } from "./dra-helpers.js";
import { SpindleProcess } from "./spindle-process.js";

/**
 * DRA placement on the sandbox (Kubernetes 1.37, KWOK nodes): agents and controller in
 * `--placement auto`, which on this cluster is DRA. The scheduler allocates the devices; KWOK
 * runs the pods (no kubelet plugin is called on KWOK nodes).
 */
describe("DRA: devices as ResourceSlices, SpinApps placed by the scheduler", () => {
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  const { kc, api, core, configs, dsas, spinApps, slices, classes, devicesOf, podsOf, claimOf } = draClients(
    () => ns.name,
  );
  const processes: SpindleProcess[] = [];
  let usb: UsbFixture;
  let usb2: UsbFixture;
  let broker: MosquittoBroker;
  let sim: MqttDeviceSimulator;

  const appsOf = async (dsa: string) =>
    (await spinApps.list(ns.name)).items.filter((s) => s.metadata?.labels?.["spindle.dev/device-spin-app"] === dsa);
  /** Every DRA device entry of driver spindle.dev, with its slice. */
  const entries = async () =>
    (await slices.list()).items
      .filter((s) => s.spec.driver === "spindle.dev")
      .flatMap((s) => s.spec.devices.map((d) => ({ slice: s, device: d })));
  const entriesOf = async (device: string) =>
    (await entries()).filter((e) => (e.device.attributes.device as { string?: string } | undefined)?.string === device);
  const spinApp = (name: string, configuration: string, replicas = 1) =>
    dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name, namespace: ns.name },
      spec: {
        deviceConfiguration: configuration,
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas } },
      },
    });

  beforeAll(async () => {
    ns = await testNamespace("dra");
    usb = await UsbFixture.create();
    usb2 = await UsbFixture.create();
    broker = await startMosquitto();
    sim = new MqttDeviceSimulator({ url: broker.url });
    const auto = ["--placement", "auto"];
    // USB only on edge-1: its devices are local to edge-1. MQTT on both: shared devices.
    processes.push(
      await SpindleProcess.agent("edge-1", auto),
      await SpindleProcess.agent("edge-2", ["--handlers", "mqtt", ...auto]),
      await SpindleProcess.start("controller-dra", [
        "controller",
        "--lease-namespace",
        ns.name,
        "--lease-seconds",
        "4",
        ...auto,
      ]),
    );
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "dra-usb" },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot } },
        capacity: 1,
        offlineGraceSeconds: 2,
      },
    });
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    for (const name of ["dra-usb", "dra-mqtt", "dra-taint"]) await configs.delete(name).catch(() => undefined);
    await sim?.close();
    await broker?.stop();
    await usb?.dispose();
    await usb2?.dispose();
    await ns?.remove();
  });

  let usbDevice: string;

  it("publishes a plugged USB device as a ResourceSlice entry of its node, with its properties as attributes", async () => {
    await usb.plug({ port: "3-1", vendorId: "046d", productId: "0825", serial: "CAM1", manufacturer: "Logitech" });
    const [device] = await eventually("one Device", async () => {
      const list = await devicesOf("dra-usb");
      return list.length === 1 ? list : undefined;
    });
    usbDevice = device!.metadata.name!;
    const [entry] = await eventually("its slice entry", async () => {
      const list = await entriesOf(usbDevice);
      return list.length === 1 ? list : undefined;
    });
    expect(entry!.slice.spec.nodeName).toBe("edge-1");
    expect(entry!.slice.spec.pool.name).toBe("nodes/edge-1/dra-usb");
    expect(entry!.slice.metadata!.ownerReferences?.map((o) => o.kind)).toEqual(["DeviceConfiguration"]);
    expect(entry!.device.name).toBe(`${usbDevice}-0`);
    expect(entry!.device.attributes).toMatchObject({
      configuration: { string: "dra-usb" },
      slot: { int: 0 },
      shared: { bool: false },
      USB_VENDOR_ID: { string: "046d" },
      USB_SERIAL: { string: "CAM1" },
    });
    // The controller maps the SpinApp's extended resource to exactly this device.
    const cls = await eventually("the device's DeviceClass", () =>
      classes.get(deviceClassName(usbDevice)).catch(() => undefined),
    );
    expect(cls.spec?.extendedResourceName).toBe(`spindle.dev/${usbDevice}`);
    // Placement is DRA: the Node carries no extended resources for it.
    await eventually("no spindle.dev resources on edge-1", async () => {
      const node = await core.readNode({ name: "edge-1" });
      return !Object.keys(node.status?.capacity ?? {}).some((k) => k.startsWith("spindle.dev/"));
    });
    expect((await readSnapshot(kc)).placement).toBe("dra");
  });

  it("runs its SpinApp's pod on edge-1 with a claim allocated exactly that device", async () => {
    await spinApp("reader", "dra-usb");
    const [app] = await eventually("one SpinApp", async () => {
      const list = await appsOf("reader");
      return list.length === 1 ? list : undefined;
    });
    const pod = await eventually("a Running pod", async () =>
      (await podsOf(app!.metadata!.name!)).find((p) => p.status?.phase === "Running"),
    );
    expect(pod.spec?.nodeName).toBe("edge-1");
    const claim = await eventually("its allocated claim", async () => {
      const c = await claimOf(pod);
      return c?.status?.allocation ? c : undefined;
    });
    expect(claim.status!.allocation!.devices!.results).toEqual([
      expect.objectContaining({ driver: "spindle.dev", pool: "nodes/edge-1/dra-usb", device: `${usbDevice}-0` }),
    ]);
    expect(claim.status!.reservedFor?.map((r) => r.name)).toEqual([pod.metadata!.name]);
  });

  it("counts capacity in the scheduler: another pod asking for the held device stays Pending", async () => {
    // The controller never over-commits a device (replicas count as slots); a pod made by
    // anyone else that asks for the same extended resource meets the scheduler, which has no
    // second DRA device of it to allocate.
    const pod = await core.createNamespacedPod({
      namespace: ns.name,
      body: {
        metadata: { name: "intruder" },
        spec: {
          containers: [{ name: "c", image: "busybox", resources: { limits: { [`spindle.dev/${usbDevice}`]: "1" } } }],
        },
      },
    });
    const pending = await eventually("an unschedulable intruder", async () => {
      const p = await core.readNamespacedPod({ name: pod.metadata!.name!, namespace: ns.name });
      return p.status?.conditions?.some((c) => c.type === "PodScheduled" && c.status === "False") ? p : undefined;
    });
    expect(pending.spec?.nodeName).toBeUndefined();
    await core.deleteNamespacedPod({ name: "intruder", namespace: ns.name, gracePeriodSeconds: 0 });
  });

  it("with capacity 1 and two DeviceSpinApps, the second gets no SpinApp until the first goes", async () => {
    await spinApp("second", "dra-usb");
    await new Promise((r) => setTimeout(r, 3000));
    expect(await appsOf("second")).toEqual([]);
    await dsas.delete("reader", ns.name);
    const [app] = await eventually("the second's SpinApp", async () => {
      const list = await appsOf("second");
      return list.length === 1 ? list : undefined;
    });
    const pod = await eventually("its Running pod", async () =>
      (await podsOf(app!.metadata!.name!)).find((p) => p.status?.phase === "Running"),
    );
    expect(pod.spec?.nodeName).toBe("edge-1");
    const claim = await eventually("its allocated claim", async () => {
      const c = await claimOf(pod);
      return c?.status?.allocation ? c : undefined;
    });
    expect(claim.status!.allocation!.devices!.results?.[0]?.device).toBe(`${usbDevice}-0`);
  });

  it("publishes a shared MQTT device once, eligible on both nodes that see it", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "dra-mqtt" },
      spec: {
        discoveryHandler: {
          name: "mqtt",
          discoveryDetails: { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
        },
        capacity: 2,
        offlineGraceSeconds: 2,
      },
    });
    await sim.homeAssistant({
      id: "porch_cam",
      component: "sensor",
      manufacturer: "Acme",
      model: "C1",
      availability: true,
    });
    const shared = await eventually("one Device seen by both nodes", async () => {
      const list = await devicesOf("dra-mqtt");
      return list.length === 1 && list[0]!.spec.nodes.length === 2 ? list[0] : undefined;
    });
    const list = await eventually("two slot entries (capacity 2) in one slice", async () => {
      const e = await entriesOf(shared.metadata.name!);
      // The controller follows the Device: first seen by one node, then by both.
      return e.length === 2 &&
        e.every((x) => x.slice.spec.nodeSelector?.nodeSelectorTerms[0]?.matchExpressions[0]?.values.length === 2)
        ? e
        : undefined;
    });
    expect(new Set(list.map((e) => e.slice.metadata!.name)).size).toBe(1);
    const slice = list[0]!.slice;
    expect(slice.spec.nodeName).toBeUndefined();
    expect(slice.spec.pool.name).toBe("shared/dra-mqtt");
    expect(slice.metadata!.labels?.["resource.spindle.dev/publisher"]).toBe("shared");
    expect(slice.spec.nodeSelector?.nodeSelectorTerms).toEqual([
      { matchExpressions: [{ key: "kubernetes.io/hostname", operator: "In", values: ["edge-1", "edge-2"] }] },
    ]);
    expect(list.map((e) => e.device.attributes.shared)).toEqual([{ bool: true }, { bool: true }]);
  });

  it("restores a ResourceSlice deleted by hand", async () => {
    const [entry] = await entriesOf(usbDevice);
    await slices.delete(entry!.slice.metadata!.name!);
    await eventually("the slice back", async () => (await entriesOf(usbDevice)).length === 1);
  });

  it("agent restart (kill -9): no slice rewritten, the claim kept", async () => {
    const before = (await slices.list()).items.filter((s) => s.spec.nodeName === "edge-1");
    const claimsBefore = await api.request<{ items: Claim[] }>(
      "GET",
      `/apis/resource.k8s.io/v1/namespaces/${ns.name}/resourceclaims`,
    );
    const edge1 = processes.shift()!;
    await edge1.stop("SIGKILL");
    const again = await SpindleProcess.agent("edge-1", ["--placement", "auto"]);
    processes.unshift(again);
    await eventually("the restarted agent adopted its Devices", async () => /"msg":"agent started"/.test(again.log()));
    await new Promise((r) => setTimeout(r, 3000));
    const after = (await slices.list()).items.filter((s) => s.spec.nodeName === "edge-1");
    expect(after.map((s) => [s.metadata!.name, s.metadata!.resourceVersion])).toEqual(
      before.map((s) => [s.metadata!.name, s.metadata!.resourceVersion]),
    );
    const claimsAfter = await api.request<{ items: Claim[] }>(
      "GET",
      `/apis/resource.k8s.io/v1/namespaces/${ns.name}/resourceclaims`,
    );
    expect(claimsAfter.items.map((c) => c.metadata.name)).toEqual(claimsBefore.items.map((c) => c.metadata.name));
    expect(claimsAfter.items.every((c) => c.status?.allocation)).toBe(true);
  });

  it("device gone: tainted NoSchedule during its grace period (no new pod placed on it), untainted when back", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "dra-taint" },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb2.sysfsRoot } },
        capacity: 1,
        offlineGraceSeconds: 60,
      },
    });
    const port = { port: "4-1", vendorId: "10c4", productId: "ea60", serial: "TAINT1" };
    await usb2.plug(port);
    const [device] = await eventually("one Device", async () => {
      const list = await devicesOf("dra-taint");
      return list.length === 1 ? list : undefined;
    });
    const name = device!.metadata.name!;
    await eventually("its untainted entry and DeviceClass", async () => {
      const [e] = await entriesOf(name);
      return e && !e.device.taints && (await classes.get(deviceClassName(name)).catch(() => undefined));
    });
    await usb2.unplug("4-1");
    const [entry] = await eventually("the entry tainted", async () => {
      const list = await entriesOf(name);
      return list[0]?.device.taints?.length ? list : undefined;
    });
    expect(entry!.device.taints).toEqual([
      expect.objectContaining({ key: "spindle.dev/unreachable", effect: "NoSchedule", timeAdded: expect.any(String) }),
    ]);
    // The Device itself stays for the grace period (its SpinApps keep running meanwhile).
    expect((await devicesOf("dra-taint")).map((d) => d.metadata.name)).toEqual([name]);
    await core.createNamespacedPod({
      namespace: ns.name,
      body: {
        metadata: { name: "latecomer" },
        spec: {
          containers: [{ name: "c", image: "busybox", resources: { limits: { [`spindle.dev/${name}`]: "1" } } }],
        },
      },
    });
    const read = () => core.readNamespacedPod({ name: "latecomer", namespace: ns.name });
    await eventually("the latecomer unschedulable", async () =>
      (await read()).status?.conditions?.some((c) => c.type === "PodScheduled" && c.status === "False"),
    );
    expect((await read()).spec?.nodeName).toBeUndefined();
    await usb2.plug(port);
    await eventually("the taint gone", async () => {
      const list = await entriesOf(name);
      return list.length === 1 && !list[0]!.device.taints;
    });
    const running = await eventually("the latecomer Running on edge-1", async () => {
      const p = await read();
      return p.status?.phase === "Running" ? p : undefined;
    });
    expect(running.spec?.nodeName).toBe("edge-1");
    await core.deleteNamespacedPod({ name: "latecomer", namespace: ns.name, gracePeriodSeconds: 0 });
    await configs.delete("dra-taint");
  });

  it("device gone: its slice entry goes after the grace period, then its SpinApp", async () => {
    expect(await appsOf("second")).toHaveLength(1);
    await usb.unplug("3-1");
    await eventually("no slice entry for the device", async () => (await entriesOf(usbDevice)).length === 0, 30_000);
    await eventually("no SpinApp", async () => (await appsOf("second")).length === 0, 30_000);
    await eventually(
      "no DeviceClass for it",
      () =>
        classes.get(deviceClassName(usbDevice)).then(
          () => false,
          () => true,
        ),
      60_000,
    );
  });
});
