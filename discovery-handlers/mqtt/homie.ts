import {
  byId,
  type Convention,
  type ConventionDevice,
  changed,
  decodeUtf8,
  definedProperties,
  deviceId,
  MAX_TRACKED,
  type MqttMessage,
  noChange,
  type Outcome,
  type ParseResult,
  type Problem,
  parseJsonObject,
  text,
} from "./common.js";

/**
 * Homie: `<prefix>/5/<device>/$state` (v5) or `<prefix>/<device>/$state` (v3/v4), retained. The
 * device is present while its state is init, ready, sleeping (or v4's alert); `disconnected` and
 * `lost` (the last will) mean gone, and an empty `$state` means the device was removed. The name
 * comes from the v5 `$description` JSON or the v3/v4 `$name` topic.
 */

export const HOMIE = "homie";

export const HOMIE_STATES = ["init", "ready", "disconnected", "sleeping", "lost", "alert"] as const;
export type HomieState = (typeof HOMIE_STATES)[number];
const PRESENT_STATES: ReadonlySet<string> = new Set<HomieState>(["init", "ready", "sleeping", "alert"]);

export type HomieVersion = "5" | "4";

export type HomieUpdate =
  | { type: "state"; version: HomieVersion; device: string; state: HomieState | undefined }
  | { type: "name"; version: HomieVersion; device: string; name: string | undefined };

export interface HomieOptions {
  prefix: string;
}

/** Where a topic points in the Homie tree: the device and the attribute, or undefined. */
export function parseHomieTopic(
  topic: string,
  prefix: string,
): { version: HomieVersion; device: string; attribute: string } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const levels = topic.slice(prefix.length + 1).split("/");
  let parts: { version: HomieVersion; device: string; attribute: string } | undefined;
  if (levels.length === 3 && levels[0] === "5") {
    parts = { version: "5", device: levels[1]!, attribute: levels[2]! };
  } else if (levels.length === 2) {
    parts = { version: "4", device: levels[0]!, attribute: levels[1]! };
  }
  // `$broadcast` and the like are not devices.
  if (!parts || parts.device.length === 0 || parts.device.startsWith("$")) return undefined;
  return parts;
}

/** Parses one message on a Homie topic. Pure: no state, never throws. */
export function parseHomieMessage(
  topic: string,
  payload: Buffer,
  _retained: boolean,
  options: HomieOptions,
): ParseResult<HomieUpdate> {
  const parts = parseHomieTopic(topic, options.prefix);
  if (!parts) return { updates: [] };
  const { version, device } = parts;
  if (parts.attribute === "$state") {
    // An empty `$state` (normally a cleared retained message) removes the device.
    if (payload.length === 0) return { updates: [{ type: "state", version, device, state: undefined }] };
    const state = decodeUtf8(payload)?.trim();
    if (!state || !(HOMIE_STATES as readonly string[]).includes(state)) {
      return { updates: [], problem: { level: "warn", message: "Homie $state is not a known state" } };
    }
    return { updates: [{ type: "state", version, device, state: state as HomieState }] };
  }
  if (version === "5" && parts.attribute === "$description") {
    if (payload.length === 0) return { updates: [{ type: "name", version, device, name: undefined }] };
    const parsed = parseJsonObject(payload, "Homie $description");
    if ("problem" in parsed) return { updates: [], problem: parsed.problem };
    return { updates: [{ type: "name", version, device, name: text(parsed.value.name, 256) }] };
  }
  if (version === "4" && parts.attribute === "$name") {
    const name = payload.length === 0 ? undefined : decodeUtf8(payload);
    if (payload.length > 0 && name === undefined) {
      return { updates: [], problem: { level: "warn", message: "Homie $name is not UTF-8" } };
    }
    return { updates: [{ type: "name", version, device, name: text(name, 256) }] };
  }
  return { updates: [] };
}

interface HomieDevice {
  version: HomieVersion;
  device: string;
  state?: HomieState;
  name?: string;
}

/** Homie state: per device, its last `$state` and name. */
export class HomieConvention implements Convention {
  readonly name = HOMIE;
  private readonly known = new Map<string, HomieDevice>();

  constructor(private readonly options: HomieOptions) {}

  subscriptions(): string[] {
    const p = this.options.prefix;
    return [`${p}/5/+/$state`, `${p}/5/+/$description`, `${p}/+/$state`, `${p}/+/$name`];
  }

  receive(message: MqttMessage, _now: number): Outcome {
    const result = parseHomieMessage(message.topic, message.payload, message.retained, this.options);
    const problems: Problem[] = result.problem ? [result.problem] : [];
    let didChange = false;
    for (const update of result.updates) {
      const key = `${update.version}/${update.device}`;
      let device = this.known.get(key);
      if (!device) {
        if (this.known.size >= MAX_TRACKED) {
          problems.push({ level: "warn", message: `more than ${MAX_TRACKED} Homie devices; ignoring more` });
          continue;
        }
        device = { version: update.version, device: update.device };
        this.known.set(key, device);
      }
      if (update.type === "state") device.state = update.state;
      else device.name = update.name;
      if (device.state === undefined && device.name === undefined) this.known.delete(key);
      didChange = true;
    }
    return changed(didChange, problems);
  }

  connected(_now: number, first: boolean): Outcome {
    if (first) return noChange();
    // Homie topics are retained: rebuild from what the broker re-sends.
    this.known.clear();
    return changed(true);
  }

  disconnected(_now: number): void {}

  devices(_now: number): ConventionDevice[] {
    const devices: ConventionDevice[] = [];
    for (const device of this.known.values()) {
      if (device.state === undefined || !PRESENT_STATES.has(device.state)) continue;
      const ids = deviceId(HOMIE, device.device);
      if (!ids) continue;
      const root =
        device.version === "5"
          ? `${this.options.prefix}/5/${device.device}`
          : `${this.options.prefix}/${device.device}`;
      devices.push({
        id: ids.id,
        properties: definedProperties({
          MQTT_DEVICE_ID: ids.localId,
          MQTT_TOPIC: text(root),
          MQTT_DEVICE_NAME: device.name,
          MQTT_HOMIE_VERSION: device.version,
        }),
      });
    }
    return devices.sort(byId);
  }

  nextChange(_now: number): number | undefined {
    return undefined;
  }
}
