import type * as k8s from "@kubernetes/client-node";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Device } from "../api/device.js";
import {
  type DropWarning,
  desiredSlices,
  draAttributes,
  draDeviceName,
  MAX_DEVICES_PER_SLICE,
  MAX_TAINTED_DEVICES_PER_SLICE,
  planSlices,
  type Slice,
  UNREACHABLE_TAINT,
} from "./resource-slices.js";

type Dev = Device & k8s.KubernetesObject;

function device(name: string, over: Partial<Device["spec"]> = {}): Dev {
  return {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "Device",
    metadata: {
      name,
      ownerReferences: [{ apiVersion: "spindle.dev/v1alpha1", kind: "DeviceConfiguration", name: "cams", uid: "u1" }],
    },
    spec: {
      configurationName: "cams",
      handler: "usb",
      shared: false,
      id: name,
      nodes: ["edge-1"],
      properties: {},
      capacity: 1,
      ...over,
    },
  };
}

const quiet: DropWarning = () => {};

/** What the apiserver holds after the plan is carried out. */
function carryOut(observed: Slice[], plan: ReturnType<typeof planSlices>): Slice[] {
  const store = new Map(observed.map((s) => [s.metadata.name!, s]));
  for (const s of plan.apply) store.set(s.metadata.name!, s);
  for (const s of plan.delete) store.delete(s.metadata.name!);
  return [...store.values()];
}

describe("draAttributes", () => {
  it("carries the built-ins and the properties that fit, and reports the rest", () => {
    const dropped: string[] = [];
    const d = device("cams-abc", {
      properties: { USB_VENDOR_ID: "046d", LONG: "x".repeat(65), A_NAME_THAT_IS_FAR_TOO_LONG_FOR_DRA_1: "v" },
    });
    const attrs = draAttributes(d, 2, (_d, key) => dropped.push(key));
    expect(attrs).toEqual({
      device: { string: "cams-abc" },
      configuration: { string: "cams" },
      handler: { string: "usb" },
      slot: { int: 2 },
      shared: { bool: false },
      USB_VENDOR_ID: { string: "046d" },
    });
    expect(dropped.sort()).toEqual(["A_NAME_THAT_IS_FAR_TOO_LONG_FOR_DRA_1", "LONG"]);
  });

  it("never has more than 32 attributes", () => {
    const properties = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`P${i}`, "v"]));
    const dropped: string[] = [];
    const attrs = draAttributes(device("d-1", { properties }), 0, (_d, key) => dropped.push(key));
    expect(Object.keys(attrs)).toHaveLength(32);
    expect(dropped).toHaveLength(60 - 27);
  });
});

describe("draDeviceName", () => {
  it("is a DNS label, distinct per slot and device", () => {
    const long = `${"c".repeat(50)}-0123456789ab`;
    const names = [
      draDeviceName("cams-1", 0),
      draDeviceName("cams-1", 1),
      draDeviceName(long, 0),
      draDeviceName(long, 1),
    ];
    for (const n of names) expect(n).toMatch(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/);
    expect(new Set(names).size).toBe(4);
  });
});

describe("desiredSlices", () => {
  it("puts node-local devices in a per-node pool with nodeName, one DRA device per slot", () => {
    const slices = desiredSlices(
      [device("cams-a", { capacity: 2 }), device("cams-b", { shared: true }), device("cams-c", { nodes: ["edge-2"] })],
      { kind: "node", nodeName: "edge-1" },
      quiet,
    );
    expect(slices).toHaveLength(1);
    expect(slices[0]!.spec.nodeName).toBe("edge-1");
    expect(slices[0]!.spec.pool.name).toBe("nodes/edge-1/cams");
    expect(slices[0]!.spec.devices.map((d) => d.name)).toEqual(["cams-a-0", "cams-a-1"]);
    expect(slices[0]!.metadata.ownerReferences?.[0]?.uid).toBe("u1");
  });

  it("publishes a shared device once, selecting exactly the nodes that see it", () => {
    const slices = desiredSlices(
      [device("cams-s", { shared: true, nodes: ["edge-2", "edge-1"] }), device("cams-l")],
      { kind: "shared" },
      quiet,
    );
    expect(slices).toHaveLength(1);
    expect(slices[0]!.spec.nodeName).toBeUndefined();
    expect(slices[0]!.spec.nodeSelector?.nodeSelectorTerms).toEqual([
      { matchExpressions: [{ key: "kubernetes.io/hostname", operator: "In", values: ["edge-1", "edge-2"] }] },
    ]);
    expect(slices[0]!.spec.devices.map((d) => d.name)).toEqual(["cams-s-0"]);
  });
});

const deviceSets = fc
  .array(
    fc.record({
      n: fc.integer({ min: 0, max: 400 }),
      capacity: fc.integer({ min: 1, max: 8 }),
      config: fc.constantFrom("a", "b"),
      shared: fc.boolean(),
      nodes: fc.subarray(["edge-1", "edge-2", "edge-3"], { minLength: 1 }),
      vendor: fc.string({ maxLength: 4 }),
    }),
    { maxLength: 200, size: "max" },
  )
  .map((rows) => {
    const byName = new Map<string, Dev>();
    for (const r of rows) {
      const name = `${r.config}-${r.n}`;
      byName.set(
        name,
        device(name, {
          configurationName: r.config,
          capacity: r.capacity,
          shared: r.shared,
          nodes: r.shared ? r.nodes : ["edge-1"],
          properties: { USB_VENDOR_ID: r.vendor },
        }),
      );
    }
    return [...byName.values()];
  });

const scopes = fc.constantFrom({ kind: "node", nodeName: "edge-1" } as const, { kind: "shared" } as const);

describe("planSlices", () => {
  it("converges in one pass: the result holds every slot once, ≤128 per slice, one generation per pool", () => {
    fc.assert(
      fc.property(deviceSets, deviceSets, scopes, (before, after, scope) => {
        const first = carryOut([], planSlices(desiredSlices(before, scope, quiet), []));
        const want = desiredSlices(after, scope, quiet);
        const plan = planSlices(want, first);
        const result = carryOut(first, plan);
        // Level-triggered: nothing left to do.
        expect(planSlices(want, result)).toEqual({ apply: [], delete: [] });
        const slots = after
          .filter((d) => (scope.kind === "node" ? !d.spec.shared : d.spec.shared))
          .reduce((n, d) => n + d.spec.capacity, 0);
        const names = result.flatMap((s) => s.spec.devices.map((d) => `${s.spec.pool.name}/${d.name}`));
        expect(names).toHaveLength(slots);
        expect(new Set(names).size).toBe(slots);
        const pools = new Map<string, Slice[]>();
        for (const s of result) {
          expect(s.spec.devices.length).toBeLessThanOrEqual(MAX_DEVICES_PER_SLICE);
          expect(s.spec.devices.length).toBeGreaterThan(0);
          pools.set(s.spec.pool.name, [...(pools.get(s.spec.pool.name) ?? []), s]);
        }
        for (const [pool, slices] of pools) {
          expect(new Set(slices.map((s) => s.spec.pool.generation)).size).toBe(1);
          expect(slices.every((s) => s.spec.pool.resourceSliceCount === slices.length)).toBe(true);
          // A pool that changed has a generation above every generation it had before.
          const old = first.filter((s) => s.spec.pool.name === pool);
          if (plan.apply.some((s) => s.spec.pool.name === pool) && old.length > 0)
            expect(slices[0]!.spec.pool.generation).toBeGreaterThan(
              Math.max(...old.map((s) => s.spec.pool.generation)),
            );
        }
      }),
      { numRuns: 150 },
    );
  });

  it("writes nothing when the devices did not change, in any order", () => {
    fc.assert(
      fc.property(deviceSets, scopes, (devices, scope) => {
        const published = carryOut([], planSlices(desiredSlices(devices, scope, quiet), []));
        const shuffled = [...devices].reverse();
        expect(planSlices(desiredSlices(shuffled, scope, quiet), published)).toEqual({ apply: [], delete: [] });
      }),
    );
  });

  it("deletes every slice once no device is left", () => {
    const published = carryOut(
      [],
      planSlices(desiredSlices([device("cams-a")], { kind: "node", nodeName: "edge-1" }, quiet), []),
    );
    const plan = planSlices([], published);
    expect(plan.apply).toEqual([]);
    expect(plan.delete.map((s) => s.metadata.name)).toEqual(published.map((s) => s.metadata.name));
  });

  it("rewrites a pool whose slices were left at mixed generations", () => {
    const slices = desiredSlices(
      Array.from({ length: 200 }, (_, i) => device(`cams-${i}`)),
      { kind: "node", nodeName: "edge-1" },
      quiet,
    );
    const published = carryOut([], planSlices(slices, []));
    const mixed = published.map((s, i) =>
      i === 0 ? { ...s, spec: { ...s.spec, pool: { ...s.spec.pool, generation: 7 } } } : s,
    );
    const plan = planSlices(slices, mixed);
    expect(plan.apply).toHaveLength(2);
    expect(plan.apply.every((s) => s.spec.pool.generation === 8)).toBe(true);
  });

  it("taints every slot of a device in its grace period, and untaints it when it is back", () => {
    const devices = [device("cams-a", { capacity: 2 }), device("cams-b")];
    const scope = { kind: "node", nodeName: "edge-1" } as const;
    const published = carryOut([], planSlices(desiredSlices(devices, scope, quiet), []));
    const gone = (d: string) => d === "cams-a";
    const plan = planSlices(desiredSlices(devices, scope, quiet, gone), published);
    expect(plan.apply).toHaveLength(1);
    const taints = plan.apply[0]!.spec.devices.map((d) => [d.name, d.taints]);
    expect(taints).toEqual([
      ["cams-a-0", [UNREACHABLE_TAINT]],
      ["cams-a-1", [UNREACHABLE_TAINT]],
      ["cams-b-0", undefined],
    ]);
    // The apiserver adds timeAdded: still the same taint, nothing to write.
    const tainted = carryOut(published, plan).map((s) => ({
      ...s,
      spec: {
        ...s.spec,
        devices: s.spec.devices.map((d) =>
          d.taints ? { ...d, taints: d.taints.map((t) => ({ ...t, timeAdded: "2026-12-02T19:00:00Z" })) } : d,
        ),
      },
    }));
    expect(planSlices(desiredSlices(devices, scope, quiet, gone), tainted)).toEqual({ apply: [], delete: [] });
    const back = planSlices(desiredSlices(devices, scope, quiet), tainted);
    expect(back.apply[0]!.spec.devices.every((d) => d.taints === undefined)).toBe(true);
  });

  it("holds at most 64 devices in each slice while any device of the pool is tainted (the apiserver refuses more)", () => {
    const devices = Array.from({ length: 300 }, (_, i) => device(`cams-${String(i).padStart(3, "0")}`));
    const scope = { kind: "node", nodeName: "edge-1" } as const;
    const plain = desiredSlices(devices, scope, quiet);
    expect(plain.map((s) => s.spec.devices.length)).toEqual([128, 128, 44]);
    const tainted = desiredSlices(devices, scope, quiet, (d) => d === "cams-299");
    expect(tainted.map((s) => s.spec.devices.length)).toEqual([64, 64, 64, 64, 44]);
    expect(Math.max(...tainted.map((s) => s.spec.devices.length))).toBe(MAX_TAINTED_DEVICES_PER_SLICE);
    expect(tainted.flatMap((s) => s.spec.devices).filter((d) => d.taints)).toHaveLength(1);
    expect(new Set(tainted.flatMap((s) => s.spec.devices.map((d) => d.name))).size).toBe(300);
    expect(tainted.every((s) => s.spec.pool.resourceSliceCount === 5)).toBe(true);
  });
});
