import { tmpdir } from "node:os";
import { join } from "node:path";
import { OPCUACertificateManager } from "node-opcua-certificate-manager";
import {
  type ApplicationDescription,
  type EndpointDescription,
  MessageSecurityMode,
  OPCUAClient,
  SecurityPolicy,
} from "node-opcua-client";
import type { DiscoveredDevice, DiscoveryContext } from "../handler.js";
import type { OpcuaDetails } from "./details.js";
import { devicesFromServers, type FoundServer, isServerType, MAX_SERVERS, pickDiscoveryUrl } from "./servers.js";

/**
 * Polls: FindServers on every discovery URL (and FindServersOnNetwork when asked), then
 * GetEndpoints on each server found. A server that does not answer is left out, even while an
 * LDS still lists it (registrations there outlive the server by minutes). Yields when the set
 * changes.
 */
export async function* discoverOpcuaServers(
  context: DiscoveryContext<OpcuaDetails>,
): AsyncIterable<DiscoveredDevice[]> {
  const { details, signal, log } = context;
  let last: string | undefined;
  const failing = new Set<string>();
  while (!signal.aborted) {
    const found = await scan(details, signal, (url, err) => {
      if (err === undefined) {
        if (failing.delete(url)) log.info({ url }, "OPC UA discovery URL answers again");
      } else if (!failing.has(url)) {
        failing.add(url);
        log.warn({ url, err: String(err) }, "OPC UA discovery URL does not answer");
      }
    });
    if (signal.aborted) return;
    const devices = devicesFromServers(found, details);
    const key = JSON.stringify(devices);
    if (key !== last) {
      last = key;
      yield devices;
    }
    await sleep(details.pollSeconds * 1000, signal);
  }
}

async function scan(
  details: OpcuaDetails,
  signal: AbortSignal,
  report: (url: string, err?: unknown) => void,
): Promise<FoundServer[]> {
  const timeoutMs = details.timeoutSeconds * 1000;
  const lds = [...details.opcuaDiscoveryMethod.standard.discoveryUrls];
  const descriptions: ApplicationDescription[] = [];
  const asked = new Set<string>();
  const ask = async (url: string) => {
    if (asked.has(url) || asked.size > MAX_SERVERS) return;
    asked.add(url);
    try {
      const servers = await withClient(url, timeoutMs, signal, (c) => c.findServers());
      descriptions.push(...servers.slice(0, MAX_SERVERS));
      report(url);
    } catch (err) {
      if (lds.includes(url)) report(url, err);
    }
  };
  await Promise.all(lds.map(ask));
  if (details.findServersOnNetwork) {
    const onNetwork = await Promise.all(
      lds.map((url) => withClient(url, timeoutMs, signal, (c) => c.findServersOnNetwork()).catch(() => [])),
    );
    await Promise.all(
      onNetwork
        .flat()
        .slice(0, MAX_SERVERS)
        .map((s) => s.discoveryUrl)
        .filter((u): u is string => typeof u === "string" && u.startsWith("opc.tcp://"))
        .map(ask),
    );
  }
  const byUrl = new Map<string, ApplicationDescription>();
  for (const d of descriptions) {
    if (!isServerType(d.applicationType)) continue;
    const url = pickDiscoveryUrl(d.discoveryUrls);
    if (url && !byUrl.has(url)) byUrl.set(url, d);
  }
  const found = await Promise.all(
    [...byUrl].slice(0, MAX_SERVERS).map(async ([url, d]): Promise<FoundServer | undefined> => {
      let endpoints: EndpointDescription[];
      try {
        endpoints = await withClient(url, timeoutMs, signal, (c) => c.getEndpoints());
      } catch {
        return undefined; // listed, but not there
      }
      return {
        discoveryUrl: url,
        applicationUri: d.applicationUri ?? "",
        applicationName: d.applicationName?.text ?? "",
        productUri: d.productUri ?? "",
        endpoints: endpoints.slice(0, 64).map((e) => ({
          endpointUrl: e.endpointUrl ?? "",
          securityMode: MessageSecurityMode[e.securityMode] ?? String(e.securityMode),
          securityPolicyUri: e.securityPolicyUri ?? "",
        })),
      };
    }),
  );
  return found.filter((s): s is FoundServer => s !== undefined);
}

let certificates: OPCUACertificateManager | undefined;

/**
 * node-opcua keeps a client certificate (made on first use) in a PKI folder; by default under
 * ~/.config, which the agent's read-only root file system does not allow. Discovery needs no
 * trust decisions, so one writable folder per process: SPINDLE_OPCUA_PKI_DIR or <tmp>/spindle-opcua-pki.
 */
function certificateManager(): OPCUACertificateManager {
  certificates ??= new OPCUACertificateManager({
    rootFolder: process.env.SPINDLE_OPCUA_PKI_DIR ?? join(tmpdir(), "spindle-opcua-pki"),
    automaticallyAcceptUnknownCertificate: true,
  });
  return certificates;
}

/** Connects without security (discovery services need none), runs `use`, disconnects; bounded by `timeoutMs`. */
async function withClient<T>(
  url: string,
  timeoutMs: number,
  signal: AbortSignal,
  use: (client: OPCUAClient) => Promise<T>,
): Promise<T> {
  const client = OPCUAClient.create({
    applicationName: "Spindle",
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    endpointMustExist: false,
    transportTimeout: timeoutMs,
    clientCertificateManager: certificateManager(),
  });
  let timer: NodeJS.Timeout | undefined;
  const abort = () => void client.disconnect().catch(() => {});
  signal.addEventListener("abort", abort, { once: true });
  try {
    return await Promise.race([
      (async () => {
        await client.connect(url);
        return use(client);
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer from ${url} within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", abort);
    await client.disconnect().catch(() => {});
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
