import { chmod, lstat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { parse } from "yaml";
import { formatIssues } from "../../src/api/common.js";
import { createLogger, type Logger } from "../../src/log/logger.js";
import type { DiscoveryHandler } from "../handler.js";
import {
  CHANNEL_OPTIONS,
  type DiscoverRequest,
  type DiscoverResponse,
  protocol,
  type RegisterDiscoveryHandlerRequest,
} from "./protocol.js";
import { toWireDevice } from "./wire.js";

/**
 * The TypeScript SDK for out-of-process discovery handlers: give it a DiscoveryHandler (the same
 * interface the built-in handlers implement) and it serves Akri's v0 DiscoveryHandler protocol
 * and registers with the agent. Works with Spindle's agent and with Akri's.
 *
 *   await serveDiscoveryHandler(myHandler, { registrationSocket: "/var/lib/spindle/agent-registration.sock" });
 */
export interface ServeOptions {
  /** The agent's registration socket (Akri: $DISCOVERY_HANDLERS_DIRECTORY/agent-registration.sock). */
  registrationSocket: string;
  /** The name to register (default: the handler's). */
  name?: string;
  /** Devices seen by several nodes (default: the handler's `shared`). */
  shared?: boolean;
  /** Serve on this unix socket (default: <registration socket's directory>/<name>.sock)... */
  socket?: string;
  /** ...or over TCP: listen on `listen` ("0.0.0.0:10000") and register `endpoint` ("http://<pod IP>:10000"). */
  network?: { listen: string; endpoint: string };
  /** Seconds between registration attempts while the agent is not there (Akri: 10). */
  retrySeconds?: number;
  /** Registers again this often, so an agent that restarted knows the handler (default 30 s). */
  refreshSeconds?: number;
  log?: Logger;
}

export interface ServedHandler {
  /** Where the agent calls Discover. */
  endpoint: string;
  /** Resolves after the first successful registration. */
  registered: Promise<void>;
  close(): Promise<void>;
}

export async function serveDiscoveryHandler(
  handler: DiscoveryHandler<unknown>,
  options: ServeOptions,
): Promise<ServedHandler> {
  const name = options.name ?? handler.name;
  const shared = options.shared ?? handler.shared;
  const log = (options.log ?? createLogger("spindle-handler")).child({ handler: name });
  const { DiscoveryHandler: service, Registration } = protocol();
  const active = new Set<AbortController>();
  let closed = false;
  let registerNow: () => void = () => {};

  const server = new grpc.Server(CHANNEL_OPTIONS);
  server.addService(service.service, {
    Discover(call: grpc.ServerWritableStream<DiscoverRequest, DiscoverResponse>) {
      const abort = new AbortController();
      active.add(abort);
      const finish = () => {
        if (abort.signal.aborted) return;
        abort.abort();
        active.delete(abort);
        // Akri's handlers register again when the agent drops a stream: the agent may have restarted.
        if (!closed) registerNow();
      };
      call.on("cancelled", finish);
      call.on("close", finish);
      void discover(handler, call, abort.signal, log).finally(finish);
    },
  });

  let target: string;
  let endpoint: string;
  let endpointType: RegisterDiscoveryHandlerRequest["endpoint_type"];
  if (options.network) {
    target = options.network.listen;
    endpoint = options.network.endpoint;
    endpointType = "NETWORK";
  } else {
    endpoint = options.socket ?? join(dirname(options.registrationSocket), `${name}.sock`);
    const stale = await lstat(endpoint).catch(() => undefined);
    if (stale?.isSocket()) await unlink(endpoint);
    target = `unix:${endpoint}`;
    endpointType = "UDS";
  }
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  // The agent may run as another user than this handler.
  if (endpointType === "UDS") await chmod(endpoint, 0o666);
  log.info({ endpoint }, "serving discovery (Akri v0)");

  const registration = new Registration(
    `unix:${options.registrationSocket}`,
    grpc.credentials.createInsecure(),
    CHANNEL_OPTIONS,
  ) as unknown as {
    RegisterDiscoveryHandler(
      r: RegisterDiscoveryHandlerRequest,
      o: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null) => void,
    ): void;
    close(): void;
  };
  const request: RegisterDiscoveryHandlerRequest = { name, endpoint, endpoint_type: endpointType, shared };
  let timer: NodeJS.Timeout | undefined;
  let onRegistered: () => void = () => {};
  const registered = new Promise<void>((resolve) => {
    onRegistered = resolve;
  });
  let inFlight = false;
  const register = () => {
    clearTimeout(timer);
    if (closed || inFlight) return;
    inFlight = true;
    registration.RegisterDiscoveryHandler(request, { deadline: Date.now() + 5000 }, (err) => {
      inFlight = false;
      if (closed) return;
      if (err) log.warn({ err: err.details || err.message }, "registration failed; trying again");
      else onRegistered();
      timer = setTimeout(register, (err ? (options.retrySeconds ?? 10) : (options.refreshSeconds ?? 30)) * 1000);
    });
  };
  registerNow = register;
  register();

  return {
    endpoint,
    registered,
    async close() {
      closed = true;
      clearTimeout(timer);
      for (const a of active) a.abort();
      registration.close();
      server.forceShutdown();
      if (endpointType === "UDS") await unlink(endpoint).catch(() => {});
    },
  };
}

/** One Discover call: the handler's sets, each sent as a complete list, until the agent hangs up. */
async function discover(
  handler: DiscoveryHandler<unknown>,
  call: grpc.ServerWritableStream<DiscoverRequest, DiscoverResponse>,
  signal: AbortSignal,
  log: Logger,
): Promise<void> {
  let raw: unknown;
  try {
    raw = call.request.discovery_details ? parse(call.request.discovery_details) : {};
  } catch (err) {
    call.emit("error", invalid(`discoveryDetails is not YAML: ${err instanceof Error ? err.message : String(err)}`));
    return;
  }
  const details = handler.detailsSchema.safeParse(raw ?? {});
  if (!details.success) {
    call.emit("error", invalid(formatIssues(details.error, "discoveryHandler.discoveryDetails")));
    return;
  }
  const properties: Record<string, string> = {};
  for (const [k, v] of Object.entries(call.request.discovery_properties ?? {}))
    if (v?.vec) properties[k] = Buffer.from(v.vec).toString("utf8");
  try {
    for await (const set of handler.discover({ details: details.data, properties, signal, log })) {
      if (signal.aborted) break;
      const ok = call.write({ devices: set.map(toWireDevice) });
      if (!ok)
        await new Promise<void>((resolve) => {
          call.once("drain", resolve);
          signal.addEventListener("abort", () => resolve(), { once: true });
        });
    }
    if (!signal.aborted) call.end();
  } catch (err) {
    if (signal.aborted) return;
    log.error({ err: String(err) }, "discovery failed");
    call.emit("error", { code: grpc.status.UNKNOWN, details: String(err) });
  }
}

function invalid(message: string): Partial<grpc.StatusObject> {
  return { code: grpc.status.INVALID_ARGUMENT, details: message };
}
