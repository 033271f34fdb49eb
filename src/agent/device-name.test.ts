import { describe, expect, it } from "vitest";
import { DNS_LABEL } from "../api/common.js";
import { deviceIdentity, deviceName } from "./device-name.js";

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
