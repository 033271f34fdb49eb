import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Device } from "../api/device.js";
import { MAX_LISTED_SPIN_APPS } from "../api/device-spin-app.js";
import type { SpinApp } from "../api/spin-app.js";
import { type Action, type ObservedSpinApp, plan, type RawObject, type Snapshot } from "./plan.js";
import { DEVICE_LABEL, DSA_LABEL, dsaLabelValue } from "./spin-app-builder.js";

const NOW = Date.parse("2026-12-01T00:00:00Z");
const TRACEPARENT = "spindle.dev/traceparent";
const TP1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
let uids = 0;
/** Real uids are unique per object; these are unique per object content, so equal inputs stay equal. */
const uidOf = (...parts: unknown[]) => `uid-${JSON.stringify(parts)}`;

function device(
  name: string,
  o: {
    config?: string;
    capacity?: number;
    nodes?: string[];
    properties?: Record<string, string>;
    generation?: number;
  } = {},
): Device {
  return {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "Device",
    metadata: { name, uid: uidOf(name, o), generation: o.generation ?? 1, resourceVersion: "1" },
    spec: {
      configurationName: o.config ?? "cams",
      handler: "onvif",
      shared: true,
      id: name,
      nodes: o.nodes ?? ["edge-1"],
      properties: o.properties ?? { ONVIF_DEVICE_SERVICE_URL: `http://${name}/onvif` },
      capacity: o.capacity ?? 1,
    },
  };
}

function dsa(
  name: string,
  o: {
    ns?: string;
    config?: string;
    created?: string;
    generation?: number;
    spec?: Record<string, unknown>;
    template?: Record<string, unknown>;
  } = {},
): RawObject {
  return {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceSpinApp",
    metadata: {
      name,
      namespace: o.ns ?? "team",
      uid: uidOf(o.ns, name, o),
      generation: o.generation ?? 1,
      creationTimestamp: o.created ?? "2026-01-01T00:00:00Z",
    },
    spec: {
      deviceConfiguration: o.config ?? "cams",
      template: {
        spec: { image: "ghcr.io/acme/app:v1", executor: "containerd-shim-spin", replicas: 1, ...o.template },
      },
      ...o.spec,
    },
  };
}

function config(name: string): RawObject {
  return {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceConfiguration",
    metadata: { name, uid: `uid-cfg-${name}`, generation: 1 },
    spec: { discoveryHandler: { name: "onvif", discoveryDetails: {} }, capacity: 1 },
  };
}

function snapshot(s: Partial<Snapshot>): Snapshot {
  return {
    deviceSpinApps: [],
    devices: [],
    spinApps: [],
    configurations: [config("cams"), config("serial")],
    nodes: new Set(["edge-1", "edge-2"]),
    failures: new Map(),
    now: NOW,
    validateDetails: () => ({ ok: true }),
    ...s,
  };
}

/** The cluster after the actions: what the apiserver (and its garbage collector) would make of them. */
function simulate(s: Snapshot, actions: Action[]): Snapshot {
  let devices = s.devices.map((d) => structuredClone(d));
  let spinApps = s.spinApps.map((a) => structuredClone(a));
  const dsas = s.deviceSpinApps.map((d) => structuredClone(d));
  const configurations = s.configurations.map((c) => structuredClone(c));
  for (const a of actions) {
    switch (a.kind) {
      case "deleteDevice":
        devices = devices.filter((d) => d.metadata.name !== a.device);
        spinApps = spinApps.filter((x) => x.metadata.labels?.[DEVICE_LABEL] !== a.device);
        break;
      case "releaseNode":
        for (const d of devices)
          if (d.metadata.name === a.device) d.spec.nodes = d.spec.nodes.filter((n) => n !== a.node);
        break;
      case "deleteSpinApp":
        spinApps = spinApps.filter((x) => !(x.metadata.name === a.name && x.metadata.namespace === a.namespace));
        break;
      case "applyAllocations":
        for (const d of devices)
          if (d.metadata.name === a.device) d.status = { allocations: a.allocations, used: a.allocations.length };
        break;
      case "applySpinApp": {
        const app = observedOf(a.spinApp);
        spinApps = spinApps.filter((x) => x.metadata.name !== app.metadata.name);
        spinApps.push(app);
        break;
      }
      case "applyDsaStatus":
        for (const d of dsas)
          if (d.metadata.name === a.name && d.metadata.namespace === a.namespace) d.status = a.status;
        break;
      case "applyConfigurationStatus":
        for (const c of configurations) if (c.metadata.name === a.name) c.status = a.status;
        break;
    }
  }
  return { ...s, devices, spinApps, deviceSpinApps: dsas, configurations };
}

function observedOf(app: SpinApp): ObservedSpinApp {
  const copy = structuredClone(app);
  return {
    ...copy,
    metadata: { ...copy.metadata, uid: `uid-app-${++uids}` },
    status: { readyReplicas: copy.spec.replicas ?? 1 },
  } as ObservedSpinApp;
}

/** Plans and applies until nothing is left to do; fails if that takes more than a few rounds. */
function converge(s: Snapshot, rounds = 6): Snapshot {
  let state = s;
  for (let i = 0; i < rounds; i++) {
    const p = plan(state);
    const writes = p.actions.filter((a) => a.kind !== "event");
    if (writes.length === 0) return state;
    state = simulate(state, writes);
  }
  throw new Error(`no fixpoint after ${rounds} rounds: ${JSON.stringify(plan(state).actions.map((a) => a.kind))}`);
}

const kinds = (actions: Action[]) => actions.filter((a) => a.kind !== "event").map((a) => a.kind);
const appsOf = (s: Snapshot, name: string) => s.spinApps.filter((a) => a.metadata.labels?.[DSA_LABEL] === name);
const dsaStatusOf = (s: Snapshot, name: string) =>
  s.deviceSpinApps.find((d) => d.metadata.name === name)?.status as
    | { conditions: { type: string; status: string; reason: string; message: string }[]; boundDevices: number }
    | undefined;
const conditionOf = (s: Snapshot, name: string, type: string) =>
  dsaStatusOf(s, name)?.conditions.find((c) => c.type === type);

function withDsa(s: Snapshot, d: RawObject): Snapshot {
  return { ...s, deviceSpinApps: [...s.deviceSpinApps.filter((x) => x.metadata.name !== d.metadata.name), d] };
}

describe("plan(): table cases", () => {
  const base = () =>
    converge(snapshot({ devices: [device("cam-1"), device("cam-2")], deviceSpinApps: [dsa("viewer")] }));

  it("binds one SpinApp per matching device, records its slot, and reports DevicesBound", () => {
    const s = base();
    expect(
      appsOf(s, "viewer")
        .map((a) => a.metadata.labels?.[DEVICE_LABEL])
        .sort(),
    ).toEqual(["cam-1", "cam-2"]);
    for (const d of s.devices) expect(d.status?.allocations).toHaveLength(1);
    expect(conditionOf(s, "viewer", "DevicesAvailable")).toMatchObject({ status: "True", reason: "DevicesBound" });
    expect(plan(s).actions).toEqual([]);
  });

  it("names at most MAX_LISTED_SPIN_APPS SpinApps in the status, those not ready first; the counts cover all", () => {
    const devices = Array.from({ length: 130 }, (_, i) => device(`cam-${String(i).padStart(3, "0")}`));
    const s = converge(snapshot({ devices, deviceSpinApps: [dsa("viewer")] }));
    // Two SpinApps lose their pods.
    const apps = structuredClone(s.spinApps);
    const down = ["cam-077", "cam-120"];
    for (const a of apps) if (down.includes(a.metadata.labels![DEVICE_LABEL]!)) a.status = { readyReplicas: 0 };
    const after = simulate({ ...s, spinApps: apps }, plan({ ...s, spinApps: apps }).actions);
    const status = dsaStatusOf(after, "viewer") as unknown as {
      boundDevices: number;
      readySpinApps: number;
      spinApps: { device: string; ready: boolean }[];
    };
    expect(status.boundDevices).toBe(130);
    expect(status.readySpinApps).toBe(128);
    expect(status.spinApps).toHaveLength(MAX_LISTED_SPIN_APPS);
    expect(status.spinApps.slice(0, 2).map((a) => [a.device, a.ready])).toEqual(
      expect.arrayContaining([
        ["cam-077", false],
        ["cam-120", false],
      ]),
    );
    expect(status.spinApps.slice(2).every((a) => a.ready)).toBe(true);
  });

  it("recreates a SpinApp deleted by hand", () => {
    const s = base();
    const gone = { ...s, spinApps: s.spinApps.slice(1) };
    const actions = plan(gone).actions;
    expect(actions.filter((a) => a.kind === "applySpinApp")).toHaveLength(1);
    expect(actions.find((a) => a.kind === "applySpinApp")).toMatchObject({ create: true });
  });

  it("restores a SpinApp edited by hand, and leaves alone fields others add", () => {
    const s = base();
    const edited = { ...s, spinApps: structuredClone(s.spinApps) };
    edited.spinApps[0]!.spec!.image = "evil:latest";
    expect(kinds(plan(edited).actions)).toEqual(["applySpinApp"]);
    const added = { ...s, spinApps: structuredClone(s.spinApps) };
    added.spinApps[0]!.spec!.checks = { readiness: { httpGet: { path: "/" } } };
    added.spinApps[0]!.metadata.labels = { ...added.spinApps[0]!.metadata.labels, other: "x" };
    expect(plan(added).actions).toEqual([]);
  });

  it("carries the Device's trace context to the SpinApp apply, and never sees the SpinApp's as drift", () => {
    const s = base();
    const traced = (tp: string) => ({
      ...s,
      // A new generation too, so the builder's cache (keyed by generation) cannot hide what it does with the annotation.
      devices: s.devices.map((d) => ({
        ...d,
        metadata: { ...d.metadata, generation: 7, annotations: { [TRACEPARENT]: tp } },
      })),
    });
    // A Device whose annotation changed (a new discovery span) with nothing else: no SpinApp write.
    expect(plan(traced(TP1)).actions).toEqual([]);
    // A SpinApp that carries an older (or a hand-edited) trace annotation is up to date too.
    const annotated = {
      ...traced(TP1),
      spinApps: s.spinApps.map((a) => ({
        ...a,
        metadata: { ...a.metadata, annotations: { ...a.metadata.annotations, [TRACEPARENT]: "junk" } },
      })),
    };
    expect(plan(annotated).actions).toEqual([]);
    // When a SpinApp is written anyway, the write names the Device's trace.
    const gone = { ...traced(TP1), spinApps: s.spinApps.slice(1) };
    const apply = plan(gone).actions.find((a) => a.kind === "applySpinApp");
    expect(apply).toMatchObject({ kind: "applySpinApp", create: true, trace: TP1 });
    expect(apply?.kind === "applySpinApp" && apply.spinApp.metadata.annotations?.[TRACEPARENT]).toBeUndefined();
    // A delete names the Device's trace and links the SpinApp's own.
    const unmatched = withDsa(
      annotated,
      dsa("viewer", { generation: 2, spec: { selector: { matchProperties: { NONE: "x" } } } }),
    );
    const del = plan(unmatched).actions.find((a) => a.kind === "deleteSpinApp");
    expect(del).toMatchObject({ kind: "deleteSpinApp", trace: TP1, appTrace: "junk" });
    // Without traces (tracing off), the actions carry none.
    expect(
      plan({ ...s, spinApps: s.spinApps.slice(1) }).actions.find((a) => a.kind === "applySpinApp"),
    ).not.toHaveProperty("trace");
  });

  it("updates the SpinApp's variables when its device's properties change", () => {
    const s = base();
    const changed = {
      ...s,
      devices: s.devices.map((d) =>
        d.metadata.name === "cam-1"
          ? {
              ...d,
              metadata: { ...d.metadata, generation: 2 },
              spec: { ...d.spec, properties: { ONVIF_DEVICE_SERVICE_URL: "http://new/onvif" } },
            }
          : d,
      ),
    };
    const apply = plan(changed).actions.find((a) => a.kind === "applySpinApp");
    expect(apply?.kind === "applySpinApp" && apply.spinApp.spec.variables).toContainEqual({
      name: "onvif_device_service_url",
      value: "http://new/onvif",
    });
  });

  it.each([
    ["a variable name Spin cannot use", { template: { variables: [{ name: "Bad-Name", value: "x" }] } }, "InvalidSpec"],
    ["a field the schema does not know", { spec: { surprise: true } }, "InvalidSpec"],
    ["a template without an image", { template: { image: undefined } }, "InvalidTemplate"],
    [
      "a variable with both value and valueFrom",
      { template: { variables: [{ name: "x", value: "1", valueFrom: { secretKeyRef: { name: "s", key: "k" } } }] } },
      "InvalidTemplate",
    ],
    ["replicas over the device's capacity", { template: { replicas: 3 } }, "CapacityExhausted"],
  ])("keeps running SpinApps on the last valid spec after %s", (_what, edit, reason) => {
    const s = base();
    const before = s.spinApps.map((a) => JSON.stringify(a)).sort();
    const bad = withDsa(s, dsa("viewer", { generation: 2, ...(edit as object) }));
    const p = plan(bad);
    expect(kinds(p.actions)).toEqual(["applyDsaStatus"]);
    const after = converge(bad);
    expect(after.spinApps.map((a) => JSON.stringify(a)).sort()).toEqual(before);
    expect(conditionOf(after, "viewer", "DevicesAvailable")).toMatchObject({ status: "False", reason });
    expect(conditionOf(after, "viewer", "DevicesAvailable")?.message).toMatch(/keep running/);
    expect(dsaStatusOf(after, "viewer")?.boundDevices).toBe(2);
    // Fixed again: the new valid spec replaces them.
    const fixed = converge(
      withDsa(after, dsa("viewer", { generation: 3, template: { image: "ghcr.io/acme/app:v2" } })),
    );
    expect(appsOf(fixed, "viewer").map((a) => a.spec?.image)).toEqual(["ghcr.io/acme/app:v2", "ghcr.io/acme/app:v2"]);
  });

  it("does not bind new devices while its spec is invalid", () => {
    const s = base();
    const bad = withDsa(s, dsa("viewer", { generation: 2, template: { image: undefined } }));
    const more = converge({ ...bad, devices: [...bad.devices, device("cam-3")] });
    expect(appsOf(more, "viewer")).toHaveLength(2);
  });

  it("a refused write marks only its own DeviceSpinApp and frees the slot for others", () => {
    const s = snapshot({
      devices: [device("cam-1")],
      deviceSpinApps: [
        dsa("old", { created: "2026-01-01T00:00:00Z" }),
        dsa("young", { created: "2026-02-01T00:00:00Z" }),
      ],
    });
    const first = plan(s);
    const refused = first.actions.find((a) => a.kind === "applySpinApp");
    expect(refused?.kind === "applySpinApp" && refused.dsaKey).toBe("team/old");
    const name = refused?.kind === "applySpinApp" ? refused.spinApp.metadata.name : "";
    const failures = new Map([
      [
        `team/${name}`,
        {
          dsaKey: "team/old",
          message: 'admission webhook denied: executor "x" does not exist',
          permanent: true,
          retryAt: NOW + 60_000,
          attempts: 1,
        },
      ],
    ]);
    const after = converge({ ...s, failures });
    expect(appsOf(after, "young")).toHaveLength(1);
    expect(appsOf(after, "old")).toHaveLength(0);
    expect(conditionOf(after, "old", "Synced")).toMatchObject({ status: "False", reason: "ApplyFailed" });
    expect(conditionOf(after, "old", "Synced")?.message).toMatch(/does not exist/);
    expect(conditionOf(after, "young", "Synced")).toMatchObject({ status: "True" });
    expect(plan({ ...after, failures }).wakeAt).toBe(NOW + 60_000);
  });

  it("a running app is never taken by an older DeviceSpinApp that starts to match", () => {
    const s = converge(
      snapshot({ devices: [device("cam-1")], deviceSpinApps: [dsa("young", { created: "2026-02-01T00:00:00Z" })] }),
    );
    const after = converge(withDsa(s, dsa("old", { created: "2026-01-01T00:00:00Z" })));
    expect(appsOf(after, "young")).toHaveLength(1);
    expect(conditionOf(after, "old", "DevicesAvailable")).toMatchObject({ reason: "CapacityExhausted" });
  });

  it("deletes the SpinApps of a deleted DeviceSpinApp, of a device that no longer matches, and orphans", () => {
    const s = base();
    const gone = plan({ ...s, deviceSpinApps: [] }).actions;
    expect(kinds(gone).filter((k) => k === "deleteSpinApp")).toHaveLength(2);
    const unmatched = withDsa(s, dsa("viewer", { generation: 2, spec: { selector: { matchProperties: { X: "y" } } } }));
    expect(kinds(plan(unmatched).actions).filter((k) => k === "deleteSpinApp")).toHaveLength(2);
  });

  it("releases deleted nodes from shared devices and deletes devices no remaining node sees", () => {
    const s = snapshot({
      devices: [device("cam-1", { nodes: ["edge-1", "gone"] }), device("cam-2", { nodes: ["gone"] })],
      deviceSpinApps: [dsa("viewer")],
    });
    const actions = plan(s).actions;
    expect(actions).toContainEqual({ kind: "releaseNode", device: "cam-1", node: "gone" });
    expect(actions).toContainEqual(expect.objectContaining({ kind: "deleteDevice", device: "cam-2" }));
    // No Nodes known (a cache that never listed would look like this): nothing is released.
    expect(kinds(plan({ ...s, nodes: new Set() }).actions)).not.toContain("releaseNode");
  });

  it("labels a SpinApp with a valid label value even for a 253-character DeviceSpinApp name", () => {
    const long = `${"a".repeat(62)}.${"b".repeat(100)}`;
    const s = converge(snapshot({ devices: [device("cam-1")], deviceSpinApps: [dsa(long)] }));
    const label = s.spinApps[0]!.metadata.labels![DSA_LABEL]!;
    expect(label).toBe(dsaLabelValue(long));
    expect(label.length).toBeLessThanOrEqual(63);
    expect(label).toMatch(/^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$/);
    expect(plan(s).actions).toEqual([]);
  });

  it("reports an unknown configuration, and discovery details the handler rejects", () => {
    const s = converge(
      snapshot({
        deviceSpinApps: [dsa("lost", { config: "nowhere" })],
        validateDetails: () => ({ ok: false, reason: "InvalidDiscoveryDetails", message: "discoveryDetails.x: bad" }),
      }),
    );
    expect(conditionOf(s, "lost", "DevicesAvailable")).toMatchObject({ reason: "ConfigurationNotFound" });
    expect((s.configurations[0]!.status as { conditions: { reason: string }[] }).conditions[0]!.reason).toBe(
      "InvalidDiscoveryDetails",
    );
  });
});

// ---- property-based tests over generated clusters ----

const arbDevice = fc.record({
  n: fc.integer({ min: 0, max: 7 }),
  config: fc.constantFrom("cams", "serial"),
  capacity: fc.integer({ min: 1, max: 3 }),
  zone: fc.constantFrom("a", "b"),
});
const arbDsa = fc.record({
  n: fc.integer({ min: 0, max: 4 }),
  ns: fc.constantFrom("team", "other"),
  config: fc.constantFrom("cams", "serial", "missing"),
  replicas: fc.integer({ min: 1, max: 3 }),
  maxApps: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
  zone: fc.option(fc.constantFrom("a", "b"), { nil: undefined }),
  day: fc.integer({ min: 1, max: 28 }),
});
type ArbDsa = typeof arbDsa extends fc.Arbitrary<infer T> ? T : never;

function world(ds: { n: number; config: string; capacity: number; zone: string }[], as: ArbDsa[]): Snapshot {
  const devices = new Map<string, Device>();
  for (const d of ds)
    devices.set(
      `dev-${d.n}`,
      device(`dev-${d.n}`, { config: d.config, capacity: d.capacity, properties: { ZONE: d.zone } }),
    );
  const dsas = new Map<string, RawObject>();
  for (const a of as) dsas.set(`${a.ns}/app-${a.n}`, generatedDsa(a));
  return snapshot({ devices: [...devices.values()], deviceSpinApps: [...dsas.values()] });
}

function generatedDsa(a: ArbDsa, generation = 1, template: Record<string, unknown> = {}): RawObject {
  return dsa(`app-${a.n}`, {
    ns: a.ns,
    config: a.config,
    generation,
    created: `2026-01-${String(a.day).padStart(2, "0")}T00:00:00Z`,
    template: { replicas: a.replicas, ...template },
    spec: {
      ...(a.maxApps ? { maxApps: a.maxApps } : {}),
      ...(a.zone ? { selector: { matchProperties: { ZONE: a.zone } } } : {}),
    },
  });
}

function checkInvariants(s: Snapshot): void {
  const perDevice = new Map<string, number>();
  const pairs = new Set<string>();
  for (const app of s.spinApps) {
    const device = app.metadata.labels![DEVICE_LABEL]!;
    const pair = `${app.metadata.namespace}/${app.metadata.labels![DSA_LABEL]}|${device}`;
    expect(pairs.has(pair), `two SpinApps for ${pair}`).toBe(false);
    pairs.add(pair);
    perDevice.set(device, (perDevice.get(device) ?? 0) + ((app.spec?.replicas as number) ?? 1));
  }
  for (const d of s.devices) {
    const used = perDevice.get(d.metadata.name!) ?? 0;
    expect(used, `device ${d.metadata.name} over-allocated`).toBeLessThanOrEqual(d.spec.capacity);
    const allocations = d.status?.allocations ?? [];
    expect(allocations).toHaveLength(used);
    expect(new Set(allocations.map((a) => a.slot)).size).toBe(allocations.length);
  }
}

const sortedJson = (actions: Action[]) => actions.map((a) => JSON.stringify(a)).sort();

describe("plan(): properties", () => {
  const worlds = fc.tuple(fc.array(arbDevice, { maxLength: 8 }), fc.array(arbDsa, { maxLength: 5 }));

  it("converges to a fixpoint with no device over-allocated and no duplicate SpinApp", () => {
    fc.assert(
      fc.property(worlds, ([ds, as]) => {
        const s = converge(world(ds, as));
        checkInvariants(s);
        expect(plan(s).actions).toEqual([]);
      }),
      { numRuns: 2000 },
    );
  });

  it("is independent of the order of its inputs", () => {
    fc.assert(
      fc.property(worlds, fc.integer(), ([ds, as], seed) => {
        const s = converge(world(ds, as));
        const s2 = { ...s, devices: [...s.devices].reverse(), spinApps: [...s.spinApps].reverse() };
        const rotate = <T>(xs: readonly T[]) =>
          xs.length ? [...xs.slice(seed % xs.length), ...xs.slice(0, seed % xs.length)] : [];
        const a = world(ds, as);
        const b = { ...a, devices: rotate(a.devices), deviceSpinApps: rotate(a.deviceSpinApps) };
        expect(sortedJson(plan(b).actions)).toEqual(sortedJson(plan(a).actions));
        expect(plan(s2).actions).toEqual([]);
      }),
      { numRuns: 1000 },
    );
  });

  it("keeps every running SpinApp when devices or DeviceSpinApps are added", () => {
    fc.assert(
      fc.property(worlds, arbDevice, arbDsa, ([ds, as], extraDevice, extraDsa) => {
        const s = converge(world(ds, as));
        const addedDevice = {
          ...s,
          devices: [
            ...s.devices.filter((d) => d.metadata.name !== "dev-new"),
            device("dev-new", {
              config: extraDevice.config,
              capacity: extraDevice.capacity,
              properties: { ZONE: extraDevice.zone },
            }),
          ],
        };
        expect(kinds(plan(addedDevice).actions)).not.toContain("deleteSpinApp");
        const key = `${extraDsa.ns}/app-${extraDsa.n}`;
        if (s.deviceSpinApps.some((d) => `${d.metadata.namespace}/${d.metadata.name}` === key)) return;
        const addedDsa = { ...s, deviceSpinApps: [...s.deviceSpinApps, generatedDsa(extraDsa)] };
        const p = plan(addedDsa);
        expect(kinds(p.actions)).not.toContain("deleteSpinApp");
        // Only the new DeviceSpinApp's SpinApps are written.
        for (const a of p.actions) if (a.kind === "applySpinApp") expect(a.dsaKey).toBe(key);
      }),
      { numRuns: 1000 },
    );
  });

  it("never removes or rewrites a running SpinApp when its DeviceSpinApp's new spec is invalid", () => {
    const invalid = fc.constantFrom<Record<string, unknown>>(
      { image: undefined },
      { replicas: 4 },
      { variables: [{ name: "Bad-Name", value: "x" }] },
      { variables: [{ name: "ok", value: "1", valueFrom: { secretKeyRef: { name: "s", key: "k" } } }] },
    );
    fc.assert(
      fc.property(worlds, invalid, fc.nat(), ([ds, as], template, pick) => {
        const s = converge(world(ds, as));
        if (s.deviceSpinApps.length === 0) return;
        const victim = s.deviceSpinApps[pick % s.deviceSpinApps.length]!;
        const a = [...as]
          .reverse()
          .find((x) => `${x.ns}/app-${x.n}` === `${victim.metadata.namespace}/${victim.metadata.name}`)!;
        const before = appsOf(s, victim.metadata.name!).filter(
          (x) => x.metadata.namespace === victim.metadata.namespace,
        );
        const bad = {
          ...s,
          deviceSpinApps: s.deviceSpinApps.map((d) => (d === victim ? generatedDsa(a, 2, template) : d)),
        };
        const after = converge(bad);
        checkInvariants(after);
        for (const app of before)
          expect(
            after.spinApps.find((x) => x.metadata.uid === app.metadata.uid),
            "a running SpinApp was removed or rewritten",
          ).toEqual(app);
      }),
      { numRuns: 1000 },
    );
  });

  it("every action is idempotent: applying a plan twice is the same as once", () => {
    fc.assert(
      fc.property(worlds, ([ds, as]) => {
        const s = world(ds, as);
        const actions = plan(s).actions.filter((a) => a.kind !== "event");
        const once = simulate(s, actions);
        const twice = simulate(once, actions);
        const strip = (x: Snapshot) =>
          JSON.stringify({
            d: x.devices,
            a: x.spinApps.map((y) => ({ ...y, metadata: { ...y.metadata, uid: "" } })),
            s: x.deviceSpinApps,
          });
        expect(strip(twice)).toEqual(strip(once));
      }),
      { numRuns: 1000 },
    );
  });
});
