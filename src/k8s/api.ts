import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  connect as connectH2,
  constants as h2,
  type OutgoingHttpHeaders,
} from "node:http2";
import { Agent, request as httpsRequest, type RequestOptions } from "node:https";
import { isIP } from "node:net";
import type { Readable } from "node:stream";
import { connect as connectTls } from "node:tls";
import { noteWork } from "../runtime/settled-gc.js";
import type { ClusterAccess } from "./kubeconfig.js";

/** A failed API call: the HTTP status and the apiserver's Status body. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly body: string,
    method: string,
    path: string,
  ) {
    super(`${method} ${path}: HTTP ${code}: ${statusMessage(body)}`);
  }
}

function statusMessage(body: string): string {
  try {
    return (JSON.parse(body) as { message?: string }).message ?? body.slice(0, 200);
  } catch {
    return body.slice(0, 200);
  }
}

export interface RequestInit {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
  /** Whole-request timeout, connecting included; default 30 s. */
  timeoutMs?: number;
}

/**
 * Counts the connections an agent opens in `Api.opened` (and `also`): an agent calls
 * createConnection only for a new socket.
 */
export function countConnections(agent: Agent, also?: () => void): Agent {
  const create = agent.createConnection.bind(agent);
  agent.createConnection = ((...args: Parameters<typeof create>) => {
    Api.opened++;
    also?.();
    return create(...args);
  }) as typeof create;
  return agent;
}

/** Over HTTP/1.1 only: with the Lease's own connection, at most 10 TLS connections per process. */
const MAX_SOCKETS = 9;

/**
 * HTTP/2 health checks, as client-go's (read-idle 30 s, ping timeout 15 s): every stream shares
 * one connection, so a dead one that TCP has not noticed (a NAT that forgot it, a partition)
 * would stall every watch and write at once. Mutable for tests only.
 */
export const h2HealthCheck = { everyMs: 30_000, timeoutMs: 15_000 };

/** Per-stream and connection flow-control windows: a 500-object list page in one round trip. */
const STREAM_WINDOW = 1 << 20;
const SESSION_WINDOW = 16 << 20;

/** Streams in flight per connection (a closing one may still carry some next to its successor). */
const openStreams = new WeakMap<ClientHttp2Session, number>();

export type WatchEvent<T> = { type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR"; object: T };

/** A request sent: its response once the headers arrive, and a way to cancel it. */
interface Exchange {
  response: Promise<{ status: number; body: Readable }>;
  cancel(err?: Error): void;
}

/** Session-level failures of an HTTP/2 stream the server never processed: safe to send again. */
const UNPROCESSED = new Set([
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_OUT_OF_STREAMS",
]);

/**
 * The thin request layer under every Spindle API call: JSON over one HTTP/2 connection per
 * kubeconfig, every list, watch and write a stream of it (as client-go does), so a process opens
 * one TLS connection, not one per call (client-node makes a new agent, hence a new handshake, for
 * every request), and writes never queue behind watches for a socket. A server that does not
 * offer h2 in ALPN gets HTTP/1.1 over a few keep-alive sockets instead. Auth comes from the
 * kubeconfig on each call (tokens, client certificates, exec plugins).
 */
export class Api {
  private static byConfig = new WeakMap<ClusterAccess, Api>();
  private server: URL;
  /** Learnt from the first connection's ALPN. */
  private protocol: "h2" | "http/1.1" | undefined;
  private session: ClientHttp2Session | undefined;
  private connecting: Promise<ClientHttp2Session | undefined> | undefined;
  private agent: Agent | undefined;

  private constructor(private kc: ClusterAccess) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    this.server = new URL(cluster.server);
    if (this.server.protocol !== "https:") throw new Error(`only https API servers are supported: ${cluster.server}`);
  }

  static for(kc: ClusterAccess): Api {
    let api = Api.byConfig.get(kc);
    if (!api) {
      api = new Api(kc);
      Api.byConfig.set(kc, api);
    }
    return api;
  }

  /** Connections opened so far (TLS handshakes), for tests and benchmarks. */
  connections = 0;
  /** Connections every Api of this process opened, for the process's metrics. */
  static opened = 0;

  /** The protocol in use, once the first connection has told ("h2" or "http/1.1"). */
  get negotiated(): string | undefined {
    return this.protocol;
  }

  /** One call; resolves with the parsed JSON body, rejects with ApiError on a status >= 300. */
  async request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
    noteWork();
    // A timer cleared when the call ends, not AbortSignal.timeout: during a burst of 20,000 writes
    // those would live their full 30 s each.
    const local = new AbortController();
    const signal = local.signal;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      local.abort();
    }, init.timeoutMs ?? 30_000);
    const onAbort = () => local.abort();
    init.signal?.addEventListener("abort", onAbort, { once: true });
    if (init.signal?.aborted) local.abort();
    const why = () => new Error(`${method} ${path}: ${timedOut ? "timed out" : "aborted"}`);
    try {
      return await this.attempt<T>(method, path, init, signal, why);
    } finally {
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", onAbort);
    }
  }

  private async attempt<T>(
    method: string,
    path: string,
    init: RequestInit,
    signal: AbortSignal,
    why: () => Error,
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) throw why();
      const exchange = await this.send(method, path, init, signal);
      if (!exchange) throw why();
      const abort = () => exchange.cancel();
      signal.addEventListener("abort", abort, { once: true });
      let answered = false;
      try {
        const { status, body } = await exchange.response;
        answered = true;
        const text = await readAll(body);
        if (status >= 300) throw new ApiError(status, text, method, path);
        return (text ? JSON.parse(text) : {}) as T;
      } catch (err) {
        if (signal.aborted) throw why();
        // A stream the server never saw (its connection was going away): send it once more.
        if (!answered && attempt === 0 && UNPROCESSED.has((err as NodeJS.ErrnoException).code ?? "")) continue;
        throw err;
      } finally {
        signal.removeEventListener("abort", abort);
      }
    }
  }

  /**
   * A watch: calls `onEvent` for every event line until the server ends the stream (resolves),
   * the signal aborts (resolves) or the connection fails (rejects). A watch that cannot start
   * rejects with the ApiError (410 Gone included).
   */
  async watch<T>(
    path: string,
    query: Record<string, string | number | boolean | undefined>,
    onEvent: (event: WatchEvent<T>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const exchange = await this.send("GET", path, { query: { ...query, watch: 1 } }, signal);
    if (!exchange) return;
    const abort = () => exchange.cancel();
    signal.addEventListener("abort", abort, { once: true });
    try {
      const { status, body } = await exchange.response;
      if (status >= 300) throw new ApiError(status, await readAll(body), "WATCH", path);
      await new Promise<void>((resolve, reject) => {
        let buffered = "";
        body.setEncoding("utf8");
        body.on("data", (chunk: string) => {
          buffered += chunk;
          let newline = buffered.indexOf("\n");
          while (newline >= 0) {
            const line = buffered.slice(0, newline).trim();
            buffered = buffered.slice(newline + 1);
            newline = buffered.indexOf("\n");
            if (!line) continue;
            try {
              onEvent(JSON.parse(line) as WatchEvent<T>);
            } catch (err) {
              exchange.cancel(err as Error);
              return;
            }
          }
        });
        settleOnEnd(body, `watch ${path}`, resolve, reject);
      });
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  /** Sends one request on the current connection (opening it if needed); undefined once aborted. */
  private async send(
    method: string,
    path: string,
    init: RequestInit,
    signal: AbortSignal,
  ): Promise<Exchange | undefined> {
    const opts: RequestOptions = { method, headers: {} };
    await this.kc.applyToHTTPSOptions(opts);
    const query = Object.entries(init.query ?? {})
      .filter(([, v]) => v !== undefined && v !== "")
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join("&");
    const fullPath = `${this.server.pathname.replace(/\/$/, "")}${path}${query ? `?${query}` : ""}`;
    const headers: Record<string, string | number> = {
      ...(opts.headers as Record<string, string>),
      Accept: "application/json",
    };
    if (opts.auth) headers.Authorization = `Basic ${Buffer.from(opts.auth).toString("base64")}`;
    // A sized body, not a chunked one: some proxies refuse a chunked DELETE.
    const payload = init.body === undefined ? undefined : Buffer.from(JSON.stringify(init.body));
    if (payload) {
      headers["Content-Type"] = init.contentType ?? "application/json";
      headers["Content-Length"] = payload.length;
    }
    const session = await this.h2Session(opts, signal);
    if (signal.aborted) return undefined;
    return session
      ? this.sendH2(session, method, fullPath, headers, payload)
      : this.sendH1(opts, method, fullPath, headers, payload);
  }

  private sendH2(
    session: ClientHttp2Session,
    method: string,
    path: string,
    headers: Record<string, string | number>,
    payload: Buffer | undefined,
  ): Exchange {
    const h: OutgoingHttpHeaders = { [h2.HTTP2_HEADER_METHOD]: method, [h2.HTTP2_HEADER_PATH]: path };
    for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = v;
    let stream: ClientHttp2Stream;
    try {
      stream = session.request(h, { endStream: payload === undefined });
    } catch (err) {
      // 2^31 streams into a long life: a new connection takes over, this one finishes its own.
      if ((err as NodeJS.ErrnoException).code === "ERR_HTTP2_OUT_OF_STREAMS") {
        if (this.session === session) this.session = undefined;
        session.close();
      }
      return { response: Promise.reject(err), cancel: () => {} };
    }
    this.track(session, stream);
    const response = new Promise<{ status: number; body: Readable }>((resolve, reject) => {
      stream.once("response", (headers) => {
        resolve({ status: Number(headers[h2.HTTP2_HEADER_STATUS] ?? 500), body: stream });
      });
      stream.once("error", (err) =>
        reject(
          stream.rstCode === h2.NGHTTP2_REFUSED_STREAM
            ? Object.assign(new Error(`${method} ${path}: stream refused`), { code: "ERR_HTTP2_STREAM_CANCEL" })
            : err,
        ),
      );
      stream.once("close", () =>
        reject(new Error(`${method} ${path}: stream closed before a response (code ${stream.rstCode})`)),
      );
    });
    response.catch(() => {});
    if (payload) stream.end(payload);
    return {
      response,
      cancel: (err) => {
        if (err) stream.destroy(err);
        else stream.close(h2.NGHTTP2_CANCEL);
      },
    };
  }

  /** Refs the connection while it carries a stream, so an idle one never keeps a process alive. */
  private track(session: ClientHttp2Session, stream: ClientHttp2Stream): void {
    const open = (openStreams.get(session) ?? 0) + 1;
    openStreams.set(session, open);
    if (open === 1) session.ref();
    stream.once("close", () => {
      const left = (openStreams.get(session) ?? 1) - 1;
      openStreams.set(session, left);
      if (left === 0 && !session.destroyed) session.unref();
    });
  }

  private sendH1(
    opts: RequestOptions,
    method: string,
    path: string,
    headers: Record<string, string | number>,
    payload: Buffer | undefined,
  ): Exchange {
    if (!this.agent) {
      this.agent = new Agent({
        keepAlive: true,
        // Watches hold a socket each; the rest carry requests, queued here rather than opening a
        // connection per request in flight.
        maxSockets: MAX_SOCKETS,
        ...tlsOf(opts),
      });
      countConnections(this.agent, () => this.connections++);
    }
    const req = httpsRequest({
      method,
      host: this.server.hostname,
      port: this.server.port || 443,
      path,
      headers,
      agent: this.agent,
    });
    const response = new Promise<{ status: number; body: Readable }>((resolve, reject) => {
      req.once("response", (res) => resolve({ status: res.statusCode ?? 500, body: res }));
      req.once("error", reject);
    });
    response.catch(() => {});
    req.end(payload);
    return { response, cancel: (err) => req.destroy(err) };
  }

  /** The HTTP/2 connection, opened on first use; undefined where the server speaks only HTTP/1.1. */
  private async h2Session(opts: RequestOptions, signal: AbortSignal): Promise<ClientHttp2Session | undefined> {
    if (this.protocol === "http/1.1") return undefined;
    const current = this.session;
    if (current && !current.closed && !current.destroyed) return current;
    this.connecting ??= this.connect(opts).finally(() => {
      this.connecting = undefined;
    });
    return untilAborted(this.connecting, signal);
  }

  private connect(opts: RequestOptions): Promise<ClientHttp2Session | undefined> {
    const host = this.server.hostname.replace(/^\[|\]$/g, "");
    const tls = tlsOf(opts);
    return new Promise((resolve, reject) => {
      const socket = connectTls({
        host,
        port: Number(this.server.port || 443),
        ...tls,
        // An IP can't be an SNI name: the certificate is checked against `host` instead.
        servername: tls.servername ?? (isIP(host) ? undefined : host),
        ALPNProtocols: ["h2", "http/1.1"],
      });
      this.connections++;
      Api.opened++;
      socket.setTimeout(30_000, () => socket.destroy(new Error(`connecting to ${this.server.origin}: timed out`)));
      socket.once("error", reject);
      socket.once("secureConnect", () => {
        socket.off("error", reject);
        socket.setTimeout(0);
        if (socket.alpnProtocol !== "h2") {
          // The server, or a proxy in front of it, speaks only HTTP/1.1.
          this.protocol = "http/1.1";
          socket.destroy();
          resolve(undefined);
          return;
        }
        this.protocol = "h2";
        const session = connectH2(this.server.origin, {
          createConnection: () => socket,
          settings: { initialWindowSize: STREAM_WINDOW },
        });
        session.setLocalWindowSize(SESSION_WINDOW);
        session.on("error", () => {}); // each stream sees it
        const drop = () => {
          clearInterval(health);
          if (this.session === session) this.session = undefined;
        };
        session.once("goaway", drop);
        session.once("close", drop);
        const health = setInterval(() => {
          const timer = setTimeout(
            () =>
              session.destroy(new Error(`${this.server.origin}: no answer to a ping in ${h2HealthCheck.timeoutMs} ms`)),
            h2HealthCheck.timeoutMs,
          );
          timer.unref();
          try {
            session.ping((err) => {
              clearTimeout(timer);
              if (err) session.destroy(err);
            });
          } catch {
            clearTimeout(timer);
          }
        }, h2HealthCheck.everyMs);
        health.unref();
        session.unref();
        this.session = session;
        resolve(session);
      });
    });
  }
}

function tlsOf(opts: RequestOptions) {
  return {
    ca: opts.ca,
    cert: opts.cert,
    key: opts.key,
    servername: opts.servername,
    ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
  };
}

/** Calls resolve when `body` ends, reject when it fails or closes before its end. */
function settleOnEnd(body: Readable, what: string, resolve: () => void, reject: (err: Error) => void): void {
  let ended = false;
  body.once("end", () => {
    ended = true;
    resolve();
  });
  body.once("error", reject);
  body.once("close", () => {
    if (!ended) reject(new Error(`${what}: connection closed`));
  });
}

function readAll(body: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    body.on("data", (c: Buffer) => chunks.push(c));
    settleOnEnd(body, "response", () => resolve(Buffer.concat(chunks).toString("utf8")), reject);
  });
}

/** `p`, or undefined as soon as `signal` aborts (p carries on for whoever else waits on it). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const abort = () => resolve(undefined);
    signal.addEventListener("abort", abort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
}
