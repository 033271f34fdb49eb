import { describe, expect, it } from "vitest";
import { HomieConvention, parseHomieMessage, parseHomieTopic } from "./homie.js";

const options = { prefix: "homie" };
const message = (topic: string, payload: string, retained = true) => ({
  topic,
  payload: Buffer.from(payload),
  retained,
});

describe("parseHomieMessage", () => {
  it("reads v5 $state and $description", () => {
    expect(parseHomieMessage("homie/5/dev-1/$state", Buffer.from("ready"), true, options)).toEqual({
      updates: [{ type: "state", version: "5", domain: "homie", device: "dev-1", state: "ready" }],
    });
    const description = Buffer.from(JSON.stringify({ homie: "5.0", version: 3, name: "Thermostat", nodes: {} }));
    expect(parseHomieMessage("homie/5/dev-1/$description", description, true, options).updates).toEqual([
      { type: "description", version: "5", domain: "homie", device: "dev-1", name: "Thermostat" },
    ]);
  });

  it("reads v3/v4 $state and $name", () => {
    expect(parseHomieMessage("homie/old/$state", Buffer.from("lost"), false, options).updates).toEqual([
      { type: "state", version: "4", domain: "homie", device: "old", state: "lost" },
    ]);
    expect(parseHomieMessage("homie/old/$name", Buffer.from("Old one"), true, options).updates).toEqual([
      { type: "description", version: "4", domain: "homie", device: "old", name: "Old one" },
    ]);
  });

  it("treats an empty $state as removal", () => {
    expect(parseHomieMessage("homie/5/d/$state", Buffer.alloc(0), false, options).updates).toEqual([
      { type: "state", version: "5", domain: "homie", device: "d", state: undefined },
    ]);
  });

  it("ignores unknown states, bad JSON, $broadcast and other topics, without throwing", () => {
    expect(parseHomieMessage("homie/5/d/$state", Buffer.from("exploded"), true, options).problem?.level).toBe("warn");
    expect(parseHomieMessage("homie/5/d/$description", Buffer.from("{"), true, options).problem?.level).toBe("warn");
    expect(parseHomieTopic("homie/5/$broadcast/$state", "homie")).toBeUndefined();
    expect(parseHomieMessage("homie/5/d/node/prop", Buffer.from("1"), true, options).updates).toEqual([]);
    expect(parseHomieMessage("other/5/d/$state", Buffer.from("ready"), true, options).updates).toEqual([]);
  });
});

describe("Homie 5 device trees, discovery and names", () => {
  // The Homie 5 convention (https://homieiot.github.io/specification/, develop branch of
  // https://github.com/homieiot/convention): "Device hierarchy" gives this example, a ZWave
  // bridge with a dual relay controlling two lights; each child's $description names its root
  // (and its parent when that is not the root). "If a root-device $state is "lost" then the state
  // of every child device in its tree is also "lost"" ("Device Lifecycle"); the root's last will
  // sets only its own $state. The fixtures are written from that table.
  const description = (name: string, extra: object = {}) =>
    JSON.stringify({ homie: "5.0", version: 1, name, nodes: {}, ...extra });
  const tree = (homie: HomieConvention, domain = "homie") => {
    const publish = (id: string, json: string) => {
      homie.receive(message(`${domain}/5/${id}/$description`, json), 0);
      homie.receive(message(`${domain}/5/${id}/$state`, "ready"), 0);
    };
    publish("bridge", description("Zwave bridge", { children: ["dualrelay"] }));
    publish("dualrelay", description("Zwave relay", { children: ["light1", "light2"], root: "bridge" }));
    publish("light1", description("First light", { root: "bridge", parent: "dualrelay" }));
    publish("light2", description("Second light", { root: "bridge", parent: "dualrelay" }));
  };
  const ids = (homie: HomieConvention) => homie.devices(0).map((d) => d.properties.MQTT_DEVICE_ID);

  it("loses the whole tree when the root goes lost, and brings it back when the root is ready", () => {
    const homie = new HomieConvention(options);
    tree(homie);
    expect(ids(homie)).toEqual(["bridge", "dualrelay", "light1", "light2"]);
    expect(homie.devices(0)[2]?.properties.MQTT_HOMIE_ROOT).toBe("bridge");
    // The bridge's last will: only its own $state changes.
    homie.receive(message("homie/5/bridge/$state", "lost", false), 0);
    expect(ids(homie)).toEqual([]);
    homie.receive(message("homie/5/bridge/$state", "ready", false), 0);
    expect(ids(homie)).toEqual(["bridge", "dualrelay", "light1", "light2"]);
    // Only `lost` spreads: a cleanly disconnected root leaves its children to their own state.
    homie.receive(message("homie/5/bridge/$state", "disconnected", false), 0);
    expect(ids(homie)).toEqual(["dualrelay", "light1", "light2"]);
    // A child's own state still counts.
    homie.receive(message("homie/5/light2/$state", "lost", false), 0);
    expect(ids(homie)).toEqual(["dualrelay", "light1"]);
  });

  it("discovers every domain by default (+/5/+/$state), a configured prefix restricts it", () => {
    const all = new HomieConvention({});
    expect(all.subscriptions()).toContain("+/5/+/$state");
    all.receive(message("homie/5/thermo/$state", "ready"), 0);
    all.receive(message("acme/5/thermo/$state", "ready"), 0);
    // Same device id in two domains: two devices; ids outside `homie` carry their domain.
    expect(all.devices(0).map((d) => [d.id, d.properties.MQTT_TOPIC])).toEqual([
      ["mqtt:homie:acme/thermo", "acme/5/thermo"],
      ["mqtt:homie:thermo", "homie/5/thermo"],
    ]);
    tree(all, "acme");
    all.receive(message("acme/5/bridge/$state", "lost", false), 0);
    expect(all.devices(0).map((d) => d.id)).toEqual(["mqtt:homie:acme/thermo", "mqtt:homie:thermo"]);

    const one = new HomieConvention({ prefix: "acme" });
    expect(one.subscriptions()).toContain("acme/5/+/$state");
    expect(one.subscriptions()).not.toContain("+/5/+/$state");
    one.receive(message("acme/5/thermo/$state", "ready"), 0);
    one.receive(message("homie/5/thermo/$state", "ready"), 0);
    expect(one.devices(0).map((d) => d.id)).toEqual(["mqtt:homie:thermo"]);
  });

  it("names a device without a name by its id", () => {
    const homie = new HomieConvention(options);
    homie.receive(message("homie/5/bare-sensor/$description", JSON.stringify({ homie: "5.0", version: 2 })), 0);
    homie.receive(message("homie/5/bare-sensor/$state", "ready"), 0);
    homie.receive(message("homie/5/blank/$description", description("  ")), 0);
    homie.receive(message("homie/5/blank/$state", "ready"), 0);
    homie.receive(message("homie/5/silent/$state", "init"), 0);
    expect(homie.devices(0).map((d) => [d.properties.MQTT_DEVICE_ID, d.properties.MQTT_DEVICE_NAME])).toEqual([
      ["bare-sensor", "bare-sensor"],
      ["blank", "blank"],
      ["silent", "silent"],
    ]);
  });
});

describe("HomieConvention", () => {
  it("shows devices while init, ready or sleeping; lost and disconnected mean gone", () => {
    const homie = new HomieConvention(options);
    homie.receive(message("homie/5/dev-1/$description", JSON.stringify({ name: "Dev one" })), 0);
    expect(homie.devices(0)).toEqual([]);
    homie.receive(message("homie/5/dev-1/$state", "ready"), 0);
    expect(homie.devices(0)).toEqual([
      {
        id: "mqtt:homie:dev-1",
        properties: {
          MQTT_DEVICE_ID: "dev-1",
          MQTT_TOPIC: "homie/5/dev-1",
          MQTT_DEVICE_NAME: "Dev one",
          MQTT_HOMIE_VERSION: "5",
        },
      },
    ]);
    homie.receive(message("homie/5/dev-1/$state", "sleeping", false), 0);
    expect(homie.devices(0)).toHaveLength(1);
    homie.receive(message("homie/5/dev-1/$state", "lost", false), 0);
    expect(homie.devices(0)).toEqual([]);
    homie.receive(message("homie/5/dev-1/$state", "ready", false), 0);
    homie.receive(message("homie/5/dev-1/$state", "disconnected", false), 0);
    expect(homie.devices(0)).toEqual([]);
  });

  it("forgets a device whose $state and $description are cleared", () => {
    const homie = new HomieConvention(options);
    homie.receive(message("homie/5/d/$state", "ready"), 0);
    homie.receive(message("homie/5/d/$state", "", false), 0);
    homie.receive(message("homie/5/d/$description", "", false), 0);
    expect(homie.devices(0)).toEqual([]);
  });

  it("supports v4 devices and a custom prefix", () => {
    const homie = new HomieConvention({ prefix: "house/devices" });
    expect(homie.subscriptions()).toContain("house/devices/5/+/$state");
    homie.receive(message("house/devices/lamp/$state", "ready"), 0);
    homie.receive(message("house/devices/lamp/$name", "Lamp"), 0);
    expect(homie.devices(0)[0]?.properties).toMatchObject({
      MQTT_TOPIC: "house/devices/lamp",
      MQTT_DEVICE_NAME: "Lamp",
      MQTT_HOMIE_VERSION: "4",
    });
  });

  it("rebuilds from retained messages after a reconnect", () => {
    const homie = new HomieConvention(options);
    homie.receive(message("homie/5/d/$state", "ready"), 0);
    homie.connected(0, false);
    expect(homie.devices(0)).toEqual([]);
  });
});
