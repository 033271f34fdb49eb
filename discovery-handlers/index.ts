import type { DiscoveryHandler } from "./handler.js";
import { mdnsHandler } from "./mdns/handler.js";
import { mqttHandler } from "./mqtt/handler.js";
import { onvifHandler } from "./onvif/handler.js";
import { opcuaHandler } from "./opcua/handler.js";
import { usbHandler } from "./usb/handler.js";

/** Every discovery handler an agent can run, by the name a DeviceConfiguration uses. */
export const HANDLERS: ReadonlyMap<string, DiscoveryHandler<unknown>> = new Map(
  [usbHandler, onvifHandler, mqttHandler, mdnsHandler, opcuaHandler].map((h) => [
    h.name,
    h as DiscoveryHandler<unknown>,
  ]),
);
