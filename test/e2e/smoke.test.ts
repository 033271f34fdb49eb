import { execFile } from "node:child_process";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { KINDS } from "../../src/api/crds.js";
import { type SpinApp, spinApp } from "../../src/api/spin-app.js";
import { errorMessage } from "../../src/k8s/client.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, kubectl, testNamespace } from "./cluster.js";

const G = { group: "spindle.dev", version: "v1alpha1" };

describe("sandbox control plane", () => {
  const kc = kubeConfig();
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const ext = kc.makeApiClient(k8s.ApiextensionsV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  let ns: Awaited<ReturnType<typeof testNamespace>>;

  beforeAll(async () => {
    ns = await testNamespace("smoke");
  });
  afterAll(async () => {
    await ns?.remove();
  });

  it("has KWOK nodes edge-1 and edge-2 Ready", async () => {
    const out = await kubectl("get", "nodes", "--no-headers");
    expect(out).toMatch(/edge-1\s+Ready/);
    expect(out).toMatch(/edge-2\s+Ready/);
  });

  it("serves Spindle's and SpinKube's CRDs, established", async () => {
    const names = [
      ...KINDS.map((k) => `${k.plural}.spindle.dev`),
      "spinapps.core.spinkube.dev",
      "spinappexecutors.core.spinkube.dev",
    ];
    for (const name of names) {
      const crd = await ext.readCustomResourceDefinition({ name });
      expect(crd.status?.conditions?.find((c) => c.type === "Established")?.status, name).toBe("True");
    }
  });

  it("round-trips a valid DeviceConfiguration and fills defaults", async () => {
    const name = `dc-${ns.name}`;
    const body = {
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name },
      spec: {
        discoveryHandler: { name: "onvif", discoveryDetails: { scopes: { action: "Include", items: ["onvif://x"] } } },
        capacity: 2,
      },
    };
    await custom.createClusterCustomObject({ ...G, plural: "deviceconfigurations", body });
    const got = (await custom.getClusterCustomObject({ ...G, plural: "deviceconfigurations", name })) as {
      spec: Record<string, unknown>;
    };
    expect(got.spec.capacity).toBe(2);
    expect(got.spec.offlineGraceSeconds).toBe(300);
    expect(got.spec.discoveryHandler).toMatchObject({ discoveryDetails: { scopes: { items: ["onvif://x"] } } });
    const table = await kubectl("get", "dc", name);
    expect(table).toMatch(/HANDLER\s+CAPACITY/);
    await custom.deleteClusterCustomObject({ ...G, plural: "deviceconfigurations", name });
  });

  it("round-trips a Device with its status subresource and shows it in kubectl", async () => {
    const name = `dev-${ns.name}`;
    await custom.createClusterCustomObject({
      ...G,
      plural: "devices",
      body: {
        apiVersion: "spindle.dev/v1alpha1",
        kind: "Device",
        metadata: { name },
        spec: {
          configurationName: "cams",
          handler: "onvif",
          shared: true,
          id: "urn:uuid:1",
          nodes: ["edge-1"],
          capacity: 3,
          properties: { ONVIF_DEVICE_UUID: "1" },
        },
      },
    });
    await custom.patchClusterCustomObjectStatus(
      { ...G, plural: "devices", name, body: { status: { allocations: [{ slot: 0, holder: "ns/app" }], used: 1 } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    const table = await kubectl("get", "devices", name);
    expect(table).toMatch(/CONFIGURATION\s+NODES\s+CAPACITY\s+USED\s+AGE/);
    expect(table).toMatch(/cams\s+\["edge-1"\]\s+3\s+1/);
    await custom.deleteClusterCustomObject({ ...G, plural: "devices", name });
  });

  const invalid: [string, Record<string, unknown>, RegExp][] = [
    ["capacity 0", { discoveryHandler: { name: "usb" }, capacity: 0 }, /capacity must be at least 1/],
    ["an empty handler name", { discoveryHandler: { name: "" } }, /discoveryHandler.name must not be empty/],
    ["no handler at all", { capacity: 1 }, /spec.discoveryHandler: Required value/],
    ["an unknown field", { discoveryHandler: { name: "usb" }, colour: "red" }, /unknown field "spec.colour"/],
    [
      "a property with value and valueFrom",
      {
        discoveryHandler: {
          name: "onvif",
          discoveryProperties: [
            { name: "p", value: "x", valueFrom: { secretKeyRef: { name: "s", namespace: "n", key: "k" } } },
          ],
        },
      },
      /exactly one of value or valueFrom/,
    ],
  ];
  for (const [what, spec, message] of invalid) {
    it(`rejects a DeviceConfiguration with ${what}, saying why`, async () => {
      const body = {
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name: `bad-${ns.name}` },
        spec,
      };
      const err = await custom
        .createClusterCustomObject({ ...G, plural: "deviceconfigurations", body, fieldValidation: "Strict" })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err, "the apiserver accepted it").toBeDefined();
      expect(errorMessage(err)).toMatch(message);
    });
  }

  const invalidApps: [string, Record<string, unknown>, RegExp][] = [
    ["an empty deviceConfiguration", { deviceConfiguration: "" }, /deviceConfiguration must not be empty/],
    ["maxApps 0", { maxApps: 0 }, /spec.maxApps: Invalid value: 0/],
    [
      "a variable name Spin cannot use",
      { variables: [{ name: "Camera__URL", fromProperty: "X" }] },
      /spec.variables\[0\].name/,
    ],
    [
      "In without values",
      { selector: { matchExpressions: [{ property: "A", operator: "In" }] } },
      /In and NotIn need values/,
    ],
    ["no template", { template: undefined }, /spec.template: Required value/],
  ];
  for (const [what, override, message] of invalidApps) {
    it(`rejects a DeviceSpinApp with ${what}, saying why`, async () => {
      const spec = { deviceConfiguration: "cams", template: { spec: { image: "x", executor: EXECUTOR } }, ...override };
      const body = {
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceSpinApp",
        metadata: { name: "bad-app", namespace: ns.name },
        spec,
      };
      const err = await custom
        .createNamespacedCustomObject({
          ...G,
          plural: "devicespinapps",
          namespace: ns.name,
          body,
          fieldValidation: "Strict",
        })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err, "the apiserver accepted it").toBeDefined();
      expect(errorMessage(err)).toMatch(message);
    });
  }

  it("binds every control-plane listener to 127.0.0.1", async () => {
    const ss = await new Promise<string>((resolve, reject) =>
      execFile("ss", ["-ltnupH"], (err, stdout) =>
        err ? reject(new Error(`ss failed (install iproute2): ${err.message}`)) : resolve(stdout),
      ),
    );
    const pids = new Set(inject("sandboxPids"));
    const ours = ss.split("\n").filter((line) => [...line.matchAll(/pid=(\d+)/g)].some((m) => pids.has(Number(m[1]))));
    expect(ours.length, "listeners of the sandbox processes").toBeGreaterThan(5);
    for (const line of ours) expect(line, "a listener outside loopback").toMatch(/\s127\.0\.0\.1:\d+\s/);
  });

  it("rejects a name that is not DNS-1123", async () => {
    const body = {
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "Not_Valid" },
      spec: { discoveryHandler: { name: "usb" } },
    };
    const err = await custom.createClusterCustomObject({ ...G, plural: "deviceconfigurations", body }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(errorMessage(err)).toMatch(/RFC 1123/);
  });

  it("runs a SpinApp built with Spindle's schema: Deployment, pod Running on a KWOK node, and GC on delete", async () => {
    const app: SpinApp = spinApp.parse({
      apiVersion: "core.spinkube.dev/v1alpha1",
      kind: "SpinApp",
      metadata: { name: "hello", namespace: ns.name },
      spec: {
        image: "ghcr.io/spinkube/containerd-shim-spin/examples/spin-rust-hello:v0.13.0",
        executor: EXECUTOR,
        replicas: 1,
        variables: [{ name: "greeting", value: "hi" }],
      },
    });
    await custom.createNamespacedCustomObject({
      group: "core.spinkube.dev",
      version: "v1alpha1",
      plural: "spinapps",
      namespace: ns.name,
      body: app,
    });
    const deployment = await eventually("the Deployment", () =>
      apps.readNamespacedDeployment({ name: "hello", namespace: ns.name }),
    );
    expect(deployment.spec?.template.spec?.containers[0]?.env).toContainEqual({
      name: "SPIN_VARIABLE_GREETING",
      value: "hi",
    });
    const pod = await eventually("a Running pod", async () => {
      const pods = await core.listNamespacedPod({
        namespace: ns.name,
        labelSelector: "core.spinkube.dev/app-name=hello",
      });
      return pods.items.find((p) => p.status?.phase === "Running");
    });
    expect(["edge-1", "edge-2"]).toContain(pod.spec?.nodeName);

    await custom.deleteNamespacedCustomObject({
      group: "core.spinkube.dev",
      version: "v1alpha1",
      plural: "spinapps",
      namespace: ns.name,
      name: "hello",
    });
    await eventually(
      "the garbage collector to delete the Deployment",
      () =>
        apps.readNamespacedDeployment({ name: "hello", namespace: ns.name }).then(
          () => false,
          () => true,
        ),
      90_000,
    );
  });
});
