import { createHash } from "node:crypto";
import type { DiscoveredDevice } from "../handler.js";
import { propertyValue } from "../sanitize.js";

/**
 * What the MQTT conventions share: the message they receive, what they answer with, and the
 * helpers that turn untrusted topics and payloads into bounded values.
 */

/** One message as the broker delivered it. */
export interface MqttMessage {
  topic: string;
  payload: Buffer;
  /** Set when the broker sent a stored retained message (on subscribe), not a live one. */
  retained: boolean;
}

/** Something wrong with a message: logged, never thrown. */
export interface Problem {
  level: "debug" | "warn";
  message: string;
}

/** A message a convention wants published (Sparkplug rebirth requests). */
export interface OutgoingMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
}

/** What handling one event did. */
export interface Outcome {
  /** True when the device set may have changed. */
  changed: boolean;
  publish: OutgoingMessage[];
  problems: Problem[];
}

/** The result of a pure parser: state updates, or why the message was ignored. */
export interface ParseResult<Update> {
  updates: Update[];
  problem?: Problem;
}

/** A device as a convention reports it, before the handler adds the broker address and filters. */
export type ConventionDevice = DiscoveredDevice;

/**
 * One MQTT discovery convention (Home Assistant, Homie, Sparkplug B, plain topics): the topics it
 * listens to, the state it keeps from their messages, and the devices that state describes.
 */
export interface Convention {
  readonly name: string;
  /** Every topic filter wanted now (may grow as messages arrive, e.g. availability topics). */
  subscriptions(): string[];
  receive(message: MqttMessage, now: number): Outcome;
  /** The client (re)connected; `first` on the first connection. Retained state re-syncs after this. */
  connected(now: number, first: boolean): Outcome;
  /** The client lost the broker; state is kept (the agent's grace period handles teardown). */
  disconnected(now: number): void;
  /** The devices present at `now`, sorted by id. */
  devices(now: number): ConventionDevice[];
  /** When, without any message, `devices()` would next change (silence timeouts); undefined if never. */
  nextChange(now: number): number | undefined;
}

/** Entries one convention tracks at most: a flood of fake devices must not exhaust memory. */
export const MAX_TRACKED = 10_000;

/** Longest device id (Device.spec.id allows 1024). */
export const MAX_DEVICE_ID = 512;

export function noChange(problems: Problem[] = []): Outcome {
  return { changed: false, publish: [], problems };
}

export function changed(value: boolean, problems: Problem[] = []): Outcome {
  return { changed: value, publish: [], problems };
}

// Unpaired UTF-16 surrogates: not representable in UTF-8, so not in a Kubernetes object.
const LONE_SURROGATES = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** An untrusted value as a bounded, printable string; undefined for non-scalars and empty text. */
export function text(raw: unknown, max?: number): string | undefined {
  if (typeof raw === "number" && !Number.isFinite(raw)) return undefined;
  if (typeof raw !== "string" && typeof raw !== "number" && typeof raw !== "boolean") return undefined;
  // Cut first, then drop surrogates the cut may have split.
  const value = propertyValue(String(raw), max).replace(LONE_SURROGATES, "");
  return value.length > 0 ? value : undefined;
}

/** `mqtt:<convention>:<raw>`, sanitized and bounded; long ids end in a hash of the whole so they stay distinct. */
export function deviceId(convention: string, raw: string): { id: string; localId: string } | undefined {
  const clean = text(raw, Number.MAX_SAFE_INTEGER);
  if (clean === undefined) return undefined;
  const prefix = `mqtt:${convention}:`;
  const room = MAX_DEVICE_ID - prefix.length;
  const localId =
    clean.length <= room
      ? clean
      : `${clean.slice(0, room - 17).replace(LONE_SURROGATES, "")}~${createHash("sha256").update(raw).digest("hex").slice(0, 16)}`;
  return { id: `${prefix}${localId}`, localId };
}

/** Decodes UTF-8 strictly: undefined for invalid byte sequences. */
export function decodeUtf8(payload: Buffer): string | undefined {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(payload);
  } catch {
    return undefined;
  }
}

/** Parses a JSON object payload; a problem for anything else. */
export function parseJsonObject(
  payload: Buffer,
  what: string,
): { value: Record<string, unknown> } | { problem: Problem } {
  const body = decodeUtf8(payload);
  if (body === undefined) return { problem: { level: "warn", message: `${what}: payload is not UTF-8` } };
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return { problem: { level: "warn", message: `${what}: payload is not valid JSON` } };
  }
  if (!isRecord(value)) return { problem: { level: "warn", message: `${what}: payload is not a JSON object` } };
  return { value };
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A topic a client may publish to: no wildcards, no NUL, not empty, not absurdly long. */
export function isTopicName(topic: unknown): topic is string {
  return (
    typeof topic === "string" &&
    topic.length > 0 &&
    topic.length <= 4096 &&
    !/[+#\u0000]/.test(topic) &&
    !LONE_SURROGATE.test(topic) &&
    !topic.includes("\uFFFD")
  );
}

/** A valid subscription filter: `+` alone in its level, `#` alone and last. */
export function isTopicFilter(filter: string): boolean {
  if (filter.length === 0 || filter.length > 4096 || filter.includes("\u0000")) return false;
  const levels = filter.split("/");
  return levels.every((level, index) => {
    if (level === "#") return index === levels.length - 1;
    if (level === "+") return true;
    return !level.includes("+") && !level.includes("#");
  });
}

/**
 * Matches a topic against a filter; the values the wildcards stood for, or undefined. `#` gives
 * the rest of the topic as one value. Wildcards in the first level never match `$` topics.
 */
export function matchTopic(filter: string, topic: string): string[] | undefined {
  const wanted = filter.split("/");
  const levels = topic.split("/");
  const values: string[] = [];
  for (let index = 0; index < wanted.length; index++) {
    const level = wanted[index];
    const dollar = index === 0 && topic.startsWith("$");
    if (level === "#") {
      if (dollar) return undefined;
      values.push(levels.slice(index).join("/"));
      return values;
    }
    const actual = levels[index];
    if (actual === undefined) return undefined;
    if (level === "+") {
      if (dollar) return undefined;
      values.push(actual);
    } else if (level !== actual) {
      return undefined;
    }
  }
  return wanted.length === levels.length ? values : undefined;
}

/** A topic shortened for a log line (topics are untrusted and may be huge). */
export function topicForLog(topic: string): string {
  return topic.length > 200 ? `${topic.slice(0, 200)}…` : topic;
}

/** Sorts devices by id (stable output makes change detection a string compare). */
export function byId(a: ConventionDevice, b: ConventionDevice): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** Property map without undefined values. */
export function definedProperties(props: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(props)) if (value !== undefined) out[name] = value;
  return out;
}
