import {
  byId,
  type Convention,
  type ConventionDevice,
  changed,
  definedProperties,
  deviceId,
  MAX_TRACKED,
  type MqttMessage,
  matchTopic,
  noChange,
  type Outcome,
  type ParseResult,
  text,
} from "./common.js";

/**
 * Plain topic patterns (`sensors/+/telemetry`): a device per value of the wildcards, present while
 * it publishes at least once per silence period. Retained messages are old news (they may come
 * from a device long gone) and do not count; a live device shows up with its next message.
 */

export const TOPIC = "topic";

export interface TopicPatternOptions {
  pattern: string;
  silenceSeconds: number;
}

export interface TopicUpdate {
  /** Index of the matching pattern. */
  pattern: number;
  /** The device's own id: the wildcards' values joined by `/` (the whole topic when there are none). */
  device: string;
  topic: string;
}

/** Which patterns a message matches, and the device each gives. Pure: no state, never throws. */
export function parseTopicMessage(
  topic: string,
  _payload: Buffer,
  retained: boolean,
  patterns: readonly TopicPatternOptions[],
): ParseResult<TopicUpdate> {
  if (retained) return { updates: [] };
  const updates: TopicUpdate[] = [];
  patterns.forEach((pattern, index) => {
    const values = matchTopic(pattern.pattern, topic);
    if (!values) return;
    const joined = values.join("/");
    updates.push({ pattern: index, device: joined.length > 0 ? joined : topic, topic });
  });
  return { updates };
}

interface Heard {
  topic: string;
  at: number;
}

/** Plain topic state: when each device was last heard on each pattern. */
export class TopicConvention implements Convention {
  readonly name = TOPIC;
  /** device id → pattern index → last message. */
  private readonly heard = new Map<string, Map<number, Heard>>();
  private pausedAt: number | undefined;

  constructor(private readonly patterns: readonly TopicPatternOptions[]) {}

  subscriptions(): string[] {
    return [...new Set(this.patterns.map((p) => p.pattern))];
  }

  receive(message: MqttMessage, now: number): Outcome {
    const result = parseTopicMessage(message.topic, message.payload, message.retained, this.patterns);
    let didChange = false;
    for (const update of result.updates) {
      let byPattern = this.heard.get(update.device);
      if (!byPattern) {
        if (this.heard.size >= MAX_TRACKED) this.forgetSilent(now);
        if (this.heard.size >= MAX_TRACKED) {
          return changed(didChange, [
            { level: "warn", message: `more than ${MAX_TRACKED} topic devices; ignoring more` },
          ]);
        }
        byPattern = new Map();
        this.heard.set(update.device, byPattern);
      }
      const before = byPattern.get(update.pattern);
      if (!before || !this.alive(update.pattern, before, now) || before.topic !== update.topic) didChange = true;
      byPattern.set(update.pattern, { topic: update.topic, at: now });
    }
    return changed(didChange, result.problem ? [result.problem] : []);
  }

  connected(now: number, _first: boolean): Outcome {
    // Silence is not counted while we could not hear: shift every clock by the time we were away.
    if (this.pausedAt !== undefined) {
      const away = now - this.pausedAt;
      for (const byPattern of this.heard.values()) for (const heard of byPattern.values()) heard.at += away;
      this.pausedAt = undefined;
    }
    return noChange();
  }

  disconnected(now: number): void {
    this.pausedAt ??= now;
  }

  devices(now: number): ConventionDevice[] {
    const at = this.pausedAt ?? now;
    const devices: ConventionDevice[] = [];
    for (const [device, byPattern] of this.heard) {
      // The first pattern (in configuration order) the device is alive on names its topic.
      const alive = [...byPattern.entries()]
        .filter(([index, heard]) => this.alive(index, heard, at))
        .sort(([a], [b]) => a - b)[0];
      if (!alive) continue;
      const ids = deviceId(TOPIC, device);
      if (!ids) continue;
      const [index, heard] = alive;
      devices.push({
        id: ids.id,
        properties: definedProperties({
          MQTT_DEVICE_ID: ids.localId,
          MQTT_TOPIC: text(heard.topic),
          MQTT_TOPIC_PATTERN: text(this.patterns[index]?.pattern),
        }),
      });
    }
    return devices.sort(byId);
  }

  nextChange(now: number): number | undefined {
    if (this.pausedAt !== undefined) return undefined;
    let next: number | undefined;
    for (const byPattern of this.heard.values()) {
      for (const [index, heard] of byPattern) {
        const end = heard.at + this.silenceMs(index);
        if (end > now && (next === undefined || end < next)) next = end;
      }
    }
    this.forgetSilent(now);
    return next;
  }

  private silenceMs(index: number): number {
    return (this.patterns[index]?.silenceSeconds ?? 60) * 1000;
  }

  private alive(index: number, heard: Heard, now: number): boolean {
    return now - heard.at < this.silenceMs(index);
  }

  /** Drops what has been silent for a while, so memory follows the live devices. */
  private forgetSilent(now: number): void {
    if (this.pausedAt !== undefined) return;
    for (const [device, byPattern] of this.heard) {
      for (const [index, heard] of byPattern) if (!this.alive(index, heard, now)) byPattern.delete(index);
      if (byPattern.size === 0) this.heard.delete(device);
    }
  }
}
