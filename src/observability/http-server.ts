import { createServer, type Server } from "node:http";
import type { Logger } from "../log/logger.js";
import { registry } from "./metrics.js";

/** /metrics, /healthz (the process serves) and /readyz (`ready()` says so, with a reason). */
export async function startHttpServer(
  address: string,
  ready: () => { ok: boolean; reason: string },
  log: Logger,
): Promise<Server> {
  const match = /^(.*):(\d+)$/.exec(address);
  if (!match) throw new Error(`--http-address must be host:port, got "${address}"`);
  const host = match[1] || "0.0.0.0";
  const port = Number(match[2]);
  const server = createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/metrics") {
      res.writeHead(200, { "Content-Type": registry.contentType });
      res.end(await registry.metrics());
    } else if (path === "/healthz") {
      res.writeHead(200, { "Content-Type": "text/plain" });
      res.end("ok\n");
    } else if (path === "/readyz") {
      const r = ready();
      res.writeHead(r.ok ? 200 : 503, { "Content-Type": "text/plain" });
      res.end(`${r.reason}\n`);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  log.info(
    { address: typeof bound === "object" && bound ? `${bound.address}:${bound.port}` : address },
    "serving /metrics, /healthz, /readyz",
  );
  return server;
}
