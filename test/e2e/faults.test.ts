import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MqttDeviceSimulator, type SimulatedHomeAssistantDevice } from "../../discovery-handlers/mqtt/mock.js";
import { type MosquittoBroker, startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import type { Device } from "../../src/api/device.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { ControlPlane, EXECUTOR } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { recordFigure } from "../figures.js";
import { eventually } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
const NS = "faults";
const GRACE = 4;

/**
 * Faults on a control plane of this file's own (it stops and restarts the apiserver and etcd),
 * with real agent, controller and Mosquitto processes. Each test asserts the end state.
 */
describe("faults", () => {
  let cp: ControlPlane;
  let kc: k8s.KubeConfig;
  let broker: MosquittoBroker;
  let sim: MqttDeviceSimulator;
  const sensors = new Map<string, SimulatedHomeAssistantDevice>();
  const processes: SpindleProcess[] = [];
  let devices: ResourceClient<Device & Obj>;
  let spinApps: ResourceClient<Obj>;
  let agentMetricsPort: number;
  const env = () => ({ KUBECONFIG: cp.kubeconfigPath });

  const appsByDevice = async () => {
    const items = (await spinApps.list(NS)).items;
    const by = new Map<string, Obj[]>();
    for (const s of items) {
      const d = s.metadata?.labels?.["spindle.dev/device"] ?? "";
      by.set(d, [...(by.get(d) ?? []), s]);
    }
    return { items, by };
  };
  const liveDevices = async () =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === "faults-mqtt");
  const sensor = async (id: string) =>
    sensors.set(id, await sim.homeAssistant({ id, component: "sensor", manufacturer: "Acme", availability: true }));
  const unplug = async (id: string) => {
    await sensors.get(id)?.remove();
    sensors.delete(id);
  };
  /** Every present sensor has exactly one Device and one SpinApp; nothing else exists. */
  let lastSeen = "";
  const converged = async (ids: string[]) => {
    const list = await liveDevices();
    const present = list.map((d) => d.spec.properties.MQTT_DEVICE_ID).sort();
    const { items, by } = await appsByDevice();
    lastSeen = `devices ${JSON.stringify(present)}, ${items.length} SpinApps`;
    if (JSON.stringify(present) !== JSON.stringify([...ids].sort())) return false;
    return items.length === ids.length && list.every((d) => by.get(d.metadata!.name!)?.length === 1);
  };
  const waitConverged = (what: string, ids: string[], timeoutMs: number) =>
    eventually(what, () => converged(ids), timeoutMs).catch((err: Error) => {
      throw new Error(`${err.message}; saw ${lastSeen}`);
    });
  const writes = async () => {
    const text = await (await fetch(`http://127.0.0.1:${agentMetricsPort}/metrics`)).text();
    return [...text.matchAll(/^spindle_api_writes_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
  };

  beforeAll(async () => {
    cp = await ControlPlane.start({ log: () => undefined });
    kc = cp.kubeConfig();
    devices = new ResourceClient(kc, DEVICES, "spindle-test");
    spinApps = new ResourceClient(kc, SPIN_APPS, "spindle-test");
    await kc.makeApiClient(k8s.CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
    await cp.installSpinRuntime(NS);
    broker = await startMosquitto();
    sim = new MqttDeviceSimulator({ url: broker.url });
    agentMetricsPort = await freePort();
    processes.push(
      await SpindleProcess.agent("edge-1", ["--http-address", `127.0.0.1:${agentMetricsPort}`], env()),
      await SpindleProcess.agent("edge-2", [], env()),
      await SpindleProcess.start(
        "controller-f1",
        ["controller", "--lease-namespace", NS, "--lease-seconds", "3", "--identity", "f1"],
        env(),
      ),
      await SpindleProcess.start(
        "controller-f2",
        ["controller", "--lease-namespace", NS, "--lease-seconds", "3", "--identity", "f2"],
        env(),
      ),
    );
    await new ResourceClient(kc, DEVICE_CONFIGURATIONS, "spindle-test").apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "faults-mqtt" },
      spec: {
        discoveryHandler: {
          name: "mqtt",
          discoveryDetails: { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
        },
        offlineGraceSeconds: GRACE,
      },
    });
    await new ResourceClient(kc, DEVICE_SPIN_APPS, "spindle-test").apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "app", namespace: NS },
      spec: {
        deviceConfiguration: "faults-mqtt",
        template: { spec: { image: "ghcr.io/acme/app:v1", executor: EXECUTOR, replicas: 1 } },
      },
    });
    for (const id of ["s1", "s2", "s3"]) await sensor(id);
    await waitConverged("three devices with one SpinApp each", ["s1", "s2", "s3"], 60_000);
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    await sim?.close();
    await broker?.stop();
    await cp?.stop();
  });

  it("converges after the apiserver and etcd stop while devices come and go, with the watch history compacted (410 Gone)", async () => {
    await cp.stopComponent("kube-apiserver");
    await cp.stopComponent("etcd");
    await unplug("s1");
    await sensor("s4");
    await sensor("s5");
    await new Promise((r) => setTimeout(r, 3000));
    await cp.restartComponent("etcd");
    await cp.compactEtcd();
    await cp.restartComponent("kube-apiserver");
    const restarted = Date.now();
    await waitConverged("s2..s5 with one SpinApp each, s1 gone, no duplicates", ["s2", "s3", "s4", "s5"], 120_000);
    recordFigure("convergence after apiserver+etcd restart", (Date.now() - restarted) / 1000, "s");
  });

  it("keeps every SpinApp when the MQTT broker restarts within the grace period", async () => {
    const before = (await appsByDevice()).items.map((s) => s.metadata!.uid).sort();
    await broker.stopProcess({ crash: true });
    await new Promise((r) => setTimeout(r, 1000));
    await broker.startProcess();
    await new Promise((r) => setTimeout(r, (GRACE + 3) * 1000));
    expect((await appsByDevice()).items.map((s) => s.metadata!.uid).sort()).toEqual(before);
  });

  it("tears down when the broker stays away beyond the grace period, and recovers when it returns", async () => {
    await broker.stopProcess({ crash: true });
    await eventually(
      "every Device and SpinApp gone",
      async () => (await liveDevices()).length === 0 && (await appsByDevice()).items.length === 0,
      60_000,
    );
    await broker.startProcess();
    const back = Date.now();
    await waitConverged("everything back", ["s2", "s3", "s4", "s5"], 60_000);
    recordFigure("recovery after broker outage beyond grace", (Date.now() - back) / 1000, "s");
  });

  it("creates at most one SpinApp while a device flaps every second, with a bounded write rate", async () => {
    const id = "flapper";
    await sensor(id);
    await waitConverged("the flapper bound", ["s2", "s3", "s4", "s5", id], 30_000);
    const app = (await appsByDevice()).items.find((s) =>
      (s.spec as { variables: { name: string; value: string }[] }).variables.some((v) => v.value === id),
    )!;
    const writesBefore = await writes();
    const started = Date.now();
    const device = sensors.get(id)!;
    for (let i = 0; i < 30; i++) {
      await device.setAvailable(i % 2 === 1);
      await new Promise((r) => setTimeout(r, 1000));
    }
    await device.setAvailable(true);
    const minutes = (Date.now() - started) / 60_000;
    const rate = (await writes()) - writesBefore;
    recordFigure("agent API writes while a device flaps every second", Math.round(rate / minutes), "writes/min");
    // Within the grace period a flap only reschedules timers: no teardown, no new SpinApp.
    const now = (await appsByDevice()).items.filter(
      (s) => s.metadata?.labels?.["spindle.dev/device"] === app.metadata?.labels?.["spindle.dev/device"],
    );
    expect(now.map((s) => s.metadata!.uid)).toEqual([app.metadata!.uid]);
    expect(rate, "writes while flapping").toBeLessThanOrEqual(5);
  });

  it("removes a deleted node from shared Devices (its extended resources go with the Node)", async () => {
    const core = kc.makeApiClient(k8s.CoreV1Api);
    await core.createNode({
      body: {
        metadata: { name: "edge-3", labels: { type: "kwok" }, annotations: { "kwok.x-k8s.io/node": "fake" } },
        status: {
          allocatable: { cpu: "8", memory: "16Gi", pods: "110" },
          capacity: { cpu: "8", memory: "16Gi", pods: "110" },
        },
      },
    });
    const agent3 = await SpindleProcess.agent("edge-3", [], env());
    processes.push(agent3);
    await eventually(
      "edge-3 in every Device",
      async () => (await liveDevices()).every((d) => d.spec.nodes.includes("edge-3")),
      30_000,
    );
    const uids = (await liveDevices()).map((d) => d.metadata!.uid).sort();
    await agent3.stop("SIGKILL"); // the node died with its agent
    await core.deleteNode({ name: "edge-3" });
    await eventually(
      "edge-3 gone from every Device",
      async () => (await liveDevices()).every((d) => !d.spec.nodes.includes("edge-3")),
      30_000,
    );
    expect((await liveDevices()).map((d) => d.metadata!.uid).sort(), "the Devices themselves stay").toEqual(uids);
  });

  it("lets the standby take over when the leader is killed, with no duplicate SpinApps", async () => {
    const lease = await kc
      .makeApiClient(k8s.CoordinationV1Api)
      .readNamespacedLease({ name: "spindle-controller", namespace: NS });
    const leader = processes.find((p) => p.name === `controller-${lease.spec?.holderIdentity}`)!;
    await leader.stop("SIGKILL");
    const killedAt = Date.now();
    await sensor("s6");
    await waitConverged("the standby to bind s6", ["s2", "s3", "s4", "s5", "flapper", "s6"], 60_000).catch(
      (err: Error) => {
        const standby = processes.find((p) => p.name.startsWith("controller-") && p !== leader);
        throw new Error(`${err.message}\nstandby log:\n${standby?.log().split("\n").slice(-15).join("\n")}`);
      },
    );
    const takeover = (Date.now() - killedAt) / 1000;
    recordFigure("leader killed -> standby binds a new device (lease 3 s)", Number(takeover.toFixed(1)), "s");
    const holder = (
      await kc.makeApiClient(k8s.CoordinationV1Api).readNamespacedLease({ name: "spindle-controller", namespace: NS })
    ).spec?.holderIdentity;
    expect(holder).not.toBe(lease.spec?.holderIdentity);
  });
});
