import { z } from "zod";
import { filterList } from "../filter.js";
import { isTopicFilter } from "./common.js";

/** The MQTT handler's discoveryDetails. Credentials never go here: they come from discoveryProperties. */

const DEFAULT_SILENCE_SECONDS = 60;

function isBrokerUri(value: string): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  return (url.protocol === "mqtt:" || url.protocol === "mqtts:") && url.hostname.length > 0;
}

function hasNoCredentials(value: string): boolean {
  try {
    const url = new URL(value);
    return url.username === "" && url.password === "";
  } catch {
    return true;
  }
}

const brokerUri = z
  .string()
  .max(2048)
  .refine(isBrokerUri, { message: "brokerUri must be an mqtt:// or mqtts:// URI with a host" })
  .refine(hasNoCredentials, {
    message: "brokerUri must not hold credentials: put username and password in discoveryProperties",
  })
  .meta({
    description: "mqtt://host:port or mqtts://host:port; when absent the broker is found over mDNS (_mqtt._tcp).",
  });

const topicFilter = z
  .string()
  .min(1)
  .max(1024)
  .refine(isTopicFilter, { message: "not a valid MQTT topic filter (+ and # must fill a whole level, # last)" });

/** A topic prefix: no wildcards, no empty levels at the ends. */
const topicPrefix = z
  .string()
  .min(1)
  .max(256)
  .refine((p) => !/[+#\u0000]/.test(p) && !p.startsWith("/") && !p.endsWith("/") && !p.includes("//"), {
    message: "a topic prefix has no wildcards and no empty levels",
  });

const silenceSeconds = z.number().positive().max(86400).default(DEFAULT_SILENCE_SECONDS).meta({
  description: "A device matching the pattern is present while it published within this many seconds.",
});

/** A plain topic pattern: a device per value of its wildcards, alive while it publishes. */
export const topicPattern = z.union([
  topicFilter.transform((pattern) => ({ pattern, silenceSeconds: DEFAULT_SILENCE_SECONDS })),
  z.strictObject({ pattern: topicFilter, silenceSeconds }),
]);
export type TopicPattern = z.infer<typeof topicPattern>;

export const mqttConventions = z.strictObject({
  homeAssistant: z.boolean().default(true).meta({ description: "Home Assistant MQTT discovery configs." }),
  homie: z.boolean().default(true).meta({ description: "Homie v5 (and v3/v4) devices." }),
  sparkplug: z.boolean().default(true).meta({ description: "Sparkplug B 3.0 edge nodes and devices." }),
  topics: z.array(topicPattern).max(64).default([]).meta({
    description: "Plain topic patterns like sensors/+/telemetry; the wildcards' values are the device id.",
  }),
});
export type MqttConventions = z.infer<typeof mqttConventions>;

export const mqttDetails = z.strictObject({
  brokerUri: brokerUri.optional(),
  mdnsInterface: z
    .union([z.ipv4(), z.ipv6()])
    .optional()
    .meta({ description: "Local IP address of the interface mDNS queries go out on (when brokerUri is absent)." }),
  conventions: mqttConventions.prefault({}),
  homeAssistantPrefix: topicPrefix.default("homeassistant"),
  homiePrefix: topicPrefix.optional().meta({
    description:
      "Restricts Homie 5 discovery to this domain (<prefix>/5/+/$state) and sets the Homie 3/4 base topic; " +
      "when absent, Homie 5 devices of every domain are found (+/5/+/$state, the convention's default) and Homie 3/4 ones under homie/.",
  }),
  sparkplugGroups: filterList.optional().meta({ description: "Sparkplug group ids to include or exclude." }),
  deviceIds: filterList.optional().meta({ description: "Device ids (mqtt:<convention>:<id> or the bare id)." }),
  maxPayloadBytes: z.int().min(1).max(268_435_455).default(262_144).meta({
    description: "Messages with larger payloads are dropped.",
  }),
});
export type MqttDetails = z.infer<typeof mqttDetails>;
