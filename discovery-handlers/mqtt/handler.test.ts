import { randomBytes } from "node:crypto";
import { createServer, type Server, Socket } from "node:net";
import { Aedes } from "aedes";
import { connectAsync } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { mqttHandler } from "./handler.js";
import { MqttDeviceSimulator } from "./mock.js";
import { type MosquittoBroker, startMosquitto } from "./mosquitto.js";
import { encodeSparkplugPayload, SparkplugDataType } from "./sparkplug-payload.js";
import { DiscoveryRun, sleep } from "./testing.js";

/**
 * The handler against a real Mosquitto (Debian package `mosquitto`), with simulated devices.
 * Each test uses its own topic prefixes, so retained messages from one do not leak into another.
 */

let broker: MosquittoBroker;
const runs: DiscoveryRun[] = [];
const simulators: MqttDeviceSimulator[] = [];

beforeAll(async () => {
  broker = await startMosquitto();
});

afterEach(async () => {
  await Promise.all(runs.splice(0).map((run) => run.stop()));
  await Promise.all(simulators.splice(0).map((simulator) => simulator.close()));
});

afterAll(async () => {
  await broker?.stop();
});

/** Unique prefixes per test; only the conventions asked for are on. */
function namespace() {
  const ns = `t${randomBytes(4).toString("hex")}`;
  return {
    ns,
    details(extra: Record<string, unknown> = {}, conventions: Record<string, unknown> = {}) {
      return {
        brokerUri: broker.url,
        homeAssistantPrefix: `${ns}-ha`,
        homiePrefix: `${ns}-homie`,
        sparkplugGroups: { action: "Include", items: [ns] },
        conventions: { homeAssistant: false, homie: false, sparkplug: false, ...conventions },
        ...extra,
      };
    },
  };
}

function run(details: unknown, properties: Record<string, string> = {}): DiscoveryRun {
  const discovery = new DiscoveryRun(details, properties);
  runs.push(discovery);
  return discovery;
}

function simulator(options: { url?: string; username?: string; password?: string } = {}): MqttDeviceSimulator {
  const sim = new MqttDeviceSimulator({ url: broker.url, ...options });
  simulators.push(sim);
  return sim;
}

describe("mqtt handler", () => {
  it("is the shared `mqtt` handler", () => {
    expect(mqttHandler.name).toBe("mqtt");
    expect(mqttHandler.shared).toBe(true);
  });

  describe("Home Assistant", () => {
    it("publishes a device per config, with its properties, in one set for the retained flood", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const prefix = `${ns}-ha`;
      await sim.homeAssistant({ id: "plug1", component: "switch", manufacturer: "Acme", model: "P1", prefix });
      await sim.homeAssistant({ id: "temp1", component: "sensor", abbreviate: true, availability: true, prefix });
      for (let i = 0; i < 50; i++) {
        await sim.homeAssistant({ id: `bulk${i}`, component: "light", availability: true, prefix, nodeId: "hub" });
      }
      const discovery = run(details({}, { homeAssistant: true }));
      await discovery.until("52 devices", (set) => set.length === 52);
      await sleep(300);
      expect(discovery.sets).toHaveLength(1);
      expect(discovery.device("mqtt:homeassistant:plug1")?.properties).toEqual({
        MQTT_BROKER_URI: broker.url,
        MQTT_DEVICE_ID: "plug1",
        MQTT_COMPONENT: "switch",
        MQTT_TOPIC: "sim/plug1/state",
        MQTT_COMMAND_TOPIC: "sim/plug1/set",
        MQTT_CONFIG_TOPIC: `${prefix}/switch/plug1/config`,
        MQTT_MANUFACTURER: "Acme",
        MQTT_MODEL: "P1",
        MQTT_DEVICE_NAME: "plug1",
      });
      expect(discovery.device("mqtt:homeassistant:temp1")?.properties).toMatchObject({
        MQTT_TOPIC: "sim/temp1/state",
        MQTT_AVAILABILITY_TOPIC: "sim/temp1/availability",
      });
    });

    it("removes a device on an empty config, and follows availability", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { homeAssistant: true }));
      await discovery.until("the first set", () => true);
      const prefix = `${ns}-ha`;
      const a = await sim.homeAssistant({ id: `${ns}a`, component: "switch", availability: true, prefix });
      const b = await sim.homeAssistant({ id: `${ns}b`, component: "switch", prefix });
      const [idA, idB] = [`mqtt:homeassistant:${ns}a`, `mqtt:homeassistant:${ns}b`];
      await discovery.untilHas([idA, idB]);
      await a.setAvailable(false);
      await discovery.untilGone([idA]);
      expect(discovery.ids()).toEqual([idB]);
      await a.setAvailable(true);
      await discovery.untilHas([idA]);
      await b.remove();
      await discovery.untilGone([idB]);
      expect(discovery.ids()).toEqual([idA]);
    });
  });

  describe("Home Assistant device spread over several entity configs", () => {
    it("publishes the device's details on each entity, and survives migration to device-based discovery", async () => {
      // See home-assistant.test.ts for the sources (Home Assistant's MQTT docs, Tasmota's discovery).
      const { ns, details } = namespace();
      const sim = simulator();
      const device = await sim.homeAssistantSharedDevice({
        id: `${ns}plug`,
        prefix: `${ns}-ha`,
        entities: [
          { component: "switch", objectId: "relay" },
          { component: "sensor", objectId: "power" },
          { component: "sensor", objectId: "rssi" },
        ],
        name: "Kitchen Plug",
        manufacturer: "Tasmota",
        model: "Sonoff S31",
        modelId: "S31",
        serialNumber: "A1B2C3",
        swVersion: "13.2.0",
        hwVersion: "ESP8266EX",
      });
      const discovery = run(details({}, { homeAssistant: true }));
      const ids = device.uniqueIds.map((u) => `mqtt:homeassistant:${u}`);
      await discovery.untilHas(ids);
      for (const id of ids) {
        expect(discovery.device(id)?.properties).toMatchObject({
          MQTT_MANUFACTURER: "Tasmota",
          MQTT_MODEL: "Sonoff S31",
          MQTT_MODEL_ID: "S31",
          MQTT_SERIAL_NUMBER: "A1B2C3",
          MQTT_SW_VERSION: "13.2.0",
          MQTT_HW_VERSION: "ESP8266EX",
          MQTT_DEVICE_NAME: "Kitchen Plug",
        });
      }
      const deviceTopic = await device.migrateToDeviceDiscovery();
      await discovery.until("entities from the device-based config", (set) =>
        ids.every((id) => set.find((d) => d.id === id)?.properties.MQTT_CONFIG_TOPIC === deviceTopic),
      );
      // No set during the migration held anything but these entities (no phantom device).
      for (const set of discovery.sets) {
        for (const d of set) expect(ids).toContain(d.id);
      }
    });
  });

  describe("Homie", () => {
    it("loses a Homie 5 bridge's whole tree through the bridge's last will, in any domain", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      // No homiePrefix: Homie 5 discovery covers every domain (+/5/+/$state).
      const discovery = run({ ...details({}, { homie: true }), homiePrefix: undefined });
      const domain = `${ns}-homie`;
      const bridge = await sim.homieBridge({ id: "zwave", children: ["dualrelay", "light1"], prefix: domain });
      const ids = ["zwave", "dualrelay", "light1"].map((id) => `mqtt:homie:${domain}/${id}`);
      await discovery.untilHas(ids);
      expect(discovery.device(ids[2]!)?.properties).toMatchObject({
        MQTT_TOPIC: `${domain}/5/light1`,
        MQTT_HOMIE_ROOT: "zwave",
      });
      await bridge.crash();
      await discovery.untilGone(ids);
    });

    it("publishes a device while ready; gone via its last will when its socket dies", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { homie: true }));
      await discovery.until("the first set", () => true);
      const device = await sim.homie({ id: `${ns}-thermo`, name: "Thermostat", prefix: `${ns}-homie` });
      const id = `mqtt:homie:${ns}-thermo`;
      await discovery.untilHas([id]);
      expect(discovery.device(id)?.properties).toEqual({
        MQTT_BROKER_URI: broker.url,
        MQTT_DEVICE_ID: `${ns}-thermo`,
        MQTT_TOPIC: `${ns}-homie/5/${ns}-thermo`,
        MQTT_DEVICE_NAME: "Thermostat",
        MQTT_HOMIE_VERSION: "5",
      });
      await device.disconnect({ graceful: false });
      await discovery.untilGone([id]);
    });

    it("gone on a graceful disconnect and on removal; v4 devices too", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { homie: true }));
      const prefix = `${ns}-homie`;
      const graceful = await sim.homie({ id: "g", prefix });
      const removed = await sim.homie({ id: "r", prefix, version: 4, name: "Old" });
      await discovery.untilHas(["mqtt:homie:g", "mqtt:homie:r"]);
      expect(discovery.device("mqtt:homie:r")?.properties).toMatchObject({
        MQTT_TOPIC: `${prefix}/r`,
        MQTT_DEVICE_NAME: "Old",
        MQTT_HOMIE_VERSION: "4",
      });
      await graceful.disconnect({ graceful: true });
      await discovery.untilGone(["mqtt:homie:g"]);
      await removed.remove();
      await discovery.untilGone(["mqtt:homie:r"]);
    });
  });

  describe("Sparkplug B", () => {
    it("follows NBIRTH/DBIRTH, DDEATH and the NDEATH will", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { sparkplug: true }));
      await discovery.until("the first set", () => true);
      const node = await sim.sparkplug({ group: ns, edgeNode: "edge1", devices: ["pump", "valve"] });
      const ids = [`mqtt:sparkplug:${ns}/edge1`, `mqtt:sparkplug:${ns}/edge1/pump`, `mqtt:sparkplug:${ns}/edge1/valve`];
      await discovery.untilHas(ids);
      expect(discovery.device(ids[1]!)?.properties).toEqual({
        MQTT_BROKER_URI: broker.url,
        MQTT_DEVICE_ID: `${ns}/edge1/pump`,
        MQTT_TOPIC: `spBv1.0/${ns}/DDATA/edge1/pump`,
        MQTT_COMMAND_TOPIC: `spBv1.0/${ns}/DCMD/edge1/pump`,
        MQTT_SPARKPLUG_GROUP: ns,
        MQTT_SPARKPLUG_EDGE_NODE: "edge1",
        MQTT_SPARKPLUG_DEVICE: "pump",
      });
      await node.removeDevice("valve");
      await discovery.untilGone([ids[2]!]);
      expect(discovery.ids()).toEqual(ids.slice(0, 2));
      await node.disconnect({ graceful: false });
      await discovery.untilGone(ids.slice(0, 2));
    });

    it("asks a node it joined late for a rebirth, and its devices appear", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      // The node was born before the handler started: births are not retained, so it only hears data.
      const node = await sim.sparkplug({ group: ns, edgeNode: "late", devices: ["d1"], dataIntervalMs: 100 });
      const discovery = run(details({}, { sparkplug: true }));
      await discovery.untilHas([`mqtt:sparkplug:${ns}/late`, `mqtt:sparkplug:${ns}/late/d1`]);
      expect(node.rebirths).toBeGreaterThanOrEqual(1);
    });

    it("ignores groups outside sparkplugGroups", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { sparkplug: true }));
      await discovery.until("the first set", () => true);
      await sim.sparkplug({ group: `${ns}-other`, edgeNode: "e", dataIntervalMs: 100 });
      await sim.sparkplug({ group: ns, edgeNode: "e" });
      await discovery.untilHas([`mqtt:sparkplug:${ns}/e`]);
      await sleep(300);
      expect(discovery.ids()).toEqual([`mqtt:sparkplug:${ns}/e`]);
    });
  });

  describe("plain topics", () => {
    it("a device per wildcard value, gone after silenceSeconds", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(details({}, { topics: [{ pattern: `${ns}/sensors/+/telemetry`, silenceSeconds: 1 }] }));
      const publisher = await sim.plainTopic({ topic: `${ns}/sensors/s1/telemetry`, intervalMs: 200 });
      await discovery.untilHas(["mqtt:topic:s1"]);
      expect(discovery.device("mqtt:topic:s1")?.properties).toEqual({
        MQTT_BROKER_URI: broker.url,
        MQTT_DEVICE_ID: "s1",
        MQTT_TOPIC: `${ns}/sensors/s1/telemetry`,
        MQTT_TOPIC_PATTERN: `${ns}/sensors/+/telemetry`,
      });
      // Still there after more than one silence period while it keeps publishing.
      await sleep(1500);
      expect(discovery.ids()).toEqual(["mqtt:topic:s1"]);
      const stoppedAt = Date.now();
      publisher.stop();
      await discovery.untilGone(["mqtt:topic:s1"]);
      expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(700);
    });
  });

  describe("filters", () => {
    it("deviceIds excludes by full or bare id", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const prefix = `${ns}-ha`;
      for (const id of ["keep", "drop1", "drop2"]) await sim.homeAssistant({ id, component: "switch", prefix });
      const discovery = run(
        details(
          { deviceIds: { action: "Exclude", items: ["drop1", "mqtt:homeassistant:drop2"] } },
          { homeAssistant: true },
        ),
      );
      await discovery.untilHas(["mqtt:homeassistant:keep"]);
      expect(discovery.ids()).toEqual(["mqtt:homeassistant:keep"]);
    });
  });

  describe("credentials", () => {
    it("logs in with username and password from discoveryProperties and never publishes or logs them", async () => {
      const secure = await startMosquitto({ users: { spindle: "s3cr3t-pass", device: "dev-pass" } });
      try {
        const { ns, details } = namespace();
        const sim = simulator({ url: secure.url, username: "device", password: "dev-pass" });
        await sim.homeAssistant({ id: "secured", component: "switch", prefix: `${ns}-ha` });
        const discovery = run(details({ brokerUri: secure.url }, { homeAssistant: true }), {
          username: "spindle",
          password: "s3cr3t-pass",
        });
        await discovery.untilHas(["mqtt:homeassistant:secured"]);
        const rejected = run(details({ brokerUri: secure.url }, { homeAssistant: true }), {
          username: "spindle",
          password: "wrong-pass",
        });
        await sleep(1000);
        expect(rejected.sets).toEqual([]);
        for (const r of [discovery, rejected]) {
          const everything = JSON.stringify(r.sets) + r.logs.join("");
          expect(everything).not.toContain("s3cr3t-pass");
          expect(everything).not.toContain("wrong-pass");
        }
        expect(discovery.device("mqtt:homeassistant:secured")?.properties.MQTT_BROKER_URI).toBe(secure.url);
        await Promise.all(runs.splice(0).map((r) => r.stop()));
        await Promise.all(simulators.splice(0).map((s) => s.close()));
      } finally {
        await secure.stop();
      }
    });
  });

  describe("broker restart", () => {
    it("reports no devices while the broker is down, then everything again after the reconnect", async () => {
      const restarting = await startMosquitto();
      try {
        const { ns, details } = namespace();
        const sim = simulator({ url: restarting.url });
        const prefix = `${ns}-ha`;
        await sim.homeAssistant({ id: "r-ha", component: "switch", prefix, availability: true });
        const leaving = await sim.homeAssistant({ id: "r-leaving", component: "switch", prefix });
        await sim.homie({ id: "r-homie", prefix: `${ns}-homie` });
        await sim.sparkplug({ group: ns, edgeNode: "r-edge", devices: ["r-dev"], dataIntervalMs: 200 });
        await sim.plainTopic({ topic: `${ns}/t/r-topic`, intervalMs: 200 });
        const discovery = run(
          details(
            { brokerUri: restarting.url },
            {
              homeAssistant: true,
              homie: true,
              sparkplug: true,
              topics: [{ pattern: `${ns}/t/+`, silenceSeconds: 2 }],
            },
          ),
        );
        const all = [
          "mqtt:homeassistant:r-ha",
          "mqtt:homeassistant:r-leaving",
          "mqtt:homie:r-homie",
          `mqtt:sparkplug:${ns}/r-edge`,
          `mqtt:sparkplug:${ns}/r-edge/r-dev`,
          "mqtt:topic:r-topic",
        ].sort();
        await discovery.until("all devices", (set) => set.length === all.length);
        expect(discovery.ids()).toEqual(all);
        const reconnects = () =>
          discovery.logs.filter((line) => line.includes("reconnected to the MQTT broker")).length;

        // 1. The broker dies (no wills): one empty set (the agent's grace period starts), then
        // nothing while it is away, longer than any silence period.
        await restarting.stopProcess({ crash: true });
        await discovery.until("the empty set after the loss", (set) => set.length === 0);
        const setsAfterLoss = discovery.sets.length;
        await sleep(3000);
        expect(discovery.sets.length).toBe(setsAfterLoss);
        expect(discovery.logs.join("")).toContain("lost the MQTT broker");
        // Reconnect attempts back off: the delay grows and is capped (100 ms doubling up to 1 s here).
        const delays = discovery.logs
          .filter((line) => line.includes("reconnecting to the MQTT broker"))
          .map((line) => JSON.parse(line).nextDelayMs as number);
        expect(delays.slice(0, 4)).toEqual([200, 400, 800, 1000]);
        expect(Math.max(...delays)).toBe(1000);
        await restarting.startProcess();
        await discovery.until("the reconnect", () => reconnects() === 1);
        await discovery.until("all devices back", (set) => set.length === all.length);
        await sleep(1500);
        // Retained state re-synced and Sparkplug reborn: the set holds every device and stays so.
        expect(discovery.ids()).toEqual(all);

        // 2. The broker is stopped cleanly: it sends the wills (Homie lost, Sparkplug NDEATH), so those
        // devices are really gone until they reconnect. Nothing is yielded while the broker is away.
        await restarting.stopProcess();
        await discovery.until("the empty set after the clean stop", (set) => set.length === 0);
        const setsWhileDown = discovery.sets.length;
        await sleep(1500);
        expect(discovery.sets.length).toBe(setsWhileDown);
        await restarting.startProcess();
        await discovery.until("the second reconnect", () => reconnects() === 2);
        await discovery.until("all devices back", (set) => set.length === all.length);

        // 3. And it stays in sync with changes.
        await leaving.remove();
        await sim.homeAssistant({ id: "r-new", component: "switch", prefix });
        await discovery.untilHas(["mqtt:homeassistant:r-new"]);
        await discovery.untilGone(["mqtt:homeassistant:r-leaving"]);
        await Promise.all(runs.splice(0).map((r) => r.stop()));
        await Promise.all(simulators.splice(0).map((s) => s.close()));
      } finally {
        await restarting.stop();
      }
    });
  });

  describe("bad input", () => {
    it("drops oversized messages, truncated protobuf and invalid JSON without harm", async () => {
      const { ns, details } = namespace();
      const sim = simulator();
      const discovery = run(
        details({}, { homeAssistant: true, sparkplug: true, topics: [{ pattern: `${ns}/t/+`, silenceSeconds: 30 }] }),
      );
      await discovery.until("the first set", () => true);
      const big = Buffer.alloc(10 * 1024 * 1024, 0x7b);
      await sim.publish(`${ns}-ha/switch/huge/config`, big);
      await sim.publish(`${ns}/t/huge`, big);
      const birth = encodeSparkplugPayload({
        seq: 0,
        metrics: [{ name: "bdSeq", datatype: SparkplugDataType.Int64, value: 0 }],
      });
      await sim.publish(`spBv1.0/${ns}/NBIRTH/truncated`, birth.subarray(0, 12));
      await sim.publish(`${ns}-ha/switch/broken/config`, "{not json", { retain: true });
      await sim.publish(`${ns}-ha/switch/binary/config`, Buffer.from([0xff, 0xfe, 0x00]), { retain: true });
      // A valid device after all that shows the handler is still working.
      await sim.homeAssistant({ id: `${ns}-ok`, component: "switch", prefix: `${ns}-ha` });
      await discovery.untilHas([`mqtt:homeassistant:${ns}-ok`]);
      expect(discovery.ids()).toEqual([`mqtt:homeassistant:${ns}-ok`]);
      const logs = discovery.logs.join("");
      expect(logs).toContain("larger than maxPayloadBytes");
      expect(logs).toContain("not valid protobuf");
      expect(logs).toContain("not valid JSON");
      expect(logs).toContain("not UTF-8");
    });

    it("survives a client sending a non-UTF-8 topic to Mosquitto (which drops that client)", async () => {
      const { ns, details } = namespace();
      const discovery = run(details({}, { topics: [{ pattern: `${ns}/+`, silenceSeconds: 30 }] }));
      await discovery.until("the first set", () => true);
      await rawPublish(broker.port, Buffer.concat([Buffer.from(`${ns}/`), Buffer.from([0xff, 0xfe])]));
      const sim = simulator();
      await sim.plainTopic({ topic: `${ns}/fine`, intervalMs: 200 });
      await discovery.untilHas(["mqtt:topic:fine"]);
      expect(discovery.ids()).toEqual(["mqtt:topic:fine"]);
    });
  });

  describe("lifecycle", () => {
    it("ends the iterator and disconnects when the signal aborts", async () => {
      const { details } = namespace();
      const discovery = run(details({}, { homeAssistant: true }));
      await discovery.until("the first set", () => true);
      const started = Date.now();
      await discovery.stop();
      expect(Date.now() - started).toBeLessThan(2000);
    });

    it("ends at once when the signal is already aborted, and keeps retrying an absent broker", async () => {
      const controller = new AbortController();
      controller.abort();
      const details = mqttHandler.detailsSchema.parse({ brokerUri: "mqtt://127.0.0.1:1" });
      const { pino } = await import("pino");
      const iterator = mqttHandler.discover({
        details,
        properties: {},
        signal: controller.signal,
        log: pino({ level: "silent" }),
      });
      for await (const _ of iterator) throw new Error("no set expected");
      const absent = run({ brokerUri: "mqtt://127.0.0.1:1" });
      await sleep(500);
      expect(absent.sets).toEqual([]);
    });
  });
});

describe("keepalive while the broker is busy", () => {
  it("keeps a connection whose PINGRESP arrives late behind a stream of messages, and keeps pinging", async () => {
    // The broker's answers to pings wait 4 s, as behind a flood of retained messages; the
    // keepalive (2 s) would time the connection out 1 s after each ping.
    const proxy = await delayingProxy(broker.port, 4_000);
    try {
      const { ns, details } = namespace();
      const discovery = new DiscoveryRun(
        details({ brokerUri: proxy.url }, { homeAssistant: true }),
        {},
        {
          keepaliveSeconds: 2,
        },
      );
      runs.push(discovery);
      await discovery.until("the first set", () => true);
      const sim = simulator();
      const stop = Date.now() + 8_000;
      for (let i = 0; Date.now() < stop; i++) {
        await sim.homeAssistant({ id: `${ns}k${i % 5}`, component: "sensor", prefix: `${ns}-ha` });
        await sleep(100);
      }
      expect(discovery.logs.filter((l) => l.includes("lost the MQTT broker"))).toEqual([]);
      expect(discovery.ids()).toHaveLength(5);
      // Pings still reach the broker (it would drop a silent client after 1.5 × keepalive).
      expect(proxy.pings()).toBeGreaterThanOrEqual(3);
    } finally {
      proxy.close();
    }
  }, 20_000);
});

/**
 * A TCP proxy to the broker that holds back each PINGRESP for `delayMs` and counts the client's
 * PINGREQs; every other MQTT packet passes at once.
 */
async function delayingProxy(
  port: number,
  delayMs: number,
): Promise<{ url: string; pings: () => number; close: () => void }> {
  let pings = 0;
  const sockets = new Set<Socket>();
  /** Splits whole MQTT packets off the front of `buf` (fixed header + remaining length). */
  const split = (buf: Buffer): [Buffer[], Buffer] => {
    const packets: Buffer[] = [];
    let at = 0;
    for (;;) {
      let length = 0;
      let multiplier = 1;
      let i = at + 1;
      for (; i < buf.length && i < at + 5; i++) {
        length += (buf[i]! & 127) * multiplier;
        multiplier *= 128;
        if (!(buf[i]! & 128)) break;
      }
      if (i >= buf.length || buf.length < i + 1 + length) break;
      packets.push(buf.subarray(at, i + 1 + length));
      at = i + 1 + length;
    }
    return [packets, buf.subarray(at)];
  };
  const server: Server = createServer((client) => {
    const upstream = new Socket();
    sockets.add(client).add(upstream);
    upstream.connect(port, "127.0.0.1");
    let down: Buffer = Buffer.alloc(0);
    let up: Buffer = Buffer.alloc(0);
    upstream.on("data", (chunk: Buffer) => {
      const [packets, rest] = split(Buffer.concat([down, chunk]));
      down = rest;
      for (const packet of packets) {
        if (packet[0]! >> 4 === 13) setTimeout(() => client.writable && client.write(packet), delayMs);
        else client.write(packet);
      }
    });
    client.on("data", (chunk: Buffer) => {
      const [packets, rest] = split(Buffer.concat([up, chunk]));
      up = rest;
      for (const packet of packets) {
        if (packet[0]! >> 4 === 12) pings++;
        upstream.write(packet);
      }
    });
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      a.on("close", () => b.destroy());
      a.on("error", () => b.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as { port: number };
  return {
    url: `mqtt://127.0.0.1:${address.port}`,
    pings: () => pings,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe("with aedes (MQTT 3.1.1, forwards non-UTF-8 topics)", () => {
  let server: Server;
  let aedes: Aedes;
  let url: string;

  beforeAll(async () => {
    aedes = await Aedes.createBroker();
    server = createServer(aedes.handle);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    const address = server.address();
    url = `mqtt://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("ignores a message whose topic bytes are not UTF-8", async () => {
    const discovery = run({
      brokerUri: url,
      conventions: { homeAssistant: false, homie: false, sparkplug: false, topics: ["bad/+"] },
    });
    await discovery.until("the first set", () => true);
    const port = Number(new URL(url).port);
    await rawPublish(port, Buffer.concat([Buffer.from("bad/"), Buffer.from([0xff, 0xfe])]));
    const publisher = await connectAsync(url, { protocolVersion: 4 });
    try {
      await publisher.publishAsync("bad/good", "x");
      await discovery.untilHas(["mqtt:topic:good"]);
      expect(discovery.ids()).toEqual(["mqtt:topic:good"]);
      expect(discovery.logs.join("")).toContain("topic is not UTF-8");
    } finally {
      await publisher.endAsync();
    }
  });
});

/** CONNECT + PUBLISH (QoS 0) written by hand, so the topic can hold any bytes. */
async function rawPublish(port: number, topic: Buffer, payload = Buffer.from("x")): Promise<void> {
  const socket = new Socket();
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.connect(port, "127.0.0.1", () => resolve());
  });
  const clientId = Buffer.from(`raw-${randomBytes(4).toString("hex")}`);
  const connectBody = Buffer.concat([
    Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2, 0, 60, 0, clientId.length]),
    clientId,
  ]);
  const publishBody = Buffer.concat([Buffer.from([topic.length >> 8, topic.length & 255]), topic, payload]);
  socket.write(Buffer.concat([Buffer.from([0x10, connectBody.length]), connectBody]));
  await sleep(100);
  socket.write(Buffer.concat([Buffer.from([0x30, publishBody.length]), publishBody]));
  await sleep(100);
  socket.destroy();
}
