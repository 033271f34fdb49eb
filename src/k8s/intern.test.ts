import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { intern, internDeep } from "./intern.js";

describe("intern", () => {
  it("returns a string equal to its input, also once the table has started again", () => {
    fc.assert(
      fc.property(fc.array(fc.string({ maxLength: 300 }), { maxLength: 5000 }), (values) => {
        for (const v of values) {
          const a = intern(v);
          expect(a).toBe(v);
          expect(intern(`${v}`)).toBe(a);
        }
      }),
    );
  });

  it("leaves the structure of records and owner references as it was", () => {
    const spec = { image: "ghcr.io/acme/app:v1", replicas: 2, variables: [{ name: "a", value: "b" }], on: true };
    expect(internDeep(spec)).toEqual(spec);
    const labels = { "spindle.dev/configuration": "cams", "spindle.dev/node.edge-1": "" };
    expect(internDeep(labels)).toEqual(labels);
    expect(internDeep(undefined)).toBeUndefined();
    const owners = [{ apiVersion: "spindle.dev/v1alpha1", kind: "Device", name: "cam", uid: "u1", controller: true }];
    expect(internDeep(owners)).toEqual(owners);
    expect(internDeep(undefined)).toBeUndefined();
  });
});
