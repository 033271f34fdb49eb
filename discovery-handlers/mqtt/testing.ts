import { pino } from "pino";
import type { DiscoveredDevice } from "../handler.js";
import { createMqttHandler, type MqttHandlerTuning } from "./handler.js";

/** Test support: runs the MQTT handler and records every set it yields and every log line. */

/** Short timings so tests do not wait for production backoffs. */
export const testTuning: Partial<MqttHandlerTuning> = {
  reconnectInitialMs: 100,
  reconnectMaxMs: 1_000,
  connectTimeoutMs: 2_000,
  rebirthIntervalMs: 500,
  sparkplugConfirmMs: 3_000,
};

export class DiscoveryRun {
  readonly sets: DiscoveredDevice[][] = [];
  readonly logs: string[] = [];
  readonly done: Promise<void>;
  private readonly controller = new AbortController();

  constructor(details: unknown, properties: Record<string, string> = {}, tuning: Partial<MqttHandlerTuning> = {}) {
    const handler = createMqttHandler({ ...testTuning, ...tuning });
    const parsed = handler.detailsSchema.parse(details);
    const log = pino({ level: "debug" }, { write: (line: string) => void this.logs.push(line) });
    const signal = this.controller.signal;
    this.done = (async () => {
      for await (const set of handler.discover({ details: parsed, properties, signal, log })) this.sets.push(set);
    })();
  }

  get latest(): DiscoveredDevice[] | undefined {
    return this.sets.at(-1);
  }

  ids(): string[] {
    return (this.latest ?? []).map((device) => device.id);
  }

  device(id: string): DiscoveredDevice | undefined {
    return this.latest?.find((device) => device.id === id);
  }

  /** Polls until the latest set satisfies the predicate; fails with the last set after the timeout. */
  async until(what: string, predicate: (set: DiscoveredDevice[]) => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const latest = this.latest;
      if (latest && predicate(latest)) return;
      await sleep(20);
    }
    throw new Error(`timed out waiting for ${what}; last set: ${JSON.stringify(this.ids())}`);
  }

  untilHas(ids: string[], timeoutMs?: number): Promise<void> {
    return this.until(`${ids.join(", ")} present`, (set) => ids.every((id) => set.some((d) => d.id === id)), timeoutMs);
  }

  untilGone(ids: string[], timeoutMs?: number): Promise<void> {
    return this.until(`${ids.join(", ")} gone`, (set) => ids.every((id) => !set.some((d) => d.id === id)), timeoutMs);
  }

  async stop(): Promise<void> {
    this.controller.abort();
    await this.done;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
