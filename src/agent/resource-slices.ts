import { createHash } from "node:crypto";
import type * as k8s from "@kubernetes/client-node";
import type { Device } from "../api/device.js";
import { Cache } from "../k8s/cache.js";
import { statusCode } from "../k8s/client.js";
import { DRIVER, MANAGED_LABEL, RESOURCE_SLICES } from "../k8s/dra.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import { ResourceClient, type WriteOptions } from "../k8s/resources.js";
import { WorkQueue } from "../k8s/work-queue.js";
import type { Logger } from "../log/logger.js";
import { apiWrites, reconcileErrors } from "../observability/metrics.js";

/** DRA's limits (resource.k8s.io/v1). */
export const MAX_DEVICES_PER_SLICE = 128;
/** A slice in which any device has taints holds at most 64 devices (the apiserver's validation). */
export const MAX_TAINTED_DEVICES_PER_SLICE = 64;
export const MAX_ATTRIBUTES_PER_DEVICE = 32;
export const MAX_ATTRIBUTE_STRING = 64;
const ATTRIBUTE_ID = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_ATTRIBUTE_ID = 32;
const MAX_NAME = 253;

/** Which publisher a slice belongs to (a node's agent, or the controller for shared devices). */
export const PUBLISHER_LABEL = "resource.spindle.dev/publisher";
export const SHARED_PUBLISHER = "shared";
const HOSTNAME_LABEL = "kubernetes.io/hostname";

export type AttributeValue = { string: string } | { int: number } | { bool: boolean };

/** A DRA device taint (resource.k8s.io/v1); the apiserver sets `timeAdded`. */
export interface DeviceTaint {
  key: string;
  value?: string;
  effect: "NoSchedule" | "NoExecute" | "None";
  timeAdded?: string;
}

export interface DraDevice {
  name: string;
  attributes: Record<string, AttributeValue>;
  taints?: DeviceTaint[];
}

/**
 * On a device no longer reported, during its grace period: no new pod is placed on it, while the
 * pods that hold it keep running (NoSchedule, not NoExecute: the device may come back).
 */
export const UNREACHABLE_TAINT: DeviceTaint = { key: "spindle.dev/unreachable", effect: "NoSchedule" };

export interface SliceSpec {
  driver: string;
  pool: { name: string; generation: number; resourceSliceCount: number };
  nodeName?: string;
  nodeSelector?: { nodeSelectorTerms: { matchExpressions: { key: string; operator: "In"; values: string[] }[] }[] };
  devices: DraDevice[];
}

export interface Slice extends k8s.KubernetesObject {
  metadata: k8s.V1ObjectMeta;
  spec: SliceSpec;
}

/**
 * Who publishes: a node's agent publishes the devices only it sees (USB) in per-node pools
 * (`nodeName`); the controller publishes shared devices (cameras, MQTT, mDNS), one DRA device
 * however many agents see it, eligible on exactly the nodes in the Device's `nodes`.
 */
export type SliceScope = { kind: "node"; nodeName: string } | { kind: "shared" };

/** Tells a warning about a device property that DRA cannot carry (logged once per device and key). */
export type DropWarning = (device: string, key: string, why: string) => void;

function shortHash(s: string, n = 10): string {
  return createHash("sha256").update(s).digest("hex").slice(0, n);
}

/**
 * One DRA device per capacity slot, so the scheduler counts capacity exactly as Spindle does
 * (works on every DRA version; consumable capacity would need 1.36+ and a per-request amount the
 * extended-resource mapping cannot state). `<device>-<slot>` when that is a DNS label, else a hash.
 */
export function draDeviceName(deviceName: string, slot: number): string {
  const plain = `${deviceName}-${slot}`;
  return plain.length <= 63 ? plain : `x${shortHash(deviceName, 16)}-${slot}`;
}

/**
 * A Device's DRA attributes: `device`, `configuration`, `handler`, `slot`, `shared`, then its
 * properties (names as they are, upper case, so they never clash with the built-ins) while they
 * fit: an attribute name is a C identifier of at most 32 characters, a string at most 64, and a
 * device has at most 32 attributes. What does not fit is dropped and reported through `warn`.
 */
export function draAttributes(
  device: Device & k8s.KubernetesObject,
  slot: number,
  warn: DropWarning,
): Record<string, AttributeValue> {
  const name = device.metadata!.name!;
  const out: Record<string, AttributeValue> = {
    device: { string: name },
    handler: { string: device.spec.handler },
    slot: { int: slot },
    shared: { bool: device.spec.shared },
  };
  if (device.spec.configurationName.length <= MAX_ATTRIBUTE_STRING)
    out.configuration = { string: device.spec.configurationName };
  else warn(name, "configuration", `longer than ${MAX_ATTRIBUTE_STRING} characters`);
  for (const key of Object.keys(device.spec.properties).sort()) {
    const value = device.spec.properties[key]!;
    if (!ATTRIBUTE_ID.test(key) || key.length > MAX_ATTRIBUTE_ID)
      warn(name, key, `not a DRA attribute name (a C identifier of at most ${MAX_ATTRIBUTE_ID} characters)`);
    else if (value.length > MAX_ATTRIBUTE_STRING)
      warn(name, key, `value longer than ${MAX_ATTRIBUTE_STRING} characters`);
    else if (Object.keys(out).length >= MAX_ATTRIBUTES_PER_DEVICE)
      warn(name, key, `more than ${MAX_ATTRIBUTES_PER_DEVICE} attributes per device`);
    else out[key] = { string: value };
  }
  return out;
}

/** A pool name: path segments that are DNS subdomains, at most 253 characters (else hashed). */
function poolName(scope: SliceScope, configuration: string): string {
  const name = scope.kind === "node" ? `nodes/${scope.nodeName}/${configuration}` : `shared/${configuration}`;
  return name.length <= MAX_NAME ? name : `hashed/${shortHash(name, 32)}`;
}

/** A slice name unique across pools: readable where it fits, always with the pool's hash. */
function sliceName(pool: string, index: number): string {
  const readable = `spindle-${pool.replace(/[^a-z0-9-]+/g, "-")}`.slice(0, 200).replace(/-+$/, "");
  return `${readable}-${shortHash(pool, 8)}-${index}`;
}

/** The publisher label's value: a node name where it is a valid label value, else its hash. */
export function publisherLabelValue(scope: SliceScope): string {
  if (scope.kind === "shared") return SHARED_PUBLISHER;
  return /^[a-z0-9A-Z]([-a-z0-9_.A-Z]{0,61}[a-z0-9A-Z])?$/.test(scope.nodeName)
    ? scope.nodeName
    : `h-${shortHash(scope.nodeName, 32)}`;
}

/**
 * The slices a publisher wants, generation left at 0 (planSlices sets it): per configuration one
 * pool; a shared pool is split by node set (each slice selects its nodes by name), and every
 * slice holds at most 128 devices (64 while one of them is tainted). Deterministic for the same devices in any order.
 */
export function desiredSlices(
  devices: readonly (Device & k8s.KubernetesObject)[],
  scope: SliceScope,
  warn: DropWarning,
  /** Devices to taint (UNREACHABLE_TAINT) by Device name. */
  unreachable: (device: string) => boolean = () => false,
): Slice[] {
  const publisher = publisherLabelValue(scope);
  const byConfig = new Map<string, (Device & k8s.KubernetesObject)[]>();
  for (const d of devices) {
    if (scope.kind === "node" ? d.spec.shared || !d.spec.nodes.includes(scope.nodeName) : !d.spec.shared) continue;
    if (d.spec.nodes.length === 0) continue;
    const list = byConfig.get(d.spec.configurationName) ?? [];
    list.push(d);
    byConfig.set(d.spec.configurationName, list);
  }
  const out: Slice[] = [];
  for (const configuration of [...byConfig.keys()].sort()) {
    const pool = poolName(scope, configuration);
    const groups = new Map<string, { nodes: string[]; devices: DraDevice[] }>();
    const owner = byConfig.get(configuration)!.find((d) => d.metadata?.ownerReferences?.length)
      ?.metadata?.ownerReferences;
    const seen = new Set<string>();
    for (const d of byConfig.get(configuration)!.sort((a, b) => cmp(a.metadata!.name!, b.metadata!.name!))) {
      const nodes = [...d.spec.nodes].sort();
      const key = scope.kind === "node" ? "" : nodes.join("\0");
      const group = groups.get(key) ?? { nodes, devices: [] };
      groups.set(key, group);
      for (let slot = 0; slot < d.spec.capacity; slot++) {
        const name = draDeviceName(d.metadata!.name!, slot);
        if (seen.has(name)) {
          warn(d.metadata!.name!, name, "DRA device name already taken in this pool");
          continue;
        }
        seen.add(name);
        const attributes = draAttributes(d, slot, warn);
        group.devices.push(
          unreachable(d.metadata!.name!) ? { name, attributes, taints: [UNREACHABLE_TAINT] } : { name, attributes },
        );
      }
    }
    const chunks: { nodes: string[]; devices: DraDevice[] }[] = [];
    for (const key of [...groups.keys()].sort()) {
      const g = groups.get(key)!;
      // Halved while any device of the group is tainted: the whole pool is rewritten on a change
      // anyway (new generation), so the layout may change with it.
      const per = g.devices.some((d) => d.taints) ? MAX_TAINTED_DEVICES_PER_SLICE : MAX_DEVICES_PER_SLICE;
      for (let i = 0; i < g.devices.length; i += per)
        chunks.push({ nodes: g.nodes, devices: g.devices.slice(i, i + per) });
    }
    chunks.forEach((chunk, index) => {
      out.push({
        apiVersion: "resource.k8s.io/v1",
        kind: "ResourceSlice",
        metadata: {
          name: sliceName(pool, index),
          labels: { [MANAGED_LABEL]: "true", [PUBLISHER_LABEL]: publisher },
          // The garbage collector removes the slices of a deleted configuration even with no publisher running.
          ...(owner
            ? { ownerReferences: owner.map((o) => ({ ...o, controller: undefined, blockOwnerDeletion: undefined })) }
            : {}),
        },
        spec: {
          driver: DRIVER,
          pool: { name: pool, generation: 0, resourceSliceCount: chunks.length },
          ...(scope.kind === "node"
            ? { nodeName: scope.nodeName }
            : {
                // A slice takes exactly one term, and a field selector names one node: the
                // hostname label (the node's name, as the kubelet sets it) names them all.
                nodeSelector: {
                  nodeSelectorTerms: [
                    { matchExpressions: [{ key: HOSTNAME_LABEL, operator: "In", values: chunk.nodes }] },
                  ],
                },
              }),
          devices: chunk.devices,
        },
      });
    });
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A slice's content without its generation: what decides whether a pool must be rewritten. */
function content(s: Slice): string {
  return JSON.stringify([
    s.spec.pool.resourceSliceCount,
    s.spec.nodeName ?? null,
    s.spec.nodeSelector ?? null,
    s.spec.devices.map((d) => [
      d.name,
      Object.entries(d.attributes).sort(([a], [b]) => cmp(a, b)),
      (d.taints ?? []).map((t) => [t.key, t.value ?? "", t.effect]),
    ]),
    (s.metadata.ownerReferences ?? []).map((o) => o.uid),
  ]);
}

export interface SlicePlan {
  apply: Slice[];
  delete: Slice[];
}

/**
 * Compares the desired slices with the observed ones, pool by pool: a pool whose slices all
 * match (content and one generation) is left alone; otherwise every desired slice of the pool is
 * applied with a generation above any observed one, so consumers ignore the old ones until the
 * new set is complete, and observed slices the pool no longer has are deleted. Pools no longer
 * wanted are deleted whole.
 */
export function planSlices(desired: readonly Slice[], observed: readonly Slice[]): SlicePlan {
  const wantedPools = new Map<string, Slice[]>();
  for (const s of desired) wantedPools.set(s.spec.pool.name, [...(wantedPools.get(s.spec.pool.name) ?? []), s]);
  const observedPools = new Map<string, Slice[]>();
  for (const s of observed) observedPools.set(s.spec.pool.name, [...(observedPools.get(s.spec.pool.name) ?? []), s]);
  const plan: SlicePlan = { apply: [], delete: [] };
  for (const [pool, want] of wantedPools) {
    const have = observedPools.get(pool) ?? [];
    const byName = new Map(have.map((s) => [s.metadata.name!, s]));
    const generations = new Set(have.map((s) => s.spec.pool.generation));
    const same =
      have.length === want.length &&
      generations.size === 1 &&
      want.every((w) => {
        const h = byName.get(w.metadata.name!);
        return h !== undefined && content(h) === content(w);
      });
    if (same) continue;
    const generation = have.length === 0 ? 0 : Math.max(...generations) + 1;
    for (const w of want) plan.apply.push({ ...w, spec: { ...w.spec, pool: { ...w.spec.pool, generation } } });
    const names = new Set(want.map((w) => w.metadata.name!));
    for (const h of have) if (!names.has(h.metadata.name!)) plan.delete.push(h);
  }
  for (const [pool, have] of observedPools) if (!wantedPools.has(pool)) plan.delete.push(...have);
  return plan;
}

function taintCount(s: Slice): number {
  return (s.spec.devices ?? []).reduce((n, d) => n + (d.taints?.length ?? 0), 0);
}

/** What a publisher keeps of a slice: what planSlices compares. */
function projectSlice(s: Slice): Slice {
  return {
    apiVersion: s.apiVersion,
    kind: s.kind,
    metadata: {
      name: s.metadata.name,
      uid: s.metadata.uid,
      resourceVersion: s.metadata.resourceVersion,
      labels: s.metadata.labels,
      ownerReferences: s.metadata.ownerReferences,
    },
    spec: {
      driver: s.spec.driver,
      pool: s.spec.pool,
      ...(s.spec.nodeName ? { nodeName: s.spec.nodeName } : {}),
      ...(s.spec.nodeSelector ? { nodeSelector: s.spec.nodeSelector } : {}),
      devices: (s.spec.devices ?? []).map((d) =>
        d.taints?.length
          ? { name: d.name, attributes: d.attributes ?? {}, taints: d.taints }
          : { name: d.name, attributes: d.attributes ?? {} },
      ),
    },
  };
}

export interface SlicePublisherOptions {
  scope: SliceScope;
  fieldManager: string;
  /** The publisher's view of its Devices, read at every sync. */
  devices: () => readonly (Device & k8s.KubernetesObject)[];
  /** false: publish nothing (and remove what was published), e.g. while placement is node resources. */
  enabled: () => boolean;
  /** false: not yet (the view is not complete, e.g. before an agent adopts its Devices): no writes at all. */
  ready?: () => boolean;
  /** Fences writes (the controller's Lease). */
  signal?: AbortSignal;
  /** Devices no longer reported but within their grace period: tainted where the cluster has device taints. */
  unreachable?: (device: string) => boolean;
}

/**
 * Publishes a scope's Devices as ResourceSlices of driver `spindle.dev`, level-triggered: `sync()`
 * only queues; the worker compares the desired slices with the watched ones (its own, by label)
 * and writes the difference with server-side apply under its field manager. A slice deleted or
 * edited by someone else is restored by the watch event it causes.
 */
export class ResourceSlicePublisher {
  private cache: Cache<Slice>;
  private client: ResourceClient<Slice & Record<string, unknown>>;
  private queue: WorkQueue;
  private warned = new Set<string>();
  private started = false;
  /** The apiserver dropped a taint we sent: this cluster has no device taints (DRADeviceTaints off). */
  private taintsDropped = false;
  writes = 0;

  constructor(
    kc: ClusterAccess,
    private options: SlicePublisherOptions,
    private log: Logger,
  ) {
    this.client = new ResourceClient(kc, RESOURCE_SLICES, options.fieldManager);
    this.cache = new Cache<Slice>(
      kc,
      {
        type: RESOURCE_SLICES,
        labelSelector: `${MANAGED_LABEL}=true,${PUBLISHER_LABEL}=${publisherLabelValue(options.scope)}`,
        project: projectSlice,
        onChange: () => this.sync(),
      },
      log,
    );
    this.queue = new WorkQueue(
      () => this.reconcile(),
      1,
      (_k, err) => {
        reconcileErrors.inc();
        this.log.warn({ err: String(err) }, "publishing ResourceSlices failed; retrying");
      },
    );
  }

  async start(signal?: AbortSignal): Promise<boolean> {
    this.cache.start();
    const synced = await this.cache.whenSynced(signal);
    this.started = synced;
    if (synced) this.sync();
    return synced;
  }

  /** Something the slices depend on changed: compare again soon (bursts collapse into one run). */
  sync(): void {
    if (this.started) this.queue.add("slices");
  }

  list(): Slice[] {
    return this.cache.list();
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private warn: DropWarning = (device, key, why) => {
    const k = `${device}\0${key}`;
    if (this.warned.has(k)) return;
    if (this.warned.size > 10_000) this.warned.clear();
    this.warned.add(k);
    this.log.warn({ device, property: key, reason: why }, "device property not published as a DRA attribute");
  };

  private async reconcile(): Promise<void> {
    if (!this.cache.synced || this.options.signal?.aborted || this.options.ready?.() === false) return;
    const unreachable = this.taintsDropped ? undefined : this.options.unreachable;
    const desired = this.options.enabled()
      ? desiredSlices(this.options.devices(), this.options.scope, this.warn, unreachable)
      : [];
    const plan = planSlices(desired, this.cache.list());
    const write: WriteOptions = { signal: this.options.signal };
    for (const s of plan.apply) {
      const applied = await this.client.apply(s as Slice & Record<string, unknown>, true, write);
      this.cache.observeWrite(projectSlice(applied));
      if (!this.taintsDropped && taintCount(s) > taintCount(applied)) {
        // Comparing taints the apiserver drops would rewrite the pool forever.
        this.taintsDropped = true;
        this.log.info("this cluster drops DRA device taints (DRADeviceTaints off): devices in grace are not tainted");
        this.sync();
      }
      apiWrites.inc({ resource: "resourceslices", verb: "apply" });
      this.writes++;
    }
    for (const s of plan.delete) {
      try {
        await this.client.delete(s.metadata.name!, undefined, { uid: s.metadata.uid }, write);
      } catch (err) {
        if (statusCode(err) !== 404) throw err;
      }
      this.cache.observeDelete(s.metadata.name!);
      apiWrites.inc({ resource: "resourceslices", verb: "delete" });
      this.writes++;
    }
    if (plan.apply.length + plan.delete.length > 0)
      this.log.info(
        {
          applied: plan.apply.length,
          deleted: plan.delete.length,
          pools: new Set(plan.apply.map((s) => s.spec.pool.name)).size,
        },
        "ResourceSlices published",
      );
  }

  async stop(): Promise<void> {
    this.started = false;
    this.queue.stop();
    await this.cache.stop();
  }
}
