import type * as k8s from "@kubernetes/client-node";
import type { Cache } from "../k8s/cache.js";
import { errorMessage, statusCode } from "../k8s/client.js";
import type { EventRecorder, EventTarget } from "../k8s/events.js";
import type { ResourceClient } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { apiWrites } from "../observability/metrics.js";
import { type SpanHandle, startSpan, TRACEPARENT_ANNOTATION } from "../observability/tracing.js";
import { type Action, PHASE, type WriteFailure } from "./plan.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

export interface ExecutorDeps {
  clients: Record<"devices" | "dsas" | "spinApps" | "configs", ResourceClient<Obj>>;
  caches: Record<"devices" | "dsas" | "spinApps" | "configs", Cache<Obj>>;
  /** A Device client under a node agent's field manager, to release what a deleted node owned. */
  asAgent: (node: string) => ResourceClient<Obj>;
  events: EventRecorder;
  log: Logger;
  /** Refused SpinApp writes by "<namespace>/<name>"; the executor keeps it, plan() reads it. */
  failures: Map<string, WriteFailure>;
  dsaTarget: (dsaKey: string) => EventTarget | undefined;
  /** The traceparent of the reconcile these actions come from (tracing on only). */
  trace?: string;
}

export interface ExecutionResult {
  writes: number;
  /** Failed writes worth retrying soon (throttling, conflicts, a busy or unreachable apiserver). */
  transient: number;
  refused: number;
}

const CONCURRENCY = 32;

/** Refused for what it is (not throttled, not a conflict): the same write will fail again. */
function isPermanent(code: number | undefined): boolean {
  return code !== undefined && code >= 400 && code < 500 && code !== 409 && code !== 429 && code !== 408;
}

/**
 * Applies a plan's actions phase by phase. Each write stands alone: a failure marks only its own
 * object (a refused SpinApp write is remembered for its DeviceSpinApp's status), and a device
 * whose earlier write failed gets no later writes this round, so its slots never run ahead of
 * what exists. `signal` aborts the requests in flight (leadership lost); after `stop` no new
 * write starts, and those in flight finish (a clean shutdown drains).
 */
export async function execute(
  actions: Action[],
  deps: ExecutorDeps,
  signal: AbortSignal,
  stop: AbortSignal = signal,
): Promise<ExecutionResult> {
  const result: ExecutionResult = { writes: 0, transient: 0, refused: 0 };
  const blocked = new Set<string>();
  const phases = new Map<number, Action[]>();
  for (const a of actions) {
    const list = phases.get(PHASE[a.kind]) ?? [];
    list.push(a);
    phases.set(PHASE[a.kind], list);
  }
  for (const phase of [...phases.keys()].sort((a, b) => a - b)) {
    const list = phases.get(phase)!;
    let next = 0;
    const worker = async () => {
      while (next < list.length && !signal.aborted && !stop.aborted) {
        const action = list[next++]!;
        const device = "device" in action ? action.device : undefined;
        if (device && blocked.has(device) && (action.kind === "applyAllocations" || action.kind === "applySpinApp"))
          continue;
        try {
          if (await run(action, deps, signal)) result.writes++;
        } catch (err) {
          if (signal.aborted) return;
          const code = statusCode(err);
          if (device && action.kind !== "applySpinApp") blocked.add(device);
          if (action.kind === "applySpinApp") {
            refusedSpinApp(action, err, deps);
            if (isPermanent(code)) result.refused++;
            else result.transient++;
          } else {
            result.transient++;
            deps.log.warn({ action: action.kind, object: describe(action), err: errorMessage(err) }, "write failed");
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, list.length) }, worker));
    if (signal.aborted || stop.aborted) break;
  }
  return result;
}

function describe(action: Action): string {
  switch (action.kind) {
    case "applySpinApp":
      return `${action.spinApp.metadata.namespace}/${action.spinApp.metadata.name}`;
    case "deleteSpinApp":
      return `${action.namespace}/${action.name}`;
    case "applyDsaStatus":
    case "event":
      return action.dsaKey;
    case "applyConfigurationStatus":
      return action.name;
    default:
      return action.device;
  }
}

function refusedSpinApp(action: Extract<Action, { kind: "applySpinApp" }>, err: unknown, deps: ExecutorDeps): void {
  const key = `${action.spinApp.metadata.namespace}/${action.spinApp.metadata.name}`;
  const code = statusCode(err);
  const permanent = isPermanent(code);
  const message = errorMessage(err);
  const previous = deps.failures.get(key);
  const attempts = (previous?.attempts ?? 0) + 1;
  // Refused writes back off to 5 minutes; throttling and outages retry within seconds.
  const delay = Math.min((permanent ? 5_000 : 500) * 2 ** (attempts - 1), permanent ? 300_000 : 30_000);
  deps.failures.set(key, { dsaKey: action.dsaKey, message, permanent, retryAt: Date.now() + delay, attempts });
  deps.log.warn({ spinApp: key, device: action.device, code, err: message }, "SpinApp write refused");
  const target = deps.dsaTarget(action.dsaKey);
  if (target && previous?.message !== message)
    void deps.events.record(target, "Warning", "ApplyFailed", `SpinApp ${action.spinApp.metadata.name}: ${message}`);
}

/** One write; false when there was nothing to do after all (already gone). */
async function run(action: Action, deps: ExecutorDeps, signal: AbortSignal): Promise<boolean> {
  const { clients, caches, log } = deps;
  const opts = { signal };
  switch (action.kind) {
    case "deleteDevice": {
      try {
        await clients.devices.delete(
          action.device,
          undefined,
          { uid: action.uid, resourceVersion: action.resourceVersion },
          opts,
        );
      } catch (err) {
        if (statusCode(err) === 404) return false;
        throw err;
      }
      apiWrites.inc({ resource: "devices", verb: "delete" });
      caches.devices.observeDelete(action.device);
      log.info({ device: action.device, nodes: action.nodes }, "device deleted: every node that saw it was deleted");
      return true;
    }
    case "releaseNode": {
      try {
        // Exactly what the node's own agent does to leave: apply an empty intent under its manager.
        const applied = await deps
          .asAgent(action.node)
          .apply({ apiVersion: "spindle.dev/v1alpha1", kind: "Device", metadata: { name: action.device } }, true, opts);
        caches.devices.observeWrite(applied);
      } catch (err) {
        if (statusCode(err) === 404) return false;
        throw err;
      }
      apiWrites.inc({ resource: "devices", verb: "apply" });
      log.info({ device: action.device, node: action.node }, "deleted node removed from shared device");
      return true;
    }
    case "deleteSpinApp": {
      let answer: unknown;
      // A child of the Device's last change (it no longer matches, say); else of this reconcile.
      const span = spinAppSpan("delete SpinApp", action.namespace, action.name, action.device, action.trace, deps, [
        action.appTrace,
      ]);
      span.setAttributes({ "spindle.reason": action.reason });
      try {
        answer = await clients.spinApps.delete(action.name, action.namespace, { uid: action.uid }, opts);
      } catch (err) {
        const code = statusCode(err);
        if (code === 404 || code === 409) return false; // gone, or a new object by that name: look again
        span.fail(err);
        throw err;
      } finally {
        span.end();
      }
      apiWrites.inc({ resource: "spinapps", verb: "delete" });
      if ((answer as { kind?: string })?.kind === "SpinApp") caches.spinApps.observeWrite(answer as Obj);
      else caches.spinApps.observeDelete(action.name, action.namespace);
      deps.failures.delete(`${action.namespace}/${action.name}`);
      log.info(
        { spinApp: `${action.namespace}/${action.name}`, device: action.device, reason: action.reason },
        "SpinApp unbound",
      );
      const target = action.dsaKey ? deps.dsaTarget(action.dsaKey) : undefined;
      if (target)
        void deps.events.record(target, "Normal", "Unbound", `SpinApp ${action.name} removed: ${action.reason}`);
      return true;
    }
    case "applyAllocations":
      return applyStatus(
        deps,
        "devices",
        "Device",
        { name: action.device },
        {
          allocations: action.allocations,
          used: action.allocations.length,
        },
        opts,
      );
    case "applySpinApp": {
      const key = `${action.spinApp.metadata.namespace}/${action.spinApp.metadata.name}`;
      const { namespace, name } = action.spinApp.metadata;
      // A child of the discovery that last changed the Device, so one trace runs from the device
      // to its SpinApp; linked to the reconcile that wrote it.
      const span = spinAppSpan("apply SpinApp", namespace, name, action.device, action.trace, deps, []);
      span.setAttributes({ "spindle.create": action.create });
      // The context goes on the SpinApp with a write that happens anyway (plan() never compares it).
      const traceparent = span.traceparent ?? action.trace;
      const body = traceparent
        ? {
            ...action.spinApp,
            metadata: {
              ...action.spinApp.metadata,
              annotations: { ...action.spinApp.metadata.annotations, [TRACEPARENT_ANNOTATION]: traceparent },
            },
          }
        : action.spinApp;
      let applied: Obj;
      try {
        applied = await clients.spinApps.apply(body as unknown as Obj, true, opts);
      } catch (err) {
        span.fail(err);
        throw err;
      } finally {
        span.end();
      }
      caches.spinApps.observeWrite(applied);
      apiWrites.inc({ resource: "spinapps", verb: "apply" });
      const hadFailed = deps.failures.delete(key);
      const target = deps.dsaTarget(action.dsaKey);
      if (action.create) {
        log.info({ spinApp: key, device: action.device }, "SpinApp bound to device");
        if (target)
          void deps.events.record(
            target,
            "Normal",
            "Bound",
            `SpinApp ${action.spinApp.metadata.name} runs for device ${action.device}`,
          );
      } else if (!hadFailed) log.info({ spinApp: key, device: action.device }, "SpinApp updated to its desired spec");
      return true;
    }
    case "applyDsaStatus":
      return applyStatus(
        deps,
        "dsas",
        "DeviceSpinApp",
        { name: action.name, namespace: action.namespace },
        action.status,
        opts,
      );
    case "applyConfigurationStatus":
      return applyStatus(deps, "configs", "DeviceConfiguration", { name: action.name }, action.status, opts);
    case "event": {
      const target = deps.dsaTarget(action.dsaKey);
      if (target) void deps.events.record(target, action.type, action.reason, action.message);
      return false;
    }
  }
}

/** A SpinApp write's span: parented by the Device's trace when it has one, else by the reconcile. */
function spinAppSpan(
  name: string,
  namespace: string,
  spinApp: string,
  device: string | undefined,
  trace: string | undefined,
  deps: ExecutorDeps,
  links: (string | undefined)[],
): SpanHandle {
  return startSpan(name, {
    kind: "client",
    parent: trace ?? deps.trace,
    links: trace ? [deps.trace, ...links] : links,
    attributes: { "spindle.spinapp": `${namespace}/${spinApp}`, "spindle.device": device },
  });
}

const STATUS_RESOURCE = {
  devices: "devices/status",
  dsas: "devicespinapps/status",
  configs: "deviceconfigurations/status",
} as const;

/** Server-side apply of one of our kinds' status; false when the object is gone (the next plan sees that). */
async function applyStatus(
  deps: ExecutorDeps,
  which: keyof typeof STATUS_RESOURCE,
  kind: string,
  metadata: { name: string; namespace?: string },
  status: unknown,
  opts: { signal: AbortSignal },
): Promise<boolean> {
  try {
    const applied = await deps.clients[which].applyStatus(
      { apiVersion: "spindle.dev/v1alpha1", kind, metadata, status },
      true,
      opts,
    );
    deps.caches[which].observeWrite(applied);
  } catch (err) {
    if (statusCode(err) === 404) return false;
    throw err;
  }
  apiWrites.inc({ resource: STATUS_RESOURCE[which], verb: "apply" });
  return true;
}
