import { hostname } from "node:os";
import { Controller } from "../controller/controller.js";
import { loadKubeConfig } from "../k8s/client.js";
import { LeaderElection } from "../k8s/leader-election.js";
import { createLogger } from "../log/logger.js";
import { startHttpServer } from "../observability/http-server.js";
import { untilSignal } from "./sandbox.js";

export interface ControllerCommandOptions {
  kubeconfig?: string;
  leaseNamespace: string;
  leaseName: string;
  leaseSeconds: string;
  identity?: string;
  httpAddress?: string;
}

/** `spindle controller`: one active replica (Lease), DeviceSpinApps -> SpinApps until SIGTERM. */
export async function controllerCommand(options: ControllerCommandOptions): Promise<void> {
  const log = createLogger("spindle-controller");
  const kc = loadKubeConfig(options.kubeconfig);
  const identity = options.identity ?? `${hostname()}-${process.pid}`;
  const leaseSeconds = Number(options.leaseSeconds);
  if (!Number.isInteger(leaseSeconds) || leaseSeconds < 2) throw new Error("--lease-seconds must be an integer >= 2");
  const election = new LeaderElection(
    kc,
    {
      namespace: options.leaseNamespace,
      name: options.leaseName,
      identity,
      leaseSeconds,
      retrySeconds: Math.max(1, Math.floor(leaseSeconds / 3)),
    },
    log,
  );
  const signal = untilSignal();
  let controller: Controller | undefined;
  let state: "standby" | "starting" | "leading" = "standby";
  // A standby is ready: it is healthy and waiting for the Lease, and a rollout must not stall on it.
  const server = options.httpAddress
    ? await startHttpServer(options.httpAddress, () => ({ ok: state !== "starting", reason: state }), log)
    : undefined;
  const leading = election
    .acquire(() => {
      // Another replica may already act: stop at once rather than write as a non-leader.
      process.exit(1);
    })
    .then(async () => {
      state = "starting";
      controller = new Controller(kc, log);
      await controller.start();
      state = "leading";
      log.info("controller started");
    });
  await Promise.race([leading, signal]);
  log.info({ signal: await signal }, "stopping");
  await controller?.stop();
  await election.release();
  server?.close();
}
