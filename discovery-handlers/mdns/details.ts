import { z } from "zod";
import { filterList } from "../filter.js";
import { nodeInterfaces, withNodeInterface } from "../node-interfaces.js";

// "_http._tcp", "_http", or "http"; a protocol suffix overrides `protocol` for that type.
const SERVICE_TYPE = /^_?([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\._(tcp|udp))?$/;

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
  return withNodeInterface(details, nodeName);
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
