import type * as k8s from "@kubernetes/client-node";
import { CoreV1Api } from "@kubernetes/client-node";
import { HANDLERS } from "../../discovery-handlers/index.js";
import { WorkQueue } from "../agent/work-queue.js";
import { type Condition, formatIssues } from "../api/common.js";
import type { Allocation, Device } from "../api/device.js";
import type { DeviceConfiguration } from "../api/device-configuration.js";
import { type DeviceSpinApp, deviceSpinApp } from "../api/device-spin-app.js";
import type { SpinApp } from "../api/spin-app.js";
import { statusCode } from "../k8s/client.js";
import { EventRecorder } from "../k8s/events.js";
import { Cache } from "../k8s/informer.js";
import {
  apiVersionOf,
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { apiWrites, reconcileDuration, reconcileErrors, spinAppsBound } from "../observability/metrics.js";
import { type DesiredState, desiredState, dsaKey } from "./desired-state.js";
import { DEVICE_LABEL, DSA_LABEL, SPEC_HASH_ANNOTATION } from "./spin-app-builder.js";

export const FIELD_MANAGER = "spindle-controller";
const NODES = { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false };

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type DeviceObj = Device & Obj;
type DsaObj = DeviceSpinApp & Obj;
type SpinAppObj = SpinApp & Obj & { status?: { readyReplicas?: number } };
type ConfigObj = DeviceConfiguration & Obj;

/**
 * The DeviceSpinApp controller. Every change (to a DeviceSpinApp, Device, SpinApp or
 * DeviceConfiguration) only schedules one reconcile of the whole picture: the desired state is
 * computed from the caches (desired-state.ts) and only differences are written, with server-side
 * apply under `spindle-controller`. Restarts, lost watches and duplicate events change nothing.
 */
export class Controller {
  private clients: {
    devices: ResourceClient<DeviceObj>;
    dsas: ResourceClient<DsaObj>;
    spinApps: ResourceClient<SpinAppObj>;
    configs: ResourceClient<ConfigObj>;
  };
  private caches: {
    devices: Cache<DeviceObj>;
    dsas: Cache<DsaObj>;
    spinApps: Cache<SpinAppObj>;
    configs: Cache<ConfigObj>;
    nodes: Cache<k8s.V1Node & Obj>;
  };
  private queue: WorkQueue;
  private events: EventRecorder;
  private timer: NodeJS.Timeout | undefined;
  /** Objects we wrote, newer than the caches until the watches catch up (keyed by kind/ns/name). */
  private written = new Map<string, { resourceVersion?: string; value: unknown }>();
  private bound = new Map<string, Set<string>>();
  reconciles = 0;

  constructor(
    private kc: k8s.KubeConfig,
    private log: Logger,
  ) {
    this.events = new EventRecorder(kc, "spindle-controller", log);
    this.clients = {
      devices: new ResourceClient(kc, DEVICES, FIELD_MANAGER),
      dsas: new ResourceClient(kc, DEVICE_SPIN_APPS, FIELD_MANAGER),
      spinApps: new ResourceClient(kc, SPIN_APPS, FIELD_MANAGER),
      configs: new ResourceClient(kc, DEVICE_CONFIGURATIONS, FIELD_MANAGER),
    };
    const poke = () => this.schedule();
    this.caches = {
      devices: new Cache(kc, this.clients.devices, log, poke),
      dsas: new Cache(kc, this.clients.dsas, log, poke),
      spinApps: new Cache(
        kc,
        {
          type: SPIN_APPS,
          list: () => this.clients.spinApps.list(undefined, DSA_LABEL) as Promise<k8s.KubernetesListObject<SpinAppObj>>,
        },
        log,
        poke,
        undefined,
        DSA_LABEL,
      ),
      configs: new Cache(kc, this.clients.configs, log, poke),
      nodes: new Cache(
        kc,
        {
          type: NODES,
          list: () => kc.makeApiClient(CoreV1Api).listNode() as Promise<k8s.KubernetesListObject<k8s.V1Node & Obj>>,
        },
        log,
        poke,
        "/api/v1/nodes",
      ),
    };
    this.queue = new WorkQueue(
      () => this.reconcile(),
      1,
      (_k, err) => {
        reconcileErrors.inc();
        this.log.error({ err: String(err) }, "reconcile failed; retrying");
      },
    );
  }

  async start(): Promise<void> {
    await Promise.all(Object.values(this.caches).map((c) => c.start()));
    this.schedule();
  }

  /** Coalesces bursts of watch events into one reconcile. */
  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.queue.add("all");
    }, 20);
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private fresh<T extends Obj>(kind: string, cached: T | undefined, key: string): T | undefined {
    const mine = this.written.get(`${kind}/${key}`);
    if (!mine) return cached;
    if (!cached || Number(cached.metadata?.resourceVersion) < Number(mine.resourceVersion)) return mine.value as T;
    this.written.delete(`${kind}/${key}`);
    return cached;
  }

  private async reconcile(): Promise<void> {
    this.reconciles++;
    const started = Date.now();
    const dsas: DsaObj[] = [];
    for (const raw of this.caches.dsas.list()) {
      const parsed = deviceSpinApp.safeParse(raw);
      if (parsed.success) dsas.push({ ...raw, ...parsed.data } as DsaObj);
      else
        this.log.warn(
          { deviceSpinApp: `${raw.metadata?.namespace}/${raw.metadata?.name}` },
          "invalid DeviceSpinApp ignored",
        );
    }
    let devices = this.caches.devices.list().map((d) => this.fresh("Device", d, d.metadata!.name!) ?? d);
    devices = await this.releaseDeletedNodes(devices);
    const managed = this.caches.spinApps.list();
    const bound = new Map<string, Set<string>>();
    for (const s of managed) {
      const key = `${s.metadata?.namespace}/${s.metadata?.labels?.[DSA_LABEL]}`;
      const set = bound.get(key) ?? new Set();
      set.add(s.metadata?.labels?.[DEVICE_LABEL] ?? "");
      bound.set(key, set);
    }
    const byName = new Map(devices.map((d) => [d.metadata.name!, d]));
    const desired = desiredState(
      dsas,
      devices,
      (name) => byName.get(name)?.status?.allocations ?? [],
      (key) => bound.get(key) ?? new Set(),
    );

    const wantedApps = new Map(
      desired.bindings.map((b) => [`${b.spinApp.metadata.namespace}/${b.spinApp.metadata.name}`, b]),
    );
    const writes: (() => Promise<void>)[] = [];
    // 1. Free what is no longer wanted: delete SpinApps first, then their slots go below.
    for (const s of managed) {
      const key = `${s.metadata!.namespace}/${s.metadata!.name}`;
      if (wantedApps.has(key) || s.metadata?.deletionTimestamp) continue;
      writes.push(() => this.deleteSpinApp(s));
    }
    await this.limit(writes);
    // 2. Slots: every device whose allocations differ.
    await this.limit(
      devices.map((d) => () => this.applyAllocations(d, desired.allocations.get(d.metadata.name!) ?? [])),
    );
    // 3. SpinApps that are missing or differ from the desired object.
    await this.limit(
      [...wantedApps].map(([key, b]) => async () => {
        const current = this.caches.spinApps.get(b.spinApp.metadata.name, b.spinApp.metadata.namespace);
        const hash = b.spinApp.metadata.annotations?.[SPEC_HASH_ANNOTATION];
        if (
          current?.metadata?.annotations?.[SPEC_HASH_ANNOTATION] === hash ||
          this.written.get(`SpinApp/${key}`)?.value === hash
        )
          return;
        await this.clients.spinApps.apply(b.spinApp as SpinAppObj);
        apiWrites.inc({ resource: "spinapps", verb: "apply" });
        this.written.set(`SpinApp/${key}`, { value: hash });
        if (!current) {
          const dsa = dsas.find((d) => dsaKey(d) === b.dsaKey)!;
          this.log.info({ spinApp: key, device: b.device }, "SpinApp bound to device");
          void this.events.record(
            this.dsaTarget(dsa),
            "Normal",
            "Bound",
            `SpinApp ${b.spinApp.metadata.name} runs for device ${b.device}`,
          );
        }
      }),
    );
    // 4. Status of every DeviceSpinApp and DeviceConfiguration.
    await this.limit(dsas.map((dsa) => () => this.applyDsaStatus(dsa, desired, managed)));
    await this.limit(this.caches.configs.list().map((c) => () => this.applyConfigurationStatus(c, devices)));
    this.bound = bound;
    spinAppsBound.reset();
    for (const b of desired.bindings) spinAppsBound.inc({ namespace: b.spinApp.metadata.namespace });
    reconcileDuration.observe((Date.now() - started) / 1000);
    this.log.debug({ ms: Date.now() - started, bindings: desired.bindings.length }, "reconciled");
  }

  /**
   * A deleted node's agent cannot leave its Devices, so the controller does it for it: it
   * releases the node's fields under the node's own field manager (exactly what the agent would
   * do), and deletes a Device no remaining node sees.
   */
  private async releaseDeletedNodes(devices: DeviceObj[]): Promise<DeviceObj[]> {
    const nodes = new Set(this.caches.nodes.list().map((n) => n.metadata?.name));
    if (nodes.size === 0) return devices; // no nodes at all: more likely a broken cache than a dead cluster
    const kept: DeviceObj[] = [];
    for (const device of devices) {
      const gone = device.spec.nodes.filter((n) => !nodes.has(n));
      if (gone.length === 0) {
        kept.push(device);
        continue;
      }
      const name = device.metadata.name!;
      if (gone.length === device.spec.nodes.length) {
        await this.clients.devices
          .delete(name, undefined, { uid: device.metadata.uid, resourceVersion: device.metadata.resourceVersion })
          .catch((err) => {
            if (statusCode(err) !== 404) throw err;
          });
        apiWrites.inc({ resource: "devices", verb: "delete" });
        this.log.info({ device: name, nodes: gone }, "device deleted: every node that saw it was deleted");
        continue;
      }
      let current = device;
      for (const node of gone) {
        const asAgent = new ResourceClient<DeviceObj>(this.kc, DEVICES, `spindle-agent-${node}`.slice(0, 128));
        current = await asAgent.apply({
          apiVersion: "spindle.dev/v1alpha1",
          kind: "Device",
          metadata: { name },
        } as DeviceObj);
        apiWrites.inc({ resource: "devices", verb: "apply" });
      }
      this.log.info({ device: name, nodes: gone }, "deleted nodes removed from shared device");
      kept.push(current);
    }
    return kept;
  }

  /** Runs the writes, at most 32 at once, then throws the first failure (the queue retries). */
  private async limit(tasks: (() => Promise<void>)[]): Promise<void> {
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (next < tasks.length) {
        const task = tasks[next++]!;
        try {
          await task();
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(32, tasks.length) }, worker));
    if (failure) throw failure;
  }

  private dsaTarget(dsa: DeviceSpinApp) {
    return {
      apiVersion: apiVersionOf(DEVICE_SPIN_APPS),
      kind: "DeviceSpinApp",
      name: dsa.metadata.name!,
      namespace: dsa.metadata.namespace,
      uid: dsa.metadata.uid,
    };
  }

  private async deleteSpinApp(s: SpinAppObj): Promise<void> {
    const key = `${s.metadata!.namespace}/${s.metadata!.name}`;
    try {
      await this.clients.spinApps.delete(s.metadata!.name!, s.metadata!.namespace, { uid: s.metadata?.uid });
      apiWrites.inc({ resource: "spinapps", verb: "delete" });
    } catch (err) {
      if (statusCode(err) !== 404) throw err;
    }
    this.written.delete(`SpinApp/${key}`);
    this.log.info({ spinApp: key, device: s.metadata?.labels?.[DEVICE_LABEL] }, "SpinApp unbound");
    const dsa = this.caches.dsas.get(s.metadata!.labels![DSA_LABEL]!, s.metadata!.namespace);
    if (dsa) {
      void this.events.record(
        this.dsaTarget(dsa),
        "Normal",
        "Unbound",
        `SpinApp ${s.metadata!.name} removed: device ${s.metadata?.labels?.[DEVICE_LABEL]} is gone or no longer matches`,
      );
    }
  }

  private async applyAllocations(device: DeviceObj, allocations: Allocation[]): Promise<void> {
    const current = device.status?.allocations ?? [];
    const same =
      current.length === allocations.length &&
      current.every((a, i) => a.slot === allocations[i]!.slot && a.holder === allocations[i]!.holder);
    if (same && (device.status?.used ?? 0) === allocations.length) return;
    try {
      const applied = await this.clients.devices.applyStatus({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "Device",
        metadata: { name: device.metadata.name },
        status: { allocations, used: allocations.length },
      } as unknown as DeviceObj);
      apiWrites.inc({ resource: "devices/status", verb: "apply" });
      this.written.set(`Device/${device.metadata.name}`, {
        resourceVersion: applied.metadata?.resourceVersion,
        value: applied,
      });
    } catch (err) {
      if (statusCode(err) !== 404) throw err; // the device went; the next reconcile sees that
    }
  }

  private async applyDsaStatus(dsa: DsaObj, desired: DesiredState, managed: readonly SpinAppObj[]): Promise<void> {
    const key = dsaKey(dsa);
    const summary = desired.summaries.get(key) ?? { matched: [], bound: [], exhausted: [] };
    const apps = desired.bindings
      .filter((b) => b.dsaKey === key)
      .map((b) => {
        const live = managed.find(
          (s) => s.metadata?.name === b.spinApp.metadata.name && s.metadata?.namespace === dsa.metadata.namespace,
        );
        return {
          name: b.spinApp.metadata.name,
          device: b.device,
          ready: (live?.status?.readyReplicas ?? 0) >= b.replicas,
        };
      })
      .sort((a, b) => a.name.localeCompare(b.name));
    const ready = apps.filter((a) => a.ready).length;
    let available: [Condition["status"], string, string];
    if (summary.invalidTemplate) available = ["False", "InvalidTemplate", summary.invalidTemplate];
    else if (!this.caches.configs.get(dsa.spec.deviceConfiguration))
      available = [
        "False",
        "ConfigurationNotFound",
        `DeviceConfiguration ${dsa.spec.deviceConfiguration} does not exist`,
      ];
    else if (summary.matched.length === 0)
      available = ["False", "NoMatchingDevices", "no device matches the configuration and selector"];
    else if (summary.exhausted.length > 0 && summary.bound.length < (dsa.spec.maxApps ?? Number.POSITIVE_INFINITY))
      available = [
        "False",
        "CapacityExhausted",
        `${summary.exhausted.length} matching device(s) have no free slot: ${summary.exhausted.slice(0, 5).join(", ")}`,
      ];
    else
      available = [
        "True",
        "DevicesBound",
        `${summary.bound.length} of ${summary.matched.length} matching device(s) bound`,
      ];
    const readyCondition: [Condition["status"], string, string] =
      apps.length > 0 && ready === apps.length
        ? ["True", "SpinAppsReady", `${ready} SpinApp(s) ready`]
        : [
            "False",
            apps.length === 0 ? "NoSpinApps" : "SpinAppsNotReady",
            `${ready} of ${apps.length} SpinApp(s) ready`,
          ];
    const status = {
      observedGeneration: dsa.metadata.generation,
      matchedDevices: summary.matched.length,
      boundDevices: summary.bound.length,
      readySpinApps: ready,
      spinApps: apps,
      conditions: [
        this.condition(dsa.status?.conditions, "DevicesAvailable", available, dsa.metadata.generation),
        this.condition(dsa.status?.conditions, "Ready", readyCondition, dsa.metadata.generation),
      ],
    };
    if (available[1] === "CapacityExhausted" || available[1] === "InvalidTemplate") {
      void this.events.record(this.dsaTarget(dsa), "Warning", available[1], available[2]);
    }
    if (sameJson(stripTimes(dsa.status), stripTimes(status))) return;
    await this.clients.dsas.applyStatus({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: dsa.metadata.name, namespace: dsa.metadata.namespace },
      status,
    } as unknown as DsaObj);
    apiWrites.inc({ resource: "devicespinapps/status", verb: "apply" });
  }

  private async applyConfigurationStatus(config: ConfigObj, devices: DeviceObj[]): Promise<void> {
    const name = config.metadata.name!;
    const handler = HANDLERS.get(config.spec?.discoveryHandler?.name);
    let accepted: [Condition["status"], string, string];
    if (!handler) {
      accepted = [
        "False",
        "UnknownHandler",
        `discoveryHandler.name: unknown handler "${config.spec?.discoveryHandler?.name}" (known: ${[...HANDLERS.keys()].join(", ")})`,
      ];
    } else {
      const parsed = handler.detailsSchema.safeParse(config.spec.discoveryHandler.discoveryDetails ?? {});
      accepted = parsed.success
        ? ["True", "Valid", `handler ${handler.name} accepts the discovery details`]
        : ["False", "InvalidDiscoveryDetails", formatIssues(parsed.error, "discoveryHandler.discoveryDetails")];
    }
    const status = {
      observedGeneration: config.metadata.generation,
      deviceCount: devices.filter((d) => d.spec.configurationName === name).length,
      conditions: [this.condition(config.status?.conditions, "Accepted", accepted, config.metadata.generation)],
    };
    if (sameJson(stripTimes(config.status), stripTimes(status))) return;
    await this.clients.configs.applyStatus({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name },
      status,
    } as unknown as ConfigObj);
    apiWrites.inc({ resource: "deviceconfigurations/status", verb: "apply" });
  }

  /** A condition that keeps its lastTransitionTime while its status does not change. */
  private condition(
    existing: Condition[] | undefined,
    type: string,
    [status, reason, message]: [Condition["status"], string, string],
    generation?: number,
  ): Condition {
    const old = existing?.find((c) => c.type === type);
    return {
      type,
      status,
      reason,
      message,
      lastTransitionTime:
        old && old.status === status ? old.lastTransitionTime : new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      ...(generation !== undefined ? { observedGeneration: generation } : {}),
    };
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.queue.stop();
    await Promise.all(Object.values(this.caches).map((c) => c.stop()));
  }

  boundDevices(): Map<string, Set<string>> {
    return this.bound;
  }
}

function stripTimes(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value ?? {}, (k, v) => (k === "lastTransitionTime" ? undefined : v)));
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object")
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  return v;
}
