import {
  byId,
  type Convention,
  type ConventionDevice,
  changed,
  decodeUtf8,
  definedProperties,
  deviceId,
  isRecord,
  isTopicName,
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
 * Home Assistant MQTT discovery: retained JSON configs on
 * `<prefix>/<component>/[<node_id>/]<object_id>/config`. Each entity is one device. An empty
 * config removes it; availability topics (`online`/`offline` by default) make it come and go.
 * Device-based discovery (`<prefix>/device/<object_id>/config` with `cmps`) gives one device per
 * component. A `{"migrate_discovery": true}` payload unloads what the topic held, as Home
 * Assistant does while a device moves between the two forms.
 *
 * Like Home Assistant's device registry, entities whose `device` shares an identifier or a
 * connection describe one device: its details (manufacturer, model, versions, ...) are merged
 * across their configs, the latest config winning per field, and every entity publishes them.
 */

export const HOME_ASSISTANT = "homeassistant";

export type AvailabilityMode = "latest" | "any" | "all";

export interface Availability {
  topic: string;
  available: string;
  notAvailable: string;
  /** A `value_json` path to read from a JSON payload (from `{{ value_json.state }}` templates). */
  jsonPath?: string[];
}

export interface HomeAssistantEntity {
  /** The config topic, plus `#<component id>` for device-based discovery. */
  key: string;
  id: string;
  properties: Record<string, string>;
  availability: Availability[];
  availabilityMode: AvailabilityMode;
  /**
   * The `device` of an entity with a unique_id (Home Assistant ties only those to a device):
   * `keys` are its identifiers and connections, `properties` the details this config gives.
   */
  device?: { keys: string[]; properties: Record<string, string> };
}

export type HomeAssistantUpdate =
  | { type: "configured"; configTopic: string; entities: HomeAssistantEntity[] }
  | { type: "removed"; configTopic: string };

export interface HomeAssistantOptions {
  prefix: string;
}

// The abbreviations Home Assistant accepts in discovery payloads (the common ones).
const ABBREVIATIONS: Record<string, string> = {
  avty: "availability",
  avty_mode: "availability_mode",
  avty_t: "availability_topic",
  avty_tpl: "availability_template",
  cmd_t: "command_topic",
  cmps: "components",
  dev: "device",
  dev_cla: "device_class",
  json_attr_t: "json_attributes_topic",
  migr_discvry: "migrate_discovery",
  o: "origin",
  obj_id: "object_id",
  p: "platform",
  pl_avail: "payload_available",
  pl_not_avail: "payload_not_available",
  stat_t: "state_topic",
  t: "topic",
  uniq_id: "unique_id",
  val_tpl: "value_template",
};

const DEVICE_ABBREVIATIONS: Record<string, string> = {
  cns: "connections",
  ids: "identifiers",
  mf: "manufacturer",
  mdl: "model",
  mdl_id: "model_id",
  hw: "hw_version",
  sw: "sw_version",
  sa: "suggested_area",
  sn: "serial_number",
  cu: "configuration_url",
};

const MAX_AVAILABILITY = 16;
/** Identifiers and connections kept per device. */
const MAX_DEVICE_KEYS = 32;

/** The device details published, by the `device` field they come from. */
const DEVICE_PROPERTIES: [string, string][] = [
  ["MQTT_MANUFACTURER", "manufacturer"],
  ["MQTT_MODEL", "model"],
  ["MQTT_MODEL_ID", "model_id"],
  ["MQTT_SERIAL_NUMBER", "serial_number"],
  ["MQTT_SW_VERSION", "sw_version"],
  ["MQTT_HW_VERSION", "hw_version"],
  ["MQTT_DEVICE_NAME", "name"],
];
const MAX_COMPONENTS = 64;

function expand(source: Record<string, unknown>, names: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(source)) out[names[key] ?? key] = value;
  return out;
}

/** Replaces a leading or trailing `~` in `*_topic` values with the base topic, as Home Assistant does. */
function withBaseTopic(config: Record<string, unknown>, base: string | undefined): Record<string, unknown> {
  if (base === undefined) return config;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    out[key] = key === "topic" || key.endsWith("_topic") ? replaceBase(value, base) : value;
  }
  return out;
}

function replaceBase(value: unknown, base: string): unknown {
  if (typeof value !== "string") return value;
  if (value.startsWith("~")) return `${base}${value.slice(1)}`;
  if (value.endsWith("~")) return `${value.slice(0, -1)}${base}`;
  return value;
}

/** The config topic's parts, or undefined when the topic is not a discovery config topic. */
export function parseConfigTopic(
  topic: string,
  prefix: string,
): { component: string; nodeId?: string; objectId: string } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const levels = topic.slice(prefix.length + 1).split("/");
  if (levels.at(-1) !== "config" || levels.some((level) => level.length === 0)) return undefined;
  if (levels.length === 3) return { component: levels[0]!, objectId: levels[1]! };
  if (levels.length === 4) return { component: levels[0]!, nodeId: levels[1]!, objectId: levels[2]! };
  return undefined;
}

/** `{{ value_json.state }}` / `{{ value_json['state'] }}` → ["state"]; other templates are not evaluated. */
export function valueJsonPath(template: unknown): string[] | undefined {
  if (typeof template !== "string" || template.length > 256) return undefined;
  const match = /^\{\{\s*value_json((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*'[^']*'\s*\]|\[\s*"[^"]*"\s*\])+)\s*\}\}$/.exec(
    template.trim(),
  );
  if (!match) return undefined;
  const path: string[] = [];
  for (const part of match[1]!.matchAll(/\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*'([^']*)'\s*\]|\[\s*"([^"]*)"\s*\]/g)) {
    path.push(part[1] ?? part[2] ?? part[3] ?? "");
  }
  return path;
}

function availabilityEntry(raw: Record<string, unknown>, defaults: Record<string, unknown>): Availability | undefined {
  const topic = raw.topic;
  if (!isTopicName(topic)) return undefined;
  const template = raw.value_template ?? defaults.availability_template;
  const jsonPath = template === undefined ? undefined : valueJsonPath(template);
  // A template we cannot evaluate: this entry cannot be judged, so it does not count.
  if (template !== undefined && jsonPath === undefined) return undefined;
  return {
    topic,
    available: scalar(raw.payload_available ?? defaults.payload_available) ?? "online",
    notAvailable: scalar(raw.payload_not_available ?? defaults.payload_not_available) ?? "offline",
    ...(jsonPath ? { jsonPath } : {}),
  };
}

function scalar(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return undefined;
}

function availabilityOf(config: Record<string, unknown>, base: string | undefined): Availability[] {
  const entries: Availability[] = [];
  if (config.availability_topic !== undefined) {
    const entry = availabilityEntry({ topic: config.availability_topic }, config);
    if (entry) entries.push(entry);
  }
  if (Array.isArray(config.availability)) {
    for (const raw of config.availability.slice(0, MAX_AVAILABILITY)) {
      if (!isRecord(raw)) continue;
      const entry = availabilityEntry(withBaseTopic(expand(raw, ABBREVIATIONS), base), {
        payload_available: config.payload_available,
        payload_not_available: config.payload_not_available,
      });
      if (entry) entries.push(entry);
    }
  }
  return entries.slice(0, MAX_AVAILABILITY);
}

function identifiers(device: Record<string, unknown>): string[] {
  const ids = device.identifiers;
  const list = Array.isArray(ids) ? ids : [ids];
  return list.map((id) => text(id, 1024)).filter((id): id is string => id !== undefined);
}

/** Connections as `[type, value]`; MAC addresses in Home Assistant's form (lower case, colons). */
function connections(device: Record<string, unknown>): [string, string][] {
  if (!Array.isArray(device.connections)) return [];
  const out: [string, string][] = [];
  for (const connection of device.connections) {
    if (!Array.isArray(connection) || connection.length !== 2) continue;
    const kind = text(connection[0], 64)?.toLowerCase();
    let value = text(connection[1], 1024);
    if (!kind || !value) continue;
    if (kind === "mac") {
      const hex = value.toLowerCase().replace(/[:.-]/g, "");
      if (/^[0-9a-f]{12}$/.test(hex)) value = hex.match(/../g)!.join(":");
    }
    out.push([kind, value]);
  }
  return out;
}

function firstIdentifier(device: Record<string, unknown>): string | undefined {
  const id = identifiers(device)[0];
  if (id !== undefined) return id;
  const connection = connections(device)[0];
  return connection ? `${connection[0]}:${connection[1]}` : undefined;
}

/** What ties configs to one device: its identifiers and connections (bounded). */
function deviceKeys(device: Record<string, unknown>): string[] {
  const keys = [
    ...identifiers(device).map((id) => `id:${id}`),
    ...connections(device).map(([kind, value]) => `cn:${kind}:${value}`),
  ];
  return [...new Set(keys)].slice(0, MAX_DEVICE_KEYS);
}

function entityOf(
  key: string,
  component: string,
  fallbackId: string,
  config: Record<string, unknown>,
  device: Record<string, unknown>,
  availability: Availability[],
  configTopic: string,
): HomeAssistantEntity | undefined {
  const uniqueId = text(config.unique_id, 1024);
  const raw = uniqueId ?? firstIdentifier(device) ?? fallbackId;
  const ids = deviceId(HOME_ASSISTANT, raw);
  if (!ids) return undefined;
  const mode = config.availability_mode;
  const details: Record<string, string | undefined> = {};
  for (const [name, field] of DEVICE_PROPERTIES) details[name] = text(device[field], 256);
  const own = definedProperties(details);
  const keys = deviceKeys(device);
  return {
    key,
    id: ids.id,
    availability,
    availabilityMode: mode === "any" || mode === "all" ? mode : "latest",
    properties: definedProperties({
      MQTT_DEVICE_ID: ids.localId,
      MQTT_COMPONENT: text(component, 256),
      MQTT_TOPIC: isTopicName(config.state_topic) ? text(config.state_topic) : undefined,
      MQTT_COMMAND_TOPIC: isTopicName(config.command_topic) ? text(config.command_topic) : undefined,
      MQTT_AVAILABILITY_TOPIC: availability[0] ? text(availability[0].topic) : undefined,
      MQTT_CONFIG_TOPIC: text(configTopic),
      ...own,
      MQTT_DEVICE_NAME: own.MQTT_DEVICE_NAME ?? text(config.name, 256),
    }),
    ...(uniqueId !== undefined && keys.length > 0 ? { device: { keys, properties: own } } : {}),
  };
}

/**
 * Parses one message on a Home Assistant discovery topic. Pure: no state, never throws. Messages
 * on other topics give no updates.
 */
export function parseHomeAssistantMessage(
  topic: string,
  payload: Buffer,
  _retained: boolean,
  options: HomeAssistantOptions,
): ParseResult<HomeAssistantUpdate> {
  const parts = parseConfigTopic(topic, options.prefix);
  if (!parts) return { updates: [] };
  // An empty config (retained or live) removes the entity.
  if (payload.length === 0) return { updates: [{ type: "removed", configTopic: topic }] };
  const parsed = parseJsonObject(payload, "Home Assistant config");
  if ("problem" in parsed) return { updates: [], problem: parsed.problem };

  const top = expand(parsed.value, ABBREVIATIONS);
  if (Object.hasOwn(top, "migrate_discovery")) {
    // The topic's item is unloaded while it moves to (or back from) device-based discovery; the
    // same unique_ids come back in the other form. Not a config, so not a device.
    if (top.migrate_discovery === true) {
      return {
        updates: [{ type: "removed", configTopic: topic }],
        problem: { level: "debug", message: "Home Assistant config is migrating (migrate_discovery)" },
      };
    }
    return { updates: [], problem: { level: "warn", message: "Home Assistant migrate_discovery is not true" } };
  }
  const base = typeof top["~"] === "string" ? top["~"] : undefined;
  const config = withBaseTopic(top, base);
  const device = isRecord(config.device) ? expand(config.device, DEVICE_ABBREVIATIONS) : {};
  const availability = availabilityOf(config, base);
  const localName = parts.nodeId ? `${parts.nodeId}/${parts.objectId}` : parts.objectId;

  if (parts.component !== "device") {
    const entity = entityOf(
      topic,
      parts.component,
      `${parts.component}/${localName}`,
      config,
      device,
      availability,
      topic,
    );
    return entity
      ? { updates: [{ type: "configured", configTopic: topic, entities: [entity] }] }
      : { updates: [], problem: { level: "warn", message: "Home Assistant config without a usable id" } };
  }

  // Device-based discovery: shared options at the top, one entry per component in `cmps`.
  if (!isRecord(config.components)) {
    return { updates: [], problem: { level: "warn", message: "Home Assistant device config without components" } };
  }
  const shared: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(config)) {
    if (!["components", "device", "origin", "availability", "availability_topic", "~"].includes(name)) {
      shared[name] = value;
    }
  }
  const entities: HomeAssistantEntity[] = [];
  for (const [componentId, rawComponent] of Object.entries(config.components).slice(0, MAX_COMPONENTS)) {
    if (!isRecord(rawComponent)) continue;
    const component = withBaseTopic(expand(rawComponent, ABBREVIATIONS), base);
    // A component holding only its platform is Home Assistant's way of removing it.
    if (Object.keys(component).every((name) => name === "platform")) continue;
    const platform = typeof component.platform === "string" ? component.platform : "device";
    const entity = entityOf(
      `${topic}#${componentId}`,
      platform,
      `device/${localName}/${componentId}`,
      { ...shared, ...component },
      device,
      availability,
      topic,
    );
    if (entity) entities.push(entity);
  }
  return { updates: [{ type: "configured", configTopic: topic, entities }] };
}

function lookup(value: unknown, path: string[]): unknown {
  let current = value;
  for (const name of path) {
    if (!isRecord(current)) return undefined;
    current = current[name];
  }
  return current;
}

/** What an availability payload says: true (available), false (not), or undefined (neither). */
export function availabilityState(entry: Availability, payload: string): boolean | undefined {
  let value: string | undefined = payload;
  if (entry.jsonPath) {
    try {
      value = scalar(lookup(JSON.parse(payload), entry.jsonPath));
    } catch {
      value = undefined;
    }
  }
  if (value === entry.available) return true;
  if (value === entry.notAvailable) return false;
  return undefined;
}

interface AvailabilityMessage {
  payload: string;
  sequence: number;
}

/** Home Assistant discovery state: the configured entities and the last payload on each availability topic. */
export class HomeAssistantConvention implements Convention {
  readonly name = HOME_ASSISTANT;
  private readonly entities = new Map<string, HomeAssistantEntity>();
  private readonly entityKeysByConfig = new Map<string, string[]>();
  /** When each entity's config arrived (a later config wins a device detail). */
  private readonly configSequence = new Map<string, number>();
  private readonly availabilityMessages = new Map<string, AvailabilityMessage>();
  /** How many entities watch each availability topic. */
  private readonly availabilityWatchers = new Map<string, number>();
  private sequence = 0;

  constructor(private readonly options: HomeAssistantOptions) {}

  subscriptions(): string[] {
    const prefix = this.options.prefix;
    return [`${prefix}/+/+/config`, `${prefix}/+/+/+/config`, ...[...this.availabilityWatchers.keys()].sort()];
  }

  receive(message: MqttMessage, _now: number): Outcome {
    const problems: Problem[] = [];
    let didChange = false;
    if (this.availabilityWatchers.has(message.topic)) {
      didChange = this.recordAvailability(message) || didChange;
    }
    const result = parseHomeAssistantMessage(message.topic, message.payload, message.retained, this.options);
    if (result.problem) problems.push(result.problem);
    for (const update of result.updates) {
      if (update.type === "removed") {
        didChange = this.replaceConfig(update.configTopic, []) || didChange;
      } else if (this.entities.size >= MAX_TRACKED && !this.entityKeysByConfig.has(update.configTopic)) {
        problems.push({ level: "warn", message: `more than ${MAX_TRACKED} Home Assistant entities; ignoring more` });
      } else {
        didChange = this.replaceConfig(update.configTopic, update.entities) || didChange;
      }
    }
    return changed(didChange, problems);
  }

  connected(_now: number, first: boolean): Outcome {
    if (first) return noChange();
    // The broker re-sends every retained config and availability message: rebuild from them, so
    // configs removed while we were away are gone.
    this.entities.clear();
    this.entityKeysByConfig.clear();
    this.configSequence.clear();
    this.availabilityMessages.clear();
    this.availabilityWatchers.clear();
    return changed(true);
  }

  disconnected(_now: number): void {}

  devices(_now: number): ConventionDevice[] {
    const shared = this.sharedDeviceDetails();
    const devices: ConventionDevice[] = [];
    for (const entity of this.entities.values()) {
      if (!this.isAvailable(entity)) continue;
      devices.push({ id: entity.id, properties: { ...entity.properties, ...shared.get(entity.key) } });
    }
    return devices.sort(byId);
  }

  /**
   * Device details merged as Home Assistant's device registry merges them: configs whose devices
   * share an identifier or a connection (directly or through others) are one device, and each
   * detail comes from the latest config that gives it. Unavailable entities count: the device
   * stays registered while they are offline. By entity key.
   */
  private sharedDeviceDetails(): Map<string, Record<string, string>> {
    const linked = [...this.entities.values()].filter((entity) => entity.device !== undefined);
    const parent = linked.map((_, index) => index);
    const find = (index: number): number => {
      let root = index;
      while (parent[root] !== root) root = parent[root]!;
      for (let at = index; parent[at] !== root; ) [at, parent[at]] = [parent[at]!, root];
      return root;
    };
    const owner = new Map<string, number>();
    linked.forEach((entity, index) => {
      for (const key of entity.device!.keys) {
        const other = owner.get(key);
        if (other === undefined) owner.set(key, index);
        else parent[find(index)] = find(other);
      }
    });
    const groups = new Map<number, number[]>();
    linked.forEach((_, index) => {
      const root = find(index);
      const members = groups.get(root);
      if (members) members.push(index);
      else groups.set(root, [index]);
    });
    const out = new Map<string, Record<string, string>>();
    for (const members of groups.values()) {
      if (members.length < 2) continue;
      const ordered = members
        .map((index) => linked[index]!)
        .sort((a, b) => (this.configSequence.get(a.key) ?? 0) - (this.configSequence.get(b.key) ?? 0));
      const merged: Record<string, string> = {};
      for (const entity of ordered) Object.assign(merged, entity.device!.properties);
      for (const entity of ordered) out.set(entity.key, merged);
    }
    return out;
  }

  nextChange(_now: number): number | undefined {
    return undefined;
  }

  /** Home Assistant's rule: with availability configured, an entity is unavailable until told otherwise. */
  private isAvailable(entity: HomeAssistantEntity): boolean {
    if (entity.availability.length === 0) return true;
    const states = entity.availability.map((entry) => {
      const message = this.availabilityMessages.get(entry.topic);
      return { state: message ? availabilityState(entry, message.payload) : undefined, sequence: message?.sequence };
    });
    if (entity.availabilityMode === "all") return states.every((s) => s.state === true);
    if (entity.availabilityMode === "any") return states.some((s) => s.state === true);
    let latest: { state: boolean | undefined; sequence?: number } | undefined;
    for (const s of states) {
      if (s.sequence !== undefined && s.state !== undefined && (!latest || s.sequence > (latest.sequence ?? -1))) {
        latest = s;
      }
    }
    return latest?.state === true;
  }

  private recordAvailability(message: MqttMessage): boolean {
    if (message.payload.length === 0) return this.availabilityMessages.delete(message.topic);
    const payload = decodeUtf8(message.payload);
    if (payload === undefined) return false;
    this.availabilityMessages.set(message.topic, { payload, sequence: ++this.sequence });
    return true;
  }

  /** Replaces the entities of one config topic; availability state survives when still watched. */
  private replaceConfig(configTopic: string, entities: HomeAssistantEntity[]): boolean {
    const oldKeys = this.entityKeysByConfig.get(configTopic) ?? [];
    const old: HomeAssistantEntity[] = [];
    for (const key of oldKeys) {
      const entity = this.entities.get(key);
      if (entity) old.push(entity);
      this.entities.delete(key);
      this.configSequence.delete(key);
    }
    if (entities.length > 0) {
      this.entityKeysByConfig.set(
        configTopic,
        entities.map((entity) => entity.key),
      );
    } else {
      this.entityKeysByConfig.delete(configTopic);
    }
    // Watch the new topics before releasing the old ones, so shared topics keep their last message.
    const sequence = ++this.sequence;
    for (const entity of entities) {
      this.entities.set(entity.key, entity);
      this.configSequence.set(entity.key, sequence);
      for (const topic of availabilityTopics(entity)) {
        this.availabilityWatchers.set(topic, (this.availabilityWatchers.get(topic) ?? 0) + 1);
      }
    }
    for (const entity of old) {
      for (const topic of availabilityTopics(entity)) {
        const watchers = (this.availabilityWatchers.get(topic) ?? 1) - 1;
        if (watchers > 0) {
          this.availabilityWatchers.set(topic, watchers);
        } else {
          this.availabilityWatchers.delete(topic);
          this.availabilityMessages.delete(topic);
        }
      }
    }
    return oldKeys.length > 0 || entities.length > 0;
  }
}

function availabilityTopics(entity: HomeAssistantEntity): Set<string> {
  return new Set(entity.availability.map((entry) => entry.topic));
}
