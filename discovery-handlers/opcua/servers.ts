import { passesFilter } from "../filter.js";
import type { DiscoveredDevice } from "../handler.js";
import { propertyValue } from "../sanitize.js";
import type { OpcuaDetails } from "./details.js";

/** What discovery learned of one OPC UA server (from FindServers and GetEndpoints). */
export interface FoundServer {
  /** The discovery URL the server was reached at: the device id, as in Akri. */
  discoveryUrl: string;
  applicationUri: string;
  applicationName: string;
  productUri: string;
  endpoints: { endpointUrl: string; securityMode: string; securityPolicyUri: string }[];
}

/** At most this many servers per configuration: an LDS is a device's word, and unbounded. */
export const MAX_SERVERS = 1000;

/** OPC UA application types that are servers (Server, ClientAndServer); Client and DiscoveryServer are not. */
export function isServerType(applicationType: number | string): boolean {
  return (
    applicationType === 0 ||
    applicationType === 2 ||
    applicationType === "Server" ||
    applicationType === "ClientAndServer"
  );
}

/** The opc.tcp URL among a server's discovery URLs (Akri prefers them), else undefined. */
export function pickDiscoveryUrl(urls: readonly (string | null)[] | null | undefined): string | undefined {
  return (urls ?? []).find((u): u is string => typeof u === "string" && /^opc\.tcp:\/\/\S+$/i.test(u));
}

/** Filters the servers and turns them into devices: one per discovery URL, first seen wins. */
export function devicesFromServers(found: readonly FoundServer[], details: OpcuaDetails): DiscoveredDevice[] {
  const out: DiscoveredDevice[] = [];
  const ids = new Set<string>();
  for (const s of found) {
    if (out.length >= MAX_SERVERS) break;
    if (!passesFilter(details.applicationNames, s.applicationName)) continue;
    if (!passesFilter(details.applicationUris, s.applicationUri)) continue;
    const id = s.discoveryUrl.slice(0, 1024);
    if (ids.has(id)) continue;
    ids.add(id);
    const modes = unique(s.endpoints.map((e) => e.securityMode));
    const policies = unique(s.endpoints.map((e) => policyName(e.securityPolicyUri)));
    // A server's endpoints normally share one URL and differ in security.
    const endpoint = s.endpoints[0];
    const properties: Record<string, string> = {
      OPCUA_DISCOVERY_URL: propertyValue(s.discoveryUrl),
      OPCUA_APPLICATION_URI: propertyValue(s.applicationUri),
      OPCUA_APPLICATION_NAME: propertyValue(s.applicationName),
    };
    if (s.productUri) properties.OPCUA_PRODUCT_URI = propertyValue(s.productUri);
    if (endpoint) properties.OPCUA_ENDPOINT_URL = propertyValue(endpoint.endpointUrl);
    if (modes.length) properties.OPCUA_SECURITY_MODES = propertyValue(modes.join(","));
    if (policies.length) properties.OPCUA_SECURITY_POLICIES = propertyValue(policies.join(","));
    out.push({ id, properties });
  }
  return out;
}

/** "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256" -> "Basic256Sha256". */
export function policyName(uri: string): string {
  const at = uri.lastIndexOf("#");
  return at >= 0 ? uri.slice(at + 1) : uri;
}

function unique(values: string[]): string[] {
  return [...new Set(values.filter(Boolean))].sort();
}
