import { randomBytes } from "node:crypto";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { FakeCamera, type FakeCameraOptions, fakeUuid } from "../../discovery-handlers/onvif/fake-camera.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { type NetnsProcess, TestNetwork } from "./netns.js";
import { SpindleProcess } from "./spindle-process.js";

/*
 * ONVIF cameras over real multicast: fake cameras on 127.0.0.x with the multicast interface set
 * to 127.0.0.1 and a real agent process; then a camera and two agents in three network
 * namespaces joined by a bridge. Other processes on this machine (unit tests) may run fake
 * cameras on loopback too, so every configuration is narrowed to this run's cameras (by UUID or
 * by a scope unique to this run) and assertions look only at them.
 */

type Obj = k8s.KubernetesObject & Record<string, unknown>;

const kc = kubeConfig();
const core = kc.makeApiClient(k8s.CoreV1Api);
const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");

const devicesOf = async (configuration: string) =>
  (await devices.list()).items.filter((d) => d.spec.configurationName === configuration);
const uuidsOf = async (configuration: string) =>
  (await devicesOf(configuration)).map((d) => d.spec.properties.ONVIF_DEVICE_UUID).sort();

function onvifConfiguration(
  name: string,
  discoveryDetails: Record<string, unknown>,
  extra: { discoveryProperties?: unknown[]; offlineGraceSeconds?: number } = {},
) {
  return configs.apply({
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceConfiguration",
    metadata: { name },
    spec: {
      discoveryHandler: {
        name: "onvif",
        discoveryDetails: { discoveryTimeoutSeconds: 0.5, requestTimeoutSeconds: 3, ...discoveryDetails },
        discoveryProperties: extra.discoveryProperties ?? [],
      },
      offlineGraceSeconds: extra.offlineGraceSeconds ?? 2,
    },
  });
}

/** The number of devices in the last set an agent's discovery for `configuration` reported (from its debug log). */
function lastSetSize(agent: { entries(): Record<string, unknown>[] }, configuration: string): number | undefined {
  const sets = agent.entries().filter((e) => e.msg === "device set" && e.configuration === configuration);
  const last = sets.at(-1)?.devices;
  return typeof last === "number" ? last : undefined;
}

const only = (...ids: string[]) => ({ uuids: { action: "Include", items: ids } });

/** Waits until the configuration has no Device; on timeout the failure shows what is left and the agents' device log lines. */
async function untilGone(configuration: string, what: string, agents: { log(): string }[]): Promise<void> {
  try {
    await eventually(what, async () => (await devicesOf(configuration)).length === 0, 20_000);
  } catch (err) {
    const left = (await devicesOf(configuration)).map((d) => ({ name: d.metadata.name, nodes: d.spec.nodes }));
    const logs = agents.map((a) =>
      a
        .log()
        .split("\n")
        .filter((l) => l.includes(configuration) || l.includes('"device'))
        .slice(-12)
        .join("\n"),
    );
    throw new Error(`${(err as Error).message}\nleft: ${JSON.stringify(left)}\n${logs.join("\n----\n")}`);
  }
}

describe("onvif over loopback multicast: fake cameras on 127.0.0.x, a real agent", () => {
  const run = randomBytes(3).toString("hex");
  const cameras: FakeCamera[] = [];
  const names: string[] = [];
  let agent: SpindleProcess;

  const camera = async (options: Partial<FakeCameraOptions>) => {
    const cam = await FakeCamera.start({ uuid: fakeUuid(), interface: "127.0.0.1", ...options });
    cameras.push(cam);
    return cam;
  };
  const configuration = (
    name: string,
    details: Record<string, unknown>,
    extra?: Parameters<typeof onvifConfiguration>[2],
  ) => {
    names.push(name);
    return onvifConfiguration(name, { interface: "127.0.0.1", ...details }, extra);
  };
  const discoveryRunning = (name: string) =>
    eventually(`the agent's first device set for ${name}`, async () => lastSetSize(agent, name) !== undefined);

  beforeAll(async () => {
    agent = await SpindleProcess.agent("edge-1", ["--handlers", "onvif"]);
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all(cameras.map((c) => c.stop({ bye: false })));
    for (const name of names) await configs.delete(name).catch(() => undefined);
    await eventually("this describe's Devices to be gone", async () => {
      const left = (await devices.list()).items.filter((d) => names.includes(d.spec.configurationName));
      return left.length === 0;
    });
  });

  it("publishes a camera that says Hello, with stream URI, UUID and MAC, and removes it after the grace period when it says Bye", async () => {
    const uuid = fakeUuid();
    // Probes only every hour: what the agent learns after its first round comes from Hello and Bye.
    await configuration("onvif-hello", { probeIntervalSeconds: 3600, ...only(uuid) });
    await discoveryRunning("onvif-hello");
    expect(await devicesOf("onvif-hello")).toEqual([]);

    const cam = await camera({
      uuid,
      ip: "127.0.0.11",
      mac: "02:5A:00:00:00:11",
      manufacturer: "Acme",
      model: "Dome-1",
      firmware: "2.4.1",
      serial: "SN-11",
    });
    const [device] = await eventually("the camera's Device", async () => {
      const list = await devicesOf("onvif-hello");
      return list.length === 1 ? list : undefined;
    });
    expect(device!.metadata.name).toMatch(/^onvif-hello-[0-9a-f]{12}$/);
    expect(device!.spec).toMatchObject({ handler: "onvif", shared: true, nodes: ["edge-1"], id: cam.id });
    expect(device!.spec.properties).toEqual({
      ONVIF_DEVICE_SERVICE_URL: cam.xaddr,
      ONVIF_DEVICE_UUID: cam.id,
      ONVIF_DEVICE_IP_ADDRESS: "127.0.0.11",
      ONVIF_DEVICE_MAC_ADDRESS: "02:5a:00:00:00:11",
      ONVIF_STREAM_URI: "rtsp://127.0.0.11:8554/profile_1",
      ONVIF_MANUFACTURER: "Acme",
      ONVIF_MODEL: "Dome-1",
      ONVIF_FIRMWARE_VERSION: "2.4.1",
      ONVIF_SERIAL_NUMBER: "SN-11",
      ONVIF_HARDWARE_ID: "fake-1",
      ONVIF_SCOPES: cam.scopes.join(" "),
    });

    const byeAt = Date.now();
    await cam.stop();
    await untilGone("onvif-hello", "the Device to go after Bye + grace", [agent]);
    expect(Date.now() - byeAt, "kept for offlineGraceSeconds").toBeGreaterThanOrEqual(2000);
  });

  it("removes a camera that goes silent without Bye after the next probe round and the grace period", async () => {
    const cam = await camera({ ip: "127.0.0.12", hello: false });
    await configuration("onvif-silence", { probeIntervalSeconds: 1, ...only(cam.id) });
    const [device] = await eventually("the probed camera's Device", async () => {
      const list = await devicesOf("onvif-silence");
      return list.length === 1 ? list : undefined;
    });
    expect(device!.spec.properties.ONVIF_STREAM_URI).toBe(cam.streamUri("profile_1"));

    const silentAt = Date.now();
    await cam.stop({ bye: false });
    await untilGone("onvif-silence", "the Device to go after silence + grace", [agent]);
    expect(Date.now() - silentAt, "a probe round plus the grace period").toBeGreaterThanOrEqual(2000);
    expect(agent.log()).toMatch(/no longer reported; keeping it for its grace period/);
  });

  it("probes on this node's own interface when nodeInterfaces names one", async () => {
    const cam = await camera({ ip: "127.0.0.13", hello: false });
    // The configuration-wide interface (TEST-NET-1, RFC 5737) is on no node here: edge-1 finds
    // the camera only through its own entry. Binding to it fails locally; nothing is sent.
    await configuration("onvif-per-node", {
      interface: "192.0.2.1",
      nodeInterfaces: { "edge-1": "127.0.0.1" },
      probeIntervalSeconds: 1,
      ...only(cam.id),
    });
    await eventually("the camera found over edge-1's interface", async () =>
      (await devicesOf("onvif-per-node")).some((d) => d.spec.properties.ONVIF_DEVICE_UUID === cam.id),
    );
    await cam.stop({ bye: false });
  });

  it("applies scope, MAC and UUID filters, Include and Exclude, each in its own configuration", async () => {
    const site = `onvif://www.onvif.org/location/spindle-${run}`;
    const mac = (n: number) => `02:${run.slice(0, 2)}:${run.slice(2, 4)}:${run.slice(4, 6)}:00:0${n}`;
    const a = await camera({
      ip: "127.0.0.21",
      mac: mac(1),
      scopes: [site, `onvif://www.onvif.org/name/Alpha-${run}`],
    });
    const b = await camera({ ip: "127.0.0.22", mac: mac(2), scopes: [site, `${site}-hall`] });
    const c = await camera({ ip: "127.0.0.23", mac: mac(3), scopes: [site] });
    const ours = only(a.id, b.id, c.id);

    // Include lists on their own name only this run's cameras; Exclude lists are narrowed to them.
    const cases: [string, Record<string, unknown>, FakeCamera[]][] = [
      ["onvif-scope-in", { scopes: { action: "Include", items: [`${site}-HALL`] } }, [b]],
      [
        "onvif-scope-ex",
        { ...ours, scopes: { action: "Exclude", items: [`onvif://www.onvif.org/name/Alpha-${run}`] } },
        [b, c],
      ],
      [
        "onvif-mac-in",
        { macAddresses: { action: "Include", items: [mac(3).toUpperCase().replaceAll(":", "-")] } },
        [c],
      ],
      ["onvif-mac-ex", { ...ours, macAddresses: { action: "Exclude", items: [mac(3)] } }, [a, b]],
      ["onvif-uuid-in", { uuids: { action: "Include", items: [a.address.toUpperCase()] } }, [a]],
      [
        "onvif-uuid-ex",
        { uuids: { action: "Exclude", items: [a.id] }, scopes: { action: "Include", items: [site] } },
        [b, c],
      ],
    ];
    for (const [name, details] of cases) await configuration(name, { probeIntervalSeconds: 5, ...details });

    for (const [name, , kept] of cases) {
      const want = kept.map((k) => k.id).sort();
      await eventually(`${name} to publish exactly ${want.length} camera(s)`, async () => {
        const got = await uuidsOf(name);
        // The handler's whole set for this configuration has exactly the kept cameras: the
        // others were seen (same probe round, same loopback) and filtered out.
        return JSON.stringify(got) === JSON.stringify(want) && lastSetSize(agent, name) === want.length;
      });
    }
    // An excluded camera is never published, in any later set either.
    await new Promise((r) => setTimeout(r, 1000));
    for (const [name, , kept] of cases) {
      expect(await uuidsOf(name), name).toEqual(kept.map((k) => k.id).sort());
      expect(lastSetSize(agent, name), name).toBe(kept.length);
    }
  });

  it("publishes what it knows about a camera that refuses the credentials from the Secret, with a DeviceIncomplete Event, reads it with a rotated password without a restart, and leaks the password nowhere", async () => {
    const ns = await testNamespace("onvif-creds");
    try {
      const wrong = `wrong-${randomBytes(8).toString("hex")}`;
      const right = `right-${randomBytes(8).toString("hex")}`;
      await core.createNamespacedSecret({
        namespace: ns.name,
        body: { metadata: { name: "camera-credentials" }, stringData: { username: "admin", password: wrong } },
      });
      const cam = await camera({ ip: "127.0.0.31", credentials: { username: "admin", password: right } });
      const fromSecret = (name: string) => ({
        name,
        valueFrom: { secretKeyRef: { name: "camera-credentials", namespace: ns.name, key: name } },
      });
      await configuration(
        "onvif-auth",
        { probeIntervalSeconds: 3600, ...only(cam.id) },
        { discoveryProperties: [fromSecret("username"), fromSecret("password")] },
      );

      const [device] = await eventually("the camera's Device", async () => {
        const list = await devicesOf("onvif-auth");
        return list.length === 1 ? list : undefined;
      });
      // What WS-Discovery and the unauthenticated GetSystemDateAndTime tell; nothing behind the login.
      expect(device!.spec.properties).toEqual({
        ONVIF_DEVICE_SERVICE_URL: cam.xaddr,
        ONVIF_DEVICE_UUID: cam.id,
        ONVIF_DEVICE_IP_ADDRESS: "127.0.0.31",
        ONVIF_SCOPES: cam.scopes.join(" "),
      });
      expect(cam.calls.GetDeviceInformation, "the agent did try to log in").toBeGreaterThanOrEqual(1);

      const event = await eventually("a DeviceIncomplete Event", async () => {
        const events = await core.listNamespacedEvent({
          namespace: "default",
          fieldSelector: "involvedObject.name=onvif-auth",
        });
        return events.items.find((e) => e.reason === "DeviceIncomplete");
      });
      expect(event.type).toBe("Warning");
      expect(event.message).toContain(device!.metadata.name);
      expect(event.message).toMatch(/not authori[sz]ed/i);
      expect(agent.log()).toMatch(/not fully read/);

      // Rotated to the right password: the same agent process reads the camera with it within
      // seconds (the Secret is watched; only this discovery restarts), never logging it.
      const pid = agent.pid;
      const rotatedAt = Date.now();
      await core.patchNamespacedSecret(
        { name: "camera-credentials", namespace: ns.name, body: { stringData: { password: right } } },
        k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
      );
      const read = await eventually(
        "the camera read with the rotated password",
        async () => {
          const [d] = await devicesOf("onvif-auth");
          return d?.spec.properties.ONVIF_STREAM_URI ? d : undefined;
        },
        15_000,
      );
      expect(read.spec.properties).toMatchObject({
        ONVIF_STREAM_URI: cam.streamUri("profile_1"),
        ONVIF_MANUFACTURER: expect.any(String),
      });
      expect(read.metadata.uid, "the same Device, updated").toBe(device!.metadata.uid);
      expect(agent.pid, "no agent restart").toBe(pid);
      expect(agent.running).toBe(true);
      expect(Date.now() - rotatedAt).toBeLessThan(15_000);
      expect(agent.log()).toMatch(/referenced Secret or ConfigMap changed; restarting discovery/);

      const everything = [
        JSON.stringify((await devices.list()).items),
        JSON.stringify((await core.listEventForAllNamespaces()).items),
        agent.log(),
      ].join("\n");
      expect(everything).toContain(cam.id); // the haystack is the right one
      expect(everything).not.toContain(wrong);
      expect(everything).not.toContain(right);
    } finally {
      await ns.remove();
    }
  });
});

describe("onvif across network namespaces: one camera, two agents in two namespaces", () => {
  let network: TestNetwork | undefined;
  const agents: NetnsProcess[] = [];
  const configName = "onvif-netns";

  beforeAll(async () => {
    // Fails (never skips) with the reason when namespaces cannot be created.
    network = await TestNetwork.create(["a", "b"]);
    const server = kc.getCurrentCluster()?.server;
    if (!server) throw new Error("the kubeconfig names no server");
    for (const [host, node] of [
      ["a", "edge-1"],
      ["b", "edge-2"],
    ] as const) {
      await network.forwardApiserver(host, server);
      agents.push(
        network.spawn(
          host,
          `agent-${node}`,
          [process.execPath, "bin/spindle.js", "agent", "--node", node, "--handlers", "onvif"],
          { KUBECONFIG: inject("kubeconfig"), LOG_LEVEL: "debug" },
        ),
      );
    }
  });

  afterAll(async () => {
    try {
      await network?.dispose();
    } finally {
      await configs.delete(configName).catch(() => undefined);
    }
  });

  it("publishes one shared Device listing both nodes, and removes it after the grace period when the camera says Bye", async () => {
    const net = network!;
    const uuid = fakeUuid();
    // No `interface`: one configuration serves both nodes, and their veth addresses differ; in
    // each agent namespace the 224.0.0.0/4 route picks eth0.
    await onvifConfiguration(configName, { probeIntervalSeconds: 3600, ...only(uuid) });
    for (const agent of agents) {
      await eventually(`${agent.name}'s first device set`, async () => {
        if (!agent.running) throw new Error(`${agent.name} exited:\n${agent.log()}`);
        return lastSetSize(agent, configName) !== undefined;
      });
    }

    const hub = net.host("c");
    const cam = net.spawnRole("c", "camera", "camera", [
      JSON.stringify({ uuid, ip: hub.address, interface: hub.address, mac: "02:00:0a:e9:00:01", model: "NS-1" }),
    ]);
    const ready = JSON.parse(await cam.line(/"ready"/)) as { id: string; xaddr: string; stream: string };

    const device = await eventually("one Device seen by edge-1 and edge-2", async () => {
      const list = await devicesOf(configName);
      return list.length === 1 && list[0]!.spec.nodes.length === 2 ? list[0] : undefined;
    });
    expect([...device.spec.nodes].sort()).toEqual(["edge-1", "edge-2"]);
    expect(device.spec.shared).toBe(true);
    expect(device.spec.properties).toMatchObject({
      ONVIF_DEVICE_UUID: ready.id,
      ONVIF_DEVICE_SERVICE_URL: ready.xaddr,
      ONVIF_DEVICE_IP_ADDRESS: hub.address,
      ONVIF_DEVICE_MAC_ADDRESS: "02:00:0a:e9:00:01",
      ONVIF_STREAM_URI: ready.stream,
      ONVIF_MODEL: "NS-1",
    });
    // Each agent saw it through its own namespace (Hello: the probe interval is an hour).
    for (const agent of agents) expect(lastSetSize(agent, configName), agent.name).toBe(1);

    const byeAt = Date.now();
    cam.send("stop");
    await cam.line(/"stopped"/);
    await untilGone(configName, "the shared Device to go after Bye + grace", agents);
    expect(Date.now() - byeAt, "kept for offlineGraceSeconds").toBeGreaterThanOrEqual(2000);
  });
});
