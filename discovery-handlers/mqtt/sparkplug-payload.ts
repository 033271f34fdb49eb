import protobuf from "protobufjs";

/**
 * The Sparkplug B 3.0 `Payload` protobuf message, declared here with protobufjs reflection (field
 * numbers from the Sparkplug B specification). Only what discovery needs is declared: metric
 * metadata, property sets, data sets and templates are skipped as unknown fields when decoding.
 */

/** Sparkplug B metric datatypes used here (specification, "Data Types"). */
export const SparkplugDataType = {
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Boolean: 11,
  String: 12,
} as const;

const VALUE_FIELDS = [
  "int_value",
  "long_value",
  "float_value",
  "double_value",
  "boolean_value",
  "string_value",
  "bytes_value",
] as const;

const root = protobuf.Root.fromJSON({
  nested: {
    sparkplug_b: {
      nested: {
        Payload: {
          fields: {
            timestamp: { type: "uint64", id: 1 },
            metrics: { rule: "repeated", type: "Metric", id: 2 },
            seq: { type: "uint64", id: 3 },
            uuid: { type: "string", id: 4 },
            body: { type: "bytes", id: 5 },
          },
          nested: {
            Metric: {
              oneofs: {
                value: {
                  oneof: [...VALUE_FIELDS],
                },
              },
              fields: {
                name: { type: "string", id: 1 },
                alias: { type: "uint64", id: 2 },
                timestamp: { type: "uint64", id: 3 },
                datatype: { type: "uint32", id: 4 },
                is_historical: { type: "bool", id: 5 },
                is_transient: { type: "bool", id: 6 },
                is_null: { type: "bool", id: 7 },
                int_value: { type: "uint32", id: 10 },
                long_value: { type: "uint64", id: 11 },
                float_value: { type: "float", id: 12 },
                double_value: { type: "double", id: 13 },
                boolean_value: { type: "bool", id: 14 },
                string_value: { type: "string", id: 15 },
                bytes_value: { type: "bytes", id: 16 },
              },
            },
          },
        },
      },
    },
  },
});

const PayloadType = root.lookupType("sparkplug_b.Payload");

export type MetricValue = number | string | boolean | Uint8Array;

export interface SparkplugMetric {
  name?: string;
  alias?: string;
  timestamp?: string;
  datatype?: number;
  /** The value, whichever of int/long/float/double/boolean/string/bytes was set; 64-bit integers as strings. */
  value?: MetricValue;
}

export interface SparkplugPayload {
  timestamp?: string;
  seq?: string;
  uuid?: string;
  metrics: SparkplugMetric[];
}

/**
 * Int8, Int16 and Int32 travel in the uint32 `int_value`, Int64 in the uint64 `long_value`, as
 * two's complement: sign-extended to 32 bits by most publishers, cut to the type's width by some.
 * Reading the low bits of the type's width as signed gives the value either way. (Without a
 * datatype, as in DATA messages that omit it, the unsigned value stays.)
 */
function signed(datatype: number | undefined, value: MetricValue): MetricValue {
  if (typeof value === "number") {
    if (datatype === SparkplugDataType.Int8) return (value << 24) >> 24;
    if (datatype === SparkplugDataType.Int16) return (value << 16) >> 16;
    if (datatype === SparkplugDataType.Int32) return value | 0;
  }
  if (typeof value === "string" && datatype === SparkplugDataType.Int64 && /^[0-9]+$/.test(value)) {
    return BigInt.asIntN(64, BigInt(value)).toString();
  }
  return value;
}

/** Decodes a Sparkplug B payload; throws on truncated or malformed input. */
export function decodeSparkplugPayload(payload: Uint8Array): SparkplugPayload {
  const message = PayloadType.decode(payload);
  const object = PayloadType.toObject(message, { longs: String, bytes: Buffer }) as Record<string, unknown>;
  const metrics: SparkplugMetric[] = [];
  for (const raw of Array.isArray(object.metrics) ? (object.metrics as Record<string, unknown>[]) : []) {
    const metric: SparkplugMetric = {};
    if (typeof raw.name === "string") metric.name = raw.name;
    if (typeof raw.alias === "string") metric.alias = raw.alias;
    if (typeof raw.timestamp === "string") metric.timestamp = raw.timestamp;
    if (typeof raw.datatype === "number") metric.datatype = raw.datatype;
    for (const field of VALUE_FIELDS) {
      if (raw[field] !== undefined) metric.value = signed(metric.datatype, raw[field] as MetricValue);
    }
    metrics.push(metric);
  }
  return {
    metrics,
    ...(typeof object.timestamp === "string" ? { timestamp: object.timestamp } : {}),
    ...(typeof object.seq === "string" ? { seq: object.seq } : {}),
    ...(typeof object.uuid === "string" ? { uuid: object.uuid } : {}),
  };
}

export interface MetricInput {
  name: string;
  datatype: number;
  value: number | bigint | string | boolean;
}

/** Encodes a Sparkplug B payload (for rebirth requests and the device simulator). */
export function encodeSparkplugPayload(input: { timestamp?: number; seq?: number; metrics: MetricInput[] }): Buffer {
  const timestamp = input.timestamp ?? Date.now();
  const metrics = input.metrics.map((metric) => {
    const out: Record<string, unknown> = { name: metric.name, datatype: metric.datatype, timestamp };
    if (typeof metric.value === "boolean") out.boolean_value = metric.value;
    else if (typeof metric.value === "string") out.string_value = metric.value;
    else if (metric.datatype === SparkplugDataType.Int64 || metric.datatype === SparkplugDataType.UInt64) {
      // fromObject turns a decimal string into a 64-bit Long.
      out.long_value = String(metric.value);
    } else out.int_value = Number(metric.value) >>> 0;
    return out;
  });
  const message = PayloadType.fromObject({
    timestamp,
    metrics,
    ...(input.seq !== undefined ? { seq: input.seq } : {}),
  });
  return Buffer.from(PayloadType.encode(message).finish());
}

/** The `Node Control/Rebirth` request a host sends in an NCMD. */
export function rebirthRequest(now = Date.now()): Buffer {
  return encodeSparkplugPayload({
    timestamp: now,
    metrics: [{ name: "Node Control/Rebirth", datatype: SparkplugDataType.Boolean, value: true }],
  });
}

/** The `bdSeq` metric of an NBIRTH or NDEATH, as a decimal string. */
export function bdSeqOf(payload: SparkplugPayload): string | undefined {
  const metric = payload.metrics.find((m) => m.name === "bdSeq");
  const value = metric?.value;
  if (typeof value === "string" || typeof value === "number") return String(value);
  return undefined;
}
