import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, request, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Api } from "../../src/k8s/api.js";
import { loadKubeConfig } from "../../src/k8s/kubeconfig.js";
import { loadClientNodeConfig } from "../../src/sandbox/client-node.js";
import { type FaultPlan, FaultProxy } from "../fault-proxy.js";

const TOKEN = "test-token-123";
const LIST = "/api/v1/namespaces/ns/configmaps";
const SECRETS = "/api/v1/namespaces/ns/secrets";
const WATCH = `${LIST}?watch=true&resourceVersion=1`;

/**
 * PKI laid out like kube-apiserver's self-signed one: a serving cert for 127.0.0.1/localhost
 * signed by a generated CA, and apiserver.crt = serving cert + CA cert.
 */
async function makePki(dir: string): Promise<{ cert: string; key: string }> {
  const openssl = (...args: string[]) => {
    const out = spawnSync("openssl", args, { encoding: "utf8" });
    if (out.error)
      throw new Error(
        `this test needs the openssl binary to make its certificates (apt-get install openssl): ${out.error.message}`,
      );
    if (out.status !== 0) throw new Error(`openssl ${args.join(" ")} failed (${out.status}): ${out.stderr}`);
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
  const [caCrt, caKey, leaf, key, cert] = ["ca.crt", "ca.key", "serving.crt", "apiserver.key", "apiserver.crt"].map(
    (f) => join(dir, f),
  ) as [string, string, string, string, string];
  openssl("req", "-x509", ...ec, "-subj", "/CN=127.0.0.1-ca", "-keyout", caKey, "-out", caCrt);
  openssl(
    "req",
    "-x509",
    "-CA",
    caCrt,
    "-CAkey",
    caKey,
    ...ec,
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-keyout",
    key,
    "-out",
    leaf,
  );
  await writeFile(cert, Buffer.concat([await readFile(leaf), await readFile(caCrt)]));
  return { cert, key };
}

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
  groups: string[] | undefined;
}

/** Just enough of kube-apiserver: a JSON list, a chunked watch (a line every 50 ms), echo of Authorization and body. */
class FakeApiserver {
  readonly seen: Seen[] = [];
  readonly openWatches = new Set<ServerResponse>();
  private constructor(readonly server: Server) {}

  static async start(cert: string, key: string): Promise<FakeApiserver> {
    const server = createServer({ cert: await readFile(cert), key: await readFile(key) });
    const fake = new FakeApiserver(server);
    server.on("request", (req, res) => fake.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return fake;
  }

  get url(): string {
    const addr = this.server.address();
    if (!addr || typeof addr === "string") throw new Error("no address");
    return `https://127.0.0.1:${addr.port}`;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.seen.push({
      method: req.method ?? "",
      url: req.url ?? "",
      authorization: req.headers.authorization,
      groups: req.headersDistinct["impersonate-group"],
    });
    const url = new URL(req.url ?? "/", "https://x");
    const echo = { "X-Echo-Authorization": req.headers.authorization ?? "", "X-Upstream": "fake", Warning: ["a", "b"] };
    if (["true", "1"].includes(url.searchParams.get("watch") ?? "")) {
      res.writeHead(200, { "Content-Type": "application/json", ...echo });
      let n = 0;
      const line = () => res.write(`${JSON.stringify({ type: "ADDED", object: { n: n++ } })}\n`);
      line();
      const timer = setInterval(line, 50);
      this.openWatches.add(res);
      res.on("close", () => {
        clearInterval(timer);
        this.openWatches.delete(res);
      });
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = JSON.stringify({
        kind: "ConfigMapList",
        apiVersion: "v1",
        metadata: { resourceVersion: "1" },
        items: [],
        echo: { method: req.method, url: req.url, body: Buffer.concat(chunks).toString() },
      });
      res.writeHead(200, { "Content-Type": "application/json", ...echo });
      res.end(body);
    });
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

interface Reply {
  status: number;
  headers: NodeJS.Dict<string[]>;
  body: string;
}

let dir: string;
let pki: { cert: string; key: string };
let upstream: FakeApiserver;
let ca: Buffer;
let proxy: FaultProxy | undefined;

/** One request on a fresh connection (so a reset only hits this request). */
function call(
  path: string,
  options: { method?: string; body?: string; target?: string; headers?: Record<string, string | string[]> } = {},
): Promise<Reply> {
  const url = new URL(path, options.target ?? proxy!.url);
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: options.method ?? "GET",
      ca,
      agent: false,
      headers: { Authorization: `Bearer ${TOKEN}`, Accept: "application/json", ...options.headers },
    });
    req.on("error", reject);
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headersDistinct, body: Buffer.concat(chunks).toString() }),
      );
    });
    req.end(options.body);
  });
}

/** A request's outcome as a comparable string: the status, or "reset". */
async function outcome(path: string): Promise<string> {
  try {
    return String((await call(path)).status);
  } catch (err) {
    expect(String((err as NodeJS.ErrnoException).code)).toMatch(/ECONNRESET/);
    return "reset";
  }
}

interface Watch {
  status: number;
  lines: string[];
  /** Resolves when the stream ends: "end" for a clean end, "error" for a broken one. */
  done: Promise<{ how: "end" | "error"; atMs: number }>;
  /** The client goes away. */
  abort: () => void;
}

function watch(path = WATCH): Promise<Watch> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, proxy!.url), { ca, agent: false, headers: { Authorization: `Bearer ${TOKEN}` } });
    req.on("error", reject);
    req.on("response", (res) => {
      const lines: string[] = [];
      let partial = "";
      res.setEncoding("utf8");
      res.on("data", (s: string) => {
        const parts = (partial + s).split("\n");
        partial = parts.pop() ?? "";
        lines.push(...parts);
      });
      const done = new Promise<{ how: "end" | "error"; atMs: number }>((settle) => {
        res.on("end", () => settle({ how: "end", atMs: Date.now() - started }));
        res.on("error", () => settle({ how: "error", atMs: Date.now() - started }));
        res.on("close", () => settle({ how: res.complete ? "end" : "error", atMs: Date.now() - started }));
      });
      resolve({ status: res.statusCode ?? 0, lines, done, abort: () => req.destroy() });
    });
    req.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function startProxy(plan: Partial<FaultPlan> = {}, seed = 1): Promise<FaultProxy> {
  proxy = await FaultProxy.start({
    upstream: upstream.url,
    caFile: pki.cert,
    certFile: pki.cert,
    keyFile: pki.key,
    seed,
    plan,
  });
  return proxy;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "fault-proxy-test-"));
  pki = await makePki(dir);
  ca = await readFile(pki.cert);
  upstream = await FakeApiserver.start(pki.cert, pki.key);
});

afterEach(async () => {
  await proxy?.stop();
  proxy = undefined;
  upstream.seen.length = 0;
});

afterAll(async () => {
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("FaultProxy", () => {
  it("passes requests through unchanged when calm", async () => {
    const p = await startProxy();
    expect(p.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const list = await call(`${LIST}?labelSelector=a%3Db&limit=5`, { headers: { "Impersonate-Group": ["g1", "g2"] } });
    expect(list.status).toBe(200);
    expect(list.headers["x-upstream"]).toEqual(["fake"]);
    expect(list.headers["x-echo-authorization"]).toEqual([`Bearer ${TOKEN}`]);
    // Repeated headers stay separate, both ways.
    expect(list.headers.warning).toEqual(["a", "b"]);
    expect(upstream.seen[0]?.groups).toEqual(["g1", "g2"]);
    expect(JSON.parse(list.body)).toMatchObject({ kind: "ConfigMapList", echo: { method: "GET" } });
    const body = JSON.stringify({ metadata: { name: "x" }, data: { big: "y".repeat(200_000) } });
    const post = await call(LIST, { method: "POST", body });
    expect(JSON.parse(post.body).echo).toEqual({ method: "POST", url: LIST, body });
    expect(upstream.seen.map((s) => [s.method, s.url, s.authorization])).toEqual([
      ["GET", `${LIST}?labelSelector=a%3Db&limit=5`, `Bearer ${TOKEN}`],
      ["POST", LIST, `Bearer ${TOKEN}`],
    ]);
    // One TLS handshake per connection the client opened (its agent may or may not reuse one).
    const { connections, ...counts } = p.counts;
    expect(connections).toBeGreaterThanOrEqual(1);
    expect(connections).toBeLessThanOrEqual(2);
    expect(counts).toEqual({
      requests: 2,
      forwarded: 2,
      errors: 0,
      resets: 0,
      watchCloses: 0,
      delays: 0,
      firstListFailures: 0,
    });
    expect(p.faults).toEqual([]);
  });

  it("streams a watch without buffering it", async () => {
    await startProxy();
    const w = await watch();
    expect(w.status).toBe(200);
    await sleep(120);
    // Lines arrive while the stream is open: the proxy does not wait for the end.
    expect(w.lines.length).toBeGreaterThanOrEqual(2);
    expect(JSON.parse(w.lines[0]!)).toEqual({ type: "ADDED", object: { n: 0 } });
    // When the client goes away, so does the upstream watch.
    expect(upstream.openWatches.size).toBe(1);
    w.abort();
    await sleep(100);
    expect(upstream.openWatches.size).toBe(0);
  });

  it("works as a kubeconfig for @kubernetes/client-node, and errors look like the apiserver's", async () => {
    const p = await startProxy();
    const path = join(dir, "kubeconfig");
    await p.writeKubeconfig(path, TOKEN);
    const kc = loadClientNodeConfig(path);
    expect(kc.getCurrentCluster()?.server).toBe(p.url);
    const core = kc.makeApiClient(k8s.CoreV1Api);
    const list = await core.listNamespacedConfigMap({ namespace: "ns" });
    expect(list.items).toEqual([]);
    expect(upstream.seen.at(-1)?.authorization).toBe(`Bearer ${TOKEN}`);
    p.setPlan({ errorRate: 1 });
    const err = await core.listNamespacedConfigMap({ namespace: "ns" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(k8s.ApiException);
    expect([429, 500, 503]).toContain((err as k8s.ApiException<unknown>).code);
  });

  it("with errorRate 1 answers every request with an injected 429/500/503 Status", async () => {
    const p = await startProxy({ errorRate: 1 });
    const codes = new Set<number>();
    for (let i = 0; i < 30; i++) {
      const r = await call(i % 2 ? LIST : WATCH);
      codes.add(r.status);
      expect([429, 500, 503]).toContain(r.status);
      const reason = { 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable" }[r.status];
      expect(JSON.parse(r.body)).toMatchObject({
        kind: "Status",
        apiVersion: "v1",
        status: "Failure",
        reason,
        code: r.status,
        message: expect.stringMatching(/^injected/),
      });
      expect(r.headers["content-type"]).toEqual(["application/json"]);
      if (r.status === 429) expect(r.headers["retry-after"]).toEqual(["1"]);
    }
    expect(codes.size).toBeGreaterThanOrEqual(2);
    expect(upstream.seen).toEqual([]);
    expect(p.counts).toMatchObject({ requests: 30, forwarded: 0, errors: 30 });
  });

  it("with resetRate 1 resets every connection, before and after forwarding", async () => {
    const p = await startProxy({ resetRate: 1 });
    for (let i = 0; i < 20; i++) {
      const err = await call(LIST, { method: "POST", body: "{}" }).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      );
      expect(err?.code).toBe("ECONNRESET");
    }
    const kinds = p.faults.map((f) => f.kind);
    const after = kinds.filter((k) => k === "reset-after").length;
    expect(kinds.filter((k) => k === "reset-before").length).toBeGreaterThan(0);
    expect(after).toBeGreaterThan(0);
    expect(after + kinds.filter((k) => k === "reset-before").length).toBe(20);
    // A reset after forwarding reached the apiserver (the write happened); one before did not.
    expect(upstream.seen.length).toBe(after);
    expect(p.counts).toMatchObject({ requests: 20, resets: 20, forwarded: after });
  });

  it("serves HTTP/2 clients on one connection; a reset there ends the request's stream, not the connection", async () => {
    const p = await startProxy();
    const path = join(dir, "kubeconfig-h2");
    await p.writeKubeconfig(path, TOKEN);
    const api = Api.for(await loadKubeConfig(path));
    const lines: string[] = [];
    const stop = new AbortController();
    const watching = api.watch(LIST, { resourceVersion: 1 }, (e) => lines.push(e.type), stop.signal);
    const lists = await Promise.all(Array.from({ length: 5 }, () => api.request<{ kind: string }>("GET", LIST)));
    expect(lists.map((l) => l.kind)).toEqual(Array(5).fill("ConfigMapList"));
    p.setPlan({ resetRate: 1, only: (r) => !r.watch });
    for (let i = 0; i < 6; i++)
      await expect(api.request("POST", LIST, { body: {} })).rejects.toThrow(/NGHTTP2_INTERNAL_ERROR/);
    p.calm();
    await sleep(120);
    stop.abort();
    await watching;
    // The watch carried on through the resets, and everything shared one TLS connection.
    expect(lines.length).toBeGreaterThanOrEqual(2);
    expect(api.negotiated).toBe("h2");
    expect(p.counts).toMatchObject({ connections: 1, resets: 6 });
  });

  it("with watchCloseRate 1 ends a watch early and cleanly, after data flowed", async () => {
    const p = await startProxy({ watchCloseRate: 1, watchCloseMinMs: 300, watchCloseMaxMs: 400 });
    const w = await watch();
    const { how, atMs } = await w.done;
    expect(how).toBe("end");
    expect(atMs).toBeGreaterThanOrEqual(290);
    expect(atMs).toBeLessThan(1500);
    expect(w.lines.length).toBeGreaterThanOrEqual(4);
    expect(p.counts.watchCloses).toBe(1);
    expect(p.faults).toEqual([{ seq: 0, method: "GET", path: LIST, kind: "watch-close", detail: expect.any(Number) }]);
    // Non-watch requests are not touched by watchCloseRate; the upstream watch was dropped too.
    expect((await call(LIST)).status).toBe(200);
    await sleep(50);
    expect(upstream.openWatches.size).toBe(0);
  });

  it("failFirstList fails exactly the first list of each collection path, then passes", async () => {
    const p = await startProxy({ failFirstList: true });
    const statuses = async (paths: string[]) => {
      const out: number[] = [];
      for (const path of paths) out.push((await call(path)).status);
      return out;
    };
    // A watch and a GET of one object are not lists; POST is not a list.
    expect((await watch()).status).toBe(200);
    expect(await statuses([`${LIST}/one`, "/api/v1/namespaces/ns/configmaps/one/status"])).toEqual([200, 200]);
    expect((await call(LIST, { method: "POST", body: "{}" })).status).toBe(200);
    const [a1, a2, b1, b2, a3, c1, c2] = await statuses([
      `${LIST}?limit=500`,
      LIST,
      SECRETS,
      SECRETS,
      LIST,
      "/apis/spindle.dev/v1alpha1/devices",
      "/apis/spindle.dev/v1alpha1/devices",
    ]);
    for (const failed of [a1, b1, c1]) expect([500, 503]).toContain(failed);
    expect([a2, b2, a3, c2]).toEqual([200, 200, 200, 200]);
    expect(p.counts.firstListFailures).toBe(3);
    expect(p.faults.map((f) => [f.kind, f.path])).toEqual([
      ["first-list", LIST],
      ["first-list", SECRETS],
      ["first-list", "/apis/spindle.dev/v1alpha1/devices"],
    ]);

    // A number fails the first N, counted afresh from setPlan.
    p.setPlan({ failFirstList: 2 });
    const again = await statuses([LIST, LIST, LIST]);
    expect(again[2]).toBe(200);
    for (const failed of again.slice(0, 2)) expect([500, 503]).toContain(failed);
    expect(p.counts.firstListFailures).toBe(5);
  });

  it("gives the same fault sequence for the same seed and request order, another for another seed", async () => {
    const plan: Partial<FaultPlan> = { errorRate: 0.3, resetRate: 0.2, delayRate: 0.3, maxDelayMs: 20 };
    const run = async (seed: number) => {
      const p = await startProxy(plan, seed);
      const outcomes: string[] = [];
      for (let i = 0; i < 40; i++) outcomes.push(await outcome(i % 3 ? LIST : SECRETS));
      const result = { outcomes, faults: p.faults, counts: p.counts };
      await p.stop();
      proxy = undefined;
      return result;
    };
    const a = await run(42);
    const b = await run(42);
    const c = await run(43);
    expect(b).toEqual(a);
    expect(c.faults).not.toEqual(a.faults);
    expect(c.outcomes).not.toEqual(a.outcomes);

    // Counts add up, and match what clients saw.
    for (const { outcomes, faults, counts } of [a, c]) {
      const kinds = faults.map((f) => f.kind);
      const count = (k: string) => kinds.filter((x) => x === k).length;
      expect(counts.requests).toBe(40);
      expect(counts.errors).toBeGreaterThan(0);
      expect(counts.resets).toBeGreaterThan(0);
      expect(counts.delays).toBeGreaterThan(0);
      expect(counts.errors).toBe(count("error"));
      expect(counts.delays).toBe(count("delay"));
      expect(counts.resets).toBe(count("reset-before") + count("reset-after"));
      expect(counts.requests).toBe(counts.forwarded + counts.errors + counts.firstListFailures + count("reset-before"));
      expect(outcomes.filter((o) => o === "reset").length).toBe(counts.resets);
      expect(outcomes.filter((o) => o !== "200" && o !== "reset").length).toBe(counts.errors);
      expect(outcomes.filter((o) => o === "200").length).toBe(counts.forwarded - count("reset-after"));
    }
  });

  it("delays requests before forwarding", async () => {
    const p = await startProxy({ delayRate: 1, maxDelayMs: 300 });
    for (let i = 0; i < 5; i++) {
      const started = Date.now();
      expect((await call(LIST)).status).toBe(200);
      const elapsed = Date.now() - started;
      const delay = p.faults[i]!;
      expect(delay).toMatchObject({ seq: i, kind: "delay" });
      expect(elapsed).toBeGreaterThanOrEqual(delay.detail! - 5);
    }
    expect(p.counts.delays).toBe(5);
    expect(p.faults.reduce((sum, f) => sum + f.detail!, 0)).toBeGreaterThan(100);
  });

  it("applies faults only to requests the plan's filter selects", async () => {
    const p = await startProxy({ errorRate: 1, only: (r) => r.path === SECRETS && r.method === "GET" });
    expect((await call(LIST)).status).toBe(200);
    expect((await call(SECRETS, { method: "POST", body: "{}" })).status).toBe(200);
    expect([429, 500, 503]).toContain((await call(SECRETS)).status);
    expect(p.counts).toMatchObject({ requests: 3, errors: 1, forwarded: 2 });
  });

  it("calm() stops injecting while open streams carry on", async () => {
    const p = await startProxy();
    const w = await watch();
    p.setPlan({ errorRate: 1 });
    expect([429, 500, 503]).toContain((await call(LIST)).status);
    p.calm();
    for (let i = 0; i < 10; i++) expect((await call(LIST)).status).toBe(200);
    const before = w.lines.length;
    await sleep(150);
    expect(w.lines.length).toBeGreaterThan(before);
    expect(p.counts.errors).toBe(1);
    expect(() => p.setPlan({ errorRate: 2 })).toThrow(RangeError);
    expect(() => p.setPlan({ failFirstList: -1 })).toThrow(RangeError);
  });

  it("stop() ends open watch streams and delayed requests, both sides", async () => {
    const p = await startProxy();
    const watches = [await watch(), await watch()];
    p.setPlan({ delayRate: 1, maxDelayMs: 60_000 });
    const delayed = call(LIST).then(
      () => "answered",
      () => "broken",
    );
    await sleep(100);
    expect(upstream.openWatches.size).toBe(2);
    // Seed 1 gives this request a long delay, so it is still waiting when stop() comes.
    expect(p.faults).toEqual([expect.objectContaining({ kind: "delay", detail: expect.any(Number) })]);
    expect(p.faults[0]!.detail).toBeGreaterThan(5_000);
    const started = Date.now();
    await p.stop();
    proxy = undefined;
    const ends = await Promise.all(watches.map((w) => w.done));
    expect(await delayed).toBe("broken");
    expect(Date.now() - started).toBeLessThan(1000);
    for (const end of ends) expect(end.how).toBe("error");
    await sleep(50);
    expect(upstream.openWatches.size).toBe(0);
    await expect(call(LIST, { target: p.url })).rejects.toThrow(/ECONNREFUSED/);
  });
});
