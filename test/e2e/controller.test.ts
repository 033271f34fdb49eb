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
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type Status = {
  status?: { conditions?: { type: string; status: string; reason: string; message: string }[]; boundDevices?: number };
};

describe("controller: DeviceSpinApp -> one SpinApp per device", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const dsas = new ResourceClient<Obj & Status>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const processes: SpindleProcess[] = [];
  let controller: SpindleProcess;
  let usb: UsbFixture;
  let ns: Awaited<ReturnType<typeof testNamespace>>;

  const appsOf = async (dsa: string) =>
    (await spinApps.list(ns.name)).items.filter((s) => s.metadata?.labels?.["spindle.dev/device-spin-app"] === dsa);
  const condition = async (dsa: string, type: string) =>
    (await dsas.get(dsa, ns.name)).status?.conditions?.find((c) => c.type === type);
  const deviceSpinApp = (
    name: string,
    spec: Record<string, unknown> = {},
    templateSpec: Record<string, unknown> = {},
  ) =>
    dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name, namespace: ns.name },
      spec: {
        deviceConfiguration: "ctl-usb",
        template: {
          metadata: { labels: { team: "vision" } },
          spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1, ...templateSpec },
        },
        ...spec,
      },
    });
  const startController = async (identity: string) => {
    const p = await SpindleProcess.start(`controller-${identity}`, [
      "controller",
      "--lease-namespace",
      ns.name,
      "--lease-seconds",
      "4",
      "--identity",
      identity,
    ]);
    processes.push(p);
    return p;
  };

  beforeAll(async () => {
    ns = await testNamespace("ctl");
    usb = await UsbFixture.create();
    // Only edge-2 runs the usb handler: its devices must place pods on edge-2 only.
    processes.push(await SpindleProcess.agent("edge-2"), await SpindleProcess.agent("edge-1", ["--handlers", "mqtt"]));
    controller = await startController("ctl-a");
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "ctl-usb" },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot } },
        capacity: 1,
        offlineGraceSeconds: 2,
      },
    });
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    await configs.delete("ctl-usb").catch(() => undefined);
    await usb?.dispose();
    await ns?.remove();
  });

  it("runs a SpinApp for a plugged device with its properties as Spin variables, on the node that sees it", async () => {
    await deviceSpinApp("reader");
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "FT1", manufacturer: "FTDI" });
    const [app] = await eventually("one SpinApp", async () => {
      const list = await appsOf("reader");
      return list.length === 1 ? list : undefined;
    });
    const spec = app!.spec as {
      variables: { name: string; value: string }[];
      resources: { limits: Record<string, string> };
    };
    expect(spec.variables).toContainEqual({ name: "usb_serial", value: "FT1" });
    expect(spec.variables).toContainEqual({ name: "usb_vendor_id", value: "0403" });
    const deviceName = app!.metadata!.labels!["spindle.dev/device"]!;
    expect(spec.resources.limits[`spindle.dev/${deviceName}`]).toBe("1");
    expect(app!.metadata!.name!.length).toBeLessThanOrEqual(52);
    expect(app!.metadata!.ownerReferences!.map((o) => o.kind)).toEqual(["Device"]);
    expect(app!.metadata!.labels).toMatchObject({ team: "vision", "spindle.dev/device-spin-app": "reader" });

    const pod = await eventually("a Running pod", async () => {
      const pods = await core.listNamespacedPod({
        namespace: ns.name,
        labelSelector: `core.spinkube.dev/app-name=${app!.metadata!.name}`,
      });
      return pods.items.find((p) => p.status?.phase === "Running");
    });
    expect(pod.spec?.nodeName, "pods only land where the device is").toBe("edge-2");
    expect(pod.spec?.containers[0]?.env).toContainEqual({ name: "SPIN_VARIABLE_USB_SERIAL", value: "FT1" });
    const device = await devices.get(deviceName);
    expect(device.status?.allocations).toEqual([{ slot: 0, holder: `${ns.name}/${app!.metadata!.name}` }]);
    await eventually("Ready condition", async () => (await condition("reader", "Ready"))?.status === "True");
  });

  it("gives a capacity-1 device to the older DeviceSpinApp; the newer reports CapacityExhausted until it frees", async () => {
    await deviceSpinApp("latecomer");
    const exhausted = await eventually("CapacityExhausted", async () => {
      const c = await condition("latecomer", "DevicesAvailable");
      return c?.reason === "CapacityExhausted" ? c : undefined;
    });
    expect(exhausted.status).toBe("False");
    expect(await appsOf("latecomer")).toHaveLength(0);
    await dsas.delete("reader", ns.name);
    await eventually("the latecomer to be bound", async () => (await appsOf("latecomer")).length === 1);
    expect((await condition("latecomer", "DevicesAvailable"))?.status).toBe("True");
  });

  it("keeps its SpinApps when the leader dies and the standby takes over", async () => {
    const before = (await appsOf("latecomer")).map((s) => s.metadata!.uid);
    await startController("ctl-b");
    await controller.stop("SIGKILL");
    await usb.plug({ port: "1-2", vendorId: "0403", productId: "6001", serial: "FT2" });
    await eventually(
      "the standby to bind the new device",
      async () => (await appsOf("latecomer")).length === 2,
      60_000,
    );
    const after = (await appsOf("latecomer")).map((s) => s.metadata!.uid);
    expect(after).toEqual(expect.arrayContaining(before));
  });

  it("deletes the SpinApp and its Deployment after the grace period when the device goes", async () => {
    const app = (await appsOf("latecomer")).find((s) =>
      (s.spec as { variables: { name: string; value: string }[] }).variables.some((v) => v.value === "FT2"),
    )!;
    await usb.unplug("1-2");
    await eventually("the SpinApp to go", async () => (await appsOf("latecomer")).length === 1, 30_000);
    await eventually(
      "the Deployment to go",
      () =>
        apps.readNamespacedDeployment({ name: app.metadata!.name!, namespace: ns.name }).then(
          () => false,
          () => true,
        ),
      60_000,
    );
  });

  it("rejects at admission the templates it can check there, naming the field", async () => {
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ["zero-replicas", { replicas: 0 }, /replicas/],
      ["bad-variable", { variables: [{ name: "Bad__Name", value: "x" }] }, /variables\[0\]\.name.*should match/],
    ];
    for (const [name, templateSpec, message] of cases) {
      const err = await deviceSpinApp(name, {}, templateSpec).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `${name} was accepted`).toBeDefined();
      expect(String((err as { body?: string }).body ?? err)).toMatch(message);
    }
  });

  it("reports templates SpinKube would refuse with a condition and an Event, creating nothing", async () => {
    const name = "no-image";
    await deviceSpinApp(name, {}, { image: "" });
    const c = await eventually(`${name}: InvalidTemplate`, async () => {
      const got = await condition(name, "DevicesAvailable");
      return got?.reason === "InvalidTemplate" ? got : undefined;
    });
    expect(c.message).toMatch(/image/);
    expect(await appsOf(name)).toHaveLength(0);
    await eventually(`${name}: an Event`, async () => {
      const events = await core.listNamespacedEvent({
        namespace: ns.name,
        fieldSelector: `involvedObject.name=${name}`,
      });
      return events.items.some((e) => e.reason === "InvalidTemplate");
    });
    await dsas.delete(name, ns.name);
  });

  it("lets the garbage collector remove the SpinApp when its Device is deleted while no controller runs", async () => {
    const [app] = await appsOf("latecomer");
    for (const p of processes.filter((p) => p.name.startsWith("controller"))) await p.stop("SIGKILL");
    await devices.delete(app!.metadata!.labels!["spindle.dev/device"]!);
    await eventually(
      "the garbage collector to delete the SpinApp",
      () =>
        spinApps.get(app!.metadata!.name!, ns.name).then(
          () => false,
          () => true,
        ),
      90_000,
    );
  });
});
