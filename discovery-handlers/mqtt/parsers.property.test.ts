import fc from "fast-check";
import { describe, it } from "vitest";
import { MAX_PROPERTY_VALUE, PROPERTY_NAME } from "../../src/api/device.js";
import { fuzzRuns } from "../../test/fuzz.js";
import { type Convention, type ConventionDevice, MAX_DEVICE_ID, type MqttMessage } from "./common.js";
import { HomeAssistantConvention, parseHomeAssistantMessage } from "./home-assistant.js";
import { HomieConvention, parseHomieMessage } from "./homie.js";
import { parseSparkplugMessage, SparkplugConvention } from "./sparkplug.js";
import { encodeSparkplugPayload } from "./sparkplug-payload.js";
import { parseTopicMessage, TopicConvention } from "./topics.js";

/**
 * Device input is untrusted: whatever topic and payload arrive, the parsers and conventions must
 * not throw, and what they publish must stay bounded and printable.
 */

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function assertBounded(devices: ConventionDevice[]): void {
  for (const device of devices) {
    if (!device.id.startsWith("mqtt:") || device.id.length > MAX_DEVICE_ID) throw new Error(`bad id ${device.id}`);
    if (CONTROL.test(device.id) || LONE_SURROGATE.test(device.id)) throw new Error("id with control characters");
    for (const [name, value] of Object.entries(device.properties)) {
      if (!PROPERTY_NAME.test(name)) throw new Error(`bad property name ${name}`);
      if (typeof value !== "string" || value.length > MAX_PROPERTY_VALUE) throw new Error(`unbounded ${name}`);
      if (CONTROL.test(value) || LONE_SURROGATE.test(value)) throw new Error(`${name} has control characters`);
    }
  }
}

/** Strings that are sometimes huge, sometimes hostile, usually short. */
const nasty = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: "grapheme", maxLength: 12 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 12 }),
  fc.constantFrom("", "+", "#", "$SYS", "\u0000", "\uD800", "~", "a/b", "config", "5", "$state", "\uFFFD"),
  fc.tuple(fc.string({ minLength: 1, maxLength: 3 }), fc.integer({ min: 100, max: 6000 })).map(([s, n]) => s.repeat(n)),
);

const level = fc.oneof(nasty, fc.constantFrom("switch", "sensor", "device", "node", "dev1"));

function topicUnder(prefix: string[], tail: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc
    .tuple(fc.array(level, { minLength: 0, maxLength: 3 }), tail)
    .map(([levels, last]) => [...prefix, ...levels, last].join("/"));
}

const anyTopic = fc.oneof(
  nasty,
  fc.array(level, { minLength: 1, maxLength: 6 }).map((levels) => levels.join("/")),
);

const jsonish: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    nasty,
    fc.double(),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(
      fc.oneof(
        nasty,
        fc.constantFrom(
          "unique_id",
          "uniq_id",
          "name",
          "state_topic",
          "stat_t",
          "command_topic",
          "cmd_t",
          "availability_topic",
          "avty_t",
          "availability",
          "avty",
          "availability_mode",
          "device",
          "dev",
          "identifiers",
          "ids",
          "connections",
          "manufacturer",
          "mf",
          "model",
          "mdl",
          "~",
          "cmps",
          "p",
          "topic",
          "t",
          "value_template",
          "payload_available",
        ),
      ),
      tie("value"),
      { maxKeys: 6 },
    ),
  ),
})).value;

const payload = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
  jsonish.map((value) => Buffer.from(JSON.stringify(value) ?? "")),
  fc.constantFrom(Buffer.alloc(0), Buffer.from("online"), Buffer.from("ready"), Buffer.from("lost"), Buffer.from("{")),
);

/** Home Assistant configs: the right shape, hostile values. */
const optional = { requiredKeys: [] as never[] };
const haDevice = fc.record(
  {
    identifiers: fc.oneof(nasty, fc.array(nasty, { maxLength: 3 })),
    ids: fc.oneof(nasty, fc.array(nasty, { maxLength: 3 })),
    connections: fc.array(fc.tuple(nasty, nasty), { maxLength: 2 }),
    manufacturer: nasty,
    mf: nasty,
    model: nasty,
    name: nasty,
    serial_number: nasty,
  },
  optional,
);
const haAvailability = fc.record(
  {
    topic: nasty,
    t: nasty,
    payload_available: nasty,
    value_template: fc.oneof(nasty, fc.constant("{{ value_json.state }}")),
  },
  optional,
);
const haComponent = fc.record(
  { p: nasty, platform: nasty, unique_id: nasty, state_topic: nasty, cmd_t: nasty, name: nasty },
  optional,
);
const haConfig = fc.record(
  {
    "~": nasty,
    unique_id: nasty,
    uniq_id: nasty,
    name: nasty,
    state_topic: nasty,
    stat_t: nasty,
    command_topic: nasty,
    availability_topic: nasty,
    availability_mode: fc.constantFrom("all", "any", "latest", "x"),
    availability: fc.oneof(fc.array(haAvailability, { maxLength: 20 }), nasty),
    device: fc.oneof(haDevice, nasty),
    dev: haDevice,
    cmps: fc.dictionary(nasty, haComponent, { maxKeys: 4 }),
  },
  optional,
);
const haPayload = fc.oneof(
  { arbitrary: haConfig.map((config) => Buffer.from(JSON.stringify(config))), weight: 4 },
  { arbitrary: payload, weight: 1 },
);

const message = (topic: fc.Arbitrary<string>) =>
  fc.record({ topic, payload, retained: fc.boolean() }) as fc.Arbitrary<MqttMessage>;

function runConvention(make: () => Convention, messages: fc.Arbitrary<MqttMessage>): void {
  fc.assert(
    fc.property(fc.array(messages, { minLength: 1, maxLength: 8 }), fc.boolean(), (batch, reconnect) => {
      const convention = make();
      let now = 0;
      for (const m of batch) {
        convention.receive(m, now);
        now += 500;
        if (reconnect && now === 1000) {
          convention.disconnected(now);
          convention.connected(now + 10, false);
        }
      }
      convention.subscriptions();
      convention.nextChange(now);
      assertBounded(convention.devices(now));
    }),
    { numRuns: fuzzRuns(1000, "MQTT conventions") },
  );
}

describe("Home Assistant parser on random input", () => {
  const options = { prefix: "homeassistant" };
  const configTopic = fc
    .tuple(fc.constantFrom("switch", "sensor", "device"), fc.option(level, { nil: undefined }), level)
    .map(([component, node, object]) =>
      ["homeassistant", component, ...(node === undefined ? [] : [node]), object, "config"].join("/"),
    );
  const topic = fc.oneof(
    { arbitrary: configTopic, weight: 4 },
    { arbitrary: topicUnder(["homeassistant"], fc.constant("config")), weight: 1 },
    { arbitrary: anyTopic, weight: 1 },
  );

  it("never throws and yields bounded entities", () => {
    fc.assert(
      fc.property(topic, haPayload, fc.boolean(), (t, p, retained) => {
        const result = parseHomeAssistantMessage(t, p, retained, options);
        for (const update of result.updates) {
          if (update.type === "configured") {
            assertBounded(update.entities);
            for (const entry of update.entities.flatMap((e) => e.availability)) {
              if (/[+#]/.test(entry.topic)) throw new Error("wildcard availability topic");
            }
          }
        }
      }),
      { numRuns: fuzzRuns(3000, "MQTT conventions") },
    );
  });

  it("the convention never throws and stays bounded", () => {
    runConvention(
      () => new HomeAssistantConvention(options),
      fc.record({
        topic: fc.oneof(topic, fc.constantFrom("a/x", "online/topic")),
        payload: haPayload,
        retained: fc.boolean(),
      }) as fc.Arbitrary<MqttMessage>,
    );
  });
});

describe("Homie parser on random input", () => {
  const options = { prefix: "homie" };
  const topic = fc.oneof(
    fc.tuple(level, fc.constantFrom("$state", "$description")).map(([id, a]) => `homie/5/${id}/${a}`),
    fc.tuple(level, fc.constantFrom("$state", "$name")).map(([id, a]) => `homie/${id}/${a}`),
    topicUnder(["homie", "5"], fc.constantFrom("$state", "$description")),
    anyTopic,
  );

  it("never throws", () => {
    fc.assert(
      fc.property(topic, payload, fc.boolean(), (t, p, retained) => {
        parseHomieMessage(t, p, retained, options);
      }),
      { numRuns: fuzzRuns(3000, "MQTT conventions") },
    );
  });

  it("the convention never throws and stays bounded", () => {
    runConvention(() => new HomieConvention(options), message(topic));
  });
});

describe("Sparkplug parser on random input", () => {
  const type = fc.constantFrom("NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "NDATA", "DDATA", "NCMD", "STATE");
  const structured = fc
    .tuple(level, type, level, fc.option(level, { nil: undefined }))
    .map(([group, t, node, device]) =>
      ["spBv1.0", group, t, node, ...(device === undefined ? [] : [device])].join("/"),
    );
  const wellFormed = fc
    .tuple(fc.constantFrom("g1", "g2"), fc.constantFrom("NBIRTH", "NDEATH", "NDATA"), fc.constantFrom("e1", "e2"))
    .chain(([group, t, node]) =>
      fc.oneof(
        fc.constant(`spBv1.0/${group}/${t}/${node}`),
        fc
          .tuple(fc.constantFrom("DBIRTH", "DDEATH", "DDATA"), fc.oneof(level, fc.constant("d1")))
          .map(([dt, device]) => `spBv1.0/${group}/${dt}/${node}/${device}`),
      ),
    );
  const topic = fc.oneof(
    { arbitrary: wellFormed, weight: 4 },
    { arbitrary: structured, weight: 2 },
    { arbitrary: anyTopic, weight: 1 },
  );
  const metric = fc.record({
    name: fc.oneof(nasty, fc.constant("bdSeq")),
    datatype: fc.constantFrom(3, 4, 8, 11, 12),
    value: fc.oneof(fc.integer({ min: 0, max: 2 ** 31 }), fc.boolean(), nasty),
  });
  const sparkplugPayload = fc.oneof(
    { arbitrary: payload, weight: 1 },
    {
      arbitrary: fc
        .nat(3)
        .map((bdSeq) => encodeSparkplugPayload({ seq: 0, metrics: [{ name: "bdSeq", datatype: 4, value: bdSeq }] })),
      weight: 2,
    },
    fc.tuple(fc.array(metric, { maxLength: 4 }), fc.nat(40)).map(([metrics, cut]) => {
      const valid = metrics.map((m) =>
        typeof m.value === "boolean"
          ? { ...m, datatype: 11 }
          : typeof m.value === "string"
            ? { ...m, datatype: 12 }
            : { ...m, datatype: m.datatype === 11 || m.datatype === 12 ? 3 : m.datatype },
      );
      const bytes = encodeSparkplugPayload({ seq: 0, metrics: valid });
      // Sometimes truncated.
      return cut < 20 ? bytes.subarray(0, Math.max(0, bytes.length - cut)) : bytes;
    }),
  );

  it("never throws", () => {
    fc.assert(
      fc.property(topic, sparkplugPayload, fc.boolean(), (t, p, retained) => {
        parseSparkplugMessage(t, p, retained, {});
      }),
      { numRuns: fuzzRuns(3000, "MQTT conventions") },
    );
  });

  it("the convention never throws and stays bounded", () => {
    runConvention(
      () => new SparkplugConvention(),
      fc.record({ topic, payload: sparkplugPayload, retained: fc.boolean() }) as fc.Arbitrary<MqttMessage>,
    );
  });
});

describe("plain topic parser on random input", () => {
  const patterns = [
    { pattern: "sensors/+/telemetry", silenceSeconds: 1 },
    { pattern: "#", silenceSeconds: 1 },
    { pattern: "a/+/+/#", silenceSeconds: 1 },
  ];

  it("never throws", () => {
    fc.assert(
      fc.property(anyTopic, payload, fc.boolean(), (t, p, retained) => {
        parseTopicMessage(t, p, retained, patterns);
      }),
      { numRuns: fuzzRuns(3000, "MQTT conventions") },
    );
  });

  it("the convention never throws and stays bounded", () => {
    runConvention(() => new TopicConvention(patterns), message(fc.oneof(anyTopic, topicUnder(["sensors"], nasty))));
  });
});
