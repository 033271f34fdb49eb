/**
 * The opcua handler against real node-opcua servers and a Local Discovery Server on 127.0.0.1.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../src/log/logger.js";
import type { DiscoveredDevice } from "../handler.js";
import { opcuaHandler } from "./handler.js";
import { devicesFromServers, type FoundServer, pickDiscoveryUrl, policyName } from "./servers.js";
import { type RunningOpcua, startLds, startOpcuaServer } from "./testing.js";

const log = createLogger("test", "silent");
const details = (extra: Record<string, unknown>) => opcuaHandler.detailsSchema.parse(extra);

describe("devicesFromServers", () => {
  const server = (n: number): FoundServer => ({
    discoveryUrl: `opc.tcp://10.0.0.${n}:4840`,
    applicationUri: `urn:plant:press${n}`,
    applicationName: `Press ${n}`,
    productUri: "urn:vendor:press",
    endpoints: [
      {
        endpointUrl: `opc.tcp://10.0.0.${n}:4840`,
        securityMode: "SignAndEncrypt",
        securityPolicyUri: "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
      },
      {
        endpointUrl: `opc.tcp://10.0.0.${n}:4840`,
        securityMode: "None",
        securityPolicyUri: "http://opcfoundation.org/UA/SecurityPolicy#None",
      },
    ],
  });

  it("filters on application names and URIs (Akri's filter form) and names the properties", () => {
    const found = [server(1), server(2), server(3)];
    const picked = devicesFromServers(
      found,
      details({
        applicationNames: { action: "Exclude", items: ["press 2"] },
        applicationUris: { action: "Include", items: ["urn:plant:press1", "urn:plant:press2"] },
      }),
    );
    expect(picked).toEqual([
      {
        id: "opc.tcp://10.0.0.1:4840",
        properties: {
          OPCUA_DISCOVERY_URL: "opc.tcp://10.0.0.1:4840",
          OPCUA_APPLICATION_URI: "urn:plant:press1",
          OPCUA_APPLICATION_NAME: "Press 1",
          OPCUA_PRODUCT_URI: "urn:vendor:press",
          OPCUA_ENDPOINT_URL: "opc.tcp://10.0.0.1:4840",
          OPCUA_SECURITY_MODES: "None,SignAndEncrypt",
          OPCUA_SECURITY_POLICIES: "Basic256Sha256,None",
        },
      },
    ]);
  });

  it("keeps the first of two LDSes' answers for one server", () => {
    const a = server(1);
    expect(devicesFromServers([a, { ...a, applicationName: "dup" }], details({}))).toHaveLength(1);
  });

  it("prefers opc.tcp discovery URLs and names policies by their fragment", () => {
    expect(pickDiscoveryUrl(["http://x:80", null, "opc.tcp://x:4840"])).toBe("opc.tcp://x:4840");
    expect(pickDiscoveryUrl(["https://x"])).toBeUndefined();
    expect(policyName("http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss")).toBe("Aes256_Sha256_RsaPss");
  });

  it("accepts Akri's discoveryDetails as they are", () => {
    const d = details({
      opcuaDiscoveryMethod: { standard: { discoveryUrls: ["opc.tcp://localhost:4840/"] } },
      applicationNames: { action: "Exclude", items: [] },
    });
    expect(d.opcuaDiscoveryMethod.standard.discoveryUrls).toEqual(["opc.tcp://localhost:4840/"]);
    expect(
      opcuaHandler.detailsSchema.safeParse({ opcuaDiscoveryMethod: { standard: { discoveryUrls: ["http://x"] } } })
        .success,
    ).toBe(false);
  });
});

describe("opcua discovery against a real LDS and servers", () => {
  let pki: string;
  let lds: RunningOpcua;
  let a: RunningOpcua;
  let b: RunningOpcua | undefined;
  const base = 47000 + (process.pid % 500) * 4;

  beforeAll(async () => {
    pki = await mkdtemp(join(tmpdir(), "spindle-opcua-test-"));
    process.env.SPINDLE_OPCUA_PKI_DIR = join(pki, "client");
    lds = await startLds(base, pki);
    a = await startOpcuaServer({
      port: base + 1,
      applicationName: "Press A",
      applicationUri: "urn:test:press-a",
      ldsUrl: lds.url,
      pkiDir: pki,
    });
    b = await startOpcuaServer({
      port: base + 2,
      applicationName: "Press B",
      applicationUri: "urn:test:press-b",
      productUri: "urn:acme:press",
      ldsUrl: lds.url,
      pkiDir: pki,
    });
  }, 60_000);

  afterAll(async () => {
    await b?.stop();
    await a?.stop();
    await lds?.stop();
    if (pki) await rm(pki, { recursive: true, force: true });
  });

  it("finds both servers through FindServers with their properties, and drops one that stops", async () => {
    const abort = new AbortController();
    const sets: DiscoveredDevice[][] = [];
    const d = details({ opcuaDiscoveryMethod: { standard: { discoveryUrls: [lds.url] } }, pollSeconds: 1 });
    const run = (async () => {
      for await (const set of opcuaHandler.discover({ details: d, properties: {}, signal: abort.signal, log })) {
        sets.push(set);
        if (set.length === 2) {
          await b!.stop();
          b = undefined;
        }
        if (sets.length >= 2 && set.length === 1) abort.abort();
      }
    })();
    const timer = setTimeout(() => abort.abort(), 40_000);
    await run;
    clearTimeout(timer);
    const first = sets.find((s) => s.length === 2)!;
    expect(first.map((x) => x.properties.OPCUA_APPLICATION_NAME).sort()).toEqual(["Press A", "Press B"]);
    const pressB = first.find((x) => x.properties.OPCUA_APPLICATION_URI === "urn:test:press-b")!;
    expect(pressB.id).toBe(`opc.tcp://127.0.0.1:${base + 2}`);
    expect(pressB.properties.OPCUA_PRODUCT_URI).toBe("urn:acme:press");
    expect(pressB.properties.OPCUA_ENDPOINT_URL).toBe(`opc.tcp://127.0.0.1:${base + 2}`);
    expect(pressB.properties.OPCUA_SECURITY_MODES).toBe("None,Sign,SignAndEncrypt");
    expect(pressB.properties.OPCUA_SECURITY_POLICIES).toContain("Basic256Sha256");
    // B unregisters from the LDS as it shuts down; the next poll no longer finds it.
    expect(sets[sets.length - 1]!.map((x) => x.properties.OPCUA_APPLICATION_NAME)).toEqual(["Press A"]);
  }, 60_000);

  it("a discovery URL that does not answer gives an empty set, not a failure", async () => {
    const abort = new AbortController();
    const d = details({
      opcuaDiscoveryMethod: { standard: { discoveryUrls: [`opc.tcp://127.0.0.1:${base + 3}`] } },
      timeoutSeconds: 1,
    });
    for await (const set of opcuaHandler.discover({ details: d, properties: {}, signal: abort.signal, log })) {
      expect(set).toEqual([]);
      abort.abort();
    }
  }, 30_000);
});
