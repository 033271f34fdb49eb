import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { device } from "../../src/api/device.js";
import { fuzzRuns } from "../../test/fuzz.js";
import { propertyValue } from "../sanitize.js";
import { type DiscoverResponse, protocol, type WireDevice } from "./protocol.js";
import { encodeResponse } from "./testing/raw-handler.js";
import { acceptDevices, MAX_DEVICES_PER_RESPONSE, readDiscoverResponse, toWireDevice } from "./wire.js";

const wireDevice: fc.Arbitrary<WireDevice> = fc.record({
  id: fc.oneof(fc.string({ maxLength: 20 }), fc.string({ minLength: 1020, maxLength: 1030 })),
  properties: fc.dictionary(
    fc.oneof(fc.stringMatching(/^[A-Z][A-Z0-9_]{0,10}$/), fc.string({ maxLength: 8 })),
    fc.oneof(fc.string({ maxLength: 30 }), fc.constant("x".repeat(5000))),
    { maxKeys: 80 },
  ),
  mounts: fc.array(
    fc.record({
      container_path: fc.oneof(fc.constant("/c"), fc.string({ maxLength: 5 })),
      host_path: fc.oneof(fc.constant("/h"), fc.string({ maxLength: 5 })),
      read_only: fc.boolean(),
    }),
    { maxLength: 40 },
  ),
  device_specs: fc.array(
    fc.record({
      container_path: fc.constant("/dev/x"),
      host_path: fc.oneof(fc.constant("/dev/x"), fc.constant("rel")),
      permissions: fc.oneof(fc.constant("rw"), fc.constant(""), fc.string({ maxLength: 4 })),
    }),
    { maxLength: 3 },
  ),
});

describe("acceptDevices", () => {
  it("whatever a handler sends, every device kept is a valid Device spec part, with unique ids", () => {
    fc.assert(
      fc.property(fc.array(wireDevice, { maxLength: 20 }), (wire) => {
        const { devices } = acceptDevices(wire);
        expect(new Set(devices.map((d) => d.id)).size).toBe(devices.length);
        for (const d of devices) {
          const parsed = device.shape.spec.safeParse({
            configurationName: "c",
            handler: "h",
            shared: true,
            id: d.id,
            nodes: ["n"],
            properties: d.properties,
            capacity: 1,
            mounts: d.mounts,
            deviceSpecs: d.deviceSpecs,
          });
          expect(parsed.success, JSON.stringify(parsed.error?.issues)).toBe(true);
        }
      }),
    );
  });

  it("drops, never truncates: a kept property has the value sent", () => {
    fc.assert(
      fc.property(fc.array(wireDevice, { maxLength: 10 }), (wire) => {
        for (const d of acceptDevices(wire).devices) {
          const sent = wire.find((w) => w.id === d.id)!;
          for (const [k, v] of Object.entries(d.properties)) expect(sent.properties[k]).toBe(v);
        }
      }),
    );
  });

  it("keeps only what the publisher's sanitizer leaves as it is (it never changes a value silently)", () => {
    const tricky = fc.string({
      unit: fc.constantFrom("a", "\u0000", "\u001b", "\u0085", "\u200e", "\u2028", "\u202e", "\u2066", "é"),
    });
    fc.assert(
      fc.property(fc.array(fc.record({ id: tricky, value: tricky }), { maxLength: 10 }), (list) => {
        const wire = list.map(({ id, value }) => ({ id, properties: { V: value }, mounts: [], device_specs: [] }));
        for (const d of acceptDevices(wire).devices) {
          expect(propertyValue(d.id)).toBe(d.id);
          for (const v of Object.values(d.properties)) expect(propertyValue(v)).toBe(v);
        }
      }),
    );
  });

  it("names each kind of problem", () => {
    const { devices, problems } = acceptDevices([
      { id: "", properties: {}, mounts: [], device_specs: [] },
      { id: "a", properties: { "bad name": "1", GOOD: "2", LONG: "x".repeat(5000) }, mounts: [], device_specs: [] },
      { id: "a", properties: {}, mounts: [], device_specs: [] },
    ]);
    expect(devices).toEqual([{ id: "a", properties: { GOOD: "2" } }]);
    expect(problems.join("\n")).toMatch(/id empty/);
    expect(problems.join("\n")).toMatch(/duplicate device id/);
    expect(problems.join("\n")).toMatch(/property name/);
    expect(problems.join("\n")).toMatch(/property value longer/);
  });

  it("refuses a response with more devices than the bound, as a whole", () => {
    const many = Array.from({ length: MAX_DEVICES_PER_RESPONSE + 1 }, (_, i) => ({
      id: `d${i}`,
      properties: {},
      mounts: [],
      device_specs: [],
    }));
    expect(() => acceptDevices(many)).toThrow(/10001 devices/);
    expect(acceptDevices(many.slice(1)).devices).toHaveLength(MAX_DEVICES_PER_RESPONSE);
  });

  it("round-trips what the SDK sends", () => {
    const d = {
      id: "x",
      properties: { A: "1" },
      mounts: [{ containerPath: "/c", hostPath: "/h", readOnly: true }],
      deviceSpecs: [{ containerPath: "/dev/a", hostPath: "/dev/a", permissions: "rwm" }],
    };
    expect(acceptDevices([toWireDevice(d)]).devices).toEqual([d]);
  });
});

describe("readDiscoverResponse", () => {
  const decode = protocol().DiscoveryHandler.service.Discover!.responseDeserialize as (b: Buffer) => DiscoverResponse;

  it("decodes what is within the bounds as the plain decoder does", () => {
    const bytes = encodeResponse([{ id: "a", properties: { A: "1" } }, { id: "b" }]);
    expect(readDiscoverResponse(bytes, decode)).toEqual(decode(bytes));
  });

  it("never throws and never half-decodes, whatever the bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (raw) => {
        const r = readDiscoverResponse(Buffer.from(raw), decode);
        if ("refused" in r) expect(r.devices).toEqual([]);
        else expect(Array.isArray(r.devices)).toBe(true);
      }),
      { numRuns: fuzzRuns(200, "external DiscoverResponse bytes") },
    );
  });
});
