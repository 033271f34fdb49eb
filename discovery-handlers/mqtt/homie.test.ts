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
      updates: [{ type: "state", version: "5", device: "dev-1", state: "ready" }],
    });
    const description = Buffer.from(JSON.stringify({ homie: "5.0", version: 3, name: "Thermostat", nodes: {} }));
    expect(parseHomieMessage("homie/5/dev-1/$description", description, true, options).updates).toEqual([
      { type: "name", version: "5", device: "dev-1", name: "Thermostat" },
    ]);
  });

  it("reads v3/v4 $state and $name", () => {
    expect(parseHomieMessage("homie/old/$state", Buffer.from("lost"), false, options).updates).toEqual([
      { type: "state", version: "4", device: "old", state: "lost" },
    ]);
    expect(parseHomieMessage("homie/old/$name", Buffer.from("Old one"), true, options).updates).toEqual([
      { type: "name", version: "4", device: "old", name: "Old one" },
    ]);
  });

  it("treats an empty $state as removal", () => {
    expect(parseHomieMessage("homie/5/d/$state", Buffer.alloc(0), false, options).updates).toEqual([
      { type: "state", version: "5", device: "d", state: undefined },
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
