/**
 * A stand-in Kubernetes apiserver for starting `spindle agent` and `spindle controller` without a
 * cluster (test/unit/runtime.test.ts, test/bench/startup.ts): HTTP/2 (and HTTP/1.1) over TLS with a
 * throwaway self-signed certificate, every collection empty, watches held open, writes stored and echoed. Enough for a
 * process to start, sync and sit idle; not a model of the API's semantics.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createSecureServer } from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { selfSignedCert } from "./self-signed-cert.js";

type Obj = { metadata?: { name?: string; namespace?: string; resourceVersion?: string } } & Record<string, unknown>;

export interface StubApiserver {
  /** A kubeconfig file for this server (token auth, the certificate as CA). */
  kubeconfig: string;
  /** Requests served, as `METHOD path`. */
  requests: string[];
  close(): Promise<void>;
}

/** Splits `/api/v1/...` or `/apis/<group>/<version>/...` into the resource path after the version. */
function resourceSegments(pathname: string): string[] | undefined {
  const parts = pathname.split("/").filter(Boolean);
  const rest = parts[0] === "api" ? parts.slice(2) : parts[0] === "apis" ? parts.slice(3) : undefined;
  if (!rest || rest.length === 0) return undefined;
  return rest[0] === "namespaces" && rest.length >= 3 ? rest.slice(2) : rest;
}

export async function startStubApiserver(): Promise<StubApiserver> {
  const dir = await mkdtemp(join(tmpdir(), "spindle-stub-apiserver-"));
  const { key, cert } = await selfSignedCert();
  const objects = new Map<string, Obj>();
  const requests: string[] = [];
  let resourceVersion = 1;
  const watches = new Set<{ destroy(): void }>();

  // HTTP/2 as kube-apiserver offers it, HTTP/1.1 for clients that ask for it.
  const server = createSecureServer({ key, cert, allowHTTP1: true }, (req, res) => {
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    requests.push(`${req.method} ${url.pathname}`);
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const send = (code: number, body: unknown) => {
        res.writeHead(code, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      const notFound = () =>
        send(404, { kind: "Status", apiVersion: "v1", status: "Failure", reason: "NotFound", code: 404 });
      const segments = resourceSegments(url.pathname);
      if (!segments) return send(200, { kind: "APIResourceList", resources: [] });
      const collection = segments.length === 1;
      if (req.method === "GET" && collection && ["true", "1"].includes(url.searchParams.get("watch") ?? "")) {
        res.writeHead(200, { "content-type": "application/json" });
        // An HTTP/2 writeHead sends the headers; an HTTP/1.1 one waits for a body without this.
        (res as unknown as { flushHeaders(): void }).flushHeaders();
        watches.add(res);
        res.on("close", () => watches.delete(res));
        return;
      }
      if (req.method === "GET" && collection) {
        const prefix = `${url.pathname}/`;
        const items = [...objects].filter(([k]) => k.startsWith(prefix)).map(([, o]) => o);
        return send(200, {
          kind: "List",
          apiVersion: "v1",
          metadata: { resourceVersion: String(resourceVersion) },
          items,
        });
      }
      if (req.method === "GET") {
        const found = objects.get(url.pathname);
        return found ? send(200, found) : notFound();
      }
      if (req.method === "DELETE") {
        objects.delete(url.pathname);
        return send(200, { kind: "Status", apiVersion: "v1", status: "Success" });
      }
      let body: Obj = {};
      try {
        body = chunks.length ? (JSON.parse(Buffer.concat(chunks).toString("utf8")) as Obj) : {};
      } catch {
        // An apply body in YAML: keep the object empty, the caller only needs a 2xx.
      }
      const path = collection && body.metadata?.name ? `${url.pathname}/${body.metadata.name}` : url.pathname;
      const stored: Obj = {
        ...(objects.get(path) ?? {}),
        ...body,
        metadata: { ...body.metadata, resourceVersion: String(++resourceVersion) },
      };
      objects.set(path, stored);
      send(req.method === "POST" ? 201 : 200, stored);
    });
  });
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const kubeconfig = join(dir, "kubeconfig");
  await writeFile(
    kubeconfig,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: "stub",
          cluster: { server: `https://127.0.0.1:${port}`, "certificate-authority-data": cert.toString("base64") },
        },
      ],
      users: [{ name: "stub", user: { token: "stub" } }],
      contexts: [{ name: "stub", context: { cluster: "stub", user: "stub" } }],
      "current-context": "stub",
    }),
  );
  return {
    kubeconfig,
    requests,
    async close() {
      for (const w of watches) w.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
