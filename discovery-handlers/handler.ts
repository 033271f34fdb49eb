import type { z } from "zod";
import type { DeviceMount, DeviceNode } from "../src/api/device.js";
import type { Logger } from "../src/log/logger.js";

/** One device as a handler reports it. */
export interface DiscoveredDevice {
  /** Stable identity: the same physical device gives the same id across re-plugs and restarts. */
  id: string;
  /** Connection details (non-secret), named like Akri's: ONVIF_DEVICE_SERVICE_URL, USB_VENDOR_ID, ... */
  properties: Record<string, string>;
  /** Set when the device was found but could not be fully read (wrong credentials, timeout). */
  problem?: string;
  /** Host paths a container would mount (Akri's Mount); external handlers set them. */
  mounts?: DeviceMount[];
  /** Host device nodes a container would get (Akri's DeviceSpec); external handlers set them. */
  deviceSpecs?: DeviceNode[];
}

export interface DiscoveryContext<Details> {
  /** discoveryDetails, already validated by the handler's schema. */
  details: Details;
  /** discoveryProperties with Secret and ConfigMap values resolved; may hold credentials: never log them. */
  properties: Record<string, string>;
  /** Aborted when the configuration changes or goes away; the handler then releases everything. */
  signal: AbortSignal;
  log: Logger;
}

/**
 * Every discovery handler implements this. `discover` yields complete device sets, each replacing
 * the last: at once when the handler hears a change (birth/death, Hello/Bye, hotplug), otherwise
 * on its poll interval. It ends when the signal aborts.
 */
export interface DiscoveryHandler<Details = unknown> {
  name: string;
  /** Shared devices are seen by several nodes (network cameras); local ones by one node (USB). */
  shared: boolean;
  detailsSchema: z.ZodType<Details>;
  /**
   * Details as the agent on `nodeName` runs them (per-node overrides such as `nodeInterfaces`);
   * the agent calls it after validating and before `discover`. Absent: the details as given.
   */
  forNode?(details: Details, nodeName: string): Details;
  discover(context: DiscoveryContext<Details>): AsyncIterable<DiscoveredDevice[]>;
}
