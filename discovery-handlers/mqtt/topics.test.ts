import { describe, expect, it } from "vitest";
import { deviceId, isTopicFilter, matchTopic, text } from "./common.js";
import { mqttDetails } from "./details.js";
import { parseTopicMessage, TopicConvention } from "./topics.js";

describe("matchTopic", () => {
  it("gives the wildcards' values", () => {
    expect(matchTopic("sensors/+/telemetry", "sensors/abc/telemetry")).toEqual(["abc"]);
    expect(matchTopic("a/+/b/+", "a/1/b/2")).toEqual(["1", "2"]);
    expect(matchTopic("sensors/#", "sensors/x/y/z")).toEqual(["x/y/z"]);
    expect(matchTopic("sensors/#", "sensors")).toEqual([""]);
    expect(matchTopic("plain/topic", "plain/topic")).toEqual([]);
  });

  it("rejects what does not match, and $ topics for leading wildcards", () => {
    expect(matchTopic("sensors/+/telemetry", "sensors/abc/status")).toBeUndefined();
    expect(matchTopic("sensors/+", "sensors/a/b")).toBeUndefined();
    expect(matchTopic("sensors/+/x", "sensors")).toBeUndefined();
    expect(matchTopic("#", "$SYS/broker")).toBeUndefined();
    expect(matchTopic("+/broker", "$SYS/broker")).toBeUndefined();
    expect(matchTopic("$SYS/#", "$SYS/broker")).toEqual(["broker"]);
  });

  it("validates filters", () => {
    expect(isTopicFilter("a/+/b/#")).toBe(true);
    expect(isTopicFilter("a/#/b")).toBe(false);
    expect(isTopicFilter("a/b+")).toBe(false);
    expect(isTopicFilter("")).toBe(false);
  });
});

describe("device ids", () => {
  it("are prefixed, cleaned and bounded, long ones kept distinct by a hash", () => {
    expect(deviceId("topic", "abc")).toEqual({ id: "mqtt:topic:abc", localId: "abc" });
    expect(deviceId("topic", "a\u0000b\nc")?.id).toBe("mqtt:topic:abc");
    expect(deviceId("topic", "\u0001")).toBeUndefined();
    const a = deviceId("topic", `${"x".repeat(600)}a`)!;
    const b = deviceId("topic", `${"x".repeat(600)}b`)!;
    expect(a.id.length).toBeLessThanOrEqual(512);
    expect(a.id).not.toBe(b.id);
    expect(text("\uD800x")).toBe("x");
    expect(text({})).toBeUndefined();
  });
});

describe("parseTopicMessage", () => {
  const patterns = [{ pattern: "sensors/+/telemetry", silenceSeconds: 1 }];
  it("gives a device per wildcard value, and ignores retained messages", () => {
    expect(parseTopicMessage("sensors/abc/telemetry", Buffer.from("1"), false, patterns).updates).toEqual([
      { pattern: 0, device: "abc", topic: "sensors/abc/telemetry" },
    ]);
    expect(parseTopicMessage("sensors/abc/telemetry", Buffer.from("1"), true, patterns).updates).toEqual([]);
    expect(parseTopicMessage("other", Buffer.from("1"), false, patterns).updates).toEqual([]);
  });
});

describe("TopicConvention", () => {
  const message = (topic: string) => ({ topic, payload: Buffer.from("x"), retained: false });

  it("keeps a device while it publishes within the silence period", () => {
    const topics = new TopicConvention([{ pattern: "sensors/+/telemetry", silenceSeconds: 1 }]);
    expect(topics.receive(message("sensors/a/telemetry"), 0).changed).toBe(true);
    expect(topics.devices(500)).toEqual([
      {
        id: "mqtt:topic:a",
        properties: {
          MQTT_DEVICE_ID: "a",
          MQTT_TOPIC: "sensors/a/telemetry",
          MQTT_TOPIC_PATTERN: "sensors/+/telemetry",
        },
      },
    ]);
    expect(topics.nextChange(500)).toBe(1000);
    expect(topics.receive(message("sensors/a/telemetry"), 900).changed).toBe(false);
    expect(topics.devices(1500)).toHaveLength(1);
    expect(topics.devices(1900)).toEqual([]);
  });

  it("does not count silence while disconnected", () => {
    const topics = new TopicConvention([{ pattern: "t/#", silenceSeconds: 1 }]);
    topics.receive(message("t/x/y"), 0);
    topics.disconnected(500);
    expect(topics.devices(5000).map((d) => d.id)).toEqual(["mqtt:topic:x/y"]);
    expect(topics.nextChange(5000)).toBeUndefined();
    topics.connected(10_000, false);
    expect(topics.devices(10_400)).toHaveLength(1);
    expect(topics.devices(10_500)).toEqual([]);
  });

  it("names the topic by the first pattern a device is alive on", () => {
    const topics = new TopicConvention([
      { pattern: "a/+/status", silenceSeconds: 1 },
      { pattern: "a/+/data", silenceSeconds: 10 },
    ]);
    topics.receive(message("a/d/data"), 0);
    topics.receive(message("a/d/status"), 0);
    expect(topics.devices(0)[0]?.properties.MQTT_TOPIC).toBe("a/d/status");
    expect(topics.devices(2000)[0]?.properties.MQTT_TOPIC).toBe("a/d/data");
  });
});

describe("mqttDetails", () => {
  it("fills defaults", () => {
    expect(mqttDetails.parse({ brokerUri: "mqtt://broker:1883" })).toEqual({
      brokerUri: "mqtt://broker:1883",
      conventions: { homeAssistant: true, homie: true, sparkplug: true, topics: [] },
      homeAssistantPrefix: "homeassistant",
      maxPayloadBytes: 262144,
    });
  });

  it("accepts topic patterns as strings or objects", () => {
    const details = mqttDetails.parse({
      conventions: { topics: ["sensors/+/telemetry", { pattern: "x/#", silenceSeconds: 5 }] },
    });
    expect(details.conventions.topics).toEqual([
      { pattern: "sensors/+/telemetry", silenceSeconds: 60 },
      { pattern: "x/#", silenceSeconds: 5 },
    ]);
  });

  it("rejects credentials in the URI, other schemes, bad filters and unknown fields", () => {
    expect(mqttDetails.safeParse({ brokerUri: "mqtt://user:secret@broker" }).success).toBe(false);
    expect(mqttDetails.safeParse({ brokerUri: "http://broker" }).success).toBe(false);
    expect(mqttDetails.safeParse({ conventions: { topics: ["a/#/b"] } }).success).toBe(false);
    expect(mqttDetails.safeParse({ homiePrefix: "ho+mie" }).success).toBe(false);
    expect(mqttDetails.safeParse({ password: "x" }).success).toBe(false);
    expect(mqttDetails.safeParse({ mdnsInterface: "127.0.0.1" }).success).toBe(true);
    expect(mqttDetails.safeParse({ mdnsInterface: "eth0" }).success).toBe(false);
  });
});
