import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { type OpcuaDetails, opcuaDetails } from "./details.js";

/**
 * OPC UA servers found through Local Discovery Servers and/or listed discovery URLs. The OPC UA
 * stack (node-opcua) is imported when a discovery starts, so agents with no opcua configuration
 * never load it.
 */
export const opcuaHandler: DiscoveryHandler<OpcuaDetails> = {
  name: "opcua",
  shared: true,
  detailsSchema: opcuaDetails,
  async *discover(context: DiscoveryContext<OpcuaDetails>): AsyncIterable<DiscoveredDevice[]> {
    const { discoverOpcuaServers } = await import("./discovery.js");
    yield* discoverOpcuaServers(context);
  },
};
