import { z } from "zod";
import { filterList } from "../filter.js";

// "_http._tcp", "_http", or "http"; a protocol suffix overrides `protocol` for that type.
const SERVICE_TYPE = /^_?([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\._(tcp|udp))?$/;

/** A Kubernetes node name (DNS subdomain). */
const NODE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/**
 * `interface` per node, keyed by node name: multi-NIC edge nodes reach the services through
 * different interfaces. The handler does not know its node; the agent calls `forNode` before
 * discovery starts, so each node runs with its own entry (or `interface` when it has none).
 */
const nodeInterfaces = z
  .record(z.string().max(253).regex(NODE_NAME, "expected a node name"), z.ipv4())
  .refine((map) => Object.keys(map).length <= 1024, "at most 1024 nodes")
  .optional()
  .meta({
    description:
      "Per-node multicast interface: node name -> IPv4 address of that node's interface; nodes not listed use `interface`.",
  });

export const mdnsDetails = z.strictObject({
  serviceTypes: z
    .array(z.string().regex(SERVICE_TYPE, 'expected a service type like "_http._tcp" or "http"'))
    .min(1)
    .max(32),
  names: filterList.optional().meta({ description: "Filter on service instance names." }),
  txt: z
    .record(z.string().min(1).max(255), filterList)
    .refine((r) => Object.keys(r).length <= 32, "at most 32 TXT filters")
    .optional()
    .meta({ description: "TXT key (any case) -> filter on its value; a missing key matches no Include list." }),
  interface: z
    .ipv4()
    .optional()
    .meta({ description: "IPv4 address of the interface for multicast, e.g. 127.0.0.1; all interfaces if unset." }),
  nodeInterfaces,
  protocol: z.enum(["tcp", "udp"]).default("tcp"),
});
export type MdnsDetails = z.infer<typeof mdnsDetails>;

/** The details as the agent on `nodeName` runs them: its `nodeInterfaces` entry becomes `interface`. */
export function mdnsDetailsForNode(details: MdnsDetails, nodeName: string): MdnsDetails {
  const own = details.nodeInterfaces && Object.hasOwn(details.nodeInterfaces, nodeName);
  return own ? { ...details, interface: details.nodeInterfaces?.[nodeName] } : details;
}

export interface ServiceType {
  /** Bare name, as bonjour-service wants it: "http". */
  name: string;
  protocol: "tcp" | "udp";
  /** DNS-SD form, "_http._tcp". */
  label: string;
}

/** Normalized, de-duplicated service types (the schema has already checked their form). */
export function serviceTypes(details: MdnsDetails): ServiceType[] {
  const out = new Map<string, ServiceType>();
  for (const raw of details.serviceTypes) {
    const match = SERVICE_TYPE.exec(raw);
    if (!match?.[1]) continue;
    const name = match[1].toLowerCase();
    const protocol = (match[2] as "tcp" | "udp" | undefined) ?? details.protocol;
    const label = `_${name}._${protocol}`;
    out.set(label, { name, protocol, label });
  }
  return [...out.values()];
}
