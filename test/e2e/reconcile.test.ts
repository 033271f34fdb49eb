import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import { errorMessage } from "../../src/k8s/client.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, sandboxFaultProxy, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type Cond = { type: string; status: string; reason: string; message: string };
type DsaObj = Obj & { status?: { conditions?: Cond[]; boundDevices?: number } };

/**
 * The reconcile core against the real control plane: what is deleted or edited by hand comes
 * back, a bad edit keeps what runs, one refused write marks only its own DeviceSpinApp, a failed
 * first list deletes nothing, configuration edits stick, and Node resources are re-advertised.
 */
describe("reconcile core", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const dsas = new ResourceClient<DsaObj>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const processes: SpindleProcess[] = [];
  let controller: SpindleProcess;
  let agent: SpindleProcess;
  let usb: UsbFixture;
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  const CONFIG = "rc-usb";
  const NODE = "edge-1";

  const appsOf = async (dsa: string) =>
    (await spinApps.list(ns.name)).items.filter((s) => s.metadata?.labels?.["spindle.dev/device-spin-app"] === dsa);
  const conditionOf = async (dsa: string, type: string) =>
    (await dsas.get(dsa, ns.name)).status?.conditions?.find((c) => c.type === type);
  const applyDsa = (name: string, templateSpec: Record<string, unknown> = {}, spec: Record<string, unknown> = {}) =>
    dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name, namespace: ns.name },
      spec: {
        deviceConfiguration: CONFIG,
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1, ...templateSpec } },
        ...spec,
      },
    });
  const applyConfig = (capacity: number) =>
    configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: CONFIG },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot, pollSeconds: 1 } },
        capacity,
        offlineGraceSeconds: 2,
      },
    });
  const startController = async (name: string, env: NodeJS.ProcessEnv = {}) => {
    const p = await SpindleProcess.start(
      name,
      ["controller", "--lease-namespace", ns.name, "--lease-seconds", "4", "--identity", name],
      env,
    );
    processes.push(p);
    return p;
  };
  const deviceNamed = async (serial: string) =>
    eventually(`the Device of ${serial}`, async () =>
      (await devices.list()).items.find(
        (d) => d.spec.configurationName === CONFIG && d.spec.properties.USB_SERIAL === serial,
      ),
    );

  /** A proxy to the apiserver that fails the first 3 lists of every collection, and a kubeconfig for it. */
  const failingFirstLists = (seed: number) => sandboxFaultProxy(seed, { failFirstList: 3 });

  beforeAll(async () => {
    ns = await testNamespace("rc");
    usb = await UsbFixture.create();
    agent = await SpindleProcess.agent(NODE, ["--handlers", "usb"]);
    processes.push(agent);
    controller = await startController("rc-a");
    await applyConfig(1);
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "RC1", manufacturer: "FTDI" });
    await usb.plug({ port: "1-2", vendorId: "0403", productId: "6001", serial: "RC2", manufacturer: "FTDI" });
    await applyDsa("reader");
    await eventually("two SpinApps", async () => (await appsOf("reader")).length === 2);
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    await configs.delete(CONFIG).catch(() => undefined);
    await usb?.dispose();
    await ns?.remove();
  });

  it("recreates a SpinApp deleted by hand, and restores one edited by hand", async () => {
    const [victim, edited] = await appsOf("reader");
    await spinApps.delete(victim!.metadata!.name!, ns.name);
    await eventually(
      "the SpinApp to come back",
      async () => {
        const again = (await appsOf("reader")).find((s) => s.metadata?.name === victim!.metadata!.name);
        return again && again.metadata?.uid !== victim!.metadata!.uid && !again.metadata?.deletionTimestamp;
      },
      30_000,
    );
    await new ResourceClient<Obj>(kc, SPIN_APPS, "someone").apply({
      apiVersion: "core.spinkube.dev/v1alpha1",
      kind: "SpinApp",
      metadata: { name: edited!.metadata!.name, namespace: ns.name },
      spec: { image: "ghcr.io/evil/app:latest", executor: EXECUTOR, replicas: 1 },
    });
    await eventually(
      "the edited SpinApp to be restored",
      async () =>
        ((await spinApps.get(edited!.metadata!.name!, ns.name)).spec as { image: string }).image ===
        "ghcr.io/acme/reader:v1",
      30_000,
    );
    expect((await dsas.get("reader", ns.name)).status?.boundDevices).toBe(2);
  });

  it("rejects at admission what it can: Spin variable names, label values, replicas below 1", async () => {
    const refusals: [Record<string, unknown>, Record<string, unknown>, RegExp][] = [
      [{ variables: [{ name: "Bad-Name", value: "x" }] }, {}, /variables\[0\]\.name.*should match/],
      [{ replicas: 0 }, {}, /replicas|greater than or equal to 1/],
    ];
    for (const [templateSpec, spec, message] of refusals) {
      const err = await applyDsa("reader", templateSpec, spec).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `accepted ${JSON.stringify(templateSpec)}`).toBeDefined();
      expect(errorMessage(err)).toMatch(message);
    }
    const label = await dsas
      .apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceSpinApp",
        metadata: { name: "reader", namespace: ns.name },
        spec: {
          deviceConfiguration: CONFIG,
          template: {
            metadata: { labels: { team: "ends-with-dot." } },
            spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR },
          },
        },
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(errorMessage(label)).toMatch(/label value|should match/);
  });

  it("keeps running SpinApps on the last valid spec after an edit the controller refuses, until a valid one", async () => {
    const before = (await appsOf("reader")).map((s) => s.metadata!.uid).sort();
    for (const [templateSpec, reason] of [
      [{ image: "" }, "InvalidTemplate"],
      [{ replicas: 3 }, "CapacityExhausted"],
    ] as const) {
      await applyDsa("reader", templateSpec);
      const c = await eventually(`${reason} on the status`, async () => {
        const got = await conditionOf("reader", "DevicesAvailable");
        return got?.reason === reason ? got : undefined;
      });
      expect(c.message).toMatch(/keep running/);
      // Still there a few seconds later, untouched.
      await new Promise((r) => setTimeout(r, 3000));
      const now = await appsOf("reader");
      expect(now.map((s) => s.metadata!.uid).sort()).toEqual(before);
      for (const s of now) expect((s.spec as { image: string }).image).toBe("ghcr.io/acme/reader:v1");
    }
    await applyDsa("reader", { image: "ghcr.io/acme/reader:v2" });
    await eventually("the valid spec to replace them", async () =>
      (await appsOf("reader")).every((s) => (s.spec as { image: string }).image === "ghcr.io/acme/reader:v2"),
    );
    // The status is written after the SpinApps: it follows within a reconcile.
    await eventually(
      "DevicesBound on the status",
      async () => (await conditionOf("reader", "DevicesAvailable"))?.reason === "DevicesBound",
    );
  });

  it("marks only the DeviceSpinApp whose SpinApp the apiserver refuses, and frees its slot", async () => {
    // Capacity 2, so a second DeviceSpinApp can bind next to "reader".
    await applyConfig(2);
    await applyDsa("refused", { resources: { limits: { cpu: "lots" } } });
    await applyDsa("fine", {}, { maxApps: 1 });
    const synced = await eventually("ApplyFailed on the refused one", async () => {
      const c = await conditionOf("refused", "Synced");
      return c?.reason === "ApplyFailed" ? c : undefined;
    });
    expect(synced.message).toMatch(/lots|quantities must match|should match/);
    await eventually("the fine one to bind", async () => (await appsOf("fine")).length === 1);
    expect((await conditionOf("fine", "Synced"))?.status).toBe("True");
    expect(await appsOf("refused")).toHaveLength(0);
    await eventually("a Warning Event with the apiserver's message", async () => {
      const events = await core.listNamespacedEvent({
        namespace: ns.name,
        fieldSelector: "involvedObject.name=refused",
      });
      return events.items.some((e) => e.reason === "ApplyFailed" && /lots|quantities|match/.test(e.message ?? ""));
    });
    // The refused one holds no slot once its refusal is known: only the others' allocations stay.
    await eventually("no slot held by the refused one", async () =>
      (await devices.list()).items
        .filter((x) => x.spec.configurationName === CONFIG)
        .every((d) => (d.status?.allocations ?? []).every((a) => !a.holder.includes("/refused-"))),
    );
    await dsas.delete("refused", ns.name);
    await dsas.delete("fine", ns.name);
  });

  it("keeps a configuration's capacity edit while discovery reports again, and advertises it on the Node", async () => {
    await applyConfig(3);
    const device = await deviceNamed("RC1");
    await eventually(
      "capacity 3 on the Device",
      async () => (await devices.get(device.metadata.name!)).spec.capacity === 3,
    );
    // The USB poll (1 s) reports the same set several times; the edit must survive them.
    await new Promise((r) => setTimeout(r, 3500));
    expect((await devices.get(device.metadata.name!)).spec.capacity).toBe(3);
    await eventually(
      "capacity 3 on the Node",
      async () =>
        (await core.readNode({ name: NODE })).status?.capacity?.[`spindle.dev/${device.metadata.name}`] === "3",
    );
  });

  it("re-advertises node extended resources that someone else removed", async () => {
    const device = await deviceNamed("RC1");
    const resource = `spindle.dev/${device.metadata.name}`;
    // Another manager takes the resources over and drops them, as a re-registered Node would be.
    await core.patchNodeStatus(
      {
        name: NODE,
        body: [
          { op: "remove", path: `/status/capacity/${resource.replace("/", "~1")}` },
          { op: "remove", path: `/status/allocatable/${resource.replace("/", "~1")}` },
        ],
      },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.JsonPatch),
    );
    await eventually(
      "the resource to be advertised again",
      async () => (await core.readNode({ name: NODE })).status?.capacity?.[resource] !== undefined,
      30_000,
    );
  });

  it("a controller whose first lists fail deletes nothing, then works", async () => {
    await controller.stop();
    const before = (await appsOf("reader")).map((s) => s.metadata!.uid).sort();
    expect(before.length).toBe(2);
    const { proxy, kubeconfig } = await failingFirstLists(10);
    try {
      controller = await startController("rc-b", { KUBECONFIG: kubeconfig });
      await eventually("the controller to list after failures", async () =>
        controller.entries().some((e) => e.msg === "caches synced"),
      );
      expect(proxy.counts.firstListFailures).toBeGreaterThanOrEqual(5);
      expect(controller.entries().some((e) => e.msg === "first list failed; retrying")).toBe(true);
      // Alive and working: a new device gets its SpinApp; the old ones were never deleted.
      await usb.plug({ port: "1-3", vendorId: "0403", productId: "6001", serial: "RC3" });
      await eventually("a SpinApp for the new device", async () => (await appsOf("reader")).length === 3);
      const uids = (await appsOf("reader")).map((s) => s.metadata!.uid);
      expect(uids).toEqual(expect.arrayContaining(before));
      expect(controller.entries().filter((e) => e.msg === "SpinApp unbound")).toEqual([]);
    } finally {
      await controller.stop();
      await proxy.stop();
    }
  });

  it("an agent restarted while its first lists fail keeps what it sees and leaves what it no longer sees", async () => {
    await agent.stop();
    const kept = (await deviceNamed("RC1")).metadata.uid;
    const unplugged = (await deviceNamed("RC2")).metadata.name!;
    await usb.unplug("1-2"); // while no agent runs: only adoption can notice

    const { proxy, kubeconfig } = await failingFirstLists(11);
    try {
      agent = await SpindleProcess.agent(NODE, ["--handlers", "usb"], { KUBECONFIG: kubeconfig });
      processes.push(agent);
      await eventually("the agent to start", async () => agent.entries().some((e) => e.msg === "agent started"));
      expect(agent.entries().some((e) => e.msg === "first list failed; retrying")).toBe(true);
      await eventually(
        "the unplugged device to be left after its grace period",
        () =>
          devices.get(unplugged).then(
            () => false,
            () => true,
          ),
        30_000,
      );
      expect((await deviceNamed("RC1")).metadata.uid).toBe(kept);
      // And it is working: a new device is published.
      await usb.plug({ port: "1-4", vendorId: "0403", productId: "6001", serial: "RC4" });
      await deviceNamed("RC4");
    } finally {
      await agent.stop();
      await proxy.stop();
    }
  });
});

describe("sandbox nodes", () => {
  it("keep their leases renewed, so they stay Ready", async () => {
    const kc = kubeConfig();
    const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
    const first = await coordination.readNamespacedLease({ name: "edge-1", namespace: "kube-node-lease" });
    await eventually(
      "a renewal",
      async () => {
        const again = await coordination.readNamespacedLease({ name: "edge-1", namespace: "kube-node-lease" });
        return new Date(again.spec!.renewTime!).getTime() > new Date(first.spec!.renewTime!).getTime();
      },
      30_000,
    );
    const nodes = await kc.makeApiClient(k8s.CoreV1Api).listNode();
    for (const n of nodes.items)
      expect(n.status?.conditions?.find((c) => c.type === "Ready")?.status, n.metadata?.name).toBe("True");
  });
});
