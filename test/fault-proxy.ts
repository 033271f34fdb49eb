import { readFile, writeFile } from "node:fs/promises";
import { type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse, STATUS_CODES } from "node:http";
import {
  createSecureServer,
  type Http2SecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
  constants as h2,
} from "node:http2";
import { Agent, request } from "node:https";
import { isIP, type Socket } from "node:net";

/** Which requests a plan may touch; `path` is without the query string. */
export interface FaultRequest {
  method: string;
  path: string;
  watch: boolean;
}

/** What to inject. Rates are per-request probabilities in 0..1. */
export interface FaultPlan {
  /** Answer with an injected 429 (with Retry-After: 1), 500 or 503 Status instead of forwarding. */
  errorRate: number;
  /** Reset the client's TCP connection, half of the time before forwarding, half after the apiserver answered. */
  resetRate: number;
  /** For watches: end the response stream cleanly after watchCloseMinMs..watchCloseMaxMs. */
  watchCloseRate: number;
  watchCloseMinMs: number;
  watchCloseMaxMs: number;
  /** Wait 0..maxDelayMs before forwarding. */
  delayRate: number;
  maxDelayMs: number;
  /** Fail the first list (or first N lists) of each collection path with 500/503, counted from setPlan. */
  failFirstList: boolean | number;
  /** Only requests this returns true for are eligible for faults; the rest pass through. */
  only?: (req: FaultRequest) => boolean;
}

export type FaultKind = "error" | "first-list" | "reset-before" | "reset-after" | "delay" | "watch-close";

/** One injected fault. `seq` is the request's arrival number (from 0); `detail` is a status code or ms. */
export interface InjectedFault {
  seq: number;
  method: string;
  path: string;
  kind: FaultKind;
  detail?: number;
}

export interface FaultCounts {
  /** TLS connections clients opened to the proxy. */
  connections: number;
  requests: number;
  /** Requests sent to the apiserver (including ones later reset or cut short). */
  forwarded: number;
  errors: number;
  resets: number;
  watchCloses: number;
  delays: number;
  firstListFailures: number;
}

export interface FaultProxyOptions {
  /** The real apiserver, e.g. https://127.0.0.1:6443. */
  upstream: URL | string;
  /** CA that the upstream's serving cert chains to. */
  caFile: string;
  /** Serving cert and key for the proxy itself (the sandbox's apiserver.crt/.key, so clients trust it unchanged). */
  certFile: string;
  keyFile: string;
  seed: number;
  plan?: Partial<FaultPlan>;
  /** Listen port on 127.0.0.1; 0 (default) picks a free one. */
  port?: number;
}

const CALM: FaultPlan = {
  errorRate: 0,
  resetRate: 0,
  watchCloseRate: 0,
  watchCloseMinMs: 0,
  watchCloseMaxMs: 2000,
  delayRate: 0,
  maxDelayMs: 1000,
  failFirstList: false,
};

// Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection; Node frames each side itself.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
]);

/** mulberry32: tiny, fast, good enough for test faults; a seed gives one fixed sequence. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** True for a GET of a resource collection: /api/v1/<r>, /apis/<g>/<v>/<r>, and their namespaced forms. */
function isCollection(path: string): boolean {
  const seg = path.split("/").filter(Boolean);
  const rest = seg[0] === "api" ? seg.slice(2) : seg[0] === "apis" ? seg.slice(3) : undefined;
  if (!rest || rest[0] === "watch") return false;
  return rest.length === 1 || (rest.length === 3 && rest[0] === "namespaces");
}

function isWatch(path: string, query: URLSearchParams): boolean {
  const w = query.get("watch");
  return w === "true" || w === "1" || /^\/apis?\/(?:[^/]+\/)?[^/]+\/watch\//.test(path);
}

/** A Status body like the apiserver's, so clients parse injected errors as they would real ones. */
function statusBody(code: number, message: string): string {
  const reason = code === 429 ? "TooManyRequests" : code === 503 ? "ServiceUnavailable" : "InternalError";
  const details = code === 429 ? { retryAfterSeconds: 1 } : undefined;
  return JSON.stringify({
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    details,
    code,
  });
}

/** End-to-end headers, each with all its values: repeated ones such as Impersonate-Group or
 * Warning must stay separate lines, not be joined with commas. HTTP/2 pseudo-headers stay behind. */
function forwardable(rawHeaders: string[]): OutgoingHttpHeaders {
  const out: Record<string, string[]> = {};
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const k = (rawHeaders[i] as string).toLowerCase();
    if (k.startsWith(":") || HOP_BY_HOP.has(k)) continue;
    out[k] = [...(out[k] ?? []), rawHeaders[i + 1] as string];
  }
  return out;
}

/** A client request, HTTP/1.1 or HTTP/2 (the compatibility API). */
type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

function isH2(res: Res): res is Http2ServerResponse {
  return "stream" in res;
}

function gone(res: Res): boolean {
  return isH2(res) ? res.stream.destroyed : res.destroyed;
}

function validate(plan: FaultPlan): FaultPlan {
  for (const k of ["errorRate", "resetRate", "watchCloseRate", "delayRate"] as const)
    if (!(plan[k] >= 0 && plan[k] <= 1)) throw new RangeError(`FaultPlan.${k} must be in 0..1, got ${plan[k]}`);
  if (!(plan.watchCloseMinMs >= 0 && plan.watchCloseMinMs <= plan.watchCloseMaxMs))
    throw new RangeError("FaultPlan needs 0 <= watchCloseMinMs <= watchCloseMaxMs");
  if (!(plan.maxDelayMs >= 0)) throw new RangeError("FaultPlan.maxDelayMs must be >= 0");
  const n = plan.failFirstList;
  if (typeof n === "number" && !(Number.isInteger(n) && n >= 0))
    throw new RangeError(`FaultPlan.failFirstList must be a boolean or a count >= 0, got ${n}`);
  return plan;
}

/**
 * An HTTPS proxy for kube-apiserver on 127.0.0.1, HTTP/2 (as the apiserver) or HTTP/1.1, that
 * injects faults (errors, resets, delays, early watch ends, failing first lists) from a seeded PRNG, so a run is reproducible
 * given the seed and the order requests arrive in. Everything else is forwarded unchanged and
 * streamed both ways, so watches work through it. Upgrade requests (exec, port-forward) are not
 * proxied; Spindle makes none.
 */
export class FaultProxy {
  readonly url: string;
  private plan: FaultPlan = CALM;
  private readonly random: () => number;
  private seq = 0;
  private readonly listsSeen = new Map<string, number>();
  private readonly tally: FaultCounts = {
    connections: 0,
    requests: 0,
    forwarded: 0,
    errors: 0,
    resets: 0,
    watchCloses: 0,
    delays: 0,
    firstListFailures: 0,
  };
  private readonly log: InjectedFault[] = [];
  // Raw TCP sockets by remote address, to reset with an RST (the TLS socket can't) and to kill on stop().
  private readonly sockets = new Map<string, Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopped = false;

  private constructor(
    private readonly server: Http2SecureServer,
    private readonly upstream: URL,
    private readonly agent: Agent,
    /** The CA clients should trust: the same file the proxy was given for the upstream. */
    readonly caFile: string,
    seed: number,
  ) {
    this.random = mulberry32(seed);
    const addr = server.address();
    if (!addr || typeof addr === "string") throw new Error("fault proxy: no listening address");
    this.url = `https://127.0.0.1:${addr.port}`;
  }

  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const upstream = new URL(options.upstream);
    if (upstream.protocol !== "https:") throw new Error(`fault proxy: upstream must be https, got ${upstream.href}`);
    const [ca, cert, key] = await Promise.all([
      readFile(options.caFile),
      readFile(options.certFile),
      readFile(options.keyFile),
    ]);
    const server = createSecureServer({ cert, key, allowHTTP1: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 0, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    // keepAlive so watches and lists don't each pay a TLS handshake; destroyed on stop().
    const agent = new Agent({ ca, keepAlive: true });
    const proxy = new FaultProxy(server, upstream, agent, options.caFile, options.seed);
    proxy.setPlan(options.plan ?? {});
    server.on("connection", (socket: Socket) => {
      const key = `${socket.remoteAddress}:${socket.remotePort}`;
      proxy.sockets.set(key, socket);
      socket.once("close", () => proxy.sockets.delete(key));
    });
    server.on("secureConnection", () => proxy.tally.connections++);
    server.on("request", (req: Req, res: Res) => proxy.handle(req, res));
    return proxy;
  }

  /** Replaces the plan (omitted fields are calm) and restarts failFirstList's per-path count. */
  setPlan(plan: Partial<FaultPlan>): void {
    this.plan = validate({ ...CALM, ...plan });
    this.listsSeen.clear();
  }

  /** Stops injecting new faults; open streams and already-scheduled faults carry on. */
  calm(): void {
    this.setPlan({});
  }

  /** Faults injected so far (a copy). */
  get counts(): FaultCounts {
    return { ...this.tally };
  }

  /** Every injected fault in order (a copy), for reproducibility checks and failure messages. */
  get faults(): InjectedFault[] {
    return [...this.log];
  }

  /** A kubeconfig JSON like the sandbox's, pointing at the proxy. */
  async writeKubeconfig(path: string, token: string): Promise<void> {
    const kubeconfig = {
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "fault-proxy", cluster: { server: this.url, "certificate-authority": this.caFile } }],
      users: [{ name: "admin", user: { token } }],
      contexts: [{ name: "fault-proxy", context: { cluster: "fault-proxy", user: "admin" } }],
      "current-context": "fault-proxy",
    };
    await writeFile(path, JSON.stringify(kubeconfig, null, 2), { mode: 0o600 });
  }

  /** Closes the listener and every open connection and stream, both sides. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets.values()) socket.destroy();
    this.agent.destroy();
    await closed;
  }

  private after(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private record(seq: number, req: FaultRequest, kind: FaultKind, detail?: number): void {
    this.log.push({ seq, method: req.method, path: req.path, kind, ...(detail === undefined ? {} : { detail }) });
  }

  /**
   * Resets the client's TCP connection (RST, so the client sees ECONNRESET rather than a clean
   * close). Over HTTP/2 the request's own stream is reset (RST_STREAM) instead: a connection reset
   * there would end every stream the client has, watches and all, not one request.
   */
  private reset(req: Req, res: Res): void {
    if (isH2(res)) {
      res.stream.close(h2.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    const raw = this.sockets.get(`${req.socket.remoteAddress}:${req.socket.remotePort}`);
    if (raw) raw.resetAndDestroy();
    else req.socket.destroy();
  }

  private handle(req: Req, res: Res): void {
    const seq = this.seq++;
    this.tally.requests++;
    const target = new URL(req.url ?? "/", "http://x");
    const info: FaultRequest = {
      method: req.method ?? "GET",
      path: target.pathname,
      watch: isWatch(target.pathname, target.searchParams),
    };
    // Decide every fault now, synchronously in arrival order, so the seed fixes the sequence.
    // Every request takes the same eight draws whatever the plan, so request n always sees the
    // same numbers for a given seed, and changing the plan doesn't shift later requests' faults.
    const roll = {
      reset: this.random(),
      resetPhase: this.random(),
      error: this.random(),
      errorKind: this.random(),
      delay: this.random(),
      delayMs: this.random(),
      close: this.random(),
      closeMs: this.random(),
    };
    const plan = this.plan;
    const eligible = plan.only ? plan.only(info) : true;

    if (eligible && info.method === "GET" && !info.watch && isCollection(info.path) && plan.failFirstList !== false) {
      const limit = plan.failFirstList === true ? 1 : plan.failFirstList;
      const seen = this.listsSeen.get(info.path) ?? 0;
      this.listsSeen.set(info.path, seen + 1);
      if (seen < limit) {
        const code = roll.errorKind < 0.5 ? 500 : 503;
        this.tally.firstListFailures++;
        this.record(seq, info, "first-list", code);
        this.fail(req, res, code, `injected failure of list #${seen + 1} of ${info.path}`);
        return;
      }
    }
    const reset = eligible && roll.reset < plan.resetRate;
    if (reset && roll.resetPhase < 0.5) {
      this.tally.resets++;
      this.record(seq, info, "reset-before");
      this.reset(req, res);
      return;
    }
    if (eligible && roll.error < plan.errorRate) {
      const code = roll.errorKind < 1 / 3 ? 429 : roll.errorKind < 2 / 3 ? 500 : 503;
      this.tally.errors++;
      this.record(seq, info, "error", code);
      this.fail(req, res, code, `injected ${code} ${STATUS_CODES[code]}`);
      return;
    }
    const delay = eligible && roll.delay < plan.delayRate ? Math.floor(roll.delayMs * (plan.maxDelayMs + 1)) : 0;
    const closeAfter =
      eligible && info.watch && roll.close < plan.watchCloseRate
        ? plan.watchCloseMinMs + Math.floor(roll.closeMs * (plan.watchCloseMaxMs - plan.watchCloseMinMs + 1))
        : undefined;
    const go = () => {
      if (this.stopped || req.socket.destroyed) return;
      this.forward(seq, info, req, res, reset, closeAfter);
    };
    if (delay > 0) {
      this.tally.delays++;
      this.record(seq, info, "delay", delay);
      this.after(delay, go);
    } else go();
  }

  private fail(req: Req, res: Res, code: number, message: string): void {
    req.resume(); // drain any body so the connection stays usable
    const body = statusBody(code, message);
    res.writeHead(code, {
      "Content-Type": "application/json",
      "Content-Length": Buffer.byteLength(body),
      ...(code === 429 ? { "Retry-After": "1" } : {}),
    });
    res.end(body);
  }

  private forward(
    seq: number,
    info: FaultRequest,
    req: Req,
    res: Res,
    resetAfter: boolean,
    closeAfter: number | undefined,
  ): void {
    this.tally.forwarded++;
    const host = this.upstream.hostname.replace(/^\[|\]$/g, "");
    const upReq = request({
      agent: this.agent,
      host,
      port: this.upstream.port || 443,
      // An IP can't be an SNI name; "" makes Node verify the cert against `host` instead.
      servername: isIP(host) ? "" : host,
      method: req.method,
      path: req.url,
      headers: forwardable(req.rawHeaders),
    });
    // If the client goes away (or is reset), drop the upstream side too: no leaked watches.
    res.once("close", () => {
      if (!res.writableFinished) upReq.destroy();
    });
    upReq.once("error", (err) => {
      if (res.writableEnded) return; // we ended it (watch-close); the upstream side is moot
      if (res.headersSent || gone(res)) {
        res.destroy();
        return;
      }
      const body = statusBody(502, `fault proxy: upstream error: ${err.message}`);
      res.writeHead(502, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
      res.end(body);
    });
    upReq.once("response", (upRes) => {
      if (resetAfter) {
        // The apiserver has acted on the request; the client never learns the outcome.
        this.tally.resets++;
        this.record(seq, info, "reset-after");
        upRes.destroy();
        this.reset(req, res);
        return;
      }
      const headers = forwardable(upRes.rawHeaders);
      if (isH2(res))
        res.writeHead(upRes.statusCode ?? 502, headers); // sent at once; no status text in HTTP/2
      else {
        res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, headers);
        // Flush the headers now: a watch may send nothing for a long time.
        res.flushHeaders();
      }
      upRes.pipe(res);
      upRes.once("error", () => {
        if (!res.writableEnded) res.destroy();
      });
      if (closeAfter !== undefined) {
        this.after(closeAfter, () => {
          if (res.writableEnded || gone(res)) return;
          // Ends the chunked stream cleanly, as the apiserver does when a watch times out.
          this.tally.watchCloses++;
          this.record(seq, info, "watch-close", closeAfter);
          upRes.unpipe(res);
          upRes.destroy();
          res.end();
        });
      }
    });
    req.pipe(upReq);
  }
}
