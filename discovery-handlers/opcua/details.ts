import { z } from "zod";
import { filterList } from "../filter.js";

/** An OPC UA discovery URL: opc.tcp://host:port[/path]. */
const discoveryUrl = z
  .string()
  .max(512)
  .regex(/^opc\.tcp:\/\/[^\s/]+(\/\S*)?$/, 'expected a URL like "opc.tcp://host:4840/"');

/**
 * Akri's OPC UA discoveryDetails (`opcuaDiscoveryMethod.standard.discoveryUrls`,
 * `applicationNames`), plus an application URI filter, FindServersOnNetwork and the poll interval.
 */
export const opcuaDetails = z.strictObject({
  opcuaDiscoveryMethod: z
    .strictObject({
      standard: z.strictObject({
        discoveryUrls: z.array(discoveryUrl).min(1).max(64).default(["opc.tcp://localhost:4840/"]).meta({
          description:
            "Discovery endpoints to ask with FindServers: Local Discovery Servers, or servers themselves (each answers for itself).",
        }),
      }),
    })
    .default({ standard: { discoveryUrls: ["opc.tcp://localhost:4840/"] } }),
  findServersOnNetwork: z
    .boolean()
    .default(false)
    .meta({ description: "Also ask each discovery URL (an LDS-ME) for the servers it knows on the network." }),
  applicationNames: filterList.optional().meta({ description: "Filter on the servers' application names." }),
  applicationUris: filterList.optional().meta({ description: "Filter on the servers' application URIs." }),
  pollSeconds: z.int().min(1).max(3600).default(10).meta({ description: "How often the servers are asked again." }),
  timeoutSeconds: z.number().min(0.1).max(60).default(3).meta({ description: "Per request to a server." }),
});
export type OpcuaDetails = z.infer<typeof opcuaDetails>;
