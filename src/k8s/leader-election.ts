import * as k8s from "@kubernetes/client-node";
import type { Logger } from "../log/logger.js";
import { statusCode } from "./client.js";

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseSeconds: number;
  /** How often the leader renews, and a candidate retries. */
  retrySeconds: number;
}

/**
 * Leader election on a coordination.k8s.io Lease, like client-go's: the holder renews every
 * retry period; a candidate takes the Lease once the holder has not renewed for leaseSeconds.
 * Updates carry the resourceVersion they read, so two candidates cannot both win.
 */
export class LeaderElection {
  private api: k8s.CoordinationV1Api;
  private timer: NodeJS.Timeout | undefined;
  private leading = false;
  private stopped = false;
  private lastRenewed = 0;

  constructor(
    kc: k8s.KubeConfig,
    private options: LeaderElectionOptions,
    private log: Logger,
  ) {
    this.api = kc.makeApiClient(k8s.CoordinationV1Api);
  }

  /** Stops campaigning (a pending `acquire` returns without leading). */
  stop(): void {
    this.stopped = true;
  }

  /** Resolves once this process leads (or `stop` was called); `onLost` runs if it stops leading. */
  async acquire(onLost: () => void): Promise<void> {
    while (!this.stopped) {
      if ((await this.tryAcquireOrRenew().catch((err) => this.warn(err))) === true) {
        this.leading = true;
        this.lastRenewed = Date.now();
        this.log.info({ lease: this.options.name, identity: this.options.identity }, "became leader");
        let renewing = false;
        // A failed renewal is retried (a busy apiserver is not a lost Lease) until the renew
        // deadline, two thirds of the Lease, passes; another holder ends leadership at once.
        const deadline = (this.options.leaseSeconds * 1000 * 2) / 3;
        const lose = (reason: string) => {
          if (!this.leading || this.stopped) return;
          this.leading = false;
          clearInterval(this.timer);
          this.log.error({ lease: this.options.name, reason }, "lost leadership");
          onLost();
        };
        this.timer = setInterval(async () => {
          if (renewing) {
            if (Date.now() - this.lastRenewed > deadline) lose("renew deadline passed");
            return;
          }
          renewing = true;
          const result = await this.tryAcquireOrRenew().catch((err) => this.warn(err));
          renewing = false;
          if (result === true) this.lastRenewed = Date.now();
          else if (result === "taken") lose("another holder");
          else if (Date.now() - this.lastRenewed > deadline) lose("renew deadline passed");
        }, this.options.retrySeconds * 1000);
        return;
      }
      await new Promise((r) => setTimeout(r, this.options.retrySeconds * 1000));
    }
  }

  private warn(err: unknown): false {
    this.log.warn({ err: String(err) }, "lease update failed");
    return false;
  }

  /** true: we hold the Lease now; "taken": another live holder has it. */
  private async tryAcquireOrRenew(): Promise<true | "taken"> {
    const { namespace, name, identity, leaseSeconds } = this.options;
    const now = new k8s.V1MicroTime(Date.now());
    let lease: k8s.V1Lease;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (statusCode(err) !== 404) throw err;
      await this.api.createNamespacedLease({
        namespace,
        body: {
          metadata: { name, namespace },
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds: leaseSeconds,
            acquireTime: now,
            renewTime: now,
            leaseTransitions: 0,
          },
        },
      });
      return true;
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity;
    const renewed = spec.renewTime ? new Date(spec.renewTime).getTime() : 0;
    const expired = renewed + (spec.leaseDurationSeconds ?? leaseSeconds) * 1000 < Date.now();
    if (holder && holder !== identity && !expired) return "taken";
    const takeover = holder !== identity;
    lease.spec = {
      ...spec,
      holderIdentity: identity,
      leaseDurationSeconds: leaseSeconds,
      renewTime: now,
      ...(takeover ? { acquireTime: now, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 } : {}),
    };
    await this.api.replaceNamespacedLease({ name, namespace, body: lease });
    return true;
  }

  /** Gives the Lease up (on a clean shutdown) so a standby takes over at once. */
  async release(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.api.readNamespacedLease({ name: this.options.name, namespace: this.options.namespace });
      if (lease.spec?.holderIdentity !== this.options.identity) return;
      lease.spec = { ...lease.spec, holderIdentity: undefined, renewTime: undefined };
      await this.api.replaceNamespacedLease({
        name: this.options.name,
        namespace: this.options.namespace,
        body: lease,
      });
    } catch (err) {
      this.warn(err);
    }
  }
}
