import type * as k8s from "@kubernetes/client-node";
import { afterAll, describe, expect, it } from "vitest";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { type MosquittoBroker, startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import type { Device } from "../../src/api/device.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import type { FaultProxy } from "../fault-proxy.js";
import { eventually, kubeConfig, sandboxFaultProxy, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

const DEVICES_N = 1000;
const BOUND = 100; // SpinApps: enough writes to matter, few enough Deployments for the shared sandbox

/**
 * One connection per process (issue 11): an agent publishing 1,000 devices and a controller
 * binding them each open at most 10 TLS connections to the apiserver (the bound); over
 * HTTP/2 it is one, plus the Lease elector's own. Each process talks through its own (calm)
 * proxy, which speaks HTTP/2 as the apiserver does and counts the TLS handshakes made to it.
 */
describe("connections", () => {
  const kc = kubeConfig();
  const processes: SpindleProcess[] = [];
  const proxies: FaultProxy[] = [];
  let broker: MosquittoBroker | undefined;
  let sim: MqttDeviceSimulator | undefined;
  let ns: Awaited<ReturnType<typeof testNamespace>> | undefined;
  const CONFIG = "conn-mqtt";
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");

  const proxied = async (seed: number) => {
    const link = await sandboxFaultProxy(seed);
    proxies.push(link.proxy);
    return link;
  };

  afterAll(async () => {
    for (const p of processes) await p.stop();
    for (const p of proxies) await p.stop();
    await sim?.close();
    await broker?.stop();
    await configs.delete(CONFIG).catch(() => undefined);
    await ns?.remove();
  });

  it(`an agent publishing ${DEVICES_N} devices and a controller binding them open one TLS connection each, and the Lease its own`, async () => {
    ns = await testNamespace("conn");
    broker = await startMosquitto();
    sim = new MqttDeviceSimulator({ url: broker.url });
    const client = await sim.connectClient();
    for (let i = 0; i < DEVICES_N; i++) {
      const id = `conn_${i}`;
      await client.publishAsync(
        `homeassistant/sensor/${id}/config`,
        JSON.stringify({ unique_id: id, state_topic: `sim/${id}/state`, device: { identifiers: [id] } }),
        { retain: true, qos: 0 },
      );
    }
    const agentLink = await proxied(1);
    const controllerLink = await proxied(2);
    const agent = await SpindleProcess.agent("edge-1", ["--handlers", "mqtt"], { KUBECONFIG: agentLink.kubeconfig });
    const controller = await SpindleProcess.start(
      "conn-controller",
      ["controller", "--lease-namespace", ns.name, "--identity", "conn"],
      { KUBECONFIG: controllerLink.kubeconfig },
    );
    processes.push(agent, controller);
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: CONFIG },
      spec: {
        discoveryHandler: {
          name: "mqtt",
          discoveryDetails: { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } },
        },
        offlineGraceSeconds: 60,
      },
    });
    await new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test").apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "conn-app", namespace: ns.name },
      spec: {
        deviceConfiguration: CONFIG,
        maxApps: BOUND,
        template: { spec: { image: "ghcr.io/acme/app:v1", executor: EXECUTOR, replicas: 1 } },
      },
    });

    const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
    const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
    await eventually(
      `${DEVICES_N} Devices`,
      async () => (await devices.list()).items.filter((d) => d.spec.configurationName === CONFIG).length === DEVICES_N,
      180_000,
    );
    await eventually(`${BOUND} SpinApps`, async () => (await spinApps.list(ns!.name)).items.length === BOUND, 120_000);
    // The requests went through the proxies: proof that the counts below are this run's.
    expect(agentLink.proxy.counts.requests).toBeGreaterThanOrEqual(DEVICES_N);
    expect(controllerLink.proxy.counts.requests).toBeGreaterThanOrEqual(2 * BOUND);
    expect(agentLink.proxy.counts.connections).toBeLessThanOrEqual(2);
    expect(controllerLink.proxy.counts.connections).toBeLessThanOrEqual(2);
    process.stderr.write(
      `[connections] agent ${agentLink.proxy.counts.connections} TLS connections for ${agentLink.proxy.counts.requests} requests; controller ${controllerLink.proxy.counts.connections} for ${controllerLink.proxy.counts.requests}\n`,
    );
  }, 420_000);
});
