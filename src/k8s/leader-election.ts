import { request as httpRequest, type IncomingMessage, type RequestOptions } from "node:http";
import { Agent, type RequestOptions as HttpsRequestOptions, request as httpsRequest } from "node:https";
import { performance } from "node:perf_hooks";
import type { Logger } from "../log/logger.js";
import { countConnections } from "./api.js";
import { statusCode } from "./client.js";
import type { ClusterAccess } from "./kubeconfig.js";

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  /**
   * How long a candidate waits, after it last saw the Lease record change, before it takes the
   * Lease over (written as `leaseDurationSeconds`, so an integer for a real apiserver).
   */
  leaseSeconds: number;
  /** How often the leader renews, and a candidate retries. */
  retrySeconds: number;
  /**
   * How long the leader keeps leading without a successful renewal (two thirds of leaseSeconds by
   * default, like client-go's 10 s of 15 s). Must be shorter than leaseSeconds.
   */
  renewDeadlineSeconds?: number;
  /** Timeout of one acquire/renew attempt (default: min(retrySeconds, renewDeadlineSeconds / 2)). */
  requestTimeoutSeconds?: number;
}

/** The leader-election fields of a coordination.k8s.io/v1 LeaseSpec. */
export interface LeaseRecord {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/** A coordination.k8s.io/v1 Lease as JSON. */
export interface LeaseObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name?: string; namespace?: string; resourceVersion?: string } & Record<string, unknown>;
  /** Fields other than the LeaseRecord's (say, `strategy`) are kept as read. */
  spec?: LeaseRecord;
}

/** What a candidate last saw of the Lease, and when it first saw it (its own monotonic clock, ms). */
export interface Observation {
  record: LeaseRecord;
  resourceVersion: string | undefined;
  time: number;
}

/**
 * client-go's observedRecord/observedTime: a record that differs from the previous observation (any
 * leader-election field, or the resourceVersion) is observed `now`; an unchanged one keeps the time
 * it was first seen. Only local clock readings go in, never the holder's `renewTime`.
 */
export function observe(
  previous: Observation | undefined,
  record: LeaseRecord,
  resourceVersion: string | undefined,
  now: number,
): Observation {
  if (previous && previous.resourceVersion === resourceVersion && sameRecord(previous.record, record)) return previous;
  return { record: pickRecord(record), resourceVersion, time: now };
}

/**
 * What a candidate may do with the Lease it observed: `renew` the record it holds, `take` a free
 * Lease or one that has not changed for its lease duration since it was observed, or `wait`.
 */
export function decide(
  observed: Observation,
  identity: string,
  now: number,
  defaultLeaseSeconds: number,
): "renew" | "take" | "wait" {
  const holder = observed.record.holderIdentity;
  if (holder === identity) return "renew";
  if (!holder) return "take";
  return observed.time + leaseMs(observed.record, defaultLeaseSeconds) < now ? "take" : "wait";
}

/** The record to write for a `renew` or a `take`; `wallNow` is for humans only (nobody compares it). */
export function nextRecord(
  current: LeaseRecord | undefined,
  decision: "renew" | "take",
  identity: string,
  leaseSeconds: number,
  wallNow: Date,
): LeaseRecord {
  const now = microTime(wallNow);
  const renewing = decision === "renew" && current?.holderIdentity === identity;
  return {
    holderIdentity: identity,
    leaseDurationSeconds: leaseSeconds,
    acquireTime: renewing ? (current?.acquireTime ?? now) : now,
    renewTime: now,
    leaseTransitions: renewing ? (current?.leaseTransitions ?? 0) : current ? (current.leaseTransitions ?? 0) + 1 : 0,
  };
}

/**
 * Whether a leader whose last successful renewal was *sent* at `lastSuccess` still leads at `now`
 * (both on its own monotonic clock). The send time, not the answer's, so a slow answer cannot
 * stretch leadership past what the other candidates see.
 */
export function stillLeads(lastSuccess: number, now: number, renewDeadlineMs: number): boolean {
  return now - lastSuccess < renewDeadlineMs;
}

function leaseMs(record: LeaseRecord, defaultLeaseSeconds: number): number {
  const seconds = record.leaseDurationSeconds;
  return (seconds && seconds > 0 ? seconds : defaultLeaseSeconds) * 1000;
}

const RECORD_FIELDS = [
  "holderIdentity",
  "leaseDurationSeconds",
  "acquireTime",
  "renewTime",
  "leaseTransitions",
] as const;

function pickRecord(record: LeaseRecord): LeaseRecord {
  const out: LeaseRecord = {};
  for (const f of RECORD_FIELDS)
    if (record[f] !== undefined && record[f] !== null) (out as Record<string, unknown>)[f] = record[f];
  return out;
}

function sameRecord(a: LeaseRecord, b: LeaseRecord): boolean {
  return RECORD_FIELDS.every((f) => (a[f] ?? undefined) === (b[f] ?? undefined));
}

/** metav1.MicroTime: RFC 3339 with exactly six fractional digits. */
export function microTime(date: Date): string {
  return date.toISOString().replace(/Z$/, "000Z");
}

/** The three calls leader election makes; each must give up when `signal` aborts. */
export interface LeaseTransport {
  /** The Lease, or undefined if it does not exist. */
  get(signal: AbortSignal): Promise<LeaseObject | undefined>;
  create(lease: LeaseObject, signal: AbortSignal): Promise<LeaseObject>;
  /** Replaces the Lease; its resourceVersion is the precondition (HTTP 409 if someone wrote in between). */
  update(lease: LeaseObject, signal: AbortSignal): Promise<LeaseObject>;
}

/** An apiserver answer that was not 2xx; `code` is what `statusCode()` reads. */
export class HttpError extends Error {
  constructor(
    message: string,
    readonly code: number,
    readonly body: string,
  ) {
    super(message);
  }
}

/**
 * The Lease over plain node:http(s), with the KubeConfig's auth and TLS: client-node's typed calls
 * take no per-call AbortSignal, and a renewal must not outlive its timeout.
 */
export function httpLeaseTransport(kc: ClusterAccess, namespace: string, name: string): LeaseTransport {
  const collection = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases`;
  const item = `${collection}/${encodeURIComponent(name)}`;
  let agent: Agent | undefined;
  const call = async (method: string, path: string, body: unknown, signal: AbortSignal) => {
    signal.throwIfAborted();
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("the kubeconfig has no current cluster");
    const server = new URL(cluster.server);
    const secure = server.protocol !== "http:";
    const options: RequestOptions = {
      method,
      host: server.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: server.port || (secure ? 443 : 80),
      path: `${server.pathname.replace(/\/$/, "")}${path}`,
      headers: { Accept: "application/json", ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    };
    // Auth and TLS from the kubeconfig; over https (no proxy) one kept-alive socket of the
    // elector's own, so renewals never queue behind the cache's requests and need no handshake
    // each. A request that times out destroys its socket: the next one connects afresh.
    await kc.applyToHTTPSOptions(options);
    if (secure && !cluster.proxyUrl) {
      const tls = options as HttpsRequestOptions;
      agent ??= countConnections(
        new Agent({
          keepAlive: true,
          maxSockets: 1,
          ca: tls.ca,
          cert: tls.cert,
          key: tls.key,
          servername: tls.servername,
          ...(tls.rejectUnauthorized !== undefined ? { rejectUnauthorized: tls.rejectUnauthorized } : {}),
        }),
      );
      options.agent = agent;
    }
    options.signal = signal;
    signal.throwIfAborted();
    return new Promise<{ status: number; text: string }>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener("abort", onAbort);
        fn();
      };
      const onAbort = () => {
        req.destroy();
        settle(() => reject(signal.reason ?? new Error("aborted")));
      };
      const req = (secure ? httpsRequest : httpRequest)(options, (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (err) => settle(() => reject(err)));
        res.on("aborted", () => settle(() => reject(new Error(`${method} ${path}: connection closed`))));
        res.on("end", () =>
          settle(() => resolve({ status: res.statusCode ?? 500, text: Buffer.concat(chunks).toString("utf8") })),
        );
      });
      signal.addEventListener("abort", onAbort, { once: true });
      req.on("error", (err) => settle(() => reject(err)));
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  };
  const parse = (method: string, path: string, { status, text }: { status: number; text: string }) => {
    if (status < 200 || status >= 300) {
      let message = text;
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {}
      throw new HttpError(`${method} ${path}: HTTP ${status}: ${message}`, status, text);
    }
    return JSON.parse(text) as LeaseObject;
  };
  const lease = (l: LeaseObject): LeaseObject => ({ ...l, apiVersion: "coordination.k8s.io/v1", kind: "Lease" });
  return {
    async get(signal) {
      const answer = await call("GET", item, undefined, signal);
      if (answer.status === 404) return undefined;
      return parse("GET", item, answer);
    },
    async create(l, signal) {
      return parse("POST", collection, await call("POST", collection, lease(l), signal));
    },
    async update(l, signal) {
      return parse("PUT", item, await call("PUT", item, lease(l), signal));
    },
  };
}

type Attempt = "leading" | "held" | "failed";

interface Leadership {
  controller: AbortController;
  /** Monotonic time at which the last successful acquire/renew request was sent. */
  lastSuccess: number;
  deadline?: NodeJS.Timeout;
  renew?: NodeJS.Timeout;
}

/**
 * Leader election on a coordination.k8s.io Lease with client-go's semantics:
 *
 * - a candidate takes the Lease only when the record has not changed for its lease duration since
 *   the candidate *observed* it (local monotonic time): the holder's `renewTime` is never compared
 *   with the local clock, so clock skew between machines does not move a takeover;
 * - the leader renews every retry period; every attempt has a timeout shorter than the renew
 *   deadline, and a timer at the deadline ends leadership the moment renewals have failed for that
 *   long (a hung apiserver cannot keep a stale leader believing it leads);
 * - writes carry the resourceVersion they read, so two candidates cannot both win.
 *
 * All timers are cleared by `stop`/`release` or when leadership ends, so nothing here keeps the
 * process alive after a clean shutdown.
 */
export class LeaderElection {
  readonly leaseMs: number;
  readonly renewDeadlineMs: number;
  readonly retryMs: number;
  readonly requestTimeoutMs: number;
  private transport: LeaseTransport;
  private now: () => number;
  private observed: Observation | undefined;
  private leadership: Leadership | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private inflight: { abort: AbortController; done: Promise<unknown> } | undefined;

  constructor(
    kc: ClusterAccess | undefined,
    private options: LeaderElectionOptions,
    private log: Logger,
    /** For tests: another transport (then `kc` may be undefined) or clock. */
    deps: { transport?: LeaseTransport; now?: () => number } = {},
  ) {
    const { leaseSeconds, retrySeconds } = options;
    this.leaseMs = leaseSeconds * 1000;
    this.renewDeadlineMs = (options.renewDeadlineSeconds ?? (leaseSeconds * 2) / 3) * 1000;
    this.retryMs = retrySeconds * 1000;
    this.requestTimeoutMs =
      (options.requestTimeoutSeconds ?? Math.min(retrySeconds, this.renewDeadlineMs / 2000)) * 1000;
    if (!(this.retryMs > 0)) throw new Error("leader election: retrySeconds must be > 0");
    if (!(this.renewDeadlineMs < this.leaseMs)) throw new Error("leader election: renew deadline must be < lease");
    if (!(this.requestTimeoutMs > 0 && this.requestTimeoutMs < this.renewDeadlineMs))
      throw new Error("leader election: request timeout must be > 0 and < renew deadline");
    if (!deps.transport && !kc) throw new Error("leader election: a KubeConfig or a transport is required");
    this.transport = deps.transport ?? httpLeaseTransport(kc!, options.namespace, options.name);
    this.now = deps.now ?? (() => performance.now());
  }

  /** Whether this candidate leads right now. */
  get isLeader(): boolean {
    return this.leadership !== undefined;
  }

  /**
   * Campaigns until this candidate leads, then resolves with a signal that is aborted the moment
   * leadership is lost (renew deadline passed, another holder, or `release`). Resolves with
   * `undefined` if `stop` (or `release`) is called before it wins.
   */
  async acquire(): Promise<AbortSignal | undefined> {
    if (this.leadership) return this.leadership.controller.signal;
    while (!this.stopped) {
      const sentAt = this.now();
      const result = await this.attempt();
      if (this.stopped) return undefined; // `release` clears a Lease this last attempt may have won
      if (result === "leading") return this.lead(sentAt);
      // client-go's JitterUntil(retryPeriod, 1.2): candidates spread out instead of colliding.
      await this.sleep(this.retryMs * (1 + Math.random() * 0.2));
    }
    return undefined;
  }

  /**
   * Stops campaigning: a pending `acquire` resolves with `undefined`. A leader keeps renewing (its
   * work may still be draining) until `release`.
   */
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  /**
   * Stops campaigning and renewing and gives the Lease up (clears holderIdentity), so a standby
   * takes over at once. Call it only after the work done under the leadership signal has drained.
   */
  async release(): Promise<void> {
    this.stop();
    const leadership = this.leadership;
    if (leadership) {
      this.endLeadership(leadership);
      leadership.controller.abort(new Error("leadership released"));
      this.log.info({ lease: this.options.name, identity: this.options.identity }, "released leadership");
    }
    if (this.inflight) {
      this.inflight.abort.abort(new Error("leadership released"));
      await this.inflight.done;
    }
    if (this.observed?.record.holderIdentity !== this.options.identity) return;
    const abort = new AbortController();
    const timer = setTimeout(
      () => abort.abort(new Error(`lease release timed out after ${this.renewDeadlineMs} ms`)),
      this.renewDeadlineMs,
    );
    try {
      // Twice: a renewal aborted above may still have landed and changed the resourceVersion.
      for (let i = 0; i < 2; i++) {
        const lease = await this.transport.get(abort.signal);
        if (!lease || lease.spec?.holderIdentity !== this.options.identity) return;
        const now = microTime(new Date());
        const { holderIdentity: _, ...rest } = lease.spec;
        try {
          const released = await this.transport.update(
            { ...lease, spec: { ...rest, leaseDurationSeconds: 1, acquireTime: now, renewTime: now } },
            abort.signal,
          );
          this.observed = observe(this.observed, released.spec ?? {}, released.metadata?.resourceVersion, this.now());
          return;
        } catch (err) {
          if (statusCode(err) !== 409) throw err;
        }
      }
    } catch (err) {
      this.log.warn({ err: String(err), lease: this.options.name }, "lease release failed");
    } finally {
      clearTimeout(timer);
    }
  }

  private lead(sentAt: number): AbortSignal {
    const leadership: Leadership = { controller: new AbortController(), lastSuccess: sentAt };
    this.leadership = leadership;
    this.log.info({ lease: this.options.name, identity: this.options.identity }, "became leader");
    this.armDeadline(leadership);
    this.scheduleRenew(leadership);
    return leadership.controller.signal;
  }

  /** A timer at lastSuccess + renewDeadline: leadership ends then unless a renewal succeeded. */
  private armDeadline(leadership: Leadership): void {
    clearTimeout(leadership.deadline);
    const left = leadership.lastSuccess + this.renewDeadlineMs - this.now();
    leadership.deadline = setTimeout(
      () => {
        if (this.leadership !== leadership) return;
        if (stillLeads(leadership.lastSuccess, this.now(), this.renewDeadlineMs)) this.armDeadline(leadership);
        else this.lose(leadership, `no successful renewal for ${this.renewDeadlineMs} ms (renew deadline)`);
      },
      Math.max(0, Math.ceil(left)),
    );
  }

  private scheduleRenew(leadership: Leadership): void {
    leadership.renew = setTimeout(async () => {
      if (this.leadership !== leadership) return;
      const sentAt = this.now();
      const result = await this.attempt();
      if (this.leadership !== leadership) return; // lost or released while the request ran
      if (result === "held") {
        this.lose(leadership, `the Lease is held by ${this.observed?.record.holderIdentity}`);
        return;
      }
      if (result === "leading" && stillLeads(sentAt, this.now(), this.renewDeadlineMs)) {
        leadership.lastSuccess = Math.max(leadership.lastSuccess, sentAt);
        this.armDeadline(leadership);
      }
      // A failed renewal is retried (a busy apiserver is not a lost Lease) until the deadline.
      this.scheduleRenew(leadership);
    }, this.retryMs);
  }

  private lose(leadership: Leadership, reason: string): void {
    if (this.leadership !== leadership) return;
    this.endLeadership(leadership);
    this.inflight?.abort.abort(new Error("leadership lost"));
    this.log.error({ lease: this.options.name, identity: this.options.identity, reason }, "lost leadership");
    leadership.controller.abort(new Error(`lost leadership: ${reason}`));
  }

  private endLeadership(leadership: Leadership): void {
    clearTimeout(leadership.deadline);
    clearTimeout(leadership.renew);
    if (this.leadership === leadership) this.leadership = undefined;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }

  /** One acquire-or-renew with its timeout; never throws. */
  private async attempt(): Promise<Attempt> {
    const abort = new AbortController();
    const timer = setTimeout(
      () => abort.abort(new Error(`lease request timed out after ${this.requestTimeoutMs} ms`)),
      this.requestTimeoutMs,
    );
    const done = this.tryAcquireOrRenew(abort.signal).catch((err): Attempt => {
      if (statusCode(err) === 409) this.log.debug({ lease: this.options.name }, "lost a race to write the Lease");
      else
        this.log.warn(
          { err: String(abort.signal.aborted ? abort.signal.reason : err), lease: this.options.name },
          "lease update failed",
        );
      return "failed";
    });
    const inflight = { abort, done };
    this.inflight = inflight;
    try {
      return await done;
    } finally {
      clearTimeout(timer);
      if (this.inflight === inflight) this.inflight = undefined;
    }
  }

  private async tryAcquireOrRenew(signal: AbortSignal): Promise<Attempt> {
    const { namespace, name, identity, leaseSeconds } = this.options;
    const lease = await this.transport.get(signal);
    if (!lease) {
      const created = await this.transport.create(
        { metadata: { name, namespace }, spec: nextRecord(undefined, "take", identity, leaseSeconds, new Date()) },
        signal,
      );
      this.see(created);
      return "leading";
    }
    this.see(lease);
    const observed = this.observed!;
    const decision = decide(observed, identity, this.now(), leaseSeconds);
    if (decision === "wait") return "held";
    const spec = { ...lease.spec, ...nextRecord(observed.record, decision, identity, leaseSeconds, new Date()) };
    this.see(await this.transport.update({ ...lease, spec }, signal));
    return "leading";
  }

  private see(lease: LeaseObject): void {
    const previous = this.observed;
    this.observed = observe(previous, lease.spec ?? {}, lease.metadata?.resourceVersion, this.now());
    if (this.observed !== previous && this.observed.record.holderIdentity !== previous?.record.holderIdentity) {
      this.log.debug(
        {
          lease: this.options.name,
          holder: this.observed.record.holderIdentity ?? "",
          renewTime: this.observed.record.renewTime,
          resourceVersion: this.observed.resourceVersion,
        },
        "observed a new Lease holder",
      );
    }
  }
}
