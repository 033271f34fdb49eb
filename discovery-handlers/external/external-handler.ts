import * as grpc from "@grpc/grpc-js";
import { stringify } from "yaml";
import { z } from "zod";
import type { Logger } from "../../src/log/logger.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { CHANNEL_OPTIONS, type DiscoverRequest, type DiscoverResponse, grpcTarget, protocol } from "./protocol.js";
import type { HandlerRegistry, Registration } from "./registry.js";
import { acceptDevices } from "./wire.js";

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

/** The agent cannot know an external handler's details schema: any object goes, the handler judges it. */
const anyDetails = z.record(z.string(), z.unknown());

/**
 * An external handler, as the agent sees it: a DiscoveryHandler whose discovery calls `Discover`
 * on every endpoint registered under its name and yields the union of their latest lists (each
 * response replaces its endpoint's list, as in Akri). Endpoints that register later join a
 * running discovery; one whose stream breaks loses its devices (the agent keeps them for the
 * grace period) and is called again with backoff; one that cannot be reached is removed from
 * the registry until it registers again.
 */
export class ExternalHandler implements DiscoveryHandler<Record<string, unknown>> {
  readonly detailsSchema = anyDetails;
  private runs = new Set<DiscoveryRun>();
  private lastShared = false;

  constructor(
    readonly name: string,
    private registry: HandlerRegistry,
  ) {}

  /** From the latest registration: Akri makes sharing a property of the handler, not the configuration. */
  get shared(): boolean {
    const endpoints = this.registry.endpoints(this.name);
    if (endpoints.length > 0) this.lastShared = endpoints[endpoints.length - 1]!.shared;
    return this.lastShared;
  }

  /** Called by the registry: an endpoint registered (again); a broken stream to it is retried now. */
  registered(registration: Registration): void {
    for (const run of this.runs) run.sync(registration.endpoint);
  }

  /** Called by the registry after any change of this name's endpoints. */
  endpointsChanged(): void {
    for (const run of this.runs) run.sync();
  }

  async *discover(context: DiscoveryContext<Record<string, unknown>>): AsyncIterable<DiscoveredDevice[]> {
    const request: DiscoverRequest = {
      discovery_details: stringify(context.details ?? {}),
      discovery_properties: Object.fromEntries(
        Object.entries(context.properties).map(([k, v]) => [k, { vec: Buffer.from(v, "utf8") }]),
      ),
    };
    const run = new DiscoveryRun(this.name, this.registry, request, context.log);
    this.runs.add(run);
    try {
      run.sync();
      while (!context.signal.aborted) {
        await run.changed(context.signal);
        if (run.failure) throw run.failure;
        if (context.signal.aborted) return;
        yield run.merged();
      }
    } finally {
      this.runs.delete(run);
      run.stop();
    }
  }
}

/** One discovery (one configuration) through one external handler name. */
class DiscoveryRun {
  private streams = new Map<string, EndpointStream>();
  readonly lists = new Map<string, DiscoveredDevice[]>();
  failure: Error | undefined;
  private dirty = false;
  private wake: (() => void) | undefined;

  constructor(
    readonly name: string,
    readonly registry: HandlerRegistry,
    readonly request: DiscoverRequest,
    readonly log: Logger,
  ) {}

  /** Streams for the endpoints registered now; `again` is retried at once if its stream is down. */
  sync(again?: string): void {
    const registered = new Map(this.registry.endpoints(this.name).map((r) => [r.endpoint, r]));
    for (const [endpoint, stream] of this.streams) {
      if (registered.has(endpoint)) continue;
      stream.stop();
      this.streams.delete(endpoint);
      if (this.lists.delete(endpoint)) this.notify();
    }
    for (const [endpoint, registration] of registered) {
      const stream = this.streams.get(endpoint);
      if (!stream) {
        const s = new EndpointStream(this, registration);
        this.streams.set(endpoint, s);
        s.start();
      } else if (endpoint === again) stream.reconnectNow();
    }
  }

  /** The union of every endpoint's latest list, in registration order; the first of duplicate ids wins. */
  merged(): DiscoveredDevice[] {
    if (this.lists.size === 1) return [...this.lists.values()][0]!;
    const out: DiscoveredDevice[] = [];
    const ids = new Set<string>();
    for (const r of this.registry.endpoints(this.name))
      for (const d of this.lists.get(r.endpoint) ?? [])
        if (!ids.has(d.id)) {
          ids.add(d.id);
          out.push(d);
        }
    return out;
  }

  notify(): void {
    this.dirty = true;
    this.wake?.();
  }

  fail(err: Error): void {
    this.failure = err;
    this.notify();
  }

  changed(signal: AbortSignal): Promise<void> {
    if (this.dirty || signal.aborted) {
      this.dirty = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        this.wake = undefined;
        this.dirty = false;
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.wake = done;
      signal.addEventListener("abort", done, { once: true });
    });
  }

  stop(): void {
    for (const s of this.streams.values()) s.stop();
    this.streams.clear();
  }
}

/** The Discover stream to one endpoint, for one run. */
class EndpointStream {
  private client: grpc.Client | undefined;
  private call: grpc.ClientReadableStream<DiscoverResponse> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private lastProblems = "";
  private log: Logger;

  constructor(
    private run: DiscoveryRun,
    private registration: Registration,
  ) {
    this.log = run.log.child({ endpoint: registration.endpoint });
  }

  start(): void {
    if (this.stopped) return;
    const { DiscoveryHandler } = protocol();
    this.client ??= new DiscoveryHandler(
      grpcTarget(this.registration.endpoint, this.registration.endpointType),
      grpc.credentials.createInsecure(),
      CHANNEL_OPTIONS,
    );
    const client = this.client as unknown as {
      Discover(request: DiscoverRequest): grpc.ClientReadableStream<DiscoverResponse>;
    };
    const call = client.Discover(this.run.request);
    this.call = call;
    let answered = false;
    call.on("metadata", () => {
      answered = true;
    });
    call.on("data", (response: DiscoverResponse) => {
      answered = true;
      this.failures = 0;
      this.accept(response);
    });
    call.on("error", (err: grpc.ServiceError) => this.ended(call, answered, err.code, err.details || err.message));
    call.on("end", () => this.ended(call, answered, grpc.status.OK, "the handler ended the stream"));
  }

  private accept(response: DiscoverResponse): void {
    try {
      const { devices, problems } = acceptDevices(response.devices ?? []);
      const summary = problems.join("; ");
      if (summary !== this.lastProblems && summary !== "")
        this.log.warn({ problems }, "external handler sent devices that cannot be published as sent");
      this.lastProblems = summary;
      this.run.lists.set(this.registration.endpoint, devices);
      this.run.notify();
    } catch (err) {
      this.log.error({ err: String(err) }, "external handler response refused; its last list stays");
    }
  }

  private ended(call: grpc.ClientReadableStream<DiscoverResponse>, answered: boolean, code: number, why: string) {
    if (this.stopped || call !== this.call) return;
    this.call = undefined;
    call.removeAllListeners();
    call.on("error", () => {});
    if (this.run.lists.delete(this.registration.endpoint)) this.run.notify();
    if (code === grpc.status.INVALID_ARGUMENT) {
      this.run.fail(new Error(`external handler ${this.run.name} refused the discovery details: ${why}`));
      return;
    }
    if (!answered && (code === grpc.status.UNAVAILABLE || code === grpc.status.INTERNAL)) {
      // Nothing that speaks gRPC answered: gone, as in Akri; it registers again when it is back.
      this.run.registry.remove(this.run.name, this.registration.endpoint, `cannot call Discover: ${why}`);
      return;
    }
    this.failures++;
    const delay = Math.min(RETRY_MIN_MS * 2 ** (this.failures - 1), RETRY_MAX_MS);
    this.log.warn({ code: grpc.status[code], why, retryMs: delay }, "external handler stream ended; calling again");
    this.timer = setTimeout(() => this.start(), delay);
  }

  reconnectNow(): void {
    if (this.call || this.stopped) return;
    clearTimeout(this.timer);
    this.failures = 0;
    this.start();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    const call = this.call;
    this.call = undefined;
    if (call) {
      call.removeAllListeners();
      call.on("error", () => {});
      call.cancel();
    }
    this.client?.close();
  }
}
