/**
 * Real node-opcua servers and a Local Discovery Server for tests (never imported by production
 * code). Everything listens and announces on 127.0.0.1 only.
 */
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);

/**
 * The LDS always runs an mDNS responder and announcer (sterfive-bonjour-service). Unpatched they
 * would send multicast out of the machine's default interface; tests keep it on loopback.
 */
function keepMdnsOnLoopback(): void {
  const bonjour = require("sterfive-bonjour-service") as {
    Bonjour: new (...args: unknown[]) => unknown;
    __loopback?: true;
  };
  if (bonjour.__loopback) return;
  const Original = bonjour.Bonjour;
  bonjour.Bonjour = class extends (Original as new (...args: unknown[]) => object) {
    constructor(options: Record<string, unknown> = {}, onError?: unknown) {
      super({ ...options, interface: "127.0.0.1", bind: "0.0.0.0" }, onError);
    }
  } as typeof Original;
  bonjour.__loopback = true;
}

export interface RunningOpcua {
  url: string;
  stop(): Promise<void>;
}

async function certificateManager(pkiDir: string, name: string) {
  const { OPCUACertificateManager } =
    require("node-opcua-certificate-manager") as typeof import("node-opcua-certificate-manager");
  const manager = new OPCUACertificateManager({
    rootFolder: join(pkiDir, name),
    automaticallyAcceptUnknownCertificate: true,
  });
  await manager.initialize();
  return manager;
}

/** A Local Discovery Server on 127.0.0.1:<port> that accepts every server's registration. */
export async function startLds(port: number, pkiDir: string): Promise<RunningOpcua> {
  keepMdnsOnLoopback();
  const { OPCUADiscoveryServer } =
    require("node-opcua-server-discovery") as typeof import("node-opcua-server-discovery");
  const lds = new OPCUADiscoveryServer({
    port,
    hostname: "127.0.0.1",
    host: "127.0.0.1",
    serverCertificateManager: await certificateManager(pkiDir, `lds-${port}`),
    automaticallyAcceptUnknownCertificate: true,
  } as ConstructorParameters<typeof OPCUADiscoveryServer>[0]);
  await lds.start();
  return { url: `opc.tcp://127.0.0.1:${port}`, stop: () => lds.shutdown() };
}

export interface ServerOptions {
  port: number;
  applicationName: string;
  applicationUri: string;
  productUri?: string;
  /** Registers with this LDS (and keeps its registration fresh). */
  ldsUrl?: string;
  pkiDir: string;
}

/** An OPC UA server on 127.0.0.1:<port>, registered with the LDS when `ldsUrl` is given. */
export async function startOpcuaServer(options: ServerOptions): Promise<RunningOpcua> {
  keepMdnsOnLoopback();
  const { OPCUAServer, RegisterServerMethod } = require("node-opcua-server") as typeof import("node-opcua-server");
  const server = new OPCUAServer({
    port: options.port,
    hostname: "127.0.0.1",
    host: "127.0.0.1",
    serverInfo: {
      applicationUri: options.applicationUri,
      applicationName: { text: options.applicationName },
      productUri: options.productUri ?? "urn:spindle:test-server",
    },
    serverCertificateManager: await certificateManager(options.pkiDir, `server-${options.port}`),
    registerServerMethod: options.ldsUrl ? RegisterServerMethod.LDS : RegisterServerMethod.HIDDEN,
    discoveryServerEndpointUrl: options.ldsUrl,
  });
  await server.start();
  return {
    url: `opc.tcp://127.0.0.1:${options.port}`,
    stop: () => server.shutdown(0),
  };
}
