import { randomBytes } from "node:crypto";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig } from "./cluster.js";
import { type NetnsProcess, TestNetwork } from "./netns.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

/*
 * A zeroconf service advertised from one network namespace (the hub, c) and an agent for edge-1
 * in another (a), joined by a bridge: real mDNS multicast between them, the agent's configuration
 * naming its own veth address as the interface.
 */
describe("mdns across network namespaces: a service advertised and withdrawn elsewhere", () => {
  const kc = kubeConfig();
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const configName = "mdns-netns";
  const type = `spx-${randomBytes(3).toString("hex")}`;
  let network: TestNetwork | undefined;
  let agent: NetnsProcess;

  const devicesOf = async () => (await devices.list()).items.filter((d) => d.spec.configurationName === configName);
  const setsReported = () =>
    agent.entries().filter((e) => e.msg === "device set" && e.configuration === configName).length;

  beforeAll(async () => {
    // Fails (never skips) with the reason when namespaces cannot be created.
    network = await TestNetwork.create(["a"]);
    const server = kc.getCurrentCluster()?.server;
    if (!server) throw new Error("the kubeconfig names no server");
    await network.forwardApiserver("a", server);
    agent = network.spawn(
      "a",
      "agent-edge-1",
      [process.execPath, "bin/spindle.js", "agent", "--node", "edge-1", "--handlers", "mdns"],
      { KUBECONFIG: inject("kubeconfig"), LOG_LEVEL: "debug" },
    );
  });

  afterAll(async () => {
    try {
      await network?.dispose();
    } finally {
      await configs.delete(configName).catch(() => undefined);
    }
  });

  it("publishes the service with MDNS_* and TXT properties, and removes it after the grace period when it says goodbye", async () => {
    const net = network!;
    const hub = net.host("c");
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: configName },
      spec: {
        discoveryHandler: {
          name: "mdns",
          discoveryDetails: { serviceTypes: [`_${type}._tcp`], interface: net.host("a").address },
        },
        offlineGraceSeconds: 2,
      },
    });
    await eventually("the agent's first device set", async () => {
      if (!agent.running) throw new Error(`the agent exited:\n${agent.log()}`);
      return setsReported() > 0;
    });
    expect(await devicesOf()).toEqual([]);

    const advertiser = net.spawnRole("c", "advertiser", "advertise", [
      JSON.stringify({
        name: "Lab Printer",
        type,
        port: 9100,
        host: "lab-printer.local",
        txt: { model: "LX-1", "fw-version": "3.2" },
        interface: hub.address,
      }),
    ]);
    await advertiser.line(/"ready"/);

    const [device] = await eventually("the service's Device", async () => {
      const list = await devicesOf();
      return list.length === 1 ? list : undefined;
    });
    expect(device!.spec).toMatchObject({ handler: "mdns", shared: true, nodes: ["edge-1"] });
    const p = device!.spec.properties;
    expect(p).toMatchObject({
      MDNS_NAME: "Lab Printer",
      MDNS_HOST: "lab-printer.local",
      MDNS_PORT: "9100",
      MDNS_TYPE: `_${type}._tcp`,
      MDNS_TXT_MODEL: "LX-1",
      MDNS_TXT_FW_VERSION: "3.2",
    });
    // bonjour announces the advertiser's non-loopback addresses: in its namespace, the bridge's.
    expect(p.MDNS_ADDRESSES?.split(",")).toContain(hub.address);

    const goodbyeAt = Date.now();
    advertiser.send("stop");
    await advertiser.line(/"stopped"/);
    await eventually(
      "the Device to go after goodbye + grace",
      async () => (await devicesOf()).length === 0,
      20_000,
    ).catch(async (err: Error) => {
      const left = (await devicesOf()).map((d) => ({ name: d.metadata.name, nodes: d.spec.nodes }));
      const lines = agent
        .log()
        .split("\n")
        .filter((l) => l.includes(configName) || l.includes('"device'))
        .slice(-12);
      throw new Error(`${err.message}\nleft: ${JSON.stringify(left)}\n${lines.join("\n")}`);
    });
    expect(Date.now() - goodbyeAt, "kept for offlineGraceSeconds").toBeGreaterThanOrEqual(2000);
    expect(agent.log()).toMatch(/no longer reported; keeping it for its grace period/);
  });
});
