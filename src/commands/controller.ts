import { hostname } from "node:os";
import { Controller } from "../controller/controller.js";
import { loadKubeConfig } from "../k8s/client.js";
import { LeaderElection } from "../k8s/leader-election.js";
import { createLogger } from "../log/logger.js";
import { startHttpServer } from "../observability/http-server.js";
import { untilSignal } from "./signals.js";

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
  let stopping = false;
  const signal = untilSignal().then((sig) => {
    stopping = true;
    return sig;
  });
  let controller: Controller | undefined;
  let state: "standby" | "starting" | "leading" = "standby";
  // A standby is ready: it is healthy and waiting for the Lease, and a rollout must not stall on it.
  const server = options.httpAddress
    ? await startHttpServer(options.httpAddress, () => ({ ok: state !== "starting", reason: state }), log)
    : undefined;
  // Campaign, lead until the Lease is lost, stop writing at once, campaign again: a replica that
  // lost its Lease (say, while the apiserver was down) becomes a standby instead of dying.
  const leadership = (async () => {
    while (!stopping) {
      let lost!: () => void;
      const lostLease = new Promise<void>((r) => {
        lost = r;
      });
      await election.acquire(lost);
      if (stopping) return;
      state = "starting";
      controller = new Controller(kc, log);
      await controller.start();
      state = "leading";
      log.info("controller started");
      await Promise.race([lostLease, signal]);
      if (stopping) return;
      state = "standby";
      await controller.stop();
      controller = undefined;
      log.warn("stopped acting after losing the Lease; campaigning again");
    }
  })();
  log.info({ signal: await signal }, "stopping");
  election.stop();
  await controller?.stop();
  await Promise.race([leadership, new Promise((r) => setTimeout(r, 1000))]);
  await election.release();
  server?.close();
}
