import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseSparkplugMessage, parseSparkplugTopic, SparkplugConvention } from "./sparkplug.js";
import { decodeSparkplugPayload, encodeSparkplugPayload, SparkplugDataType } from "./sparkplug-payload.js";

const birth = (bdSeq: number) =>
  encodeSparkplugPayload({ seq: 0, metrics: [{ name: "bdSeq", datatype: SparkplugDataType.Int64, value: bdSeq }] });
const empty = encodeSparkplugPayload({ seq: 1, metrics: [] });
const message = (topic: string, payload: Buffer, retained = false) => ({ topic, payload, retained });

describe("Sparkplug B payloads", () => {
  it("round-trips metrics, 64-bit values as strings", () => {
    const payload = decodeSparkplugPayload(
      encodeSparkplugPayload({
        timestamp: 1000,
        seq: 5,
        metrics: [
          { name: "bdSeq", datatype: SparkplugDataType.Int64, value: 42 },
          { name: "big", datatype: SparkplugDataType.UInt64, value: 18446744073709551615n },
          { name: "on", datatype: SparkplugDataType.Boolean, value: true },
          { name: "label", datatype: SparkplugDataType.String, value: "x" },
        ],
      }),
    );
    expect(payload).toMatchObject({ timestamp: "1000", seq: "5" });
    expect(payload.metrics.map((m) => [m.name, m.value])).toEqual([
      ["bdSeq", "42"],
      ["big", "18446744073709551615"],
      ["on", true],
      ["label", "x"],
    ]);
  });
});

describe("Sparkplug B signed integers", () => {
  // Sparkplug 3.0.0, 6.4.16 "Datatype Details": Int8, Int16 and Int32 are signed, carried in the
  // protobuf's uint32 `int_value`; Int64 in the uint64 `long_value`. Publishers put the two's
  // complement there, sign-extended to 32 bits (Eclipse Tahu's Java encoder; the Int16 -87 →
  // 0xFFFFFFA9 = 4294967209 capture in https://github.com/matteosox/pysparkplug/issues/26, the
  // Int8 -1 → 4294967295 in https://github.com/eclipse-tahu/tahu/issues/71) or cut to the type's
  // width (0xFFA9 for that Int16). Both must come back negative.
  const decoded = (datatype: number, raw: number | bigint) =>
    decodeSparkplugPayload(encodeSparkplugPayload({ seq: 0, metrics: [{ name: "m", datatype, value: raw }] }))
      .metrics[0]?.value;

  it("decodes two's complement Int8, Int16, Int32 and Int64 values as negative numbers", () => {
    expect(decoded(SparkplugDataType.Int16, 4294967209)).toBe(-87);
    expect(decoded(SparkplugDataType.Int16, 0xffa9)).toBe(-87);
    expect(decoded(SparkplugDataType.Int8, 4294967295)).toBe(-1);
    expect(decoded(SparkplugDataType.Int8, 0xff)).toBe(-1);
    expect(decoded(SparkplugDataType.Int8, 0x80)).toBe(-128);
    expect(decoded(SparkplugDataType.Int32, 0xffffffff)).toBe(-1);
    expect(decoded(SparkplugDataType.Int32, 0x80000000)).toBe(-2147483648);
    expect(decoded(SparkplugDataType.Int64, 2n ** 64n - 87n)).toBe("-87");
  });

  it("leaves positive signed values and unsigned types alone", () => {
    expect(decoded(SparkplugDataType.Int8, 127)).toBe(127);
    expect(decoded(SparkplugDataType.Int16, 21)).toBe(21);
    expect(decoded(SparkplugDataType.Int32, 2147483647)).toBe(2147483647);
    expect(decoded(SparkplugDataType.UInt32, 0xffffffff)).toBe(4294967295);
    expect(decoded(SparkplugDataType.UInt16, 0xffa9)).toBe(65449);
    expect(decoded(SparkplugDataType.UInt64, 2n ** 64n - 87n)).toBe("18446744073709551529");
  });

  it("round-trips every Int16 through the sign-extended and the masked encoding", () => {
    fc.assert(
      fc.property(fc.integer({ min: -32768, max: 32767 }), (value) => {
        expect(decoded(SparkplugDataType.Int16, value >>> 0)).toBe(value);
        expect(decoded(SparkplugDataType.Int16, value & 0xffff)).toBe(value);
      }),
    );
  });
});

describe("parseSparkplugMessage", () => {
  it("reads births and deaths with bdSeq", () => {
    expect(parseSparkplugMessage("spBv1.0/plant/NBIRTH/edge1", birth(3), false, {})).toEqual({
      updates: [{ type: "nodeBirth", group: "plant", edgeNode: "edge1", bdSeq: "3" }],
    });
    expect(parseSparkplugMessage("spBv1.0/plant/NDEATH/edge1", birth(3), false, {}).updates).toEqual([
      { type: "nodeDeath", group: "plant", edgeNode: "edge1", bdSeq: "3" },
    ]);
    expect(parseSparkplugMessage("spBv1.0/plant/DBIRTH/edge1/pump", empty, false, {}).updates).toEqual([
      { type: "deviceBirth", group: "plant", edgeNode: "edge1", device: "pump" },
    ]);
    expect(parseSparkplugMessage("spBv1.0/plant/DDEATH/edge1/pump", empty, false, {}).updates).toEqual([
      { type: "deviceDeath", group: "plant", edgeNode: "edge1", device: "pump" },
    ]);
  });

  it("reports truncated or invalid protobuf instead of throwing", () => {
    // Cut inside the bdSeq metric (a cut at a field boundary is just a shorter valid message).
    const payload = birth(1);
    for (const bad of [payload.subarray(0, 12), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])]) {
      const result = parseSparkplugMessage("spBv1.0/g/NBIRTH/e", bad, false, {});
      expect(result.updates).toEqual([]);
      expect(result.problem?.level).toBe("warn");
    }
  });

  it("ignores commands, STATE, malformed topics and filtered groups", () => {
    expect(parseSparkplugTopic("spBv1.0/g/NCMD/e")).toBeUndefined();
    expect(parseSparkplugTopic("spBv1.0/STATE/host")).toBeUndefined();
    expect(parseSparkplugTopic("spBv1.0/g/NBIRTH/e/extra")).toBeUndefined();
    expect(parseSparkplugTopic("spBv1.0/g/DBIRTH/e")).toBeUndefined();
    expect(parseSparkplugTopic("spBv1.0//NBIRTH/e")).toBeUndefined();
    const groups = { action: "Include" as const, items: ["plant"] };
    expect(parseSparkplugMessage("spBv1.0/other/NBIRTH/e", birth(0), false, { groups }).updates).toEqual([]);
    expect(parseSparkplugMessage("spBv1.0/PLANT/NBIRTH/e", birth(0), false, { groups }).updates).toHaveLength(1);
  });

  it("does not trust retained births, but notes the node exists", () => {
    const result = parseSparkplugMessage("spBv1.0/g/NBIRTH/e", birth(0), true, {});
    expect(result.updates).toEqual([{ type: "seen", group: "g", edgeNode: "e" }]);
  });
});

describe("SparkplugConvention", () => {
  it("follows births and deaths of nodes and devices", () => {
    const sp = new SparkplugConvention();
    expect(sp.receive(message("spBv1.0/plant/NBIRTH/edge1", birth(1)), 0).changed).toBe(true);
    sp.receive(message("spBv1.0/plant/DBIRTH/edge1/pump", empty), 0);
    sp.receive(message("spBv1.0/plant/DBIRTH/edge1/valve", empty), 0);
    const devices = sp.devices(0);
    expect(devices.map((d) => d.id)).toEqual([
      "mqtt:sparkplug:plant/edge1",
      "mqtt:sparkplug:plant/edge1/pump",
      "mqtt:sparkplug:plant/edge1/valve",
    ]);
    expect(devices[1]?.properties).toEqual({
      MQTT_DEVICE_ID: "plant/edge1/pump",
      MQTT_TOPIC: "spBv1.0/plant/DDATA/edge1/pump",
      MQTT_COMMAND_TOPIC: "spBv1.0/plant/DCMD/edge1/pump",
      MQTT_SPARKPLUG_GROUP: "plant",
      MQTT_SPARKPLUG_EDGE_NODE: "edge1",
      MQTT_SPARKPLUG_DEVICE: "pump",
    });
    expect(devices[0]?.properties.MQTT_COMMAND_TOPIC).toBe("spBv1.0/plant/NCMD/edge1");
    sp.receive(message("spBv1.0/plant/DDEATH/edge1/valve", empty), 0);
    expect(sp.devices(0)).toHaveLength(2);
    // A will from an older session (other bdSeq) does not kill the current one.
    sp.receive(message("spBv1.0/plant/NDEATH/edge1", birth(0)), 0);
    expect(sp.devices(0)).toHaveLength(2);
    sp.receive(message("spBv1.0/plant/NDEATH/edge1", birth(1)), 0);
    expect(sp.devices(0)).toEqual([]);
  });

  it("a new NBIRTH starts a new session: devices must be born again within the grace period", () => {
    const sp = new SparkplugConvention({ deviceRebirthGraceMs: 1000 });
    sp.receive(message("spBv1.0/g/NBIRTH/e", birth(1)), 0);
    sp.receive(message("spBv1.0/g/DBIRTH/e/reborn", empty), 0);
    sp.receive(message("spBv1.0/g/DBIRTH/e/gone", empty), 0);
    sp.receive(message("spBv1.0/g/NBIRTH/e", birth(2)), 100);
    // No flapping while the DBIRTHs are on their way.
    expect(sp.devices(100)).toHaveLength(3);
    expect(sp.nextChange(100)).toBe(1100);
    sp.receive(message("spBv1.0/g/DBIRTH/e/reborn", empty), 150);
    expect(sp.devices(1100).map((d) => d.id)).toEqual(["mqtt:sparkplug:g/e", "mqtt:sparkplug:g/e/reborn"]);
    // After a death and a new birth, nothing of the old session is left.
    sp.receive(message("spBv1.0/g/NDEATH/e", birth(2)), 2000);
    sp.receive(message("spBv1.0/g/NBIRTH/e", birth(3)), 2001);
    expect(sp.devices(2001).map((d) => d.id)).toEqual(["mqtt:sparkplug:g/e"]);
  });

  it("asks a node it joined late for a rebirth, at most once per interval", () => {
    const sp = new SparkplugConvention({ rebirthIntervalMs: 1000 });
    const first = sp.receive(message("spBv1.0/g/NDATA/e", empty), 0);
    expect(first.publish).toHaveLength(1);
    const request = first.publish[0]!;
    expect(request.topic).toBe("spBv1.0/g/NCMD/e");
    expect(decodeSparkplugPayload(request.payload).metrics).toMatchObject([
      { name: "Node Control/Rebirth", datatype: SparkplugDataType.Boolean, value: true },
    ]);
    expect(sp.receive(message("spBv1.0/g/DDATA/e/d", empty), 500).publish).toEqual([]);
    expect(sp.receive(message("spBv1.0/g/DBIRTH/e/d", empty), 1500).publish).toHaveLength(1);
    expect(sp.devices(1500)).toEqual([]);
    // A device we never saw born under a live node also earns a rebirth request.
    sp.receive(message("spBv1.0/g/NBIRTH/e", birth(0)), 3000);
    expect(sp.receive(message("spBv1.0/g/DDATA/e/unknown", empty), 5000).publish).toHaveLength(1);
  });

  it("after a reconnect asks every node to rebirth and drops those that stay silent", () => {
    const sp = new SparkplugConvention({ confirmTimeoutMs: 1000 });
    sp.receive(message("spBv1.0/g/NBIRTH/alive", birth(0)), 0);
    sp.receive(message("spBv1.0/g/NBIRTH/dead", birth(0)), 0);
    sp.disconnected(10);
    const outcome = sp.connected(100, false);
    expect(outcome.publish.map((p) => p.topic).sort()).toEqual(["spBv1.0/g/NCMD/alive", "spBv1.0/g/NCMD/dead"]);
    expect(sp.nextChange(100)).toBe(1100);
    sp.receive(message("spBv1.0/g/NBIRTH/alive", birth(0)), 200);
    expect(sp.devices(500)).toHaveLength(2);
    expect(sp.devices(1100).map((d) => d.id)).toEqual(["mqtt:sparkplug:g/alive"]);
  });
});
