import { z } from "zod";

/** A Kubernetes node name (DNS subdomain). */
const NODE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/**
 * `interface` per node, keyed by node name, for handlers that multicast (ONVIF, mDNS): multi-NIC
 * edge nodes reach the devices through different interfaces. A handler does not know its node;
 * the agent calls its `forNode` before discovery starts, so each node runs with its own entry
 * (or `interface` when it has none).
 */
export const nodeInterfaces = z
  .record(z.string().max(253).regex(NODE_NAME, "expected a node name"), z.ipv4())
  .refine((map) => Object.keys(map).length <= 1024, "at most 1024 nodes")
  .optional()
  .meta({
    description:
      "Per-node multicast interface: node name -> IPv4 address of that node's interface; nodes not listed use `interface`.",
  });

/** The details as `nodeName` runs them: its own `nodeInterfaces` entry as `interface`. */
export function withNodeInterface<D extends { interface?: string; nodeInterfaces?: Record<string, string> }>(
  details: D,
  nodeName: string,
): D {
  const own = details.nodeInterfaces && Object.hasOwn(details.nodeInterfaces, nodeName);
  return own ? { ...details, interface: details.nodeInterfaces?.[nodeName] } : details;
}
