import type { FilterList } from "../filter.js";
import { passesFilter } from "../filter.js";
import {
  byId,
  type Convention,
  type ConventionDevice,
  definedProperties,
  deviceId,
  MAX_TRACKED,
  type MqttMessage,
  noChange,
  type Outcome,
  type OutgoingMessage,
  type ParseResult,
  type Problem,
  text,
} from "./common.js";
import { bdSeqOf, decodeSparkplugPayload, rebirthRequest } from "./sparkplug-payload.js";

/**
 * Sparkplug B 3.0: `spBv1.0/<group>/<type>/<edge node>[/<device>]`. NBIRTH makes an edge node
 * present, DBIRTH one of its devices; NDEATH (the node's will, with the `bdSeq` of its birth)
 * removes the node and its devices, DDEATH one device. Births are not retained, so when data
 * arrives from a node or device whose birth we missed, we ask the node for a rebirth (NCMD
 * `Node Control/Rebirth`).
 */

export const SPARKPLUG = "sparkplug";
export const SPARKPLUG_NAMESPACE = "spBv1.0";

export type SparkplugMessageType = "NBIRTH" | "NDEATH" | "DBIRTH" | "DDEATH" | "NDATA" | "DDATA";

export type SparkplugUpdate =
  | { type: "nodeBirth"; group: string; edgeNode: string; bdSeq?: string }
  | { type: "nodeDeath"; group: string; edgeNode: string; bdSeq?: string }
  | { type: "deviceBirth"; group: string; edgeNode: string; device: string }
  | { type: "deviceDeath"; group: string; edgeNode: string; device: string }
  /** Anything that shows the node (or device) is there: data, or a birth we cannot trust. */
  | { type: "seen"; group: string; edgeNode: string; device?: string };

export interface SparkplugOptions {
  groups?: FilterList;
}

export interface SparkplugConventionOptions extends SparkplugOptions {
  /** At most one rebirth request per edge node in this period. */
  rebirthIntervalMs?: number;
  /** After a reconnect, nodes that neither rebirth nor publish in this time are dropped. */
  confirmTimeoutMs?: number;
  /** After a rebirth (NBIRTH of a live node), its devices stay this long waiting for their DBIRTH. */
  deviceRebirthGraceMs?: number;
}

const NODE_TYPES = new Set(["NBIRTH", "NDEATH", "NDATA"]);
const DEVICE_TYPES = new Set(["DBIRTH", "DDEATH", "DDATA"]);

/** The parts of a Sparkplug B topic we act on, or undefined. */
export function parseSparkplugTopic(
  topic: string,
): { group: string; type: SparkplugMessageType; edgeNode: string; device?: string } | undefined {
  const levels = topic.split("/");
  if (levels[0] !== SPARKPLUG_NAMESPACE) return undefined;
  const [, group, type, edgeNode, device] = levels;
  if (!group || !type || !edgeNode) return undefined;
  if (levels.length === 4 && NODE_TYPES.has(type)) return { group, type: type as SparkplugMessageType, edgeNode };
  if (levels.length === 5 && device && DEVICE_TYPES.has(type)) {
    return { group, type: type as SparkplugMessageType, edgeNode, device };
  }
  return undefined;
}

/** Parses one Sparkplug B message. Pure: no state, never throws (bad protobuf gives a problem). */
export function parseSparkplugMessage(
  topic: string,
  payload: Buffer,
  retained: boolean,
  options: SparkplugOptions,
): ParseResult<SparkplugUpdate> {
  const parts = parseSparkplugTopic(topic);
  if (!parts || !passesFilter(options.groups, parts.group)) return { updates: [] };
  const { group, edgeNode, device } = parts;
  if (parts.type === "NDATA" || parts.type === "DDATA") {
    return { updates: [{ type: "seen", group, edgeNode, ...(device ? { device } : {}) }] };
  }
  if (retained) {
    // Births and deaths are never retained (specification): a retained one is stale. It still
    // shows the node exists, so it earns a rebirth request.
    return {
      updates: parts.type.endsWith("BIRTH") ? [{ type: "seen", group, edgeNode }] : [],
      problem: { level: "debug", message: `ignoring a retained Sparkplug ${parts.type}` },
    };
  }
  let bdSeq: string | undefined;
  try {
    bdSeq = bdSeqOf(decodeSparkplugPayload(payload));
  } catch {
    return {
      updates: [],
      problem: { level: "warn", message: `Sparkplug ${parts.type} payload is not valid protobuf` },
    };
  }
  switch (parts.type) {
    case "NBIRTH":
      return { updates: [{ type: "nodeBirth", group, edgeNode, ...(bdSeq !== undefined ? { bdSeq } : {}) }] };
    case "NDEATH":
      return { updates: [{ type: "nodeDeath", group, edgeNode, ...(bdSeq !== undefined ? { bdSeq } : {}) }] };
    case "DBIRTH":
      return { updates: [{ type: "deviceBirth", group, edgeNode, device: device! }] };
    default:
      return { updates: [{ type: "deviceDeath", group, edgeNode, device: device! }] };
  }
}

/** The NCMD topic and payload that ask an edge node to publish its births again. */
export function rebirthMessage(group: string, edgeNode: string, now = Date.now()): OutgoingMessage {
  return { topic: `${SPARKPLUG_NAMESPACE}/${group}/NCMD/${edgeNode}`, payload: rebirthRequest(now), qos: 0 };
}

interface EdgeNode {
  group: string;
  edgeNode: string;
  /** Born: we saw its NBIRTH in this session. */
  born: boolean;
  bdSeq?: string;
  /** Device → undefined when born in this session, or the time it must be born again by (after a rebirth). */
  devices: Map<string, number | undefined>;
  /** After a reconnect: present until this time unless it rebirths or publishes. */
  confirmBy?: number;
  lastRebirthRequest?: number;
}

/** Sparkplug B state: edge nodes with their birth/death sequence and devices. */
export class SparkplugConvention implements Convention {
  readonly name = SPARKPLUG;
  private readonly nodes = new Map<string, EdgeNode>();
  private readonly rebirthIntervalMs: number;
  private readonly confirmTimeoutMs: number;
  private readonly deviceRebirthGraceMs: number;

  constructor(private readonly options: SparkplugConventionOptions = {}) {
    this.rebirthIntervalMs = options.rebirthIntervalMs ?? 5_000;
    this.confirmTimeoutMs = options.confirmTimeoutMs ?? 15_000;
    this.deviceRebirthGraceMs = options.deviceRebirthGraceMs ?? 2_000;
  }

  subscriptions(): string[] {
    const ns = SPARKPLUG_NAMESPACE;
    return [
      `${ns}/+/NBIRTH/+`,
      `${ns}/+/NDEATH/+`,
      `${ns}/+/NDATA/+`,
      `${ns}/+/DBIRTH/+/+`,
      `${ns}/+/DDEATH/+/+`,
      `${ns}/+/DDATA/+/+`,
    ];
  }

  receive(message: MqttMessage, now: number): Outcome {
    const result = parseSparkplugMessage(message.topic, message.payload, message.retained, this.options);
    const outcome: Outcome = { changed: false, publish: [], problems: result.problem ? [result.problem] : [] };
    for (const update of result.updates) this.apply(update, now, outcome);
    return outcome;
  }

  connected(now: number, first: boolean): Outcome {
    if (first) return noChange();
    // We may have missed deaths while away: every node must prove it is still there.
    const outcome: Outcome = { changed: false, publish: [], problems: [] };
    for (const node of this.nodes.values()) {
      node.confirmBy = now + this.confirmTimeoutMs;
      node.lastRebirthRequest = undefined;
      this.requestRebirth(node, now, outcome);
    }
    return outcome;
  }

  disconnected(_now: number): void {}

  devices(now: number): ConventionDevice[] {
    const devices: ConventionDevice[] = [];
    for (const node of this.nodes.values()) {
      if (!node.born || (node.confirmBy !== undefined && now >= node.confirmBy)) continue;
      const nodeDevice = this.device(node, undefined);
      if (nodeDevice) devices.push(nodeDevice);
      for (const [name, bornBy] of node.devices) {
        if (bornBy !== undefined && now >= bornBy) continue;
        const device = this.device(node, name);
        if (device) devices.push(device);
      }
    }
    return devices.sort(byId);
  }

  nextChange(now: number): number | undefined {
    let next: number | undefined;
    const consider = (at: number | undefined) => {
      if (at !== undefined && at > now && (next === undefined || at < next)) next = at;
    };
    for (const node of this.nodes.values()) {
      if (!node.born) continue;
      consider(node.confirmBy);
      for (const bornBy of node.devices.values()) consider(bornBy);
    }
    return next;
  }

  private device(node: EdgeNode, name: string | undefined): ConventionDevice | undefined {
    const { group, edgeNode } = node;
    const ids = deviceId(SPARKPLUG, name === undefined ? `${group}/${edgeNode}` : `${group}/${edgeNode}/${name}`);
    if (!ids) return undefined;
    const ns = SPARKPLUG_NAMESPACE;
    return {
      id: ids.id,
      properties: definedProperties({
        MQTT_DEVICE_ID: ids.localId,
        MQTT_TOPIC: text(
          name === undefined ? `${ns}/${group}/NDATA/${edgeNode}` : `${ns}/${group}/DDATA/${edgeNode}/${name}`,
        ),
        MQTT_COMMAND_TOPIC: text(
          name === undefined ? `${ns}/${group}/NCMD/${edgeNode}` : `${ns}/${group}/DCMD/${edgeNode}/${name}`,
        ),
        MQTT_SPARKPLUG_GROUP: text(group),
        MQTT_SPARKPLUG_EDGE_NODE: text(edgeNode),
        MQTT_SPARKPLUG_DEVICE: name === undefined ? undefined : text(name),
      }),
    };
  }

  private apply(update: SparkplugUpdate, now: number, outcome: Outcome): void {
    const key = `${update.group}/${update.edgeNode}`;
    let node = this.nodes.get(key);
    if (node?.confirmBy !== undefined && now >= node.confirmBy) {
      // It did not confirm in time after a reconnect: it counts as dead until it is born again.
      node.born = false;
      node.devices.clear();
      node.confirmBy = undefined;
    }
    if (node) {
      for (const [name, bornBy] of node.devices) if (bornBy !== undefined && now >= bornBy) node.devices.delete(name);
    }
    if (!node) {
      if (update.type === "nodeDeath" || update.type === "deviceDeath") return;
      if (this.nodes.size >= MAX_TRACKED) this.forgetUnbornNodes();
      if (this.nodes.size >= MAX_TRACKED) {
        outcome.problems.push({
          level: "warn",
          message: `more than ${MAX_TRACKED} Sparkplug edge nodes; ignoring more`,
        });
        return;
      }
      node = { group: update.group, edgeNode: update.edgeNode, born: false, devices: new Map() };
      this.nodes.set(key, node);
    }
    switch (update.type) {
      case "nodeBirth":
        // A new session: its devices announce themselves again with DBIRTH. A live node's devices
        // get a moment for that, so a rebirth does not make them flap.
        if (node.born) {
          for (const name of node.devices.keys()) node.devices.set(name, now + this.deviceRebirthGraceMs);
        } else {
          node.devices.clear();
        }
        node.born = true;
        node.bdSeq = update.bdSeq;
        node.confirmBy = undefined;
        outcome.changed = true;
        return;
      case "nodeDeath":
        if (node.bdSeq !== undefined && update.bdSeq !== undefined && node.bdSeq !== update.bdSeq) {
          outcome.problems.push(problem("debug", "ignoring an NDEATH whose bdSeq does not match the NBIRTH"));
          return;
        }
        this.nodes.delete(key);
        outcome.changed = true;
        return;
      case "deviceBirth":
        if (!node.born) {
          this.requestRebirth(node, now, outcome);
          return;
        }
        if (node.devices.size >= MAX_TRACKED && !node.devices.has(update.device)) return;
        node.devices.set(update.device, undefined);
        node.confirmBy = undefined;
        outcome.changed = true;
        return;
      case "deviceDeath":
        outcome.changed = node.devices.delete(update.device) || outcome.changed;
        return;
      case "seen":
        if (!node.born || (update.device !== undefined && !node.devices.has(update.device))) {
          this.requestRebirth(node, now, outcome);
          return;
        }
        if (node.confirmBy !== undefined) {
          node.confirmBy = undefined;
          outcome.changed = true;
        }
        return;
    }
  }

  private forgetUnbornNodes(): void {
    for (const [key, node] of this.nodes) if (!node.born) this.nodes.delete(key);
  }

  private requestRebirth(node: EdgeNode, now: number, outcome: Outcome): void {
    if (node.lastRebirthRequest !== undefined && now - node.lastRebirthRequest < this.rebirthIntervalMs) return;
    node.lastRebirthRequest = now;
    outcome.publish.push(rebirthMessage(node.group, node.edgeNode, now));
    outcome.problems.push(problem("debug", "asked a Sparkplug edge node to rebirth"));
  }
}

function problem(level: Problem["level"], message: string): Problem {
  return { level, message };
}
