import { performance } from "node:perf_hooks";
import fc from "fast-check";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import {
  decide,
  HttpError,
  LeaderElection,
  type LeaseObject,
  type LeaseRecord,
  type LeaseTransport,
  microTime,
  nextRecord,
  type Observation,
  observe,
  stillLeads,
} from "./leader-election.js";

const silent = pino({ level: "silent" });
const HOUR = 3_600_000;

describe("observe", () => {
  const record: LeaseRecord = { holderIdentity: "a", renewTime: microTime(new Date(0)), leaseDurationSeconds: 15 };

  it("keeps the time a record was first seen while it does not change", () => {
    const first = observe(undefined, record, "1", 100);
    expect(observe(first, { ...record }, "1", 900)).toBe(first);
    expect(observe(first, { ...record }, "1", 900).time).toBe(100);
  });

  it("observes anew when a record field or only the resourceVersion changes", () => {
    const first = observe(undefined, record, "1", 100);
    expect(observe(first, { ...record, renewTime: microTime(new Date(1)) }, "1", 900).time).toBe(900);
    expect(observe(first, { ...record, holderIdentity: "b" }, "1", 900).time).toBe(900);
    expect(observe(first, record, "2", 900).time).toBe(900);
  });
});

describe("decide", () => {
  const seen = (record: LeaseRecord, time: number): Observation => ({ record, resourceVersion: "1", time });

  it("renews its own record and takes a released one at once", () => {
    expect(decide(seen({ holderIdentity: "me" }, 0), "me", 0, 15)).toBe("renew");
    expect(decide(seen({ holderIdentity: "" }, 0), "me", 0, 15)).toBe("take");
    expect(decide(seen({}, 0), "me", 0, 15)).toBe("take");
  });

  it("takes another holder's record only once its lease duration has passed since it was observed", () => {
    const record = { holderIdentity: "other", leaseDurationSeconds: 10 };
    expect(decide(seen(record, 5_000), "me", 15_000, 15)).toBe("wait");
    expect(decide(seen(record, 5_000), "me", 15_001, 15)).toBe("take");
    // The candidate's own default applies only when the record has no duration.
    expect(decide(seen({ holderIdentity: "other" }, 0), "me", 14_000, 15)).toBe("wait");
    expect(decide(seen({ holderIdentity: "other" }, 0), "me", 15_001, 15)).toBe("take");
  });

  it("ignores the holder's renewTime: far future or far past changes nothing", () => {
    for (const renew of [Date.now() + HOUR, Date.now() - HOUR, 0]) {
      const record = { holderIdentity: "other", leaseDurationSeconds: 10, renewTime: microTime(new Date(renew)) };
      expect(decide(seen(record, 1_000), "me", 10_999, 15)).toBe("wait");
      expect(decide(seen(record, 1_000), "me", 11_001, 15)).toBe("take");
    }
  });
});

describe("nextRecord", () => {
  const wall = new Date("2030-01-02T03:04:05.678Z");

  it("writes MicroTime and keeps acquireTime and transitions on a renewal", () => {
    const held = { holderIdentity: "me", acquireTime: "2029-01-01T00:00:00.000000Z", leaseTransitions: 3 };
    expect(nextRecord(held, "renew", "me", 15, wall)).toEqual({
      holderIdentity: "me",
      leaseDurationSeconds: 15,
      acquireTime: "2029-01-01T00:00:00.000000Z",
      renewTime: "2030-01-02T03:04:05.678000Z",
      leaseTransitions: 3,
    });
  });

  it("counts a transition and sets acquireTime on a takeover", () => {
    const r = nextRecord({ holderIdentity: "other", leaseTransitions: 3 }, "take", "me", 15, wall);
    expect(r).toMatchObject({ holderIdentity: "me", acquireTime: "2030-01-02T03:04:05.678000Z", leaseTransitions: 4 });
    expect(nextRecord(undefined, "take", "me", 15, wall).leaseTransitions).toBe(0);
  });
});

/**
 * A model of LeaderElection's rules, run by discrete events on a global time line: each candidate
 * has its own monotonic clock (arbitrary offset, rate within ±10 %) and wall clock (arbitrary
 * offset), and each request arbitrary latencies to and from the apiserver, which applies a write
 * only if the resourceVersion still matches. A candidate believes it leads from a successful
 * write until `stillLeads` says no (or it sees another holder). No two beliefs may overlap.
 */
describe("two or three candidates with skewed clocks", () => {
  const LEASE_S = 1;
  const LEASE_MS = LEASE_S * 1000;
  const DEADLINE_MS = (LEASE_MS * 2) / 3;
  const TIMEOUT_MS = 200;

  interface Step {
    gap: number;
    up1: number;
    down1: number;
    up2: number;
    down2: number;
  }
  interface Candidate {
    id: string;
    offset: number;
    rate: number;
    wallOffset: number;
    steps: Step[];
    observed?: Observation;
    lastSuccess?: number;
    leading: boolean;
    intervals: { start: number; end: number }[];
  }
  const step = fc.record({
    gap: fc.integer({ min: 0, max: 600 }),
    up1: fc.integer({ min: 0, max: 150 }),
    down1: fc.integer({ min: 0, max: 150 }),
    up2: fc.integer({ min: 0, max: 150 }),
    down2: fc.integer({ min: 0, max: 150 }),
  });
  const candidate = fc.record({
    offset: fc.integer({ min: -1e9, max: 1e9 }),
    rate: fc.integer({ min: 900, max: 1100 }).map((r) => r / 1000),
    wallOffset: fc.integer({ min: -1e10, max: 1e10 }),
    start: fc.integer({ min: 0, max: 2000 }),
    steps: fc.array(step, { minLength: 1, maxLength: 40 }),
  });
  const initial = fc.option(
    fc.record({
      holderIdentity: fc.constantFrom("ghost", "", "c0"),
      renewSkew: fc.constantFrom(HOUR, -HOUR, 0),
    }),
  );

  type Spec = typeof candidate extends fc.Arbitrary<infer T> ? T : never;
  function simulate(specs: Spec[], start: { holderIdentity: string; renewSkew: number } | null) {
    let store: { record: LeaseRecord; rv: number } | undefined = start
      ? {
          record: {
            holderIdentity: start.holderIdentity,
            leaseDurationSeconds: LEASE_S,
            renewTime: microTime(new Date(Date.UTC(2030, 0) + start.renewSkew)),
          },
          rv: 1,
        }
      : undefined;
    let rv = 1;
    const cands: Candidate[] = specs.map((s, i) => ({ ...s, id: `c${i}`, leading: false, intervals: [] }));
    const local = (c: Candidate, t: number) => c.offset + c.rate * t;
    const globalOf = (c: Candidate, l: number) => (l - c.offset) / c.rate;
    const events: { t: number; seq: number; run: () => void }[] = [];
    let seq = 0;
    const at = (t: number, run: () => void) => events.push({ t, seq: seq++, run });
    // Leadership ends by itself at lastSuccess + deadline (the timer), unless renewed first.
    const expire = (c: Candidate, t: number) => {
      if (c.leading && !stillLeads(c.lastSuccess!, local(c, t), DEADLINE_MS)) {
        c.leading = false;
        c.intervals.at(-1)!.end = globalOf(c, c.lastSuccess! + DEADLINE_MS);
      }
    };
    const lose = (c: Candidate, t: number) => {
      if (!c.leading) return;
      c.leading = false;
      c.intervals.at(-1)!.end = t;
    };
    const attempt = (c: Candidate, i: number, t0: number) => {
      const s = c.steps[i];
      if (!s) return;
      const sent = local(c, t0);
      const next = (t: number) => at(t + s.gap, () => attempt(c, i + 1, t + s.gap));
      at(t0 + s.up1, () => {
        const snapshot = store ? { record: { ...store.record }, rv: store.rv } : undefined;
        at(t0 + s.up1 + s.down1, () => {
          const t = t0 + s.up1 + s.down1;
          expire(c, t);
          if (local(c, t) - sent > TIMEOUT_MS) return next(t); // aborted by the timeout
          let decision: "renew" | "take" = "take";
          if (snapshot) {
            c.observed = observe(c.observed, snapshot.record, String(snapshot.rv), local(c, t));
            const d = decide(c.observed, c.id, local(c, t), LEASE_S);
            if (d === "wait") {
              lose(c, t);
              return next(t);
            }
            decision = d;
          }
          const record = nextRecord(snapshot?.record, decision, c.id, LEASE_S, new Date(t + c.wallOffset));
          at(t + s.up2, () => {
            // Create when absent, else update with the resourceVersion read.
            const ok = snapshot ? store?.rv === snapshot.rv : store === undefined;
            if (ok) store = { record, rv: ++rv };
            const written = store!.rv;
            at(t + s.up2 + s.down2, () => {
              const t2 = t + s.up2 + s.down2;
              expire(c, t2);
              if (local(c, t2) - sent > TIMEOUT_MS || !ok) return next(t2);
              c.observed = observe(c.observed, record, String(written), local(c, t2));
              if (c.leading) c.lastSuccess = Math.max(c.lastSuccess!, sent);
              else if (stillLeads(sent, local(c, t2), DEADLINE_MS)) {
                c.leading = true;
                c.lastSuccess = sent;
                c.intervals.push({ start: t2, end: Number.POSITIVE_INFINITY });
              }
              next(t2);
            });
          });
        });
      });
    };
    specs.forEach((s, i) => {
      at(s.start, () => attempt(cands[i]!, 0, s.start));
    });
    while (events.length > 0) {
      events.sort((a, b) => a.t - b.t || a.seq - b.seq);
      events.shift()!.run();
    }
    for (const c of cands) if (c.leading) c.intervals.at(-1)!.end = globalOf(c, c.lastSuccess! + DEADLINE_MS);
    return cands;
  }

  it("never lets two candidates believe they lead at the same time", () => {
    fc.assert(
      fc.property(fc.array(candidate, { minLength: 2, maxLength: 3 }), initial, (specs, start) => {
        const cands = simulate(specs, start);
        for (const a of cands)
          for (const b of cands) {
            if (a === b) continue;
            for (const x of a.intervals)
              for (const y of b.intervals)
                if (x.start < y.end && y.start < x.end)
                  throw new Error(`${a.id} [${x.start}, ${x.end}) overlaps ${b.id} [${y.start}, ${y.end})`);
          }
      }),
      { numRuns: 2000 },
    );
  });

  it("lets some candidate lead when the network behaves (the model is not vacuous)", () => {
    const calm = { gap: 200, up1: 5, down1: 5, up2: 5, down2: 5 };
    const cands = simulate(
      [
        { offset: 1e9, rate: 1.1, wallOffset: HOUR, start: 0, steps: Array(30).fill(calm) },
        { offset: -1e9, rate: 0.9, wallOffset: -HOUR, start: 50, steps: Array(30).fill(calm) },
      ],
      { holderIdentity: "ghost", renewSkew: HOUR },
    );
    const led = cands.flatMap((c) => c.intervals);
    expect(led.length).toBeGreaterThan(0);
    // The ghost's record (renewTime an hour ahead) is taken once a lease has passed since it was seen.
    expect(Math.min(...led.map((i) => i.start))).toBeGreaterThan(LEASE_MS / 1.1);
    expect(Math.min(...led.map((i) => i.start))).toBeLessThan(LEASE_MS / 0.9 + 300);
  });
});

/** A Lease store with the apiserver's optimistic concurrency, latency and an off switch. */
class MemoryApiserver {
  lease: LeaseObject | undefined;
  private rv = 0;
  /** While true, requests hang until their signal aborts. */
  hung = false;
  /** Clients cut off: their requests hang until their signal aborts. */
  partitioned = new Set<string>();
  aborted = 0;
  requests = 0;
  constructor(private latency: () => number = () => 1) {}

  put(spec: LeaseRecord): void {
    this.lease = {
      metadata: { name: "l", namespace: "ns", resourceVersion: String(++this.rv) },
      spec: structuredClone(spec),
    };
  }

  transport(client = ""): LeaseTransport {
    const op = async <T>(signal: AbortSignal, fn: () => T): Promise<T> => {
      this.requests++;
      await this.wait(signal, client);
      const result = structuredClone(fn()); // the apiserver acts here, whatever happens to the answer
      await this.wait(signal, client);
      return result;
    };
    return {
      get: (signal) => op(signal, () => this.lease),
      create: (lease, signal) =>
        op(signal, () => {
          if (this.lease) throw new HttpError("exists", 409, "");
          this.put(lease.spec ?? {});
          return this.lease!;
        }),
      update: (lease, signal) =>
        op(signal, () => {
          if (lease.metadata.resourceVersion !== this.lease?.metadata.resourceVersion)
            throw new HttpError("conflict", 409, "");
          this.put(lease.spec ?? {});
          return this.lease!;
        }),
    };
  }

  private wait(signal: AbortSignal, client: string): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const timer = this.hung || this.partitioned.has(client) ? undefined : setTimeout(done, this.latency());
      const onAbort = () => {
        clearTimeout(timer);
        this.aborted++;
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      function done() {
        signal.removeEventListener("abort", onAbort);
        resolve();
      }
    });
  }
}

describe("LeaderElection on an in-memory apiserver", () => {
  const options = (identity: string) => ({
    namespace: "ns",
    name: "l",
    identity,
    leaseSeconds: 0.6,
    retrySeconds: 0.05,
  });
  const elect = (server: MemoryApiserver, identity: string, now?: () => number, retrySeconds = 0.05) =>
    new LeaderElection(undefined, { ...options(identity), retrySeconds }, silent, {
      transport: server.transport(identity),
      ...(now ? { now } : {}),
    });

  it("takes another holder's Lease lease-duration after observing it, whatever its renewTime says", async () => {
    for (const skew of [HOUR, -HOUR]) {
      const server = new MemoryApiserver();
      server.put({
        holderIdentity: "ghost",
        leaseDurationSeconds: 0.6,
        renewTime: microTime(new Date(Date.now() + skew)),
      });
      const election = elect(server, "me");
      const started = performance.now();
      const signal = await election.acquire();
      const waited = performance.now() - started;
      expect(signal?.aborted).toBe(false);
      expect(waited, `renewTime ${skew > 0 ? "in the future" : "in the past"}`).toBeGreaterThanOrEqual(600);
      expect(waited).toBeLessThan(600 + 200);
      expect(server.lease?.spec).toMatchObject({ holderIdentity: "me", leaseTransitions: 1 });
      await election.release();
    }
  });

  it("waits again from scratch when the holder renews (its record changes)", async () => {
    const server = new MemoryApiserver();
    server.put({ holderIdentity: "ghost", leaseDurationSeconds: 0.6 });
    const renewals = setInterval(() => server.put({ holderIdentity: "ghost", leaseDurationSeconds: 0.6 }), 100);
    const election = elect(server, "me");
    const won = election.acquire();
    await new Promise((r) => setTimeout(r, 1500));
    expect(election.isLeader).toBe(false);
    clearInterval(renewals);
    const started = performance.now();
    expect(await won).toBeInstanceOf(AbortSignal);
    expect(performance.now() - started).toBeGreaterThanOrEqual(500);
    await election.release();
  });

  it("loses leadership at the renew deadline when the apiserver hangs, aborting the hung requests", async () => {
    const server = new MemoryApiserver();
    const election = elect(server, "me");
    const signal = (await election.acquire())!;
    await new Promise((r) => setTimeout(r, 300));
    expect(signal.aborted).toBe(false);
    server.hung = true;
    const hungAt = performance.now();
    await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    const after = performance.now() - hungAt;
    // The last success was sent at most one retry period (plus a request) before the hang.
    expect(after).toBeLessThanOrEqual(400 + 20);
    expect(after).toBeGreaterThan(400 - 50 - 20);
    expect(String(signal.reason)).toMatch(/renew deadline/);
    expect(election.isLeader).toBe(false);
    // Each hung request was aborted by its timeout (min(retry, deadline / 2) = 50 ms), not left running.
    expect(server.aborted).toBeGreaterThanOrEqual(2);
    await election.release();
  });

  it("loses leadership at once when another holder has written the Lease", async () => {
    const server = new MemoryApiserver();
    const election = elect(server, "me");
    const signal = (await election.acquire())!;
    server.put({ holderIdentity: "usurper", leaseDurationSeconds: 60 });
    const at = performance.now();
    await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    expect(performance.now() - at).toBeLessThan(150);
    expect(String(signal.reason)).toMatch(/usurper/);
    // And it stops writing: the usurper's record stays.
    const rv = server.lease?.metadata.resourceVersion;
    await new Promise((r) => setTimeout(r, 300));
    expect(server.lease?.metadata.resourceVersion).toBe(rv);
    await election.release();
    expect(server.lease?.spec?.holderIdentity).toBe("usurper");
  });

  it("release clears the holder, aborts the signal, and a standby takes over at once", async () => {
    const server = new MemoryApiserver();
    const a = elect(server, "a");
    const b = elect(server, "b");
    const signal = (await a.acquire())!;
    const standby = b.acquire();
    await new Promise((r) => setTimeout(r, 200));
    expect(b.isLeader).toBe(false);
    const released = performance.now();
    await a.release();
    expect(signal.aborted).toBe(true);
    expect(server.lease?.spec?.holderIdentity).toBeUndefined();
    await standby;
    expect(performance.now() - released).toBeLessThan(150);
    expect(server.lease?.spec?.holderIdentity).toBe("b");
    await b.release();
  });

  it("resolves acquire with undefined when stopped before winning, and sends nothing more", async () => {
    const server = new MemoryApiserver();
    server.put({ holderIdentity: "ghost", leaseDurationSeconds: 60 });
    const election = elect(server, "me");
    const pending = election.acquire();
    await new Promise((r) => setTimeout(r, 120));
    election.stop();
    expect(await pending).toBeUndefined();
    const requests = server.requests;
    await election.release(); // not the holder: no request
    await new Promise((r) => setTimeout(r, 150));
    expect(server.requests).toBe(requests);
    expect(server.lease?.spec?.holderIdentity).toBe("ghost");
  });

  it("never has two leaders at once with jittery latencies and hangs (the real class)", async () => {
    const server = new MemoryApiserver(() => Math.random() * 20);
    const intervals: { who: string; start: number; end: number }[] = [];
    const elections: LeaderElection[] = [];
    const candidate = async (identity: string, offset: number) => {
      const now = () => performance.now() + offset;
      const election = elect(server, identity, now, 0.1);
      elections.push(election);
      for (;;) {
        const signal = await election.acquire();
        if (!signal) break;
        const interval = { who: identity, start: performance.now(), end: Number.POSITIVE_INFINITY };
        intervals.push(interval);
        await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
        interval.end = performance.now();
      }
    };
    // Every 150 ms the apiserver may hang for everyone (30 %); every 800 ms the holder may be cut
    // off (60 %) for longer than a lease, so that the others take over.
    const flaky = setInterval(() => {
      server.hung = Math.random() < 0.3;
    }, 150);
    const partitions = setInterval(() => {
      server.partitioned.clear();
      const holder = server.lease?.spec?.holderIdentity;
      if (Math.random() < 0.6 && holder) server.partitioned.add(holder);
    }, 800);
    const runs = [candidate("a", 1e9), candidate("b", -1e6), candidate("c", 0)];
    await new Promise((r) => setTimeout(r, 5000));
    clearInterval(flaky);
    clearInterval(partitions);
    server.hung = false;
    server.partitioned.clear();
    for (const e of elections) e.stop();
    for (const e of elections) await e.release();
    await Promise.all(runs);
    expect(intervals.length).toBeGreaterThan(1);
    for (const x of intervals)
      for (const y of intervals)
        if (x !== y && x.who !== y.who) expect(x.start < y.end && y.start < x.end, JSON.stringify([x, y])).toBe(false);
  });
});
