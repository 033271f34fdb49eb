import type { Allocation, Device } from "../api/device.js";
import type { DeviceSpinApp, PropertySelector } from "../api/device-spin-app.js";
import type { SpinApp } from "../api/spin-app.js";
import { buildSpinAppCached } from "./spin-app-builder.js";

export interface Binding {
  dsaKey: string;
  device: string;
  spinApp: SpinApp;
  replicas: number;
}

export interface DsaSummary {
  matched: string[];
  bound: string[];
  /** Devices it matched but could not get because their slots are held by older DeviceSpinApps. */
  exhausted: string[];
  invalidTemplate?: string;
}

export interface DesiredState {
  bindings: Binding[];
  summaries: Map<string, DsaSummary>;
  /** Device name -> allocations it should carry. */
  allocations: Map<string, Allocation[]>;
}

export function dsaKey(dsa: DeviceSpinApp): string {
  return `${dsa.metadata.namespace}/${dsa.metadata.name}`;
}

export function matchesSelector(selector: PropertySelector | undefined, properties: Record<string, string>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchProperties ?? {})) if (properties[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const value = properties[e.property];
    const ok =
      e.operator === "In"
        ? value !== undefined && e.values.includes(value)
        : e.operator === "NotIn"
          ? value === undefined || !e.values.includes(value)
          : e.operator === "Exists"
            ? value !== undefined
            : value === undefined;
    if (!ok) return false;
  }
  return true;
}

/**
 * The whole desired state from the caches, as a pure function: which DeviceSpinApp gets which
 * device, and which slots each device gives out. Older DeviceSpinApps choose first (creation
 * time, then namespace/name), so competition is deterministic; a DeviceSpinApp keeps the devices
 * it already holds before taking new ones, so adding devices does not reshuffle apps.
 */
export function desiredState(
  deviceSpinApps: readonly DeviceSpinApp[],
  devices: readonly Device[],
  currentHolders: (device: string) => Allocation[],
  boundNow: (dsaKey: string) => Set<string>,
): DesiredState {
  const byConfiguration = new Map<string, Device[]>();
  for (const d of [...devices].sort((a, b) => a.metadata.name!.localeCompare(b.metadata.name!))) {
    if (d.metadata.deletionTimestamp || d.spec.nodes.length === 0) continue;
    const list = byConfiguration.get(d.spec.configurationName) ?? [];
    list.push(d);
    byConfiguration.set(d.spec.configurationName, list);
  }
  const free = new Map<string, number>(devices.map((d) => [d.metadata.name!, d.spec.capacity]));
  const bindings: Binding[] = [];
  const summaries = new Map<string, DsaSummary>();
  const holders = new Map<string, string[]>(); // device -> holder per slot taken (one per replica)

  const ordered = [...deviceSpinApps]
    .filter((d) => !d.metadata.deletionTimestamp)
    .sort(
      (a, b) =>
        (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? "") ||
        dsaKey(a).localeCompare(dsaKey(b)),
    );
  for (const dsa of ordered) {
    const key = dsaKey(dsa);
    const summary: DsaSummary = { matched: [], bound: [], exhausted: [] };
    summaries.set(key, summary);
    const already = boundNow(key);
    const candidates = (byConfiguration.get(dsa.spec.deviceConfiguration) ?? []).filter((d) =>
      matchesSelector(dsa.spec.selector, d.spec.properties),
    );
    candidates.sort((a, b) => Number(already.has(b.metadata.name!)) - Number(already.has(a.metadata.name!)));
    const max = dsa.spec.maxApps ?? Number.POSITIVE_INFINITY;
    for (const device of candidates) {
      const name = device.metadata.name!;
      summary.matched.push(name);
      if (summary.bound.length >= max) continue;
      const built = buildSpinAppCached(dsa, device);
      if (!built.ok) {
        summary.invalidTemplate = built.reason;
        continue;
      }
      const replicas = built.spinApp.spec.replicas ?? 1;
      if ((free.get(name) ?? 0) < replicas) {
        summary.exhausted.push(name);
        continue;
      }
      free.set(name, (free.get(name) ?? 0) - replicas);
      summary.bound.push(name);
      bindings.push({ dsaKey: key, device: name, spinApp: built.spinApp, replicas });
      const h = holders.get(name) ?? [];
      for (let i = 0; i < replicas; i++) h.push(`${built.spinApp.metadata.namespace}/${built.spinApp.metadata.name}`);
      holders.set(name, h);
    }
    summary.matched.sort();
    summary.bound.sort();
  }

  const allocations = new Map<string, Allocation[]>();
  for (const d of devices) {
    const name = d.metadata.name!;
    allocations.set(name, assignSlots(holders.get(name) ?? [], currentHolders(name)));
  }
  return { bindings, summaries, allocations };
}

/** Slots for the wanted holders, keeping the slot numbers holders already have. */
export function assignSlots(wanted: string[], current: Allocation[]): Allocation[] {
  const remaining = new Map<string, number>();
  for (const h of wanted) remaining.set(h, (remaining.get(h) ?? 0) + 1);
  const out: Allocation[] = [];
  const used = new Set<number>();
  for (const a of [...current].sort((x, y) => x.slot - y.slot)) {
    const n = remaining.get(a.holder) ?? 0;
    if (n > 0) {
      out.push(a);
      used.add(a.slot);
      remaining.set(a.holder, n - 1);
    }
  }
  let slot = 0;
  for (const [holder, n] of remaining) {
    for (let i = 0; i < n; i++) {
      while (used.has(slot)) slot++;
      out.push({ slot, holder });
      used.add(slot);
    }
  }
  return out.sort((x, y) => x.slot - y.slot);
}
