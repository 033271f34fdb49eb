import { z } from "zod";
import { filterList } from "../filter.js";
import { nodeInterfaces, withNodeInterface } from "../node-interfaces.js";

/**
 * discoveryDetails of an `onvif` DeviceConfiguration. The filter fields and
 * `discoveryTimeoutSeconds` have Akri's names and meaning, so Akri ONVIF configurations carry over.
 *
 * Credentials are not details: they come from the resolved `discoveryProperties` (usually a
 * Secret), under these keys:
 * - `username`, `password`: used for every camera without its own entry;
 * - `<uuid>.username`, `<uuid>.password`: for one camera, where `<uuid>` is its endpoint UUID in
 *   lower case without `urn:uuid:` (e.g. `3fa1fe68-b915-4053-a3e1-ac15a21f5f91.username`); the
 *   full endpoint address (`urn:uuid:3fa1…`) is accepted as well. A camera-specific key wins over
 *   the default for that key alone.
 * They are never logged and never published as properties.
 */

export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;

/** `host` or `host:port` (IPv4 address or DNS name: WS-Discovery here is IPv4). */
const HOST_PORT = /^[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?$/;

export const onvifDetails = z.strictObject({
  ipAddresses: filterList.optional().meta({ description: "Camera IPv4 addresses (from the device service URL)." }),
  macAddresses: filterList
    .optional()
    .meta({ description: "Camera MAC addresses (GetNetworkInterfaces); a camera whose MAC is unknown fails Include." }),
  scopes: filterList
    .optional()
    .meta({ description: "WS-Discovery scopes; Include keeps a camera when any of its scopes is listed." }),
  uuids: filterList.optional().meta({ description: "Endpoint UUIDs, with or without the urn:uuid: prefix." }),
  discoveryTimeoutSeconds: z
    .number()
    .min(0.1)
    .max(60)
    .default(1.5)
    .meta({ description: "How long ProbeMatches are collected after each probe." }),
  probeIntervalSeconds: z
    .number()
    .min(1)
    .max(86_400)
    .default(30)
    .meta({ description: "Time between probe rounds; Hello and Bye are acted on at once." }),
  interface: z.ipv4().optional().meta({
    description: "IPv4 address of the interface for multicast (e.g. 127.0.0.1); the system default when absent.",
  }),
  nodeInterfaces,
  unicastHosts: z.array(z.string().max(259).regex(HOST_PORT, "expected host or host:port")).max(256).optional().meta({
    description: "Hosts (host[:port], port 3702 by default) probed by unicast UDP, for networks without multicast.",
  }),
  requestTimeoutSeconds: z
    .number()
    .min(0.1)
    .max(120)
    .default(5)
    .meta({ description: "Hard limit on each SOAP call to a camera." }),
  maxResponseBytes: z
    .int()
    .min(4096)
    .max(64 * 1024 * 1024)
    .default(DEFAULT_MAX_RESPONSE_BYTES)
    .meta({ description: "Largest SOAP response accepted from a camera." }),
});
export type OnvifDetails = z.infer<typeof onvifDetails>;

/** The details as the agent on `nodeName` runs them: its `nodeInterfaces` entry becomes `interface`. */
export function onvifDetailsForNode(details: OnvifDetails, nodeName: string): OnvifDetails {
  return withNodeInterface(details, nodeName);
}
