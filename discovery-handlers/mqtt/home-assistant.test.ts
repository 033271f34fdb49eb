import { describe, expect, it } from "vitest";
import {
  HomeAssistantConvention,
  type HomeAssistantUpdate,
  parseHomeAssistantMessage,
  valueJsonPath,
} from "./home-assistant.js";

const options = { prefix: "homeassistant" };
const json = (value: unknown) => Buffer.from(JSON.stringify(value));

function configured(topic: string, payload: Buffer) {
  const result = parseHomeAssistantMessage(topic, payload, true, options);
  expect(result.problem).toBeUndefined();
  const [update] = result.updates as Extract<HomeAssistantUpdate, { type: "configured" }>[];
  expect(update?.type).toBe("configured");
  return update!;
}

describe("parseHomeAssistantMessage", () => {
  it("turns a config into an entity with Akri-style properties", () => {
    const update = configured(
      "homeassistant/switch/plug1/config",
      json({
        name: "Plug",
        unique_id: "plug-1",
        state_topic: "plugs/1/state",
        command_topic: "plugs/1/set",
        device: { identifiers: ["dev-1"], manufacturer: "Acme", model: "P1", name: "Kitchen plug" },
      }),
    );
    expect(update.entities).toEqual([
      {
        key: "homeassistant/switch/plug1/config",
        id: "mqtt:homeassistant:plug-1",
        availability: [],
        availabilityMode: "latest",
        properties: {
          MQTT_DEVICE_ID: "plug-1",
          MQTT_COMPONENT: "switch",
          MQTT_TOPIC: "plugs/1/state",
          MQTT_COMMAND_TOPIC: "plugs/1/set",
          MQTT_CONFIG_TOPIC: "homeassistant/switch/plug1/config",
          MQTT_MANUFACTURER: "Acme",
          MQTT_MODEL: "P1",
          MQTT_DEVICE_NAME: "Kitchen plug",
        },
      },
    ]);
  });

  it("expands abbreviations and the ~ base topic", () => {
    const update = configured(
      "homeassistant/sensor/node7/temp/config",
      json({
        "~": "home/node7",
        name: "Temperature",
        uniq_id: "node7-temp",
        stat_t: "~/temp",
        cmd_t: "~/set",
        avty: [{ t: "~/status", pl_avail: "up", pl_not_avail: "down" }],
        dev: { ids: "node7", mf: "DIY", mdl: "ESP32", sn: "123" },
      }),
    );
    const [entity] = update.entities;
    expect(entity?.properties).toMatchObject({
      MQTT_TOPIC: "home/node7/temp",
      MQTT_COMMAND_TOPIC: "home/node7/set",
      MQTT_AVAILABILITY_TOPIC: "home/node7/status",
      MQTT_MANUFACTURER: "DIY",
      MQTT_MODEL: "ESP32",
      MQTT_SERIAL_NUMBER: "123",
      MQTT_DEVICE_NAME: "Temperature",
    });
    expect(entity?.availability).toEqual([{ topic: "home/node7/status", available: "up", notAvailable: "down" }]);
  });

  it("takes the id from unique_id, then device identifiers, then connections, then the topic", () => {
    const id = (config: unknown) => configured("homeassistant/light/l1/config", json(config)).entities[0]?.id;
    expect(id({ unique_id: "u", device: { identifiers: ["d"] } })).toBe("mqtt:homeassistant:u");
    expect(id({ device: { identifiers: ["d", "e"] } })).toBe("mqtt:homeassistant:d");
    expect(id({ device: { connections: [["mac", "aa:bb"]] } })).toBe("mqtt:homeassistant:mac:aa:bb");
    expect(id({ name: "x" })).toBe("mqtt:homeassistant:light/l1");
  });

  it("treats an empty config, retained or live, as removal", () => {
    for (const retained of [true, false]) {
      expect(parseHomeAssistantMessage("homeassistant/switch/a/config", Buffer.alloc(0), retained, options)).toEqual({
        updates: [{ type: "removed", configTopic: "homeassistant/switch/a/config" }],
      });
    }
  });

  it("ignores other topics and reports invalid JSON without throwing", () => {
    expect(parseHomeAssistantMessage("homeassistant/status", json("online"), false, options).updates).toEqual([]);
    expect(parseHomeAssistantMessage("other/switch/a/config", json({}), false, options).updates).toEqual([]);
    expect(parseHomeAssistantMessage("homeassistant/a/b/c/d/config", json({}), false, options).updates).toEqual([]);
    const bad = parseHomeAssistantMessage("homeassistant/switch/a/config", Buffer.from("{nope"), true, options);
    expect(bad.updates).toEqual([]);
    expect(bad.problem?.level).toBe("warn");
    const notUtf8 = parseHomeAssistantMessage(
      "homeassistant/switch/a/config",
      Buffer.from([0xff, 0xfe]),
      true,
      options,
    );
    expect(notUtf8.problem?.message).toMatch(/UTF-8/);
    const array = parseHomeAssistantMessage("homeassistant/switch/a/config", json([1, 2]), true, options);
    expect(array.problem?.message).toMatch(/object/);
  });

  it("reads device-based discovery: one entity per component", () => {
    const update = configured(
      "homeassistant/device/hub1/config",
      json({
        dev: { ids: "hub1", mf: "Acme", name: "Hub" },
        o: { name: "firmware" },
        avty_t: "hub1/avail",
        state_topic: "hub1/state",
        cmps: {
          temp: { p: "sensor", uniq_id: "hub1-temp", val_tpl: "{{ value_json.t }}" },
          relay: { p: "switch", uniq_id: "hub1-relay", cmd_t: "hub1/relay/set" },
          gone: { p: "sensor" },
        },
      }),
    );
    expect(update.entities.map((e) => [e.key, e.id, e.properties.MQTT_COMPONENT, e.properties.MQTT_TOPIC])).toEqual([
      ["homeassistant/device/hub1/config#temp", "mqtt:homeassistant:hub1-temp", "sensor", "hub1/state"],
      ["homeassistant/device/hub1/config#relay", "mqtt:homeassistant:hub1-relay", "switch", "hub1/state"],
    ]);
    expect(update.entities[1]?.properties.MQTT_COMMAND_TOPIC).toBe("hub1/relay/set");
    expect(update.entities[0]?.availability).toEqual([
      { topic: "hub1/avail", available: "online", notAvailable: "offline" },
    ]);
  });

  it("drops availability topics with wildcards and availability templates it cannot evaluate", () => {
    const update = configured(
      "homeassistant/switch/a/config",
      json({
        unique_id: "a",
        availability: [
          { topic: "#" },
          { topic: "z2m/bridge/state", value_template: "{{ value_json.state }}" },
          { topic: "x/avail", value_template: "{{ value | upper }}" },
        ],
      }),
    );
    expect(update.entities[0]?.availability).toEqual([
      { topic: "z2m/bridge/state", available: "online", notAvailable: "offline", jsonPath: ["state"] },
    ]);
  });

  it("understands simple value_json templates", () => {
    expect(valueJsonPath("{{ value_json.state }}")).toEqual(["state"]);
    expect(valueJsonPath("{{value_json['a b'].c}}")).toEqual(["a b", "c"]);
    expect(valueJsonPath("{{ value }}")).toBeUndefined();
    expect(valueJsonPath(42)).toBeUndefined();
  });
});

describe("HomeAssistantConvention", () => {
  const message = (topic: string, payload: string | Buffer, retained = true) => ({
    topic,
    payload: typeof payload === "string" ? Buffer.from(payload) : payload,
    retained,
  });
  const config = (id: string, extra: object = {}) =>
    JSON.stringify({ unique_id: id, state_topic: `s/${id}`, availability_topic: `a/${id}`, ...extra });

  it("shows an entity with availability only while it is available", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(message("homeassistant/switch/x/config", config("x")), 0);
    expect(ha.subscriptions()).toContain("a/x");
    expect(ha.devices(0)).toEqual([]);
    expect(ha.receive(message("a/x", "online"), 0).changed).toBe(true);
    expect(ha.devices(0).map((d) => d.id)).toEqual(["mqtt:homeassistant:x"]);
    ha.receive(message("a/x", "offline", false), 0);
    expect(ha.devices(0)).toEqual([]);
    ha.receive(message("a/x", "online", false), 0);
    expect(ha.devices(0)).toHaveLength(1);
  });

  it("keeps availability when a config is re-sent, and drops topics nobody watches", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(message("homeassistant/switch/x/config", config("x")), 0);
    ha.receive(message("a/x", "online"), 0);
    ha.receive(message("homeassistant/switch/x/config", config("x", { name: "again" })), 0);
    expect(ha.devices(0)).toHaveLength(1);
    ha.receive(message("homeassistant/switch/x/config", "", false), 0);
    expect(ha.devices(0)).toEqual([]);
    expect(ha.subscriptions()).not.toContain("a/x");
  });

  it("applies availability modes all, any and latest", () => {
    const ha = new HomeAssistantConvention(options);
    const two = (mode: string) =>
      JSON.stringify({ unique_id: mode, availability_mode: mode, availability: [{ topic: "p/1" }, { topic: "p/2" }] });
    for (const mode of ["all", "any", "latest"])
      ha.receive(message(`homeassistant/switch/${mode}/config`, two(mode)), 0);
    ha.receive(message("p/1", "online"), 0);
    ha.receive(message("p/2", "offline"), 0);
    expect(ha.devices(0).map((d) => d.id)).toEqual(["mqtt:homeassistant:any"]);
    ha.receive(message("p/1", "online"), 0);
    expect(ha.devices(0).map((d) => d.id)).toEqual(["mqtt:homeassistant:any", "mqtt:homeassistant:latest"]);
  });

  it("reads availability through a value_json template", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(
      message(
        "homeassistant/light/z/config",
        JSON.stringify({
          unique_id: "z",
          availability: [{ topic: "z2m/bridge/state", value_template: "{{ value_json.state }}" }],
        }),
      ),
      0,
    );
    ha.receive(message("z2m/bridge/state", JSON.stringify({ state: "online" })), 0);
    expect(ha.devices(0)).toHaveLength(1);
    ha.receive(message("z2m/bridge/state", JSON.stringify({ state: "offline" })), 0);
    expect(ha.devices(0)).toHaveLength(0);
  });

  it("rebuilds from retained messages after a reconnect", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(message("homeassistant/switch/y/config", JSON.stringify({ unique_id: "y" })), 0);
    expect(ha.connected(0, true).changed).toBe(false);
    expect(ha.devices(0)).toHaveLength(1);
    expect(ha.connected(0, false).changed).toBe(true);
    expect(ha.devices(0)).toEqual([]);
  });
});
