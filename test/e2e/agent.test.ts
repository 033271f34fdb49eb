import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { type MosquittoBroker, startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

describe("agent: USB and MQTT devices become Device objects", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const agents: SpindleProcess[] = [];
  let usb: UsbFixture;
  let broker: MosquittoBroker;
  let sim: MqttDeviceSimulator;

  const devicesOf = async (configuration: string) =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === configuration);
  const nodeResources = async (node: string) =>
    Object.entries((await core.readNode({ name: node })).status?.capacity ?? {}).filter(([k]) =>
      k.startsWith("spindle.dev/"),
    );
  const configuration = (
    name: string,
    handler: string,
    discoveryDetails: Record<string, unknown>,
    extra: Record<string, unknown> = {},
  ) =>
    configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name },
      spec: { discoveryHandler: { name: handler, discoveryDetails }, ...extra },
    });

  beforeAll(async () => {
    usb = await UsbFixture.create();
    broker = await startMosquitto();
    sim = new MqttDeviceSimulator({ url: broker.url });
    agents.push(await SpindleProcess.agent("edge-1"), await SpindleProcess.agent("edge-2"));
  });

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await sim?.close();
    await broker?.stop();
    await usb?.dispose();
    for (const name of ["usb-e2e", "mqtt-e2e", "bad-details", "usb-collide"])
      await configs.delete(name).catch(() => undefined);
  });

  it("publishes a plugged USB device with its properties and capacity, advertises it, and removes it after the grace period", async () => {
    // Both agents watch the same fixture tree, as two nodes with the same stick plugged in would:
    // a USB device is local, so each node gets its own Device.
    await configuration(
      "usb-e2e",
      "usb",
      { sysfsRoot: usb.sysfsRoot, vendorIds: { action: "Include", items: ["1a86"] } },
      { capacity: 2, offlineGraceSeconds: 3 },
    );
    await usb.plug({
      port: "1-1",
      vendorId: "1a86",
      productId: "7523",
      serial: "SER123",
      manufacturer: "QinHeng",
      product: "CH340 serial",
    });
    await usb.plug({ port: "1-2", vendorId: "046d", productId: "c52b", serial: "X" }); // filtered out

    const found = await eventually("two USB Devices (one per node)", async () => {
      const list = await devicesOf("usb-e2e");
      return list.length === 2 ? list : undefined;
    });
    expect(found.flatMap((d) => d.spec.nodes).sort()).toEqual(["edge-1", "edge-2"]);
    const d = found.find((x) => x.spec.nodes[0] === "edge-1")!;
    expect(d.spec.shared).toBe(false);
    expect(d.spec.capacity).toBe(2);
    expect(d.spec.properties).toMatchObject({
      USB_VENDOR_ID: "1a86",
      USB_PRODUCT_ID: "7523",
      USB_SERIAL: "SER123",
      USB_PORT_PATH: "1-1",
    });
    expect(d.spec.properties.USB_DEVNODE).toMatch(/^\/dev\/bus\/usb\/001\/\d{3}$/);
    expect(d.metadata.name).toMatch(/^usb-e2e-[0-9a-f]{12}$/);

    const resource = `spindle.dev/${d.metadata.name}`;
    await eventually("the extended resource on edge-1", async () =>
      (await nodeResources("edge-1")).some(([k, v]) => k === resource && v === "2"),
    );

    await usb.unplug("1-1");
    const unpluggedAt = Date.now();
    await new Promise((r) => setTimeout(r, 1500));
    expect((await devicesOf("usb-e2e")).length, "kept during the grace period").toBe(2);
    await eventually(
      "the Devices to go after the grace period",
      async () => (await devicesOf("usb-e2e")).length === 0,
      20_000,
    );
    expect(Date.now() - unpluggedAt).toBeGreaterThanOrEqual(3000);
    await eventually(
      "the extended resource to be withdrawn",
      async () => !(await nodeResources("edge-1")).some(([k]) => k === resource),
    );
  });

  it("watches only its own node's Devices, and still never merges another node's Device of another identity under the same name", async () => {
    await configuration("usb-collide", "usb", { sysfsRoot: usb.sysfsRoot, pollSeconds: 1 }, { offlineGraceSeconds: 1 });
    await usb.plug({ port: "1-5", vendorId: "0403", productId: "6001", serial: "COLLIDE" });
    // (The fixture still holds test 1's filtered-out device; this configuration sees it too.)
    const collide = async () =>
      (await devicesOf("usb-collide")).filter((d) => d.spec.properties.USB_SERIAL === "COLLIDE");
    const both = await eventually("COLLIDE on both nodes", async () => {
      const list = await collide();
      return list.length === 2 ? list : undefined;
    });
    const mine = both.find((d) => d.spec.nodes.includes("edge-1"))!;
    // Each node labels what it publishes, and its agent watches only that label.
    expect(mine.metadata.labels).toHaveProperty(["node.spindle.dev/edge-1"]);
    expect(mine.metadata.labels).not.toHaveProperty(["node.spindle.dev/edge-2"]);
    const name = mine.metadata.name!;
    await usb.unplug("1-5");
    await eventually("COLLIDE gone", async () => (await collide()).length === 0, 20_000);

    // Another identity under the name edge-1 computes for COLLIDE, published by edge-2 only: not
    // in edge-1's cache, so only the apiserver can tell edge-1 the name is taken.
    const other = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-agent-edge-2");
    await other.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "Device",
      metadata: { name, labels: { "spindle.dev/configuration": "usb-collide", "node.spindle.dev/edge-2": "" } },
      spec: {
        configurationName: "usb-collide",
        handler: "usb",
        shared: false,
        id: "someone-else@edge-2",
        nodes: ["edge-2"],
        properties: { USB_SERIAL: "OTHER" },
        capacity: 1,
      },
    } as never);
    await usb.plug({ port: "1-5", vendorId: "0403", productId: "6001", serial: "COLLIDE" });
    await eventually("a DeviceNameCollision Event", async () =>
      (await core.listNamespacedEvent({ namespace: "default" })).items.some(
        (e) =>
          e.reason === "DeviceNameCollision" && e.message?.includes(name) && e.involvedObject.name === "usb-collide",
      ),
    );
    // The agent is alive and publishing: another device comes through right after.
    await usb.plug({ port: "1-6", vendorId: "0403", productId: "6001", serial: "AFTER" });
    await eventually("AFTER on edge-1", async () =>
      (await devicesOf("usb-collide")).some(
        (d) => d.spec.properties.USB_SERIAL === "AFTER" && d.spec.nodes.includes("edge-1"),
      ),
    );
    const taken = await devices.get(name);
    expect(taken.spec.id).toBe("someone-else@edge-2");
    expect(taken.spec.nodes).toEqual(["edge-2"]);
    expect(taken.spec.properties.USB_SERIAL).toBe("OTHER");
    await usb.unplug("1-5");
    await usb.unplug("1-6");
    await devices.delete(name).catch(() => undefined);
  });

  it("reports one shared MQTT device seen by two agents, and one agent leaving removes only its node", async () => {
    await configuration(
      "mqtt-e2e",
      "mqtt",
      { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
      { offlineGraceSeconds: 2 },
    );
    await sim.homeAssistant({
      id: "kitchen_temp",
      component: "sensor",
      manufacturer: "Acme",
      model: "T1",
      availability: true,
    });
    const shared = await eventually("one Device listing both nodes", async () => {
      const list = await devicesOf("mqtt-e2e");
      return list.length === 1 && list[0]!.spec.nodes.length === 2 ? list[0] : undefined;
    });
    expect(shared.spec.shared).toBe(true);
    expect(shared.spec.properties).toMatchObject({
      MQTT_BROKER_URI: broker.url,
      MQTT_MANUFACTURER: "Acme",
      MQTT_MODEL: "T1",
    });

    // edge-2's agent restarts without the mqtt handler: after the grace period only edge-1 remains.
    const edge2 = agents.splice(1, 1)[0]!;
    await edge2.stop();
    agents.push(await SpindleProcess.agent("edge-2", ["--handlers", "usb,onvif,mdns"]));
    const after = await eventually(
      "edge-2 to leave",
      async () => {
        const d = await devices.get(shared.metadata.name!);
        return d.spec.nodes.length === 1 ? d : undefined;
      },
      30_000,
    );
    expect(after.spec.nodes).toEqual(["edge-1"]);
    expect(after.metadata.uid, "the Device is the same object").toBe(shared.metadata.uid);
  });

  it("reports invalid discovery details with an Event naming the field, and keeps other configurations running", async () => {
    await configuration("bad-details", "usb", { sysfsRoot: usb.sysfsRoot, pollSeconds: "often" });
    const event = await eventually("an InvalidDiscoveryDetails event", async () => {
      const events = await core.listNamespacedEvent({
        namespace: "default",
        fieldSelector: "involvedObject.name=bad-details",
      });
      return events.items.find((e) => e.reason === "InvalidDiscoveryDetails");
    });
    expect(event.message).toMatch(/discoveryDetails\.pollSeconds/);
    expect(agents[0]!.log()).toMatch(/discoveryDetails\.pollSeconds/);
    // The MQTT configuration still works on edge-1.
    await sim.homeAssistant({ id: "hall_light", component: "light", manufacturer: "Acme", model: "L2" });
    await eventually("a second MQTT Device", async () => (await devicesOf("mqtt-e2e")).length === 2);
  });

  it("adopts its Devices after kill -9 and restart: nothing deleted, recreated or rewritten", async () => {
    const before = await devicesOf("mqtt-e2e");
    expect(before.length).toBe(2);
    const edge1 = agents.shift()!;
    await edge1.stop("SIGKILL");
    const restarted = await SpindleProcess.agent("edge-1");
    agents.unshift(restarted);
    await eventually("the restarted agent to start its discoveries", async () =>
      /discovery started/.test(restarted.log()),
    );
    await new Promise((r) => setTimeout(r, 3000)); // longer than the grace period
    const after = await devicesOf("mqtt-e2e");
    expect(after.map((d) => [d.metadata.name, d.metadata.uid, d.metadata.resourceVersion]).sort()).toEqual(
      before.map((d) => [d.metadata.name, d.metadata.uid, d.metadata.resourceVersion]).sort(),
    );
  });
});
