import { randomBytes } from "node:crypto";
import { connectAsync, type IClientOptions, type MqttClient } from "mqtt";
import { SPARKPLUG_NAMESPACE } from "./sparkplug.js";
import { decodeSparkplugPayload, encodeSparkplugPayload, SparkplugDataType } from "./sparkplug-payload.js";

/**
 * Simulated MQTT devices against a real broker, one convention each: Home Assistant discovery
 * configs (also one device spread over several entity configs, and its migration to
 * device-based discovery), Homie devices (with a `lost` last will, and a Homie 5 bridge with
 * children), Sparkplug B edge nodes (births, deaths with bdSeq, rebirth on NCMD) and plain topic
 * publishers. Devices that need a last will get their
 * own client; the others share one.
 */

export interface SimulatorOptions {
  url: string;
  username?: string;
  password?: string;
}

export interface HomeAssistantDeviceOptions {
  /** Object id, unique_id and device identifier. */
  id: string;
  component: string;
  manufacturer?: string;
  model?: string;
  name?: string;
  /** Publish an availability topic (retained `online`). */
  availability?: boolean;
  prefix?: string;
  nodeId?: string;
  /** Use Home Assistant's abbreviations (`uniq_id`, `stat_t`, `~`, `dev.mf`, ...). */
  abbreviate?: boolean;
}

export interface SimulatedHomeAssistantDevice {
  readonly configTopic: string;
  readonly stateTopic: string;
  readonly commandTopic: string;
  readonly availabilityTopic: string | undefined;
  setAvailable(available: boolean): Promise<void>;
  publishState(value: string): Promise<void>;
  /** Publishes an empty retained config: Home Assistant's way to remove a device. */
  remove(): Promise<void>;
}

export interface HomeAssistantSharedDeviceOptions {
  /** The device identifier every entity config names. */
  id: string;
  /** Entities, each its own config topic; the first carries the device's details. */
  entities: { component: string; objectId: string }[];
  name?: string;
  manufacturer?: string;
  model?: string;
  modelId?: string;
  serialNumber?: string;
  swVersion?: string;
  hwVersion?: string;
  prefix?: string;
}

export interface SimulatedHomeAssistantSharedDevice {
  readonly configTopics: string[];
  /** The unique_id of each entity, in `entities` order. */
  readonly uniqueIds: string[];
  /** Home Assistant's migration: migrate payloads on the entity topics, one device-based config, then the old topics cleared. */
  migrateToDeviceDiscovery(): Promise<string>;
  remove(): Promise<void>;
}

export interface HomieBridgeOptions {
  id: string;
  children: string[];
  prefix?: string;
}

export interface SimulatedHomieBridge {
  readonly topic: string;
  readonly client: MqttClient;
  /** Drops the socket: the broker publishes the bridge's will (`lost`) on the bridge's `$state` only. */
  crash(): Promise<void>;
}

export interface HomieDeviceOptions {
  id: string;
  name?: string;
  prefix?: string;
  /** 5 (default): `homie/5/<id>/...`; 4: `homie/<id>/...`. */
  version?: 5 | 4;
}

export interface SimulatedHomieDevice {
  readonly topic: string;
  readonly client: MqttClient;
  setState(state: string): Promise<void>;
  /** Graceful: publish `disconnected`, then DISCONNECT. Not graceful: drop the socket so the broker sends the will (`lost`). */
  disconnect(options: { graceful: boolean }): Promise<void>;
  /** Clears the retained `$state` and `$description`: the device is removed. */
  remove(): Promise<void>;
}

export interface SparkplugNodeOptions {
  group: string;
  edgeNode: string;
  devices?: string[];
  /** Publish NDATA/DDATA this often. */
  dataIntervalMs?: number;
}

export interface SimulatedSparkplugNode {
  readonly client: MqttClient;
  /** The bdSeq of the current session (in NBIRTH and in the NDEATH will). */
  readonly bdSeq: number;
  /** How many rebirth requests (NCMD Node Control/Rebirth) the node answered. */
  readonly rebirths: number;
  readonly devices: ReadonlySet<string>;
  addDevice(device: string): Promise<void>;
  /** Publishes DDEATH for the device. */
  removeDevice(device: string): Promise<void>;
  publishData(): Promise<void>;
  /** Graceful: publish NDEATH, then DISCONNECT. Not graceful: drop the socket so the broker sends the will (NDEATH). */
  disconnect(options: { graceful: boolean }): Promise<void>;
}

export interface PlainTopicOptions {
  topic: string;
  intervalMs: number;
  payload?: string | Buffer;
}

export interface SimulatedPlainTopic {
  publish(): Promise<void>;
  stop(): void;
}

const NODE_CONTROL_REBIRTH = "Node Control/Rebirth";

export class MqttDeviceSimulator {
  private shared: Promise<MqttClient> | undefined;
  private readonly clients = new Set<MqttClient>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly options: SimulatorOptions) {}

  /** A new connected client (its own session; a will when given). */
  async connectClient(extra: Partial<IClientOptions> = {}): Promise<MqttClient> {
    const client = await connectAsync(this.options.url, {
      clientId: `sim-${randomBytes(6).toString("hex")}`,
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 200,
      ...(this.options.username ? { username: this.options.username } : {}),
      ...(this.options.password ? { password: this.options.password } : {}),
      ...extra,
    });
    client.on("error", () => {});
    this.clients.add(client);
    client.once("end", () => this.clients.delete(client));
    return client;
  }

  /** Publishes anything (for malformed-input tests), on the shared client. */
  async publish(
    topic: string,
    payload: string | Buffer,
    options: { retain?: boolean; qos?: 0 | 1 } = {},
  ): Promise<void> {
    const client = await this.sharedClient();
    await client.publishAsync(topic, payload, { qos: options.qos ?? 1, retain: options.retain ?? false });
  }

  async homeAssistant(options: HomeAssistantDeviceOptions): Promise<SimulatedHomeAssistantDevice> {
    const client = await this.sharedClient();
    const prefix = options.prefix ?? "homeassistant";
    const configTopic = `${prefix}/${options.component}/${options.nodeId ? `${options.nodeId}/` : ""}${options.id}/config`;
    const base = `sim/${options.id}`;
    const stateTopic = `${base}/state`;
    const commandTopic = `${base}/set`;
    const availabilityTopic = options.availability ? `${base}/availability` : undefined;
    const device = {
      identifiers: [options.id],
      manufacturer: options.manufacturer,
      model: options.model,
      name: options.name ?? options.id,
    };
    const config = options.abbreviate
      ? {
          "~": base,
          name: options.name ?? options.id,
          uniq_id: options.id,
          stat_t: "~/state",
          cmd_t: "~/set",
          ...(availabilityTopic ? { avty_t: "~/availability" } : {}),
          dev: { ids: device.identifiers, mf: device.manufacturer, mdl: device.model, name: device.name },
        }
      : {
          name: options.name ?? options.id,
          unique_id: options.id,
          state_topic: stateTopic,
          command_topic: commandTopic,
          ...(availabilityTopic ? { availability_topic: availabilityTopic } : {}),
          device,
        };
    await client.publishAsync(configTopic, JSON.stringify(config), { qos: 1, retain: true });
    if (availabilityTopic) await client.publishAsync(availabilityTopic, "online", { qos: 1, retain: true });
    return {
      configTopic,
      stateTopic,
      commandTopic,
      availabilityTopic,
      async setAvailable(available) {
        if (!availabilityTopic) throw new Error("this device was made without availability");
        await client.publishAsync(availabilityTopic, available ? "online" : "offline", { qos: 1, retain: true });
      },
      async publishState(value) {
        await client.publishAsync(stateTopic, value, { qos: 0 });
      },
      async remove() {
        await client.publishAsync(configTopic, "", { qos: 1, retain: true });
        if (availabilityTopic) await client.publishAsync(availabilityTopic, "", { qos: 1, retain: true });
      },
    };
  }

  /**
   * A Home Assistant device spread over several entity configs, as Tasmota publishes it: the
   * first config's `dev` has the details, the others only `ids` (Home Assistant merges them).
   */
  async homeAssistantSharedDevice(
    options: HomeAssistantSharedDeviceOptions,
  ): Promise<SimulatedHomeAssistantSharedDevice> {
    const client = await this.sharedClient();
    const prefix = options.prefix ?? "homeassistant";
    const retained = { qos: 1, retain: true } as const;
    const full = {
      ids: [options.id],
      name: options.name ?? options.id,
      mf: options.manufacturer,
      mdl: options.model,
      mdl_id: options.modelId,
      sn: options.serialNumber,
      sw: options.swVersion,
      hw: options.hwVersion,
    };
    const configTopics = options.entities.map((e) => `${prefix}/${e.component}/${options.id}/${e.objectId}/config`);
    const uniqueIds = options.entities.map((e) => `${options.id}_${e.objectId}`);
    const entityConfig = (index: number) => ({
      name: options.entities[index]!.objectId,
      uniq_id: uniqueIds[index],
      stat_t: `sim/${options.id}/${options.entities[index]!.objectId}`,
      dev: index === 0 ? full : { ids: [options.id] },
    });
    for (const [index, topic] of configTopics.entries()) {
      await client.publishAsync(topic, JSON.stringify(entityConfig(index)), retained);
    }
    const deviceTopic = `${prefix}/device/${options.id}/config`;
    return {
      configTopics,
      uniqueIds,
      async migrateToDeviceDiscovery() {
        for (const topic of configTopics)
          await client.publishAsync(topic, JSON.stringify({ migrate_discovery: true }), retained);
        const cmps = Object.fromEntries(
          options.entities.map((e, index) => [
            e.objectId,
            { p: e.component, uniq_id: uniqueIds[index], stat_t: `sim/${options.id}/${e.objectId}` },
          ]),
        );
        await client.publishAsync(
          deviceTopic,
          JSON.stringify({ dev: full, o: { name: "spindle-sim" }, cmps }),
          retained,
        );
        for (const topic of configTopics) await client.publishAsync(topic, "", retained);
        return deviceTopic;
      },
      async remove() {
        for (const topic of [...configTopics, deviceTopic]) await client.publishAsync(topic, "", retained);
      },
    };
  }

  /**
   * A Homie 5 bridge with child devices (the convention's "Device hierarchy"): one MQTT
   * connection publishes them all, and its will marks only the bridge `lost`.
   */
  async homieBridge(options: HomieBridgeOptions): Promise<SimulatedHomieBridge> {
    const prefix = options.prefix ?? "homie";
    const topic = `${prefix}/5/${options.id}`;
    const client = await this.connectClient({
      will: { topic: `${topic}/$state`, payload: Buffer.from("lost"), qos: 1, retain: true },
    });
    const retained = { qos: 1, retain: true } as const;
    const describe = async (id: string, description: object) => {
      await client.publishAsync(`${prefix}/5/${id}/$state`, "init", retained);
      await client.publishAsync(
        `${prefix}/5/${id}/$description`,
        JSON.stringify({ homie: "5.0", version: 1, nodes: {}, ...description }),
        retained,
      );
      await client.publishAsync(`${prefix}/5/${id}/$state`, "ready", retained);
    };
    const announce = async () => {
      await describe(options.id, { name: `${options.id} bridge`, children: options.children });
      for (const child of options.children) await describe(child, { name: child, root: options.id });
    };
    client.on("connect", () => void announce().catch(() => {}));
    await announce();
    return {
      topic,
      client,
      async crash() {
        await client.endAsync(true);
      },
    };
  }

  async homie(options: HomieDeviceOptions): Promise<SimulatedHomieDevice> {
    const prefix = options.prefix ?? "homie";
    const version = options.version ?? 5;
    const topic = version === 5 ? `${prefix}/5/${options.id}` : `${prefix}/${options.id}`;
    const name = options.name ?? options.id;
    const client = await this.connectClient({
      will: { topic: `${topic}/$state`, payload: Buffer.from("lost"), qos: 1, retain: true },
    });
    const retained = { qos: 1, retain: true } as const;
    const announce = async () => {
      await client.publishAsync(`${topic}/$state`, "init", retained);
      if (version === 5) {
        const description = { homie: "5.0", version: 1, name, nodes: {} };
        await client.publishAsync(`${topic}/$description`, JSON.stringify(description), retained);
      } else {
        await client.publishAsync(`${topic}/$homie`, "4.0.0", retained);
        await client.publishAsync(`${topic}/$name`, name, retained);
        await client.publishAsync(`${topic}/$nodes`, "", retained);
      }
      await client.publishAsync(`${topic}/$state`, "ready", retained);
    };
    // A Homie device announces itself again on every (re)connect.
    client.on("connect", () => void announce().catch(() => {}));
    await announce();
    return {
      topic,
      client,
      async setState(state) {
        await client.publishAsync(`${topic}/$state`, state, retained);
      },
      async disconnect({ graceful }) {
        if (graceful) {
          await client.publishAsync(`${topic}/$state`, "disconnected", retained);
          await client.endAsync();
        } else {
          await client.endAsync(true);
        }
      },
      async remove() {
        await client.publishAsync(`${topic}/$state`, "", retained);
        await client.publishAsync(`${topic}/${version === 5 ? "$description" : "$name"}`, "", retained);
        await client.endAsync();
      },
    };
  }

  async sparkplug(options: SparkplugNodeOptions): Promise<SimulatedSparkplugNode> {
    const { group, edgeNode } = options;
    const ns = SPARKPLUG_NAMESPACE;
    const devices = new Set(options.devices ?? []);
    let bdSeq = 0;
    let seq = 0;
    let rebirths = 0;
    const nextSeq = () => {
      const value = seq;
      seq = (seq + 1) % 256;
      return value;
    };
    const bdSeqMetric = () => ({ name: "bdSeq", datatype: SparkplugDataType.Int64, value: bdSeq });
    const death = () => encodeSparkplugPayload({ metrics: [bdSeqMetric()] });
    const client = await this.connectClient({
      will: { topic: `${ns}/${group}/NDEATH/${edgeNode}`, payload: death(), qos: 1, retain: false },
    });
    const deviceBirth = (device: string) =>
      client.publishAsync(
        `${ns}/${group}/DBIRTH/${edgeNode}/${device}`,
        encodeSparkplugPayload({
          seq: nextSeq(),
          metrics: [{ name: "temperature", datatype: SparkplugDataType.Int32, value: 21 }],
        }),
        { qos: 0 },
      );
    const births = async () => {
      seq = 0;
      await client.publishAsync(
        `${ns}/${group}/NBIRTH/${edgeNode}`,
        encodeSparkplugPayload({
          seq: nextSeq(),
          metrics: [bdSeqMetric(), { name: NODE_CONTROL_REBIRTH, datatype: SparkplugDataType.Boolean, value: false }],
        }),
        { qos: 0 },
      );
      for (const device of devices) await deviceBirth(device);
    };
    const subscribeCommands = () => client.subscribeAsync(`${ns}/${group}/NCMD/${edgeNode}`, { qos: 0 });
    client.on("message", (topic, payload) => {
      if (topic !== `${ns}/${group}/NCMD/${edgeNode}`) return;
      try {
        const request = decodeSparkplugPayload(payload);
        if (request.metrics.some((m) => m.name === NODE_CONTROL_REBIRTH && m.value === true)) {
          rebirths++;
          void births().catch(() => {});
        }
      } catch {
        // Not a command we understand.
      }
    });
    // Each new MQTT session has the next bdSeq, in its will and its NBIRTH.
    client.on("close", () => {
      bdSeq = (bdSeq + 1) % 256;
      if (client.options.will) client.options.will.payload = death();
    });
    client.on("connect", () => {
      void subscribeCommands()
        .then(births)
        .catch(() => {});
    });
    await subscribeCommands();
    await births();
    const publishData = async () => {
      const metrics = [{ name: "temperature", datatype: SparkplugDataType.Int32, value: 21 }];
      await client.publishAsync(
        `${ns}/${group}/NDATA/${edgeNode}`,
        encodeSparkplugPayload({ seq: nextSeq(), metrics }),
        { qos: 0 },
      );
      for (const device of devices) {
        await client.publishAsync(
          `${ns}/${group}/DDATA/${edgeNode}/${device}`,
          encodeSparkplugPayload({ seq: nextSeq(), metrics }),
          { qos: 0 },
        );
      }
    };
    if (options.dataIntervalMs) {
      const timer = setInterval(() => {
        if (client.connected) void publishData().catch(() => {});
      }, options.dataIntervalMs);
      this.timers.add(timer);
      client.once("end", () => {
        clearInterval(timer);
        this.timers.delete(timer);
      });
    }
    return {
      client,
      get bdSeq() {
        return bdSeq;
      },
      get rebirths() {
        return rebirths;
      },
      devices,
      async addDevice(device) {
        devices.add(device);
        await deviceBirth(device);
      },
      async removeDevice(device) {
        devices.delete(device);
        await client.publishAsync(
          `${ns}/${group}/DDEATH/${edgeNode}/${device}`,
          encodeSparkplugPayload({ seq: nextSeq(), metrics: [] }),
          { qos: 0 },
        );
      },
      publishData,
      async disconnect({ graceful }) {
        if (graceful) {
          await client.publishAsync(`${ns}/${group}/NDEATH/${edgeNode}`, death(), { qos: 1 });
          await client.endAsync();
        } else {
          await client.endAsync(true);
        }
      },
    };
  }

  async plainTopic(options: PlainTopicOptions): Promise<SimulatedPlainTopic> {
    const client = await this.sharedClient();
    const publish = () => client.publishAsync(options.topic, options.payload ?? "{}", { qos: 0 }).then(() => {});
    await publish();
    const timer = setInterval(() => {
      if (client.connected) void publish().catch(() => {});
    }, options.intervalMs);
    this.timers.add(timer);
    return {
      publish,
      stop: () => {
        clearInterval(timer);
        this.timers.delete(timer);
      },
    };
  }

  /** Stops every timer and drops every client (wills fire for those not yet disconnected). */
  async close(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    this.timers.clear();
    const clients = [...this.clients];
    this.clients.clear();
    this.shared = undefined;
    await Promise.all(clients.map((client) => client.endAsync(true).catch(() => {})));
  }

  private sharedClient(): Promise<MqttClient> {
    this.shared ??= this.connectClient();
    return this.shared;
  }
}
