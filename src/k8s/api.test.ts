import { constants, createSecureServer, type Http2SecureServer, type ServerHttp2Stream } from "node:http2";
import { createServer as createHttpsServer } from "node:https";
import { type AddressInfo, connect, createServer as createTcpServer, type Server, type Socket } from "node:net";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { selfSignedCert } from "../../test/self-signed-cert.js";
import { Api, ApiError, h2HealthCheck } from "./api.js";
import type { ClusterAccess } from "./kubeconfig.js";

let tls: { key: Buffer; cert: Buffer };
beforeAll(async () => {
  tls = await selfSignedCert();
});

const closers: (() => void)[] = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
  h2HealthCheck.everyMs = 30_000;
  h2HealthCheck.timeoutMs = 15_000;
});

function access(port: number): ClusterAccess {
  return {
    getCurrentCluster: () => ({ server: `https://127.0.0.1:${port}` }),
    applyToHTTPSOptions: async (opts) => {
      opts.ca = tls.cert;
      (opts.headers as Record<string, string>).Authorization = "Bearer secret";
    },
  };
}

async function listen(server: Http2SecureServer | Server | ReturnType<typeof createHttpsServer>): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const sockets = new Set<Socket>();
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  closers.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return (server.address() as AddressInfo).port;
}

/** An HTTP/2 apiserver stand-in: GET /echo answers its path and auth, GET /watch sends two events. */
function h2Server(onStream?: (stream: ServerHttp2Stream, n: number) => boolean) {
  const server = createSecureServer({ key: tls.key, cert: tls.cert });
  const seen = { sessions: 0, streams: 0 };
  server.on("session", () => seen.sessions++);
  server.on("stream", (stream, headers) => {
    const n = seen.streams++;
    stream.on("error", () => {}); // the client's cancels and refusals, expected here
    if (onStream?.(stream, n)) return;
    const path = String(headers[":path"]);
    if (path.startsWith("/missing")) {
      stream.respond({ ":status": 404, "content-type": "application/json" });
      stream.end(JSON.stringify({ kind: "Status", code: 404, message: 'devices "x" not found' }));
    } else if (path.startsWith("/watch")) {
      stream.respond({ ":status": 200 });
      stream.write(`${JSON.stringify({ type: "ADDED", object: { n: 1 } })}\n`);
      setTimeout(() => stream.end(`${JSON.stringify({ type: "DELETED", object: { n: 2 } })}\n`), 20);
    } else if (path.startsWith("/hang")) {
      // never answers
    } else {
      stream.respond({ ":status": 200, "content-type": "application/json" });
      stream.end(JSON.stringify({ path, auth: headers.authorization }));
    }
  });
  return { server, seen };
}

describe("Api over HTTP/2", () => {
  it("carries concurrent requests and watches on one connection", async () => {
    const { server, seen } = h2Server();
    const api = Api.for(access(await listen(server)));
    const events: unknown[] = [];
    const watches = Array.from({ length: 3 }, () =>
      api.watch("/watch", {}, (e) => events.push(e.type), new AbortController().signal),
    );
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) => api.request<{ path: string; auth: string }>("GET", `/echo/${i}`)),
    );
    await Promise.all(watches);
    expect(answers.map((a) => a.path)).toEqual(Array.from({ length: 40 }, (_, i) => `/echo/${i}`));
    expect(answers.every((a) => a.auth === "Bearer secret")).toBe(true);
    expect(events.sort()).toEqual(["ADDED", "ADDED", "ADDED", "DELETED", "DELETED", "DELETED"]);
    expect({ negotiated: api.negotiated, connections: api.connections, sessions: seen.sessions }).toEqual({
      negotiated: "h2",
      connections: 1,
      sessions: 1,
    });
  });

  it("rejects with the apiserver's Status message, and times out a request with no answer", async () => {
    const { server } = h2Server();
    const api = Api.for(access(await listen(server)));
    const missing = await api.request("GET", "/missing").catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(ApiError);
    expect((missing as ApiError).code).toBe(404);
    expect((missing as ApiError).message).toMatch(/devices "x" not found/);
    await expect(api.request("GET", "/hang", { timeoutMs: 100 })).rejects.toThrow(/timed out/);
    expect((await api.request<{ path: string }>("GET", "/echo")).path).toBe("/echo");
  });

  it("opens a new connection after GOAWAY, and resends a stream the server refused", async () => {
    const { server, seen } = h2Server((stream, n) => {
      if (n === 1) {
        stream.close(constants.NGHTTP2_REFUSED_STREAM);
        return true;
      }
      if (n === 2) stream.session?.goaway();
      return false;
    });
    const api = Api.for(access(await listen(server)));
    expect((await api.request<{ path: string }>("GET", "/echo/a")).path).toBe("/echo/a");
    // Stream 1 is refused: sent again as stream 2, after which the server says GOAWAY.
    expect((await api.request<{ path: string }>("GET", "/echo/b")).path).toBe("/echo/b");
    expect((await api.request<{ path: string }>("GET", "/echo/c")).path).toBe("/echo/c");
    expect({ streams: seen.streams, sessions: seen.sessions, connections: api.connections }).toEqual({
      streams: 4,
      sessions: 2,
      connections: 2,
    });
  });

  it("moves to a new connection when one has used up its stream ids", async () => {
    const { server, seen } = h2Server();
    const api = Api.for(access(await listen(server)));
    await api.request("GET", "/echo/a");
    // 2^31 streams take years; what Node does then is throw on the next request.
    const session = (api as unknown as { session: { request: () => never } }).session;
    session.request = () => {
      throw Object.assign(new Error("no stream ids left"), { code: "ERR_HTTP2_OUT_OF_STREAMS" });
    };
    expect((await api.request<{ path: string }>("GET", "/echo/b")).path).toBe("/echo/b");
    expect({ connections: api.connections, sessions: seen.sessions }).toEqual({ connections: 2, sessions: 2 });
  });

  it("fails the streams of a connection that stops answering pings, then reconnects", async () => {
    h2HealthCheck.everyMs = 100;
    h2HealthCheck.timeoutMs = 200;
    const { server } = h2Server((stream, n) => {
      if (n !== 0) return false;
      stream.respond({ ":status": 200 }); // a watch that stays quiet
      return true;
    });
    const upstream = await listen(server);
    // A relay whose first connection can go silent, as a dead NAT entry does: nothing passes.
    let freeze: (() => void) | undefined;
    const relay = createTcpServer((client) => {
      const up = connect(upstream, "127.0.0.1");
      client.pipe(up).pipe(client);
      for (const s of [client, up]) s.on("error", () => {});
      client.on("close", () => up.destroy());
      up.on("close", () => client.destroy());
      freeze ??= () => {
        client.unpipe(up);
        up.unpipe(client);
        client.pause();
        up.pause();
      };
    });
    const api = Api.for(access(await listen(relay)));
    const watch = api.watch("/watch", {}, () => {}, new AbortController().signal);
    await new Promise((r) => setTimeout(r, 300));
    freeze?.();
    await expect(watch).rejects.toThrow(/no answer to a ping/);
    expect((await api.request<{ path: string }>("GET", "/echo")).path).toBe("/echo");
    expect(api.connections).toBe(2);
  });

  it("ends a watch quietly when its signal aborts", async () => {
    const { server } = h2Server((stream) => {
      stream.respond({ ":status": 200 });
      return true;
    });
    const api = Api.for(access(await listen(server)));
    const stop = new AbortController();
    const watch = api.watch("/watch", {}, () => {}, stop.signal);
    setTimeout(() => stop.abort(), 50);
    await expect(watch).resolves.toBeUndefined();
  });
});

describe("Api over HTTP/1.1", () => {
  it("is used when the server offers no h2", async () => {
    const server = createHttpsServer({ key: tls.key, cert: tls.cert }, (req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ path: req.url, auth: req.headers.authorization }));
    });
    const api = Api.for(access(await listen(server)));
    const answers = await Promise.all(
      Array.from({ length: 5 }, (_, i) => api.request<{ path: string; auth: string }>("GET", `/echo/${i}`)),
    );
    expect(answers.map((a) => a.path)).toEqual(["/echo/0", "/echo/1", "/echo/2", "/echo/3", "/echo/4"]);
    expect(answers[0]?.auth).toBe("Bearer secret");
    expect(api.negotiated).toBe("http/1.1");
  });
});
