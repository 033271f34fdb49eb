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

  constructor(
    kc: k8s.KubeConfig,
    private options: LeaderElectionOptions,
    private log: Logger,
  ) {
    this.api = kc.makeApiClient(k8s.CoordinationV1Api);
  }

  /** Resolves once this process leads; `onLost` runs if it ever stops leading. */
  async acquire(onLost: () => void): Promise<void> {
    while (!this.stopped) {
      if (await this.tryAcquireOrRenew().catch((err) => this.warn(err))) {
        this.leading = true;
        this.log.info({ lease: this.options.name, identity: this.options.identity }, "became leader");
        this.timer = setInterval(async () => {
          const ok = await this.tryAcquireOrRenew().catch((err) => this.warn(err));
          if (!ok && this.leading && !this.stopped) {
            this.leading = false;
            clearInterval(this.timer);
            this.log.error({ lease: this.options.name }, "lost leadership");
            onLost();
          }
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

  private async tryAcquireOrRenew(): Promise<boolean> {
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
    if (holder && holder !== identity && !expired) return false;
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
