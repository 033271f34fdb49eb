import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../../src/log/logger.js";
import { CHANNEL_OPTIONS, protocol, type RegisterDiscoveryHandlerRequest } from "./protocol.js";
import { HandlerRegistry, RegistrationError } from "./registry.js";

export interface RegistrationServerOptions {
  /** Akri's layout: <dir>/agent-registration.sock, with handlers' sockets beside it. */
  socketPath: string;
  builtIn: ReadonlySet<string>;
  allowOverride?: ReadonlySet<string>;
  /** See RegistryOptions.firstListWarnMs. */
  firstListWarnMs?: number;
  log: Logger;
}

export interface RegistrationServer {
  registry: HandlerRegistry;
  close(): Promise<void>;
}

/** Name of the file beside the socket that keeps registrations across agent restarts. */
export const STATE_FILE = "spindle-registrations.json";

/**
 * Serves Akri's v0.Registration on a unix socket: handlers call RegisterDiscoveryHandler with
 * their name and endpoint, and the registry makes them available to DeviceConfigurations.
 */
export async function startRegistrationServer(options: RegistrationServerOptions): Promise<RegistrationServer> {
  const { socketPath, log } = options;
  await mkdir(dirname(socketPath), { recursive: true });
  // A socket left by an agent that did not stop cleanly would make bind fail.
  const stale = await lstat(socketPath).catch(() => undefined);
  if (stale?.isSocket()) await unlink(socketPath);
  else if (stale) throw new Error(`--registration-socket ${socketPath} exists and is not a socket`);
  const registry = new HandlerRegistry({
    builtIn: options.builtIn,
    allowOverride: options.allowOverride,
    statePath: join(dirname(socketPath), STATE_FILE),
    firstListWarnMs: options.firstListWarnMs,
    log,
  });
  const server = new grpc.Server(CHANNEL_OPTIONS);
  server.addService(protocol().Registration.service, {
    RegisterDiscoveryHandler(
      call: grpc.ServerUnaryCall<RegisterDiscoveryHandlerRequest, unknown>,
      callback: grpc.sendUnaryData<Record<string, never>>,
    ) {
      try {
        registry.register(call.request);
        callback(null, {});
      } catch (err) {
        const refused = err instanceof RegistrationError;
        log.warn({ err: String(err) }, "external discovery handler registration refused");
        callback({
          code: refused ? grpc.status[err.code] : grpc.status.INTERNAL,
          details: refused ? err.message : "registration failed",
        });
      }
    },
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  // Handler pods run as other users; who may register is decided by who can reach the directory.
  await chmod(socketPath, 0o666);
  log.info({ socket: socketPath }, "serving discovery handler registration (Akri v0)");
  return {
    registry,
    async close() {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await registry.flush();
      await unlink(socketPath).catch(() => {});
    },
  };
}
