import type { DiscoveryHandler } from "./handler.js";
import { mdnsDetails } from "./mdns/details.js";
import { mqttDetails } from "./mqtt/details.js";
import { onvifDetails } from "./onvif/details.js";
import { opcuaDetails } from "./opcua/details.js";
import { usbDetails } from "./usb/details.js";

/** What the controller needs to know of a handler: its name, its details schema, whether devices are shared. */
export type HandlerSchema = Pick<DiscoveryHandler<unknown>, "name" | "detailsSchema" | "shared">;

/**
 * Every discovery handler by name, without its discovery code (and so without mqtt, bonjour,
 * protobufjs or usb): the controller validates discoveryDetails with this. It must agree with
 * HANDLERS in index.ts; test/unit/runtime.test.ts checks that it does.
 */
export const HANDLER_SCHEMAS: ReadonlyMap<string, HandlerSchema> = new Map(
  (
    [
      { name: "usb", detailsSchema: usbDetails, shared: false },
      { name: "onvif", detailsSchema: onvifDetails, shared: true },
      { name: "mqtt", detailsSchema: mqttDetails, shared: true },
      { name: "mdns", detailsSchema: mdnsDetails, shared: true },
      { name: "opcua", detailsSchema: opcuaDetails, shared: true },
    ] as HandlerSchema[]
  ).map((h) => [h.name, h]),
);
