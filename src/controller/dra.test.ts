import type * as k8s from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { Device } from "../api/device.js";
import { placementFromClasses } from "../k8s/dra.js";
import { configurationClassName, desiredDeviceClasses } from "./dra.js";

const config = {
  apiVersion: "spindle.dev/v1alpha1",
  kind: "DeviceConfiguration",
  metadata: { name: "cams", uid: "c1" },
};
const device = {
  apiVersion: "spindle.dev/v1alpha1",
  kind: "Device",
  metadata: { name: "cams-0123456789ab", uid: "d1" },
  spec: {
    configurationName: "cams",
    handler: "usb",
    shared: false,
    id: "x",
    nodes: ["edge-1"],
    properties: {},
    capacity: 2,
  },
} as Device & k8s.KubernetesObject;

describe("desiredDeviceClasses", () => {
  it("maps each Device's extended resource to a class selecting exactly its slots, owned by the Device", () => {
    const [byConfig, byDevice] = desiredDeviceClasses([config], [device], true);
    expect(byConfig!.metadata!.name).toBe("cams.configuration.spindle.dev");
    expect(byConfig!.spec!.extendedResourceName).toBe("configuration.spindle.dev/cams");
    expect(byConfig!.metadata!.ownerReferences?.[0]).toMatchObject({ kind: "DeviceConfiguration", uid: "c1" });
    expect(byDevice!.metadata!.name).toBe("cams-0123456789ab.spindle.dev");
    expect(byDevice!.spec!.extendedResourceName).toBe("spindle.dev/cams-0123456789ab");
    expect(byDevice!.spec!.selectors?.[0]?.cel?.expression).toBe(
      'device.driver == "spindle.dev" && device.attributes["spindle.dev"].device == "cams-0123456789ab"',
    );
    expect(byDevice!.metadata!.ownerReferences?.[0]).toMatchObject({ kind: "Device", uid: "d1" });
  });

  it("leaves the mapping out when the cluster has none, which reads as node-resources placement", () => {
    const classes = desiredDeviceClasses([config], [device], false);
    expect(classes.every((c) => c.spec?.extendedResourceName === undefined)).toBe(true);
    expect(placementFromClasses(classes)).toBe("node-resources");
    expect(placementFromClasses(desiredDeviceClasses([config], [device], true))).toBe("dra");
  });

  it("gives a configuration whose name is not a valid extended-resource name part a class without mapping", () => {
    const long = "c".repeat(70);
    const [c] = desiredDeviceClasses([{ ...config, metadata: { name: long, uid: "c2" } }], [], true);
    expect(c!.metadata!.name).toBe(configurationClassName(long));
    expect(c!.spec!.extendedResourceName).toBeUndefined();
  });
});
