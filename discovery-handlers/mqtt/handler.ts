import { randomBytes } from "node:crypto";
import type { IClientOptions, IPublishPacket, MqttClient } from "mqtt";
import type { Logger } from "../../src/log/logger.js";
import { passesFilterAny } from "../filter.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { boundProperties } from "../sanitize.js";
import { findBrokerOverMdns, publicBrokerUri } from "./broker.js";
import { type Convention, type MqttMessage, type Outcome, type Problem, topicForLog } from "./common.js";
import { type MqttDetails, mqttDetails } from "./details.js";
import { HomeAssistantConvention } from "./home-assistant.js";
import { HomieConvention } from "./homie.js";
import { SparkplugConvention } from "./sparkplug.js";
import { TopicConvention } from "./topics.js";

/**
 * The MQTT discovery handler. One client per DeviceConfiguration subscribes to the enabled
 * conventions' topics and keeps their state; whenever the device set changes it yields the whole
 * set, once per burst of messages (the retained flood after subscribing gives one set).
 *
 * When the broker goes away nothing is known about its devices: the handler yields one empty set,
 * so the agent's grace period starts, and reconnects with a growing delay. After reconnecting,
 * the retained conventions rebuild from what the broker re-sends (a broker back within the grace
 * period tears nothing down), and Sparkplug edge nodes are asked to rebirth.
 *
 * Knowing when the retained messages for a subscription are all in: brokers send them after the
 * SUBACK, and Mosquitto only ~40 ms later (Nagle against delayed ACK). So after each SUBACK the
 * handler publishes a marker (QoS 1) to a topic of its own and waits for it to come back: messages
 * queued before it have arrived by then. Where the broker drops the marker (an ACL), a fixed
 * settle time after the SUBACK is used instead.
 *
 * MQTT 3.1.1 is spoken: every convention works with it, and so does aedes (which refuses MQTT 5).
 */

export interface MqttHandlerTuning {
  /** Quiet time after a change before the set is yielded. */
  debounceMs: number;
  /** A steady stream of changes still yields at least this often. */
  maxDebounceMs: number;
  /** Longest wait for a SUBACK and the retained messages behind it before yielding anyway. */
  subscribeWaitMs: number;
  /** Where the broker does not echo our sync marker (ACLs): how long retained messages get after a SUBACK. */
  retainedSettleMs: number;
  /** First reconnect delay; doubles per failed attempt up to reconnectMaxMs. */
  reconnectInitialMs: number;
  reconnectMaxMs: number;
  connectTimeoutMs: number;
  keepaliveSeconds: number;
  /** At most one Sparkplug rebirth request per edge node in this period. */
  rebirthIntervalMs: number;
  /** After a reconnect, Sparkplug nodes that neither rebirth nor publish in this time are gone. */
  sparkplugConfirmMs: number;
  /** 4 = MQTT 3.1.1 (works with aedes), 5 = MQTT 5. */
  protocolVersion: 4 | 5;
}

export const defaultTuning: MqttHandlerTuning = {
  debounceMs: 20,
  maxDebounceMs: 500,
  subscribeWaitMs: 5_000,
  retainedSettleMs: 250,
  reconnectInitialMs: 500,
  reconnectMaxMs: 30_000,
  connectTimeoutMs: 10_000,
  keepaliveSeconds: 30,
  rebirthIntervalMs: 5_000,
  sparkplugConfirmMs: 15_000,
  protocolVersion: 4,
};

/** The handler with its timings adjusted (tests use shorter ones). */
export function createMqttHandler(tuning: Partial<MqttHandlerTuning> = {}): DiscoveryHandler<MqttDetails> {
  const settings = { ...defaultTuning, ...tuning };
  return {
    name: "mqtt",
    shared: true,
    detailsSchema: mqttDetails,
    discover: (context) => discoverMqttDevices(context, settings),
  };
}

export const mqttHandler: DiscoveryHandler<MqttDetails> = createMqttHandler();

/** Yields the complete device set each time it changes, until the signal aborts. */
export async function* discoverMqttDevices(
  context: DiscoveryContext<MqttDetails>,
  tuning: MqttHandlerTuning = defaultTuning,
): AsyncGenerator<DiscoveredDevice[]> {
  if (context.signal.aborted) return;
  const session = new MqttDiscoverySession(context, tuning);
  const onAbort = () => void session.close();
  context.signal.addEventListener("abort", onAbort, { once: true });
  try {
    await session.start();
    for (;;) {
      const set = await session.next();
      if (set === undefined) return;
      yield set;
    }
  } finally {
    context.signal.removeEventListener("abort", onAbort);
    await session.close();
  }
}

/** The conventions a configuration enables. */
export function conventionsFor(details: MqttDetails, tuning: MqttHandlerTuning = defaultTuning): Convention[] {
  const conventions: Convention[] = [];
  if (details.conventions.homeAssistant) {
    conventions.push(new HomeAssistantConvention({ prefix: details.homeAssistantPrefix }));
  }
  if (details.conventions.homie) conventions.push(new HomieConvention({ prefix: details.homiePrefix }));
  if (details.conventions.sparkplug) {
    conventions.push(
      new SparkplugConvention({
        ...(details.sparkplugGroups ? { groups: details.sparkplugGroups } : {}),
        rebirthIntervalMs: tuning.rebirthIntervalMs,
        confirmTimeoutMs: tuning.sparkplugConfirmMs,
      }),
    );
  }
  if (details.conventions.topics.length > 0) conventions.push(new TopicConvention(details.conventions.topics));
  return conventions;
}

/** A one-slot channel: each value replaces an unread one (device sets replace each other). */
class LatestValue<T> {
  private value: { item: T } | undefined;
  private waiter: ((item: T | undefined) => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      waiter(item);
    } else {
      this.value = { item };
    }
  }

  next(): Promise<T | undefined> {
    if (this.value) {
      const { item } = this.value;
      this.value = undefined;
      return Promise.resolve(item);
    }
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  close(): void {
    this.closed = true;
    this.value = undefined;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.(undefined);
  }
}

/** Devices can flood us with bad messages: warn about the first few a minute, the rest at debug. */
class ProblemLog {
  private windowStart = 0;
  private warnings = 0;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly warningsPerMinute = 20,
  ) {}

  report(problem: Problem, fields: Record<string, unknown>): void {
    if (problem.level === "debug") {
      this.log.debug(fields, problem.message);
      return;
    }
    const now = Date.now();
    if (now - this.windowStart >= 60_000) {
      if (this.suppressed > 0) this.log.warn({ suppressed: this.suppressed }, "more MQTT message problems (at debug)");
      this.windowStart = now;
      this.warnings = 0;
      this.suppressed = 0;
    }
    if (this.warnings < this.warningsPerMinute) {
      this.warnings++;
      this.log.warn(fields, problem.message);
    } else {
      this.suppressed++;
      this.log.debug(fields, problem.message);
    }
  }
}

const MAX_TIMER_MS = 3_600_000;

/** One discovery run: a client, the conventions' state, and the timers that turn changes into sets. */
class MqttDiscoverySession {
  private readonly details: MqttDetails;
  private readonly log: Logger;
  private readonly conventions: Convention[];
  private readonly problems: ProblemLog;
  private readonly sets = new LatestValue<DiscoveredDevice[]>();
  private readonly stop = new AbortController();
  private client: MqttClient | undefined;
  private brokerUri = "";
  private closed = false;
  private closing: Promise<void> | undefined;

  private connected = false;
  private everConnected = false;
  /** Bumped per connection, so callbacks from an old one are ignored. */
  private connection = 0;
  private readonly subscribed = new Set<string>();
  /** Subscriptions whose retained messages may still be on the way: sync id → when subscribed. */
  private readonly pendingSyncs = new Map<number, number>();
  private syncSequence = 0;
  private markerTopic = "";
  /** False once a marker did not come back: the broker does not let us publish to our own topic. */
  private markersWork = true;
  private reconnectDelay: number;
  /** Connection errors repeat on every retry: warn once per outage, then debug. */
  private errorReported = false;

  private flushTimer: NodeJS.Timeout | undefined;
  private burstStartedAt: number | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private lastSet: string | undefined;

  constructor(
    private readonly context: DiscoveryContext<MqttDetails>,
    private readonly tuning: MqttHandlerTuning,
  ) {
    this.details = context.details;
    this.log = context.log.child({ handler: "mqtt" });
    this.conventions = conventionsFor(this.details, tuning);
    this.problems = new ProblemLog(this.log);
    this.reconnectDelay = tuning.reconnectInitialMs;
  }

  async start(): Promise<void> {
    let uri = this.details.brokerUri;
    if (uri === undefined) {
      this.log.info({ interface: this.details.mdnsInterface }, "looking for an MQTT broker over mDNS (_mqtt._tcp)");
      uri = await findBrokerOverMdns({
        ...(this.details.mdnsInterface ? { interface: this.details.mdnsInterface } : {}),
        signal: this.stop.signal,
      });
      if (uri === undefined || this.closed) return;
    }
    this.brokerUri = publicBrokerUri(uri);
    const { username, password } = this.context.properties;
    const clientId = `spindle-${randomBytes(8).toString("hex")}`;
    this.markerTopic = `spindle/discovery-sync/${clientId}`;
    const options: IClientOptions = {
      clientId,
      clean: true,
      protocolVersion: this.tuning.protocolVersion,
      reconnectPeriod: this.tuning.reconnectInitialMs,
      connectTimeout: this.tuning.connectTimeoutMs,
      keepalive: this.tuning.keepaliveSeconds,
      // We subscribe ourselves on every connect, so we know when the retained messages are in.
      resubscribe: false,
      reconnectOnConnackError: true,
      queueQoSZero: false,
      // mqtt-packet's cache of every packet number as a Buffer is 6.6 MiB of heap for the
      // process's life, to save a 2-byte allocation per packet we write (we write few).
      writeCache: false,
      ...(username ? { username } : {}),
      ...(password ? { password } : {}),
    };
    this.log.info({ broker: this.brokerUri, clientId: options.clientId }, "connecting to the MQTT broker");
    // The mqtt package loads with the first session, not with every agent.
    // A CommonJS package: bundled with code splitting, its import() holds only `default`.
    const mqtt = (await import("mqtt")) as typeof import("mqtt") & { default?: typeof import("mqtt") };
    const { connect } = mqtt.default ?? mqtt;
    if (this.closed) return;
    const client = connect(uri, options);
    this.client = client;
    client.on("connect", () => this.onConnect());
    client.on("close", () => this.onClose());
    client.on("reconnect", () => this.onReconnect());
    client.on("error", (error) => this.onError(error));
    client.on("message", (topic, payload, packet) => this.onMessage(topic, payload, packet));
    // A broker that keeps sending is alive, though its PINGRESP may wait behind thousands of
    // retained messages (10,000 on subscribe): the first packet after a PINGREQ counts as the
    // answer. mqtt.js would drop the connection keepalive/2 after its ping and, reconnected, be
    // sent every retained message again. Pings still go out every keepalive while packets flow.
    let pinged = false;
    client.on("packetsend", (packet) => {
      if (packet.cmd === "pingreq") pinged = true;
    });
    client.on("packetreceive", () => {
      if (!pinged) return;
      pinged = false;
      client.reschedulePing(true);
    });
  }

  next(): Promise<DiscoveredDevice[] | undefined> {
    return this.sets.next();
  }

  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    this.stop.abort();
    clearTimeout(this.flushTimer);
    clearTimeout(this.deadlineTimer);
    this.sets.close();
    const client = this.client;
    this.closing = client
      ? new Promise<void>((resolve) => {
          client.removeAllListeners("message");
          client.end(true, {}, () => resolve());
        })
      : Promise.resolve();
    return this.closing;
  }

  private onConnect(): void {
    if (this.closed || !this.client) return;
    const first = !this.everConnected;
    this.everConnected = true;
    this.connected = true;
    this.connection++;
    this.subscribed.clear();
    this.pendingSyncs.clear();
    this.reconnectDelay = this.tuning.reconnectInitialMs;
    this.client.options.reconnectPeriod = this.reconnectDelay;
    this.errorReported = false;
    this.log.info(
      { broker: this.brokerUri },
      first ? "connected to the MQTT broker" : "reconnected to the MQTT broker",
    );
    const now = Date.now();
    const outcomes = this.conventions.map((convention) => ({ convention, outcome: convention.connected(now, first) }));
    // Subscribe before publishing (rebirth requests), so the answers cannot arrive first.
    this.syncSubscriptions();
    for (const { convention, outcome } of outcomes) this.apply(outcome, convention.name);
    this.scheduleFlush();
  }

  private onClose(): void {
    if (!this.connected) return;
    this.connected = false;
    const now = Date.now();
    for (const convention of this.conventions) convention.disconnected(now);
    if (this.closed) return;
    this.log.warn({ broker: this.brokerUri }, "lost the MQTT broker; reporting no devices until it is back");
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.burstStartedAt = undefined;
    if (this.lastSet !== "[]") {
      this.lastSet = "[]";
      this.sets.push([]);
    }
  }

  private onError(error: Error): void {
    const fields = { broker: this.brokerUri, error: error.message };
    if (this.errorReported) {
      this.log.debug(fields, "MQTT client error");
    } else {
      this.errorReported = true;
      this.log.warn(fields, "MQTT client error (retrying with backoff; further errors at debug)");
    }
  }

  private onReconnect(): void {
    if (!this.client) return;
    // MQTT.js reads reconnectPeriod each time it schedules the next attempt: grow it, capped.
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.tuning.reconnectMaxMs);
    this.client.options.reconnectPeriod = this.reconnectDelay;
    this.log.debug({ broker: this.brokerUri, nextDelayMs: this.reconnectDelay }, "reconnecting to the MQTT broker");
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (this.closed) return;
    if (topic === this.markerTopic) {
      this.onMarker(Number(payload.toString()));
      return;
    }
    // MQTT.js decodes topics leniently; a replacement character means the bytes were not UTF-8.
    if (topic.includes("\uFFFD")) {
      this.problems.report({ level: "debug", message: "ignoring a message whose topic is not UTF-8" }, {});
      return;
    }
    if (payload.length > this.details.maxPayloadBytes) {
      this.problems.report(
        { level: "warn", message: "dropping an MQTT message larger than maxPayloadBytes" },
        { topic: topicForLog(topic), bytes: payload.length, maxPayloadBytes: this.details.maxPayloadBytes },
      );
      return;
    }
    const message: MqttMessage = { topic, payload, retained: packet.retain === true };
    const now = Date.now();
    let changed = false;
    for (const convention of this.conventions) {
      let outcome: Outcome;
      try {
        outcome = convention.receive(message, now);
      } catch (error) {
        // Conventions do not throw by design; if one does, the message is lost, not the handler.
        this.log.error({ convention: convention.name, topic: topicForLog(topic), error: String(error) }, "bug");
        continue;
      }
      this.apply(outcome, convention.name, topic);
      changed = changed || outcome.changed;
    }
    this.syncSubscriptions();
    if (changed) this.scheduleFlush();
  }

  /** Logs an outcome's problems and publishes what it asks for. */
  private apply(outcome: Outcome, convention: string, topic?: string): void {
    for (const problem of outcome.problems) {
      this.problems.report(problem, { convention, ...(topic !== undefined ? { topic: topicForLog(topic) } : {}) });
    }
    const client = this.client;
    if (!client || !this.connected) return;
    for (const message of outcome.publish) {
      client.publish(message.topic, message.payload, { qos: message.qos, retain: false }, (error) => {
        if (error) this.log.debug({ topic: topicForLog(message.topic), error: error.message }, "publish failed");
      });
    }
    if (outcome.changed) this.scheduleFlush();
  }

  /** Subscribes to what the conventions want now and drops what they no longer want. */
  private syncSubscriptions(): void {
    const client = this.client;
    if (!client || !this.connected || this.closed) return;
    const wanted = new Set([this.markerTopic, ...this.conventions.flatMap((convention) => convention.subscriptions())]);
    const remove = [...this.subscribed].filter((topic) => !wanted.has(topic));
    const add = [...wanted].filter((topic) => !this.subscribed.has(topic));
    if (remove.length > 0) {
      for (const topic of remove) this.subscribed.delete(topic);
      client.unsubscribe(remove, (error) => {
        if (error) this.log.debug({ error: error.message }, "unsubscribe failed");
      });
    }
    if (add.length === 0) return;
    for (const topic of add) this.subscribed.add(topic);
    const sync = ++this.syncSequence;
    this.pendingSyncs.set(sync, Date.now());
    const connection = this.connection;
    client.subscribe(add, { qos: 1 }, (error, granted) => {
      if (connection !== this.connection || this.closed) return;
      if (error) {
        this.log.warn({ error: error.message, topics: add.length }, "subscribe failed");
        this.settled(sync);
        return;
      }
      const refused = (granted ?? []).filter((grant) => grant.qos === 128).map((grant) => topicForLog(grant.topic));
      if (refused.length > 0) this.log.warn({ refused }, "the broker refused subscriptions");
      if (this.markersWork) {
        client.publish(this.markerTopic, String(sync), { qos: 1, retain: false }, () => {});
      } else {
        setTimeout(() => {
          if (connection === this.connection) this.settled(sync);
        }, this.tuning.retainedSettleMs);
      }
    });
  }

  /** Our marker came back: the retained messages of that subscription and all before it are in. */
  private onMarker(sync: number): void {
    for (const pending of [...this.pendingSyncs.keys()]) if (pending <= sync) this.settled(pending);
  }

  private settled(sync: number): void {
    if (this.pendingSyncs.delete(sync)) this.scheduleFlush();
  }

  /** Yields after a quiet spell of debounceMs (at most maxDebounceMs after the burst began). */
  private scheduleFlush(): void {
    if (this.closed) return;
    const now = Date.now();
    this.burstStartedAt ??= now;
    const delay = Math.max(0, Math.min(this.tuning.debounceMs, this.burstStartedAt + this.tuning.maxDebounceMs - now));
    clearTimeout(this.flushTimer);
    this.flushTimer = setTimeout(() => this.flush(), delay);
  }

  private flush(): void {
    this.flushTimer = undefined;
    if (this.closed) return;
    // While disconnected the empty set stands (state may be half rebuilt after a reconnect).
    if (!this.connected) {
      this.burstStartedAt = undefined;
      return;
    }
    const now = Date.now();
    const oldest = Math.min(...this.pendingSyncs.values());
    if (this.pendingSyncs.size > 0) {
      if (now - oldest < this.tuning.subscribeWaitMs) {
        // Retained messages for new subscriptions are still on the way: wait for them.
        this.burstStartedAt = undefined;
        this.flushTimer = setTimeout(() => this.flush(), oldest + this.tuning.subscribeWaitMs - now);
        return;
      }
      if (this.markersWork) {
        this.markersWork = false;
        this.log.info(
          { marker: this.markerTopic },
          "sync marker did not come back; waiting a fixed time for retained messages",
        );
      }
      this.pendingSyncs.clear();
    }
    this.burstStartedAt = undefined;
    const set = this.deviceSet(now);
    const key = JSON.stringify(set);
    if (key !== this.lastSet) {
      this.lastSet = key;
      this.sets.push(set);
    }
    this.armDeadline(now);
  }

  /** Wakes up when a convention's devices change by time alone (silence timeouts). */
  private armDeadline(now: number): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    let next: number | undefined;
    for (const convention of this.conventions) {
      const at = convention.nextChange(now);
      if (at !== undefined && (next === undefined || at < next)) next = at;
    }
    if (next === undefined) return;
    const delay = Math.min(Math.max(0, next - now + 1), MAX_TIMER_MS);
    this.deadlineTimer = setTimeout(() => this.scheduleFlush(), delay);
  }

  /** Every convention's devices, filtered, with the broker address, bounded; first of an id wins. */
  private deviceSet(now: number): DiscoveredDevice[] {
    const seen = new Set<string>();
    const set: DiscoveredDevice[] = [];
    for (const convention of this.conventions) {
      for (const device of convention.devices(now)) {
        if (seen.has(device.id)) continue;
        if (!passesFilterAny(this.details.deviceIds, [device.id, device.properties.MQTT_DEVICE_ID ?? device.id])) {
          continue;
        }
        seen.add(device.id);
        set.push({
          id: device.id,
          properties: boundProperties({ ...device.properties, MQTT_BROKER_URI: this.brokerUri }),
          ...(device.problem ? { problem: device.problem } : {}),
        });
      }
    }
    return set.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }
}
