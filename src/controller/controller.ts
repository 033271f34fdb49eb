import type * as k8s from "@kubernetes/client-node";
import { HANDLER_SCHEMAS } from "../../discovery-handlers/schemas.js";
import { formatIssues } from "../api/common.js";
import type { Device } from "../api/device.js";
import { EXTERNAL_HANDLERS_ANNOTATION } from "../api/device-configuration.js";
import { Cache } from "../k8s/cache.js";
import type { PlacementOption } from "../k8s/dra.js";
import { EventRecorder } from "../k8s/events.js";
import { intern, internDeep } from "../k8s/intern.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import {
  apiVersionOf,
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  NODES,
  ResourceClient,
  SPIN_APPS,
} from "../k8s/resources.js";
import { WorkQueue } from "../k8s/work-queue.js";
import type { Logger } from "../log/logger.js";
import { reconcileDuration, reconcileErrors, spinAppsBound } from "../observability/metrics.js";
import { startSpan, TRACEPARENT_ANNOTATION } from "../observability/tracing.js";
import { ControllerDra } from "./dra.js";
import { type ExecutorDeps, execute } from "./executor.js";
import { type ObservedSpinApp, plan, type RawObject, type Snapshot, type WriteFailure } from "./plan.js";
import { DEVICE_LABEL, DSA_LABEL } from "./spin-app-builder.js";

export const FIELD_MANAGER = "spindle-controller";

/** How often the whole picture is planned again with nothing having changed: the safety net. */
const RESYNC_MS = 60_000;

type Obj = k8s.KubernetesObject & Record<string, unknown>;

/** What the controller keeps of a SpinApp: what plan() compares, and readiness. */
function projectSpinApp(s: Obj): Obj {
  const m = s.metadata ?? {};
  return {
    apiVersion: intern(s.apiVersion),
    kind: intern(s.kind),
    metadata: {
      name: m.name,
      namespace: intern(m.namespace),
      uid: m.uid,
      resourceVersion: m.resourceVersion,
      labels: internDeep(m.labels),
      annotations: internDeep(m.annotations),
      ownerReferences: internDeep(m.ownerReferences),
      deletionTimestamp: m.deletionTimestamp,
    },
    spec: internDeep(s.spec),
    status: { readyReplicas: (s.status as { readyReplicas?: number } | undefined)?.readyReplicas },
  } as Obj;
}

/** What the controller keeps of a Device: all but managed fields and status conditions (unread). */
function projectDevice(d: Obj): Obj {
  const m = d.metadata ?? {};
  const spec = d.spec as Device["spec"] | undefined;
  const status = d.status as Device["status"] | undefined;
  return {
    apiVersion: intern(d.apiVersion),
    kind: intern(d.kind),
    metadata: {
      name: m.name,
      uid: m.uid,
      resourceVersion: m.resourceVersion,
      generation: m.generation,
      creationTimestamp: m.creationTimestamp,
      deletionTimestamp: m.deletionTimestamp,
      labels: internDeep(m.labels),
      annotations: m.annotations,
      ownerReferences: internDeep(m.ownerReferences),
    },
    spec: spec && {
      ...spec,
      configurationName: intern(spec.configurationName),
      handler: intern(spec.handler),
      nodes: spec.nodes?.map(intern),
      properties: internDeep(spec.properties),
    },
    status: status && { allocations: status.allocations, used: status.used },
  } as Obj;
}

const isReady = (s: Obj | undefined) =>
  (((s?.status as { readyReplicas?: number } | undefined)?.readyReplicas ?? 0) as number) >=
  ((s?.spec as { replicas?: number } | undefined)?.replicas ?? 1);

/**
 * A SpinApp whose pods just became ready ends its trace: a "SpinApp ready" span, child of the
 * context its apply left on it. Only a transition seen on the watch counts (not the first list,
 * so a controller restart does not repeat it); it informs traces, never decisions.
 */
function traceReady(app: Obj, before: Obj | undefined): void {
  const parent = app.metadata?.annotations?.[TRACEPARENT_ANNOTATION];
  if (!parent || !before || isReady(before) || !isReady(app)) return;
  const { namespace, name, labels } = app.metadata ?? {};
  startSpan("SpinApp ready", {
    kind: "consumer",
    parent,
    attributes: {
      "spindle.spinapp": `${namespace}/${name}`,
      "spindle.device": labels?.[DEVICE_LABEL],
      "spindle.ready_replicas": (app.status as { readyReplicas?: number }).readyReplicas,
    },
  }).end();
}

const externalHandlers = (n: Obj | undefined) => n?.metadata?.annotations?.[EXTERNAL_HANDLERS_ANNOTATION];

/** The controller needs only which Nodes exist, and which external handlers their agents have. */
function projectNode(n: Obj): Obj {
  const external = externalHandlers(n);
  return {
    metadata: {
      name: n.metadata?.name,
      resourceVersion: n.metadata?.resourceVersion,
      ...(external ? { annotations: { [EXTERNAL_HANDLERS_ANNOTATION]: external } } : {}),
    },
  } as Obj;
}

/**
 * The DeviceSpinApp controller: synced caches in, `plan()` (pure) over them, `execute()` of the
 * actions. Every watch event only schedules one plan of the whole picture; nothing is decided
 * before every cache has listed; a lost Lease (`signal`) stops every write at once.
 */
export class Controller {
  private clients: ExecutorDeps["clients"];
  private caches: ExecutorDeps["caches"] & { nodes: Cache<Obj> };
  private queue: WorkQueue;
  private events: EventRecorder;
  private failures = new Map<string, WriteFailure>();
  private timer: NodeJS.Timeout | undefined;
  private wakeTimer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  /** Aborted when leadership is lost: in-flight requests end at once. */
  private signal: AbortSignal;
  /** Aborted by stop(): no new writes start, the ones in flight finish. */
  private stopping = new AbortController();
  private synced = false;
  private agentClients = new Map<string, ResourceClient<Obj>>();
  /** DeviceClasses, shared devices' ResourceSlices, and the placement in use. */
  readonly dra: ControllerDra;
  reconciles = 0;
  /** How long the last plan() took (ms). */
  private planMs = 0;

  constructor(
    private kc: ClusterAccess,
    private log: Logger,
    signal?: AbortSignal,
    placement: PlacementOption = "auto",
  ) {
    this.signal = signal ?? new AbortController().signal;
    this.events = new EventRecorder(kc, "spindle-controller", log);
    this.clients = {
      devices: new ResourceClient(kc, DEVICES, FIELD_MANAGER),
      dsas: new ResourceClient(kc, DEVICE_SPIN_APPS, FIELD_MANAGER),
      spinApps: new ResourceClient(kc, SPIN_APPS, FIELD_MANAGER),
      configs: new ResourceClient(kc, DEVICE_CONFIGURATIONS, FIELD_MANAGER),
    };
    const onChange = () => this.schedule();
    this.caches = {
      devices: new Cache(kc, { type: DEVICES, project: projectDevice, onChange }, log),
      dsas: new Cache(kc, { type: DEVICE_SPIN_APPS, onChange }, log),
      spinApps: new Cache(
        kc,
        {
          type: SPIN_APPS,
          labelSelector: DSA_LABEL,
          project: projectSpinApp,
          onChange: (app, _verb, before) => {
            traceReady(app, before);
            onChange();
          },
        },
        log,
      ),
      configs: new Cache(kc, { type: DEVICE_CONFIGURATIONS, onChange }, log),
      nodes: new Cache(
        kc,
        {
          type: NODES,
          project: projectNode,
          // A Node's status and labels change every few seconds (heartbeats, kubelet): a plan of
          // 10,000 Devices for each would be 20 MiB of garbage. Only its coming, going and
          // external handlers matter here.
          onChange: (node, verb, before) => {
            if (verb !== "update" || externalHandlers(node) !== externalHandlers(before)) onChange();
          },
        },
        log,
      ),
    };
    this.dra = new ControllerDra(
      kc,
      {
        placement,
        devices: this.caches.devices,
        configurations: this.caches.configs,
        fieldManager: FIELD_MANAGER,
        signal: this.signal,
        onChange,
      },
      log,
    );
    this.queue = new WorkQueue(
      () => this.reconcile(),
      1,
      (_k, err) => {
        reconcileErrors.inc();
        this.log.warn({ err: String(err) }, "reconcile incomplete; retrying");
      },
    );
  }

  /** Starts the caches and resolves once every one has listed (or the signal aborted first). */
  async start(): Promise<void> {
    const caches = Object.values(this.caches);
    for (const c of caches) c.start();
    const until = AbortSignal.any([this.signal, this.stopping.signal]);
    const synced = await Promise.all([...caches.map((c) => c.whenSynced(until)), this.dra.start(until)]);
    if (!synced.every(Boolean)) return;
    this.synced = true;
    this.log.info(
      { devices: this.caches.devices.size, deviceSpinApps: this.caches.dsas.size, spinApps: this.caches.spinApps.size },
      "caches synced",
    );
    this.schedule();
    this.resyncTimer = setInterval(() => this.schedule(), RESYNC_MS);
  }

  /**
   * Coalesces bursts of watch events into one plan. The wait is at least as long as the last plan
   * took: at 10,000 Devices a plan costs hundreds of ms of CPU, and under a steady stream of
   * events planning back to back would take a core from the apiserver it is waiting on.
   */
  private schedule(): void {
    if (this.timer || !this.synced || this.signal.aborted || this.stopping.signal.aborted) return;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.queue.add("all");
      },
      Math.max(20, Math.min(this.planMs, 2000)),
    );
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private dsaTarget = (key: string) => {
    const [namespace, name] = key.split("/") as [string, string];
    const dsa = this.caches.dsas.get(name, namespace);
    return dsa
      ? { apiVersion: apiVersionOf(DEVICE_SPIN_APPS), kind: "DeviceSpinApp", name, namespace, uid: dsa.metadata?.uid }
      : undefined;
  };

  private asAgent = (node: string) => {
    let client = this.agentClients.get(node);
    if (!client) {
      client = new ResourceClient<Obj>(this.kc, DEVICES, `spindle-agent-${node}`.slice(0, 128));
      this.agentClients.set(node, client);
    }
    return client;
  };

  snapshot(): Snapshot {
    return {
      deviceSpinApps: this.caches.dsas.list() as unknown as RawObject[],
      devices: this.caches.devices.list() as unknown as Device[],
      spinApps: this.caches.spinApps.list() as unknown as ObservedSpinApp[],
      configurations: this.caches.configs.list() as unknown as RawObject[],
      nodes: new Set(this.caches.nodes.list().map((n) => n.metadata!.name!)),
      failures: this.failures,
      now: Date.now(),
      validateDetails: (name, details) => validateDetails(name, details, this.externalHandlers()),
    };
  }

  /** External handler name -> the nodes whose agents have it registered (from the Node annotation). */
  private externalHandlers(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const n of this.caches.nodes.list())
      for (const h of (n.metadata?.annotations?.[EXTERNAL_HANDLERS_ANNOTATION] ?? "").split(","))
        if (h) out.set(h, [...(out.get(h) ?? []), n.metadata!.name!]);
    return out;
  }

  private async reconcile(): Promise<void> {
    if (!this.synced || this.signal.aborted || this.stopping.signal.aborted) return;
    this.reconciles++;
    const started = Date.now();
    // DeviceClasses first: a SpinApp's extended resource maps to its device only through its class.
    let draFailed: unknown;
    await this.dra.reconcile().catch((err) => {
      draFailed = err;
    });
    const planStart = performance.now();
    const planned = plan(this.snapshot());
    this.planMs = performance.now() - planStart;
    // A span for a reconcile that writes: the resyncs and status echoes that change nothing would
    // only bury the ones that do.
    const span = planned.actions.length
      ? startSpan("reconcile", {
          startTime: started,
          attributes: { "spindle.actions": planned.actions.length, "spindle.bindings": planned.bindings.length },
        })
      : undefined;
    const result = await execute(
      planned.actions,
      {
        clients: this.clients,
        caches: this.caches,
        asAgent: this.asAgent,
        events: this.events,
        log: this.log,
        failures: this.failures,
        dsaTarget: this.dsaTarget,
        trace: span?.traceparent,
      },
      this.signal,
      this.stopping.signal,
    ).catch((err) => {
      span?.fail(err);
      span?.end();
      throw err;
    });
    span?.setAttributes({ "spindle.writes": result.writes, "spindle.failed": result.transient + result.refused });
    span?.end();
    // Refused writes of SpinApps that are no longer wanted are forgotten.
    const wanted = new Set(planned.bindings.map((b) => `${b.namespace}/${b.spinApp}`));
    for (const key of this.failures.keys()) if (!wanted.has(key)) this.failures.delete(key);
    spinAppsBound.reset();
    for (const b of planned.bindings) spinAppsBound.inc({ namespace: b.namespace });
    reconcileDuration.observe((Date.now() - started) / 1000);
    this.log.debug(
      {
        ms: Date.now() - started,
        actions: planned.actions.length,
        writes: result.writes,
        bindings: planned.bindings.length,
      },
      "reconciled",
    );
    clearTimeout(this.wakeTimer);
    if (planned.wakeAt !== undefined && !this.signal.aborted)
      this.wakeTimer = setTimeout(() => this.schedule(), Math.max(0, planned.wakeAt - Date.now()) + 10);
    // What we wrote changes the caches, which schedules the next plan; a refusal changes what the
    // plan decides (the slot goes to others) without any watch event, so plan again now.
    if (result.refused > 0) this.schedule();
    if (result.transient > 0) throw new Error(`${result.transient} write(s) failed`);
    if (draFailed !== undefined) throw draFailed;
  }

  /** No new writes; resolves once the write in flight is done (or aborted by the signal). */
  async stop(): Promise<void> {
    this.synced = false;
    clearTimeout(this.timer);
    clearTimeout(this.wakeTimer);
    clearInterval(this.resyncTimer);
    this.queue.stop();
    this.stopping.abort();
    await this.queue.idle();
    await Promise.all(Object.values(this.caches).map((c) => c.stop()));
    await this.dra.stop();
  }
}

/**
 * A built-in handler's details are checked with its schema. An external handler's schema is
 * unknown here: the configuration is accepted once some node's agent has the handler registered
 * (the handler itself refuses bad details, which the agent reports as Events).
 */
export function validateDetails(
  name: string,
  details: unknown,
  external: ReadonlyMap<string, string[]> = new Map(),
): { ok: true; message?: string } | { ok: false; reason: string; message: string } {
  const handler = HANDLER_SCHEMAS.get(name);
  const nodes = external.get(name);
  if (!handler && nodes)
    return {
      ok: true,
      message: `external handler ${name} is registered on ${nodes.length} node(s) (${nodes.slice(0, 5).join(", ")}${nodes.length > 5 ? ", ..." : ""}); it checks its own discovery details`,
    };
  if (!handler)
    return {
      ok: false,
      reason: "UnknownHandler",
      message: `discoveryHandler.name: no built-in handler "${name}" (built in: ${[...HANDLER_SCHEMAS.keys()].join(", ")}) and no agent has an external handler of that name registered`,
    };
  const parsed = handler.detailsSchema.safeParse(details);
  return parsed.success
    ? { ok: true }
    : {
        ok: false,
        reason: "InvalidDiscoveryDetails",
        message: formatIssues(parsed.error, "discoveryHandler.discoveryDetails"),
      };
}
