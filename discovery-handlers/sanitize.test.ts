import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MAX_PROPERTY_VALUE, PROPERTY_NAME } from "../src/api/device.js";
import { fuzzRuns } from "../test/fuzz.js";
import { boundProperties, propertyName, propertyValue } from "./sanitize.js";

describe("sanitize", () => {
  it("strips control and bidi-override characters and bounds values", () => {
    expect(propertyValue("a\u0000b\u001b[2Jc\u202ed\u2066e")).toBe("ab[2Jcde");
    expect(propertyValue("x".repeat(10_000))).toHaveLength(MAX_PROPERTY_VALUE);
    expect(propertyValue(undefined)).toBe("");
  });

  it("turns device strings into valid property names or nothing", () => {
    expect(propertyName("MDNS_TXT_", "../model name")).toBe("MDNS_TXT_MODEL_NAME");
    expect(propertyName("MDNS_TXT_", "\u0000/..")).toBeUndefined();
  });

  it("never yields an invalid name or an unbounded value, whatever the input", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), fc.string({ maxLength: 6000 }), (key, value) => {
        const name = propertyName("P_", key);
        if (name !== undefined) expect(name).toMatch(PROPERTY_NAME);
        const v = propertyValue(value);
        expect(v.length).toBeLessThanOrEqual(MAX_PROPERTY_VALUE);
        expect(v).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
      }),
      { numRuns: fuzzRuns(3000, "names and property values") },
    );
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ maxLength: 40 }), fc.string({ maxLength: 100 }), { maxKeys: 200 }),
        (props) => {
          const out = boundProperties(props);
          expect(Object.keys(out).length).toBeLessThanOrEqual(64);
          for (const k of Object.keys(out)) expect(k).toMatch(PROPERTY_NAME);
        },
      ),
      { numRuns: fuzzRuns(500, "names and property values") },
    );
  });
});
