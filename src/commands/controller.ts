import type { Server } from "node:http";
import { hostname } from "node:os";
import { Controller } from "../controller/controller.js";
import { parsePlacement } from "../k8s/dra.js";
import { loadKubeConfig } from "../k8s/kubeconfig.js";
import { LeaderElection } from "../k8s/leader-election.js";
import { createLogger } from "../log/logger.js";
import { startHttpServer } from "../observability/http-server.js";
import { startTracing } from "../observability/tracing.js";
import { startSettledGc } from "../runtime/settled-gc.js";
import { untilSignal } from "./signals.js";

export interface ControllerCommandOptions {
  kubeconfig?: string;
  leaseNamespace: string;
  leaseName: string;
  leaseSeconds: string;
  identity?: string;
  httpAddress?: string;
  placement?: string;
}

/** Resolves when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}

/** `spindle controller`: one active replica (Lease), DeviceSpinApps -> SpinApps until SIGTERM. */
export async function controllerCommand(options: ControllerCommandOptions): Promise<void> {
  const log = createLogger("spindle-controller");
  // Loads the OpenTelemetry SDK only when OTEL_* configures an exporter.
  // One full GC after each burst of work: V8 would otherwise keep its garbage as RSS for good.
  startSettledGc();
  const stopTracing = await startTracing("spindle-controller", log);
  const kc = await loadKubeConfig(options.kubeconfig);
  const identity = options.identity ?? `${hostname()}-${process.pid}`;
  const placement = parsePlacement(options.placement);
  const leaseSeconds = Number(options.leaseSeconds);
  if (!Number.isInteger(leaseSeconds) || leaseSeconds < 2) throw new Error("--lease-seconds must be an integer >= 2");
  // Renew deadline two thirds of the Lease; each attempt times out after min(retry, deadline / 2).
  const election = new LeaderElection(
    kc,
    {
      namespace: options.leaseNamespace,
      name: options.leaseName,
      identity,
      leaseSeconds,
      retrySeconds: Math.max(1, Math.floor(leaseSeconds / 5)),
    },
    log,
  );
  let stopping = false;
  const stopSignal = untilSignal().then((sig) => {
    stopping = true;
    election.stop();
    return sig;
  });
  let controller: Controller | undefined;
  let state: "standby" | "starting" | "leading" = "standby";
  // A standby is ready: it is healthy and waiting for the Lease, and a rollout must not stall on it.
  const server = options.httpAddress
    ? await startHttpServer(options.httpAddress, () => ({ ok: state !== "starting", reason: state }), log)
    : undefined;
  // Campaign, lead until the Lease is lost, stop writing at once (the signal fences the writes),
  // campaign again: a replica that lost its Lease (say, while the apiserver was down) becomes a
  // standby instead of dying.
  const leadership = (async () => {
    while (!stopping) {
      const leading = await election.acquire();
      if (!leading || stopping) return;
      state = "starting";
      // The leadership signal fences the controller's writes: aborted the moment the Lease is lost.
      const current = new Controller(kc, log, leading, placement);
      controller = current;
      const started = current.start().then(
        () => "started" as const,
        (err) => {
          if (leading.aborted || stopping) return "aborted" as const;
          throw err;
        },
      );
      if ((await Promise.race([started, aborted(leading), stopSignal])) === "started" && !leading.aborted) {
        state = "leading";
        log.info("controller started");
        await Promise.race([aborted(leading), stopSignal]);
      }
      if (stopping) return; // the shutdown below drains it
      state = "standby";
      await current.stop();
      controller = undefined;
      log.warn("stopped acting after losing the Lease; campaigning again");
    }
  })();

  let failure: unknown;
  const outcome = await Promise.race([
    stopSignal,
    leadership.then(
      () => undefined,
      (err) => {
        failure = err;
      },
    ),
  ]);
  if (failure === undefined) log.info({ signal: outcome }, "stopping");
  else log.error({ err: String(failure) }, "controller failed; stopping");
  stopping = true;
  election.stop();
  await leadership.catch(() => undefined);
  // Drain writes while still holding (and renewing) the Lease, then give it up, so the standby
  // takes over at once and never overlaps with a write of ours.
  await controller?.stop();
  controller = undefined;
  await election.release();
  await stopTracing(); // flushes the spans still queued
  if (server) await closeServer(server);
  log.info("stopped");
  if (failure !== undefined) throw failure;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}
