import { describe, expect, it } from "vitest";
import { deviceConfiguration } from "../../src/api/device-configuration.js";
import { deviceSpinApp } from "../../src/api/device-spin-app.js";
import { SPIN_VARIABLE_NAME, spinApp } from "../../src/api/spin-app.js";

const dc = (spec: Record<string, unknown>) => ({
  apiVersion: "spindle.dev/v1alpha1",
  kind: "DeviceConfiguration",
  metadata: { name: "cams" },
  spec,
});

describe("API schemas", () => {
  it("fills defaults into a minimal DeviceConfiguration", () => {
    const parsed = deviceConfiguration.parse(dc({ discoveryHandler: { name: "onvif" } }));
    expect(parsed.spec.capacity).toBe(1);
    expect(parsed.spec.offlineGraceSeconds).toBe(300);
    expect(parsed.spec.discoveryHandler.discoveryDetails).toEqual({});
  });

  it("rejects unknown fields and a missing handler", () => {
    expect(deviceConfiguration.safeParse(dc({ discoveryHandler: { name: "usb" }, bogus: 1 })).success).toBe(false);
    expect(deviceConfiguration.safeParse(dc({ capacity: 2 })).success).toBe(false);
  });

  it("knows Spin's variable names", () => {
    for (const ok of ["a", "camera_url", "onvif_device_service_url", "x1_2"])
      expect(SPIN_VARIABLE_NAME.test(ok)).toBe(true);
    for (const bad of ["", "1a", "_a", "a_", "a__b", "Camera", "a-b"]) expect(SPIN_VARIABLE_NAME.test(bad)).toBe(false);
  });

  it("rejects a SpinApp without image or with replicas 0", () => {
    const base = {
      apiVersion: "core.spinkube.dev/v1alpha1",
      kind: "SpinApp",
      metadata: { name: "app", namespace: "default" },
    };
    expect(spinApp.safeParse({ ...base, spec: { image: "x", executor: "e", replicas: 1 } }).success).toBe(true);
    const noImage = spinApp.safeParse({ ...base, spec: { executor: "e" } });
    expect(noImage.success).toBe(false);
    const zero = spinApp.safeParse({ ...base, spec: { image: "x", executor: "e", replicas: 0 } });
    expect(zero.error?.issues[0]?.message).toMatch(/replicas must be at least 1/);
    const longName = spinApp.safeParse({ ...base, metadata: { name: "a".repeat(53), namespace: "d" }, spec: base });
    expect(longName.success).toBe(false);
  });

  it("accepts the DeviceSpinApp from the docs", () => {
    const parsed = deviceSpinApp.safeParse({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "thumbnailer", namespace: "vision" },
      spec: {
        deviceConfiguration: "onvif-cameras",
        selector: { matchProperties: { ONVIF_MANUFACTURER: "Acme" } },
        maxApps: 10,
        variables: [{ name: "camera_url", fromProperty: "ONVIF_DEVICE_SERVICE_URL" }],
        template: {
          metadata: { labels: { team: "vision" } },
          spec: { image: "ghcr.io/acme/thumbnailer:v1", executor: "containerd-shim-spin", replicas: 1 },
        },
      },
    });
    expect(parsed.error).toBeUndefined();
  });
});
