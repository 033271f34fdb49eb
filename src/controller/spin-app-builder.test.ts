import { describe, expect, it } from "vitest";
import type { Device } from "../api/device.js";
import { type DeviceSpinApp, deviceSpinApp } from "../api/device-spin-app.js";
import { buildSpinApp, DEVICE_LABEL, DSA_LABEL } from "./spin-app-builder.js";

const device: Device = {
  apiVersion: "spindle.dev/v1alpha1",
  kind: "Device",
  metadata: { name: "cams-1a2b3c", uid: "dev-uid", generation: 1 },
  spec: {
    configurationName: "cams",
    handler: "onvif",
    shared: true,
    id: "cam-1",
    nodes: ["edge-1"],
    properties: { ONVIF_DEVICE_SERVICE_URL: "http://cam-1/onvif" },
    capacity: 1,
  },
};

function dsa(spec: Record<string, unknown> = {}, templateSpec: Record<string, unknown> = {}): DeviceSpinApp {
  return deviceSpinApp.parse({
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceSpinApp",
    metadata: { name: "viewer", namespace: "team", uid: "dsa-uid", generation: 1 },
    spec: {
      deviceConfiguration: "cams",
      template: { spec: { image: "ghcr.io/acme/viewer:v1", executor: "containerd-shim-spin", ...templateSpec } },
      ...spec,
    },
  });
}

function built(d: DeviceSpinApp) {
  const result = buildSpinApp(d, device);
  if (!result.ok) throw new Error(result.reason);
  return result.spinApp;
}

describe("buildSpinApp: telemetry (opt-in)", () => {
  it("without it, the template's executor and no pod labels", () => {
    const app = built(dsa());
    expect(app.spec.executor).toBe("containerd-shim-spin");
    expect(app.spec.podLabels).toBeUndefined();
  });

  it("runs the app on the OTel executor and labels its pods with the device and DeviceSpinApp", () => {
    const app = built(
      dsa(
        { telemetry: { executor: "containerd-shim-spin-otel" } },
        { podLabels: { team: "vision", [DEVICE_LABEL]: "x" } },
      ),
    );
    expect(app.spec.executor).toBe("containerd-shim-spin-otel");
    // Spindle's labels win over the template's: the collector must not be told a wrong device.
    expect(app.spec.podLabels).toEqual({ team: "vision", [DSA_LABEL]: "viewer", [DEVICE_LABEL]: "cams-1a2b3c" });
    // Everything else is as without telemetry.
    const plain = built(dsa({}, { podLabels: { team: "vision" } }));
    expect({ ...app.spec, executor: undefined, podLabels: undefined }).toEqual({
      ...plain.spec,
      executor: undefined,
      podLabels: undefined,
    });
  });

  it("is part of the spec hash, so turning it on or off re-applies the SpinApp", () => {
    const on = built(dsa({ telemetry: { executor: "otel" } }));
    const off = built(dsa());
    expect(on.metadata.annotations?.["spindle.dev/spec-hash"]).not.toBe(
      off.metadata.annotations?.["spindle.dev/spec-hash"],
    );
  });

  it("never puts the trace annotation in the desired SpinApp (the executor adds it to a write)", () => {
    expect(built(dsa()).metadata.annotations?.["spindle.dev/traceparent"]).toBeUndefined();
  });

  it("the schema refuses a bad executor name and unknown fields", () => {
    expect(() => dsa({ telemetry: { executor: "Not A Name" } })).toThrow();
    expect(() => dsa({ telemetry: { executor: "otel", endpoint: "http://x" } })).toThrow();
    expect(() => dsa({ telemetry: {} })).toThrow();
  });
});
