import { HANDLERS } from "../../discovery-handlers/index.js";
import { Agent } from "../agent/agent.js";
import { parsePlacement } from "../k8s/dra.js";
import { loadKubeConfig } from "../k8s/kubeconfig.js";
import { createLogger } from "../log/logger.js";
import { startHttpServer } from "../observability/http-server.js";
import { startTracing } from "../observability/tracing.js";
import { startSettledGc } from "../runtime/settled-gc.js";
import { untilSignal } from "./signals.js";

export interface AgentCommandOptions {
  node?: string;
  kubeconfig?: string;
  handlers?: string;
  httpAddress?: string;
  registrationSocket?: string;
  allowExternalOverride?: string;
  placement?: string;
  kubeletDir?: string;
}

/** `spindle agent`: discovery on one node until SIGTERM; devices stay published across restarts. */
export async function agentCommand(options: AgentCommandOptions): Promise<void> {
  const nodeName = options.node ?? process.env.NODE_NAME;
  if (!nodeName) throw new Error("the node name is required: --node <name> or NODE_NAME");
  const placement = parsePlacement(options.placement);
  const enabled = options.handlers
    ?.split(",")
    .map((h) => h.trim())
    .filter(Boolean);
  for (const h of enabled ?? [])
    if (!HANDLERS.has(h))
      throw new Error(`--handlers: unknown handler "${h}" (known: ${[...HANDLERS.keys()].join(", ")})`);
  const handlers = enabled ? new Map([...HANDLERS].filter(([name]) => enabled.includes(name))) : HANDLERS;
  const log = createLogger("spindle-agent");
  // Loads the OpenTelemetry SDK only when OTEL_* configures an exporter.
  // One full GC after each burst of work: V8 would otherwise keep its garbage as RSS for good.
  startSettledGc();
  const stopTracing = await startTracing("spindle-agent", log, { nodeName });
  const disabled = new Set([...HANDLERS.keys()].filter((h) => !handlers.has(h)));
  // gRPC is loaded only when external handlers are served: agents without them do not pay its memory.
  const registration = options.registrationSocket
    ? await (await import("../../discovery-handlers/external/registration-server.js")).startRegistrationServer({
        socketPath: options.registrationSocket,
        builtIn: new Set(HANDLERS.keys()),
        allowOverride: new Set(
          (options.allowExternalOverride ?? "")
            .split(",")
            .map((h) => h.trim())
            .filter(Boolean),
        ),
        log,
      })
    : undefined;
  const agent = new Agent({
    kc: await loadKubeConfig(options.kubeconfig),
    nodeName,
    handlers,
    disabled,
    external: registration?.registry,
    placement,
    kubeletDir: options.kubeletDir || undefined,
    log,
  });
  let started = false;
  const server = options.httpAddress
    ? await startHttpServer(options.httpAddress, () => ({ ok: started, reason: started ? "ok" : "starting" }), log)
    : undefined;
  await agent.start();
  started = true;
  const signal = await untilSignal();
  log.info({ signal }, "stopping");
  await agent.stop();
  await registration?.close();
  await stopTracing(); // flushes the spans still queued
  server?.close();
}
