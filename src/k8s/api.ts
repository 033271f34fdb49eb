import { Agent, request as httpsRequest, type RequestOptions } from "node:https";
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
  /** Whole-request timeout; default 30 s. */
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

/** With the Lease's own connection, at most 10 TLS connections per process. */
const MAX_SOCKETS = 9;

export type WatchEvent<T> = { type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR"; object: T };

/**
 * The thin request layer under every Spindle API call: JSON over one keep-alive HTTPS agent per
 * kubeconfig, so a process opens a handful of TLS connections, not one per call (client-node makes
 * a new agent, hence a new handshake, for every request). Auth comes from the kubeconfig on each
 * call (tokens, client certificates, exec plugins refresh as client-node does them).
 */
export class Api {
  private static byConfig = new WeakMap<ClusterAccess, Api>();
  private agent: Agent | undefined;
  private server: URL;

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

  private async options(method: string, path: string, init: RequestInit): Promise<RequestOptions> {
    const opts: RequestOptions = { method, headers: {} };
    await this.kc.applyToHTTPSOptions(opts);
    if (!this.agent) {
      this.agent = new Agent({
        keepAlive: true,
        // Watches hold a socket each (5 at most, the controller's caches); the rest carry
        // requests, queued here rather than opening a connection per request in flight.
        maxSockets: MAX_SOCKETS,
        ca: opts.ca,
        cert: opts.cert,
        key: opts.key,
        servername: opts.servername,
        ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
      });
      countConnections(this.agent, () => this.connections++);
    }
    const query = Object.entries(init.query ?? {})
      .filter(([, v]) => v !== undefined && v !== "")
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join("&");
    const headers: Record<string, string> = { ...(opts.headers as Record<string, string>), Accept: "application/json" };
    if (init.body !== undefined) headers["Content-Type"] = init.contentType ?? "application/json";
    return {
      method,
      host: this.server.hostname,
      port: this.server.port || 443,
      path: `${this.server.pathname.replace(/\/$/, "")}${path}${query ? `?${query}` : ""}`,
      headers,
      agent: this.agent,
      ...(opts.auth ? { auth: opts.auth } : {}),
    };
  }

  /** One call; resolves with the parsed JSON body, rejects with ApiError on a status >= 300. */
  async request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
    const options = await this.options(method, path, init);
    noteWork();
    const payload = init.body === undefined ? undefined : Buffer.from(JSON.stringify(init.body));
    // A sized body, not a chunked one: some proxies refuse a chunked DELETE.
    if (payload) (options.headers as Record<string, string | number>)["Content-Length"] = payload.length;
    return new Promise<T>((resolve, reject) => {
      const req = httpsRequest(options, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const code = res.statusCode ?? 500;
          if (code >= 300) reject(new ApiError(code, text, method, path));
          else {
            try {
              resolve((text ? JSON.parse(text) : {}) as T);
            } catch (err) {
              reject(err);
            }
          }
        });
      });
      const timer = setTimeout(() => req.destroy(new Error(`${method} ${path}: timed out`)), init.timeoutMs ?? 30_000);
      const abort = () => req.destroy(new Error(`${method} ${path}: aborted`));
      init.signal?.addEventListener("abort", abort, { once: true });
      req.on("close", () => {
        clearTimeout(timer);
        init.signal?.removeEventListener("abort", abort);
      });
      req.on("error", reject);
      if (init.signal?.aborted) abort();
      req.end(payload);
    });
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
    const options = await this.options("GET", path, { query: { ...query, watch: 1 } });
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener("abort", abort);
        if (err && !signal.aborted) reject(err);
        else resolve();
      };
      const req = httpsRequest(options, (res) => {
        const code = res.statusCode ?? 500;
        if (code >= 300) {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => finish(new ApiError(code, Buffer.concat(chunks).toString("utf8"), "WATCH", path)));
          res.on("error", finish);
          return;
        }
        let buffered = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
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
              req.destroy(err as Error);
              return;
            }
          }
        });
        res.on("end", () => finish());
        res.on("error", finish);
        res.on("close", () => finish(res.complete ? undefined : new Error(`watch ${path}: connection closed`)));
      });
      const abort = () => req.destroy();
      signal.addEventListener("abort", abort, { once: true });
      req.on("error", finish);
      if (signal.aborted) abort();
      req.end();
    });
  }
}
