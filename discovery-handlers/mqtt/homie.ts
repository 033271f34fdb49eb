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
 * Homie: `<domain>/5/<device>/$state` (v5) or `<prefix>/<device>/$state` (v3/v4), retained. The
 * device is present while its state is init, ready, sleeping (or v4's alert); `disconnected` and
 * `lost` (the last will) mean gone, and an empty `$state` means the device was removed. The name
 * comes from the v5 `$description` JSON or the v3/v4 `$name` topic; a device without one is
 * named by its id (as Homie 5 names nodes and properties without a name).
 *
 * Homie 5 discovery covers every domain by default (`+/5/+/$state`, "Auto-Discovery"); a
 * configured prefix restricts it to one domain. v3/v4 devices are found under the prefix
 * (`homie` by default). Homie 5 device trees: a child's `$description` names its `root`; when
 * the root is `lost` (its last will), every device in its tree is lost ("Device hierarchy").
 */

export const HOMIE = "homie";
/** The v3/v4 base topic, and the v5 domain whose device ids are published without a domain. */
export const DEFAULT_HOMIE_DOMAIN = "homie";

export const HOMIE_STATES = ["init", "ready", "disconnected", "sleeping", "lost", "alert"] as const;
export type HomieState = (typeof HOMIE_STATES)[number];
const PRESENT_STATES: ReadonlySet<string> = new Set<HomieState>(["init", "ready", "sleeping", "alert"]);

export type HomieVersion = "5" | "4";

/** Where a device lives: its version, the domain (v5) or prefix (v3/v4), and its id. */
export interface HomieAddress {
  version: HomieVersion;
  domain: string;
  device: string;
}

export type HomieUpdate =
  | (HomieAddress & { type: "state"; state: HomieState | undefined })
  /** `cleared`: the `$description`/`$name` was emptied. */
  | (HomieAddress & { type: "description"; name: string | undefined; root?: string; cleared?: true });

export interface HomieOptions {
  /** Restricts discovery to one domain (v5) and sets the v3/v4 prefix; undefined: every v5 domain. */
  prefix?: string | undefined;
}

/** A Homie topic ID: lowercase letters, digits and hyphens, not starting or ending with a hyphen. */
const TOPIC_ID = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;

/** Where a topic points in the Homie tree: the device and the attribute, or undefined. */
export function parseHomieTopic(
  topic: string,
  prefix: string | undefined,
): (HomieAddress & { attribute: string }) | undefined {
  let parts: (HomieAddress & { attribute: string }) | undefined;
  if (prefix === undefined) {
    const levels = topic.split("/");
    if (levels.length === 4 && levels[1] === "5" && levels[0] && !levels[0].startsWith("$")) {
      parts = { version: "5", domain: levels[0], device: levels[2]!, attribute: levels[3]! };
    } else if (levels.length === 3 && levels[0] === DEFAULT_HOMIE_DOMAIN) {
      parts = { version: "4", domain: DEFAULT_HOMIE_DOMAIN, device: levels[1]!, attribute: levels[2]! };
    }
  } else {
    if (!topic.startsWith(`${prefix}/`)) return undefined;
    const levels = topic.slice(prefix.length + 1).split("/");
    if (levels.length === 3 && levels[0] === "5") {
      parts = { version: "5", domain: prefix, device: levels[1]!, attribute: levels[2]! };
    } else if (levels.length === 2) {
      parts = { version: "4", domain: prefix, device: levels[0]!, attribute: levels[1]! };
    }
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
  const address: HomieAddress = { version: parts.version, domain: parts.domain, device: parts.device };
  if (parts.attribute === "$state") {
    // An empty `$state` (normally a cleared retained message) removes the device.
    if (payload.length === 0) return { updates: [{ type: "state", ...address, state: undefined }] };
    const state = decodeUtf8(payload)?.trim();
    if (!state || !(HOMIE_STATES as readonly string[]).includes(state)) {
      return { updates: [], problem: { level: "warn", message: "Homie $state is not a known state" } };
    }
    return { updates: [{ type: "state", ...address, state: state as HomieState }] };
  }
  if (parts.version === "5" && parts.attribute === "$description") {
    if (payload.length === 0) {
      return { updates: [{ type: "description", ...address, name: undefined, cleared: true }] };
    }
    const parsed = parseJsonObject(payload, "Homie $description");
    if ("problem" in parsed) return { updates: [], problem: parsed.problem };
    const root = parsed.value.root;
    const validRoot = typeof root === "string" && TOPIC_ID.test(root) && root !== parts.device ? root : undefined;
    return {
      updates: [
        {
          type: "description",
          ...address,
          name: text(parsed.value.name, 256)?.trim() || undefined,
          ...(validRoot ? { root: validRoot } : {}),
        },
      ],
    };
  }
  if (parts.version === "4" && parts.attribute === "$name") {
    const name = payload.length === 0 ? undefined : decodeUtf8(payload);
    if (payload.length > 0 && name === undefined) {
      return { updates: [], problem: { level: "warn", message: "Homie $name is not UTF-8" } };
    }
    const cleared = payload.length === 0 ? { cleared: true as const } : {};
    return { updates: [{ type: "description", ...address, name: text(name, 256)?.trim() || undefined, ...cleared }] };
  }
  return { updates: [] };
}

interface HomieDevice extends HomieAddress {
  state?: HomieState;
  /** Set once a `$description` (v5) or `$name` (v3/v4) arrived, even without a name. */
  described?: boolean;
  name?: string;
  /** v5: the root device of this device's tree (same domain). */
  root?: string;
}

const keyOf = (a: HomieAddress) => `${a.version}/${a.domain}/${a.device}`;

/** Homie state: per device, its last `$state`, name and root. */
export class HomieConvention implements Convention {
  readonly name = HOMIE;
  private readonly known = new Map<string, HomieDevice>();

  constructor(private readonly options: HomieOptions) {}

  subscriptions(): string[] {
    const p = this.options.prefix;
    if (p === undefined) {
      const v4 = DEFAULT_HOMIE_DOMAIN;
      return ["+/5/+/$state", "+/5/+/$description", `${v4}/+/$state`, `${v4}/+/$name`];
    }
    return [`${p}/5/+/$state`, `${p}/5/+/$description`, `${p}/+/$state`, `${p}/+/$name`];
  }

  receive(message: MqttMessage, _now: number): Outcome {
    const result = parseHomieMessage(message.topic, message.payload, message.retained, this.options);
    const problems: Problem[] = result.problem ? [result.problem] : [];
    let didChange = false;
    for (const update of result.updates) {
      const key = keyOf(update);
      let device = this.known.get(key);
      if (!device) {
        if (this.known.size >= MAX_TRACKED) {
          problems.push({ level: "warn", message: `more than ${MAX_TRACKED} Homie devices; ignoring more` });
          continue;
        }
        device = { version: update.version, domain: update.domain, device: update.device };
        this.known.set(key, device);
      }
      if (update.type === "state") {
        device.state = update.state;
      } else {
        device.described = !update.cleared;
        device.name = update.name;
        device.root = update.root;
      }
      if (device.state === undefined && !device.described) this.known.delete(key);
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
      if (!PRESENT_STATES.has(this.stateOf(device) ?? "")) continue;
      const ids = deviceId(HOMIE, this.localId(device));
      if (!ids) continue;
      const root = device.version === "5" ? `${device.domain}/5/${device.device}` : `${device.domain}/${device.device}`;
      devices.push({
        id: ids.id,
        properties: definedProperties({
          MQTT_DEVICE_ID: ids.localId,
          MQTT_TOPIC: text(root),
          MQTT_DEVICE_NAME: device.name ?? text(device.device, 256),
          MQTT_HOMIE_VERSION: device.version,
          MQTT_HOMIE_ROOT: device.root,
        }),
      });
    }
    return devices.sort(byId);
  }

  nextChange(_now: number): number | undefined {
    return undefined;
  }

  /** A device's own state, unless its tree's root is lost: then the whole tree is lost. */
  private stateOf(device: HomieDevice): HomieState | undefined {
    if (device.version === "5" && device.root !== undefined) {
      const root = this.known.get(keyOf({ version: "5", domain: device.domain, device: device.root }));
      if (root?.state === "lost") return "lost";
    }
    return device.state;
  }

  /** The id: bare in the configured domain (or `homie` when discovery covers all), else `<domain>/<id>`. */
  private localId(device: HomieDevice): string {
    const home = this.options.prefix ?? DEFAULT_HOMIE_DOMAIN;
    return device.domain === home ? device.device : `${device.domain}/${device.device}`;
  }
}
