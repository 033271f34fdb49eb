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
        device: {
          keys: ["id:dev-1"],
          properties: { MQTT_MANUFACTURER: "Acme", MQTT_MODEL: "P1", MQTT_DEVICE_NAME: "Kitchen plug" },
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

/*
 * Fixtures written from Home Assistant's MQTT documentation (https://www.home-assistant.io/integrations/mqtt/):
 * - "Discovery messages", device options: `identifiers` (ids), `connections` (cns, e.g.
 *   [["mac", "02:5b:26:a8:dc:12"]]), `manufacturer` (mf), `model` (mdl), `model_id` (mdl_id),
 *   `serial_number` (sn), `sw_version` (sw), `hw_version` (hw); "At least one of identifiers or
 *   connections must be present to identify the device", and only entities with a unique_id are
 *   tied to a device. Home Assistant's device registry looks a device up by any identifier or
 *   connection and updates it with the details each config gives (device_registry
 *   async_get_or_create), so details merge across a device's entities.
 * - Tasmota's own discovery (arendst/Tasmota, tasmota/xdrv_12_home_assistant.ino) is a real
 *   publisher that relies on it: relay configs carry HASS_DISCOVER_DEVICE_INFO
 *   (`"dev":{"ids":[...],"name":...,"mdl":...,"sw":...,"mf":"Tasmota"}`), sensor configs only
 *   HASS_DISCOVER_DEVICE_INFO_SHORT (`"dev":{"ids":[...]}`).
 * - "Migration from single component to device-based discovery": publish
 *   `{"migrate_discovery": true}` (abbreviated `migr_discvry`) on the old single-component
 *   topics, then the device-based config with the same unique_ids, then clear the old topics;
 *   rolling back is the same with the device topic. The device-based payload follows the docs'
 *   "Device discovery payload" example (dev/o/cmps with shared state_topic).
 */
describe("Home Assistant device details across entity configs", () => {
  const message = (topic: string, payload: unknown, retained = true) => ({
    topic,
    payload: Buffer.from(typeof payload === "string" ? payload : JSON.stringify(payload)),
    retained,
  });
  const byId = (ha: HomeAssistantConvention) =>
    Object.fromEntries(ha.devices(0).map((d) => [d.properties.MQTT_DEVICE_ID, d.properties]));

  it("publishes a device's details on every entity that names it by identifiers only (Tasmota)", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(
      message("homeassistant/switch/1A2B3C_RL_1/config", {
        name: "Kitchen Plug",
        cmd_t: "cmnd/kitchen_plug/POWER",
        stat_t: "tele/kitchen_plug/STATE",
        val_tpl: "{{value_json.POWER}}",
        pl_off: "OFF",
        pl_on: "ON",
        uniq_id: "1A2B3C_RL_1",
        dev: { ids: ["1A2B3C"], name: "Kitchen Plug", mdl: "Sonoff Basic", sw: "9.5.0(tasmota)", mf: "Tasmota" },
      }),
      0,
    );
    ha.receive(
      message("homeassistant/sensor/1A2B3C_status/config", {
        name: "Kitchen Plug status",
        stat_t: "tele/kitchen_plug/HASS_STATE",
        json_attr_t: "tele/kitchen_plug/HASS_STATE",
        unit_of_meas: "%",
        val_tpl: "{{value_json['RSSI']}}",
        uniq_id: "1A2B3C_status",
        dev: { ids: ["1A2B3C"] },
      }),
      0,
    );
    const devices = byId(ha);
    for (const id of ["1A2B3C_RL_1", "1A2B3C_status"]) {
      expect(devices[id]).toMatchObject({
        MQTT_MANUFACTURER: "Tasmota",
        MQTT_MODEL: "Sonoff Basic",
        MQTT_SW_VERSION: "9.5.0(tasmota)",
        MQTT_DEVICE_NAME: "Kitchen Plug",
      });
    }
    expect(devices["1A2B3C_status"]?.MQTT_TOPIC).toBe("tele/kitchen_plug/HASS_STATE");
  });

  it("merges through connections and shared identifiers, the latest config winning per detail", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(
      message("homeassistant/sensor/a/config", {
        unique_id: "a",
        device: {
          connections: [["mac", "02:5b:26:a8:dc:12"]],
          manufacturer: "Acme",
          model: "Meter",
          serial_number: "SN-1",
          sw_version: "1.0",
        },
      }),
      0,
    );
    // Same MAC written differently, plus an identifier that links a third config.
    ha.receive(
      message("homeassistant/sensor/b/config", {
        unique_id: "b",
        device: { connections: [["MAC", "025B26A8DC12"]], identifiers: "meter-1", sw_version: "1.1" },
      }),
      0,
    );
    ha.receive(message("homeassistant/sensor/c/config", { unique_id: "c", device: { identifiers: ["meter-1"] } }), 0);
    // Another device and an entity without unique_id (Home Assistant ties neither to this device).
    ha.receive(message("homeassistant/sensor/d/config", { unique_id: "d", device: { ids: "other", mf: "Other" } }), 0);
    ha.receive(message("homeassistant/sensor/e/config", { name: "loose", device: { identifiers: "meter-1" } }), 0);
    const devices = byId(ha);
    for (const id of ["a", "b", "c"]) {
      expect(devices[id]).toMatchObject({
        MQTT_MANUFACTURER: "Acme",
        MQTT_MODEL: "Meter",
        MQTT_SERIAL_NUMBER: "SN-1",
        MQTT_SW_VERSION: "1.1",
      });
    }
    expect(devices.d?.MQTT_MANUFACTURER).toBe("Other");
    expect(devices["meter-1"]?.MQTT_MANUFACTURER).toBeUndefined();
    // A firmware update re-publishes one config: that one's details win.
    ha.receive(
      message("homeassistant/sensor/a/config", {
        unique_id: "a",
        device: { connections: [["mac", "02:5b:26:a8:dc:12"]], sw_version: "2.0" },
      }),
      0,
    );
    expect(byId(ha).c?.MQTT_SW_VERSION).toBe("2.0");
    // Removing the config that carried the details takes them away from its siblings.
    ha.receive(message("homeassistant/sensor/a/config", ""), 0);
    expect(byId(ha).c?.MQTT_MANUFACTURER).toBeUndefined();
  });

  it("publishes sw_version, hw_version and model_id, abbreviated or not", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(
      message("homeassistant/device/ea334450945afc/config", {
        dev: {
          ids: "ea334450945afc",
          name: "Kitchen",
          mf: "Bla electronics",
          mdl: "xya",
          mdl_id: "XYA-1",
          sw: "1.0",
          sn: "ea334450945afc",
          hw: "1.0rev2",
        },
        o: { name: "bla2mqtt", sw: "2.1", url: "https://bla2mqtt.example.com/support" },
        cmps: {
          temperature: { p: "sensor", dev_cla: "temperature", val_tpl: "{{ value_json.temperature }}", uniq_id: "t" },
        },
        stat_t: "sensorBedroom/state",
      }),
      0,
    );
    ha.receive(
      message("homeassistant/binary_sensor/door/config", {
        unique_id: "door",
        device: { identifiers: ["door-1"], sw_version: "4.2", hw_version: "B", model_id: "DS-9" },
      }),
      0,
    );
    const devices = byId(ha);
    expect(devices.t).toMatchObject({
      MQTT_MODEL: "xya",
      MQTT_MODEL_ID: "XYA-1",
      MQTT_SW_VERSION: "1.0",
      MQTT_HW_VERSION: "1.0rev2",
      MQTT_SERIAL_NUMBER: "ea334450945afc",
      MQTT_DEVICE_NAME: "Kitchen",
    });
    expect(devices.door).toMatchObject({ MQTT_SW_VERSION: "4.2", MQTT_HW_VERSION: "B", MQTT_MODEL_ID: "DS-9" });
  });
});

describe("Home Assistant migrate_discovery", () => {
  const message = (topic: string, payload: unknown, retained = true) => ({
    topic,
    payload: Buffer.from(typeof payload === "string" ? payload : JSON.stringify(payload)),
    retained,
  });
  const single = (id: string) => ({
    name: id,
    unique_id: `bedroom_${id}`,
    state_topic: "sensorBedroom/state",
    value_template: `{{ value_json.${id} }}`,
    device: { identifiers: ["bedroom01"], name: "Bedroom" },
  });
  const deviceBased = {
    dev: { ids: "bedroom01", name: "Bedroom", mf: "Bla electronics" },
    o: { name: "bla2mqtt" },
    cmps: {
      temperature: { p: "sensor", val_tpl: "{{ value_json.temperature }}", uniq_id: "bedroom_temperature" },
      humidity: { p: "sensor", val_tpl: "{{ value_json.humidity }}", uniq_id: "bedroom_humidity" },
    },
    stat_t: "sensorBedroom/state",
  };
  const listing = (ha: HomeAssistantConvention) => ha.devices(0).map((d) => [d.id, d.properties.MQTT_CONFIG_TOPIC]);

  for (const [form, migrate] of [
    ["full", { migrate_discovery: true }],
    ["abbreviated", { migr_discvry: true }],
  ] as const) {
    it(`moves entities to device-based discovery without a phantom device (${form} payload)`, () => {
      const ha = new HomeAssistantConvention(options);
      ha.receive(message("homeassistant/sensor/bedroom/temperature/config", single("temperature")), 0);
      ha.receive(message("homeassistant/sensor/bedroom/humidity/config", single("humidity")), 0);
      // 1. The old single-component topics get the migrate payload (retained until cleared).
      for (const id of ["temperature", "humidity"]) {
        const outcome = ha.receive(message(`homeassistant/sensor/bedroom/${id}/config`, migrate), 0);
        expect(outcome.problems.every((p) => p.level === "debug")).toBe(true);
      }
      expect(listing(ha)).toEqual([]);
      // 2. The device-based config brings the same unique_ids back.
      ha.receive(message("homeassistant/device/bedroom01/config", deviceBased), 0);
      const after = [
        ["mqtt:homeassistant:bedroom_humidity", "homeassistant/device/bedroom01/config"],
        ["mqtt:homeassistant:bedroom_temperature", "homeassistant/device/bedroom01/config"],
      ];
      expect(listing(ha)).toEqual(after);
      // 3. The old topics are cleared.
      for (const id of ["temperature", "humidity"]) {
        ha.receive(message(`homeassistant/sensor/bedroom/${id}/config`, "", false), 0);
      }
      expect(listing(ha)).toEqual(after);

      // A subscriber arriving mid-migration sees the retained migrate payloads: still no phantom.
      const late = new HomeAssistantConvention(options);
      late.receive(message("homeassistant/sensor/bedroom/temperature/config", migrate), 0);
      late.receive(message("homeassistant/device/bedroom01/config", deviceBased), 0);
      expect(listing(late)).toEqual(after);
    });
  }

  it("rolls back: the migrate payload on the device topic unloads its components", () => {
    const ha = new HomeAssistantConvention(options);
    ha.receive(message("homeassistant/device/bedroom01/config", deviceBased), 0);
    ha.receive(message("homeassistant/device/bedroom01/config", { migrate_discovery: true }), 0);
    expect(listing(ha)).toEqual([]);
    ha.receive(message("homeassistant/sensor/bedroom/temperature/config", single("temperature")), 0);
    expect(listing(ha)).toEqual([
      ["mqtt:homeassistant:bedroom_temperature", "homeassistant/sensor/bedroom/temperature/config"],
    ]);
  });

  it("refuses a migrate_discovery that is not true, as Home Assistant does", () => {
    const result = parseHomeAssistantMessage(
      "homeassistant/device/bedroom01/config",
      Buffer.from(JSON.stringify({ migrate_discovery: "invalid" })),
      true,
      options,
    );
    expect(result.updates).toEqual([]);
    expect(result.problem?.level).toBe("warn");
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
