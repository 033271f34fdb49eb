import { serveDiscoveryHandler } from "../../discovery-handlers/external/sdk.js";
import { HANDLERS } from "../../discovery-handlers/index.js";
import { createLogger } from "../log/logger.js";
import { untilSignal } from "./signals.js";

export interface HandlerCommandOptions {
  registrationSocket: string;
  name?: string;
  socket?: string;
}

/** `spindle handler <name>`: a built-in handler served over Akri's v0 protocol, with the SDK. */
export async function handlerCommand(name: string, options: HandlerCommandOptions): Promise<void> {
  const handler = HANDLERS.get(name);
  if (!handler) throw new Error(`unknown handler "${name}" (known: ${[...HANDLERS.keys()].join(", ")})`);
  const log = createLogger("spindle-handler");
  const served = await serveDiscoveryHandler(handler, {
    registrationSocket: options.registrationSocket,
    name: options.name ?? `${name}-external`,
    socket: options.socket,
    log,
  });
  const signal = await untilSignal();
  log.info({ signal }, "stopping");
  await served.close();
}
