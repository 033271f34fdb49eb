import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DNS_LABEL } from "../api/common.js";
import { deviceIdentity, deviceName, nodeLabel } from "./device-name.js";

describe("deviceName", () => {
  it("is stable, DNS-1123 and at most 63 characters", () => {
    const a = deviceName("onvif-cameras", "urn:uuid:1");
    expect(a).toBe(deviceName("onvif-cameras", "urn:uuid:1"));
    expect(a).toMatch(/^onvif-cameras-[0-9a-f]{12}$/);
    const long = deviceName(`${"x".repeat(200)}.example.com`, "id");
    expect(long.length).toBeLessThanOrEqual(63);
    expect(long).toMatch(DNS_LABEL);
  });

  it("differs by configuration even when truncated prefixes are equal", () => {
    const base = "c".repeat(60);
    expect(deviceName(`${base}-a`, "id")).not.toBe(deviceName(`${base}-b`, "id"));
  });

  it("keeps a local device per node and a shared one across nodes", () => {
    expect(deviceIdentity("usb:1:2:s", false, "edge-1")).not.toBe(deviceIdentity("usb:1:2:s", false, "edge-2"));
    expect(deviceIdentity("urn:uuid:1", true, "edge-1")).toBe(deviceIdentity("urn:uuid:1", true, "edge-2"));
  });
});

describe("nodeLabel", () => {
  // Kubernetes' qualified name: an optional DNS-subdomain prefix, then a name part of <= 63.
  const LABEL_KEY = /^[a-z0-9.-]{1,253}\/[a-zA-Z0-9]([-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9])?$/;

  it("names the node where it can, and hashes names too long for a label", () => {
    expect(nodeLabel("edge-1")).toBe("node.spindle.dev/edge-1");
    expect(nodeLabel("ip-10-0-0-1.eu-west-1.compute.internal")).toBe(
      "node.spindle.dev/ip-10-0-0-1.eu-west-1.compute.internal",
    );
    const long = `${"n".repeat(70)}.example.com`;
    expect(nodeLabel(long)).toMatch(/^node\.spindle\.dev\/h-[0-9a-f]{32}$/);
    expect(nodeLabel(long)).not.toBe(nodeLabel(`${"n".repeat(70)}.example.org`));
  });

  it("is always a valid label key, and different nodes get different keys", () => {
    const nodeName = fc.stringMatching(/^[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?$/);
    fc.assert(
      fc.property(nodeName, nodeName, (a, b) => {
        expect(nodeLabel(a)).toMatch(LABEL_KEY);
        if (a !== b) expect(nodeLabel(a)).not.toBe(nodeLabel(b));
      }),
      { numRuns: 2000 },
    );
  });
});
