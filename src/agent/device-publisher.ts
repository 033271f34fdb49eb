import type * as k8s from "@kubernetes/client-node";
import type { DiscoveredDevice } from "../../discovery-handlers/handler.js";
import { boundProperties } from "../../discovery-handlers/sanitize.js";
import type { Device, DeviceSpec } from "../api/device.js";
import type { DeviceConfiguration } from "../api/device-configuration.js";
import { Cache } from "../k8s/cache.js";
import { statusCode } from "../k8s/client.js";
import type { EventRecorder } from "../k8s/events.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import { apiVersionOf, DEVICE_CONFIGURATIONS, DEVICES, NODES, ResourceClient } from "../k8s/resources.js";
import { WorkQueue } from "../k8s/work-queue.js";
import type { Logger } from "../log/logger.js";
import { apiWrites, devicesPublished, discoveryLatency, reconcileErrors } from "../observability/metrics.js";
import { type SpanHandle, startSpan, TRACEPARENT_ANNOTATION } from "../observability/tracing.js";
import { deviceIdentity, deviceName, extendedResourceName, nodeLabel } from "./device-name.js";

export const CONFIGURATION_LABEL = "spindle.dev/configuration";

/**
 * Each advertised device adds two entries (capacity, allocatable) and their managed fields to the
 * Node object, which every kubelet heartbeat rewrites and every node watcher receives; 1,000
 * keeps a Node well under etcd's 1.5 MiB object limit.
 */
export const MAX_NODE_RESOURCES = 1000;

/** What this node last heard of one device. */
interface Observed {
  configurationName: string;
  handler: string;
  shared: boolean;
  identity: string;
  properties: Record<string, string>;
  /** The handler's properties as reported, to skip unchanged devices cheaply. */
  raw: Record<string, string>;
  problem?: string;
  /** Akri's mounts and device_specs from an external handler, kept on the Device as sent. */
  hostPaths?: Pick<DeviceSpec, "mounts" | "deviceSpecs">;
  /** undefined while the handler reports it; else when it stopped (ms since epoch). */
  missingSince?: number;
  /** The traceparent of the discovery set that last changed it (new, changed or gone); tracing on only. */
  trace?: string;
}

/** The `raw` of a Device adopted after a restart, until its handler reports it. */
const NOT_YET_REPORTED: Record<string, string> = Object.freeze({}) as Record<string, string>;

type PublishedDevice = Device & k8s.KubernetesObject & Record<string, unknown>;

/** How the agent's DRA side (agent/dra.ts) follows what this publisher publishes. */
export interface PublisherHooks {
  /** false: advertise no node extended resources (SpinApps are placed through DRA). Default true. */
  advertiseNodeResources?: () => boolean;
  /** The published Devices may have changed (only after adoption). */
  onPublishedChange?: () => void;
}

type NodeObj = k8s.KubernetesObject & {
  status?: { capacity?: Record<string, string>; allocatable?: Record<string, string> };
} & Record<string, unknown>;

/** What the agent keeps of its Node: the extended resources it advertises. */
function projectNode(n: NodeObj): NodeObj {
  const spindle = (m: Record<string, string> | undefined) =>
    Object.fromEntries(Object.entries(m ?? {}).filter(([k]) => k.startsWith("spindle.dev/")));
  return {
    metadata: { name: n.metadata?.name, resourceVersion: n.metadata?.resourceVersion },
    status: { capacity: spindle(n.status?.capacity), allocatable: spindle(n.status?.allocatable) },
  } as NodeObj;
}

/** What the agent keeps of a Device: no managed fields, no status (the controller's allocations). */
function projectDevice(d: Device & k8s.KubernetesObject): Device & k8s.KubernetesObject {
  const { managedFields: _, ...metadata } = d.metadata ?? {};
  return { apiVersion: d.apiVersion, kind: d.kind, metadata, spec: d.spec } as Device & k8s.KubernetesObject;
}

/**
 * Publishes what this node's discoveries see as Device objects, level-triggered: `report`,
 * watch events and timers only queue device names; `reconcile(name)` compares this node's view,
 * under the configuration as it is *now* (`configurationOf`), with the cached Device and writes
 * only the difference, with server-side apply under the node's own field manager. The Node's
 * extended resources are compared with the watched Node the same way.
 */
export class DevicePublisher {
  readonly fieldManager: string;
  private readonly label: string;
  private devices: ResourceClient<Device & k8s.KubernetesObject & Record<string, unknown>>;
  private nodes: ResourceClient<NodeObj>;
  private cache: Cache<Device & k8s.KubernetesObject>;
  private nodeCache: Cache<NodeObj>;
  private observed = new Map<string, Observed>();
  private byConfiguration = new Map<string, Set<string>>();
  private graceTimers = new Map<string, NodeJS.Timeout>();
  private queue: WorkQueue;
  /** When a new or changed device was first reported, until its Device is written. */
  private reportedAt = new Map<string, number>();
  private adopted = false;
  private nodeTimer: NodeJS.Timeout | undefined;
  private warnedResourceCap = false;
  private advertising = false;
  private advertiseAgain = false;

  constructor(
    kc: ClusterAccess,
    readonly nodeName: string,
    private log: Logger,
    private events: EventRecorder,
    /** The configuration as it is now (the last valid spec), looked up on every reconcile. */
    private configurationOf: (name: string) => DeviceConfiguration | undefined,
    private hooks: PublisherHooks = {},
  ) {
    this.fieldManager = `spindle-agent-${nodeName}`.slice(0, 128);
    this.devices = new ResourceClient(kc, DEVICES, this.fieldManager);
    this.nodes = new ResourceClient(kc, NODES, this.fieldManager);
    this.label = nodeLabel(nodeName);
    // Only the Devices this node publishes, so the agent's memory does not grow with the cluster.
    this.cache = new Cache(
      kc,
      {
        type: DEVICES,
        labelSelector: this.label,
        project: projectDevice,
        onChange: (obj, verb) => this.onDeviceEvent(obj, verb),
      },
      log,
    );
    this.nodeCache = new Cache<NodeObj>(
      kc,
      {
        type: NODES,
        fieldSelector: `metadata.name=${nodeName}`,
        project: projectNode,
        onChange: () => this.scheduleNodeResources(),
      },
      log,
    );
    this.queue = new WorkQueue(
      (name) => this.reconcile(name),
      16,
      (name, err) => {
        reconcileErrors.inc();
        this.log.warn({ device: name, err: String(err) }, "publishing device failed; retrying");
      },
    );
  }

  /** Starts the Device and Node caches; resolves once both have listed. */
  async start(signal?: AbortSignal): Promise<boolean> {
    this.cache.start();
    this.nodeCache.start();
    const synced = await Promise.all([this.cache.whenSynced(signal), this.nodeCache.whenSynced(signal)]);
    return synced.every(Boolean);
  }

  /**
   * Adopts what this node published before a restart: every Device listing this node is kept
   * (not deleted, not rewritten) for its grace period, unless discovery reports it again.
   */
  adopt(): void {
    this.adopted = true;
    const now = Date.now();
    for (const d of this.cache.list()) {
      if (!d.spec.nodes.includes(this.nodeName)) continue;
      const name = d.metadata.name!;
      if (this.observed.has(name)) continue;
      const configuration = this.configurationOf(d.spec.configurationName);
      if (!configuration) {
        this.leaveSoon(name); // its configuration is gone: leave it
        continue;
      }
      this.track(name, {
        configurationName: d.spec.configurationName,
        handler: d.spec.handler,
        shared: d.spec.shared,
        identity: d.spec.id,
        properties: this.ownProperties(d, configuration),
        raw: NOT_YET_REPORTED,
        missingSince: now,
      });
      this.queue.add(name);
    }
    this.scheduleNodeResources();
  }

  /** Whether what was published before a restart has been adopted (the view is complete). */
  get isAdopted(): boolean {
    return this.adopted;
  }

  /** The Devices this node publishes, as watched. */
  publishedDevices(): (Device & k8s.KubernetesObject)[] {
    return this.cache.list().filter((d) => d.spec.nodes.includes(this.nodeName));
  }

  /** The placement changed: advertise (or withdraw) the node extended resources again. */
  refreshNodeResources(): void {
    this.scheduleNodeResources();
  }

  /** A Device of ours nothing reports any more: leave it at the next reconcile. */
  private leaveSoon(name: string): void {
    this.queue.add(name);
  }

  private ownProperties(d: Device, configuration: DeviceConfiguration): Record<string, string> {
    const own = { ...d.spec.properties };
    for (const k of Object.keys(configuration.spec.properties))
      if (own[k] === configuration.spec.properties[k]) delete own[k];
    return own;
  }

  /** A complete device set from one configuration's discovery; replaces the last one. */
  report(configName: string, handler: string, shared: boolean, set: DiscoveredDevice[]): void {
    const configuration = this.configurationOf(configName);
    if (!configuration) return; // deleted meanwhile: dropConfiguration handles its devices
    const now = Date.now();
    const seen = new Set<string>();
    // The set's span starts at its first change (so a set that changes nothing has none), and
    // before the write it causes is queued: the queue may start that write at once.
    let span: SpanHandle | undefined;
    let changed = 0;
    const traceOfSet = () => {
      changed++;
      span ??= startSpan("discovery set", {
        kind: "producer",
        startTime: now,
        attributes: {
          "spindle.configuration": configName,
          "spindle.handler": handler,
          "spindle.devices.reported": set.length,
        },
      });
      return span.traceparent;
    };
    for (const device of set) {
      const identity = deviceIdentity(device.id, shared, this.nodeName);
      const name = this.nameOf(configName, identity);
      if (seen.has(name)) continue;
      seen.add(name);
      const before = this.observed.get(name);
      // Most of a set is unchanged: keep those entries as they are (no hashing, no copies, no
      // new objects). Handlers that keep their objects (usb) are skipped by reference; those
      // that rebuild them for every set (mqtt, external handlers over gRPC) by their contents.
      if (before && before.missingSince === undefined) {
        if (before.raw === device.properties) continue;
        if (
          before.problem === device.problem &&
          before.hostPaths === undefined &&
          device.mounts === undefined &&
          device.deviceSpecs === undefined &&
          sameRecord(before.raw, device.properties)
        ) {
          before.raw = device.properties;
          continue;
        }
      }
      const properties =
        before && sameRecord(before.raw, device.properties) ? before.properties : boundProperties(device.properties);
      const next: Observed = {
        configurationName: configName,
        handler,
        shared,
        identity,
        properties,
        raw: device.properties,
        problem: device.problem,
        ...(device.mounts || device.deviceSpecs
          ? { hostPaths: { mounts: device.mounts, deviceSpecs: device.deviceSpecs } }
          : {}),
      };
      this.track(name, next);
      this.clearGrace(name);
      if (
        !before ||
        before.missingSince !== undefined ||
        !sameRecord(before.properties, properties) ||
        JSON.stringify(before.hostPaths) !== JSON.stringify(next.hostPaths)
      ) {
        if (!this.reportedAt.has(name)) this.reportedAt.set(name, now);
        next.trace = traceOfSet();
        this.queue.add(name);
      } else next.trace = before.trace;
      if (device.problem && before?.problem !== device.problem) {
        this.log.warn(
          { device: name, configuration: configName, problem: device.problem },
          "device found but not fully read",
        );
        void this.events.record(
          {
            apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS),
            kind: "DeviceConfiguration",
            name: configName,
            uid: configuration.metadata.uid,
          },
          "Warning",
          "DeviceIncomplete",
          `${name}: ${device.problem}`,
        );
      }
    }
    for (const name of this.byConfiguration.get(configName) ?? []) {
      const o = this.observed.get(name);
      if (!o || seen.has(name) || o.missingSince !== undefined) continue;
      o.missingSince = now;
      o.trace = traceOfSet();
      this.queue.add(name);
      this.log.info(
        { device: name, graceSeconds: configuration.spec.offlineGraceSeconds },
        "device no longer reported; keeping it for its grace period",
      );
    }
    // A set that changes nothing has no span: polling handlers repeat the same set every few
    // seconds, and those spans would only bury the ones to follow.
    span?.setAttributes({ "spindle.devices.changed": changed });
    span?.end();
  }

  /** The configuration's spec changed (capacity, properties, grace): look at its devices again. */
  configurationChanged(configName: string): void {
    for (const name of this.byConfiguration.get(configName) ?? []) this.queue.add(name);
  }

  /** The configuration is gone: this node leaves all of its devices now. */
  dropConfiguration(configName: string): void {
    for (const name of this.byConfiguration.get(configName) ?? []) {
      const o = this.observed.get(name);
      if (o) o.missingSince = Number.NEGATIVE_INFINITY;
      this.clearGrace(name);
      this.queue.add(name);
    }
  }

  /** Device names by configuration and identity: a set repeats the same devices over and over. */
  private names = new Map<string, string>();

  private nameOf(configName: string, identity: string): string {
    const key = `${configName}\0${identity}`;
    let name = this.names.get(key);
    if (!name) {
      name = deviceName(configName, identity);
      this.names.set(key, name);
    }
    return name;
  }

  private track(name: string, o: Observed): void {
    this.observed.set(name, o);
    const configName = o.configurationName;
    const names = this.byConfiguration.get(configName) ?? new Set<string>();
    this.byConfiguration.set(configName, names);
    names.add(name);
  }

  private forget(name: string): void {
    const o = this.observed.get(name);
    if (o) {
      this.byConfiguration.get(o.configurationName)?.delete(name);
      this.names.delete(`${o.configurationName}\0${o.identity}`);
    }
    this.observed.delete(name);
    this.clearGrace(name);
  }

  private scheduleGrace(name: string, deadline: number): void {
    this.clearGrace(name);
    // setTimeout may fire a millisecond before Date.now() reaches the deadline; then wanted()
    // would still say "keep" and nothing would look again. Re-arm until the deadline has passed.
    const ms = Math.max(0, deadline - Date.now());
    const fire = () => {
      const left = deadline - Date.now();
      if (left > 0) {
        this.graceTimers.set(name, setTimeout(fire, left));
        return;
      }
      this.graceTimers.delete(name);
      this.queue.add(name);
    };
    this.graceTimers.set(name, setTimeout(fire, ms));
  }

  private clearGrace(name: string): void {
    clearTimeout(this.graceTimers.get(name));
    this.graceTimers.delete(name);
  }

  private onDeviceEvent(obj: Device & k8s.KubernetesObject, verb: string): void {
    const name = obj.metadata?.name;
    const o = name ? this.observed.get(name) : undefined;
    if (!name || !o) return;
    // Deleted, or our node missing: restore. A device only this node publishes is also restored
    // when edited; a shared one is not fought over with the other nodes that publish it.
    if (verb === "delete" || !obj.spec.nodes.includes(this.nodeName) || !o.shared) this.queue.add(name);
  }

  /**
   * Reported by this process, then no longer: within its grace period. A Device adopted after a
   * restart and not yet reported again is not counted (the handler's first set is on its way, and
   * tainting it meanwhile would rewrite every slice at each restart).
   */
  isUnreachable(name: string): boolean {
    const o = this.observed.get(name);
    return o !== undefined && o.missingSince !== undefined && o.raw !== NOT_YET_REPORTED;
  }

  /** When a device no longer reported stops being published; undefined while it is reported. */
  private deadline(o: Observed): number | undefined {
    if (o.missingSince === undefined) return undefined;
    const configuration = this.configurationOf(o.configurationName);
    if (!configuration) return Number.NEGATIVE_INFINITY;
    return o.missingSince + configuration.spec.offlineGraceSeconds * 1000;
  }

  private wanted(o: Observed | undefined): boolean {
    if (!o || !this.configurationOf(o.configurationName)) return false;
    const deadline = this.deadline(o);
    return deadline === undefined || Date.now() < deadline;
  }

  desiredDevice(name: string, o: Observed, c: DeviceConfiguration): PublishedDevice {
    return {
      apiVersion: "spindle.dev/v1alpha1",
      kind: "Device",
      metadata: {
        name,
        labels: { [CONFIGURATION_LABEL]: c.metadata.name!.slice(0, 63), [this.label]: "" },
        // The garbage collector removes Devices of a deleted configuration even if no agent runs.
        ...(c.metadata.uid
          ? {
              ownerReferences: [
                {
                  apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS),
                  kind: "DeviceConfiguration",
                  name: c.metadata.name!,
                  uid: c.metadata.uid,
                },
              ],
            }
          : {}),
      },
      spec: {
        configurationName: c.metadata.name!,
        handler: o.handler,
        shared: o.shared,
        id: o.identity,
        nodes: [this.nodeName],
        properties: boundProperties({ ...c.spec.properties, ...o.properties }),
        capacity: c.spec.capacity,
        ...(o.hostPaths?.mounts?.length ? { mounts: o.hostPaths.mounts } : {}),
        ...(o.hostPaths?.deviceSpecs?.length ? { deviceSpecs: o.hostPaths.deviceSpecs } : {}),
      },
    };
  }

  private async reconcile(name: string): Promise<void> {
    await this.reconcileDevice(name);
    this.reportedAt.delete(name);
  }

  private async reconcileDevice(name: string): Promise<void> {
    const o = this.observed.get(name);
    const current = this.cache.get(name);
    const configuration = o ? this.configurationOf(o.configurationName) : undefined;
    if (o && configuration && this.wanted(o)) {
      const deadline = this.deadline(o);
      if (deadline !== undefined) this.scheduleGrace(name, deadline);
      const desired = this.desiredDevice(name, o, configuration);
      if (current && collides(current, desired)) return this.reportCollision(current, desired);
      if (current && publishedAsDesired(current, desired, this.nodeName, this.label))
        return this.scheduleNodeResources();
      // A write that follows a discovery is its child; one for another reason (the configuration
      // changed, the Device was edited or deleted by hand) starts a trace linked to it.
      const fromDiscovery = this.reportedAt.has(name);
      const span = startSpan("apply Device", {
        kind: "client",
        ...(fromDiscovery ? { parent: o.trace } : { links: [o.trace] }),
        attributes: {
          "spindle.device": name,
          "spindle.configuration": o.configurationName,
          "spindle.create": !current,
        },
      });
      // The context rides only on a write that happens anyway: never a write of its own.
      const traceparent = span.traceparent ?? current?.metadata.annotations?.[TRACEPARENT_ANNOTATION];
      if (traceparent) desired.metadata!.annotations = { [TRACEPARENT_ANNOTATION]: traceparent };
      let applied: PublishedDevice | undefined;
      try {
        applied = current ? await this.devices.apply(desired) : await this.firstApply(desired);
      } catch (err) {
        span.fail(err);
        throw err;
      } finally {
        span.end();
      }
      if (!applied) return;
      apiWrites.inc({ resource: "devices", verb: "apply" });
      this.cache.observeWrite(applied);
      const reported = this.reportedAt.get(name);
      if (reported !== undefined) discoveryLatency.observe((Date.now() - reported) / 1000);
      this.log.info(
        { device: name, configuration: desired.spec.configurationName, nodes: applied.spec.nodes },
        current ? "device updated" : "device published",
      );
    } else {
      if (current?.spec.nodes.includes(this.nodeName)) await this.leave(current, o?.trace);
      this.forget(name);
    }
    this.scheduleNodeResources();
  }

  /**
   * The cache holds only this node's Devices, so a name it lacks may still be another node's
   * Device. An unforced apply succeeds unless another manager owns a field with another value;
   * only then is the Device read, to tell a name collision (another identity: never merged) from
   * a shared device the other nodes see with other properties (then the forced apply takes over).
   */
  private async firstApply(desired: PublishedDevice): Promise<PublishedDevice | undefined> {
    try {
      return await this.devices.apply(desired, false);
    } catch (err) {
      if (statusCode(err) !== 409) throw err;
    }
    const other = await this.devices.get(desired.metadata!.name!);
    if (collides(other, desired)) {
      await this.reportCollision(other, desired);
      return undefined;
    }
    return this.devices.apply(desired);
  }

  private async reportCollision(taken: Device, desired: Device): Promise<void> {
    const name = (desired as PublishedDevice).metadata!.name!;
    const message = `device name ${name} is taken by identity ${taken.spec.id} of ${taken.spec.configurationName}; ${desired.spec.id} is not published`;
    this.log.error({ device: name }, message);
    await this.events.record(
      {
        apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS),
        kind: "DeviceConfiguration",
        name: desired.spec.configurationName,
      },
      "Warning",
      "DeviceNameCollision",
      message,
    );
  }

  /** This node stops reporting the device; the last node to leave deletes it. */
  private async leave(device: Device & k8s.KubernetesObject, trace?: string): Promise<void> {
    const name = device.metadata.name!;
    const others = device.spec.nodes.filter((n) => n !== this.nodeName);
    // A child of the discovery set that stopped reporting it (if it was that), however long ago.
    const span = startSpan(others.length === 0 ? "delete Device" : "leave Device", {
      kind: "client",
      parent: trace ?? device.metadata.annotations?.[TRACEPARENT_ANNOTATION],
      attributes: { "spindle.device": name, "spindle.configuration": device.spec.configurationName },
    });
    try {
      await this.leaveDevice(device, others);
    } catch (err) {
      span.fail(err);
      throw err;
    } finally {
      span.end();
    }
  }

  private async leaveDevice(device: Device & k8s.KubernetesObject, others: string[]): Promise<void> {
    const name = device.metadata.name!;
    apiWrites.inc({ resource: "devices", verb: others.length === 0 ? "delete" : "apply" });
    if (others.length === 0) {
      try {
        await this.devices.delete(name, undefined, {
          uid: device.metadata.uid,
          resourceVersion: device.metadata.resourceVersion,
        });
        this.cache.observeDelete(name);
        this.log.info({ device: name }, "device deleted: no node sees it any more");
      } catch (err) {
        if (statusCode(err) === 404) return;
        throw err; // 409: it changed under us (another node joined); retry reads the new state
      }
      return;
    }
    // Releasing every field this node owns removes its entry from `nodes`; the rest stays with the others.
    const applied = await this.devices.apply({
      apiVersion: apiVersionOf(DEVICES),
      kind: "Device",
      metadata: { name },
    } as never);
    this.cache.observeDelete(name); // without this node's label it is no longer in our selection
    this.log.info({ device: name, nodes: applied.spec.nodes }, "node left shared device");
  }

  /**
   * One node-status write at a time: changes that arrive while one is in flight are folded into
   * a single follow-up (a large Node patch can take seconds, and piling them up starves the
   * apiserver).
   */
  private scheduleNodeResources(): void {
    // Before adoption this node's view is empty, not "no devices": never advertise it.
    if (!this.adopted) return;
    this.hooks.onPublishedChange?.();
    if (this.advertising) {
      this.advertiseAgain = true;
      return;
    }
    if (this.nodeTimer) return;
    this.nodeTimer = setTimeout(() => {
      this.nodeTimer = undefined;
      this.advertising = true;
      this.advertise()
        .catch((err) => {
          this.log.warn({ err: String(err) }, "advertising extended resources failed; retrying");
          this.advertiseAgain = true;
        })
        .finally(() => {
          this.advertising = false;
          if (this.advertiseAgain) {
            this.advertiseAgain = false;
            setTimeout(() => this.scheduleNodeResources(), 1000);
          }
        });
    }, 50);
  }

  /** The node extended resources `spindle.dev/<device>` = capacity, for every device this node publishes. */
  private async advertise(): Promise<void> {
    const want = new Map<string, number>();
    devicesPublished.reset();
    let skipped = 0;
    const advertising = this.hooks.advertiseNodeResources?.() ?? true;
    for (const [name, o] of [...this.observed].sort(([a], [b]) => a.localeCompare(b))) {
      if (!this.wanted(o)) continue;
      const configuration = this.configurationOf(o.configurationName)!;
      devicesPublished.inc({ configuration: o.configurationName });
      if (!advertising) continue;
      if (want.size < MAX_NODE_RESOURCES) want.set(extendedResourceName(name), configuration.spec.capacity);
      else skipped++;
    }
    if (skipped > 0 && !this.warnedResourceCap) {
      this.warnedResourceCap = true;
      this.log.warn(
        { node: this.nodeName, advertised: MAX_NODE_RESOURCES, skipped },
        "too many devices to advertise as extended resources on one node; the rest are published but cannot place SpinApps",
      );
    }
    // Compared with the Node as watched, so a re-registered Node or one whose resources were
    // dropped by someone else gets them back.
    const node = this.nodeCache.get(this.nodeName);
    if (!node) return; // not registered (yet): its watch event brings us back
    const resources = Object.fromEntries([...want].map(([k, v]) => [k, String(v)]));
    const status = node.status ?? {};
    if (sameQuantities(status.capacity ?? {}, resources) && sameQuantities(status.allocatable ?? {}, resources)) return;
    const applied = await this.nodes.applyStatus({
      apiVersion: "v1",
      kind: "Node",
      metadata: { name: this.nodeName },
      status: { capacity: resources, allocatable: resources },
    });
    this.nodeCache.observeWrite(applied);
    apiWrites.inc({ resource: "nodes/status", verb: "apply" });
    this.log.info({ node: this.nodeName, resources: want.size }, "extended resources advertised");
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  async stop(): Promise<void> {
    this.queue.stop();
    for (const t of this.graceTimers.values()) clearTimeout(t);
    clearTimeout(this.nodeTimer);
    await Promise.all([this.cache.stop(), this.nodeCache.stop()]);
  }
}

/** Same resources and quantities ("1" and 1 alike). */
function sameQuantities(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => b[k] !== undefined && String(a[k]) === String(b[k]));
}

function sameRecord(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => a[k] === b[k]);
}

/** Another identity under the same name: a hash collision, reported and never merged. */
function collides(taken: Device, desired: Device): boolean {
  return taken.spec.id !== desired.spec.id || taken.spec.configurationName !== desired.spec.configurationName;
}

function publishedAsDesired(
  current: Device & k8s.KubernetesObject,
  desired: Device,
  node: string,
  label: string,
): boolean {
  const c = current.spec;
  const d = desired.spec;
  return (
    c.nodes.includes(node) &&
    current.metadata?.labels?.[label] !== undefined &&
    c.handler === d.handler &&
    c.shared === d.shared &&
    c.capacity === d.capacity &&
    sameRecord(c.properties, d.properties) &&
    JSON.stringify(c.mounts ?? []) === JSON.stringify(d.mounts ?? []) &&
    JSON.stringify(c.deviceSpecs ?? []) === JSON.stringify(d.deviceSpecs ?? []) &&
    (current.metadata.ownerReferences?.length ?? 0) >= (desired.metadata.ownerReferences?.length ?? 0)
  );
}
