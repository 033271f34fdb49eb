import * as grpc from "@grpc/grpc-js";
import { stringify } from "yaml";
import { z } from "zod";
import type { Logger } from "../../src/log/logger.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import {
  CHANNEL_OPTIONS,
  type DiscoverRequest,
  type DiscoverResponse,
  grpcTarget,
  MAX_MESSAGE_BYTES,
  protocol,
} from "./protocol.js";
import type { HandlerRegistry, Registration } from "./registry.js";
import { acceptDevices, type RefusedResponse, readDiscoverResponse } from "./wire.js";

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;
/**
 * A handler that has not sent its first list this long after Discover is logged as quiet. It is
 * not an error (Akri's agent waits too, and a first scan may take minutes), so nothing is cut.
 */
export const FIRST_LIST_WARN_MS = 30_000;
/**
 * grpc-js waits without end for a peer that accepts the connection but never completes the
 * HTTP/2 handshake (a socket that is not gRPC and says nothing): after this long it is taken
 * as unreachable, like a refused connection.
 */
export const CONNECT_TIMEOUT_MS = 10_000;

type DiscoverClient = grpc.Client & {
  Discover(request: DiscoverRequest): grpc.ClientReadableStream<DiscoverResponse | RefusedResponse>;
};
let discoverClient:
  | (new (
      target: string,
      c: grpc.ChannelCredentials,
      o: grpc.ChannelOptions,
    ) => DiscoverClient)
  | undefined;

/** The v0 DiscoveryHandler client, with responses counted from their bytes before they are decoded. */
function discoverClientClass() {
  if (discoverClient) return discoverClient;
  const discover = protocol().DiscoveryHandler.service.Discover!;
  const decode = discover.responseDeserialize as (bytes: Buffer) => DiscoverResponse;
  discoverClient = grpc.makeGenericClientConstructor(
    { Discover: { ...discover, responseDeserialize: (bytes: Buffer) => readDiscoverResponse(bytes, decode) } },
    "v0.DiscoveryHandler",
  ) as unknown as typeof discoverClient;
  return discoverClient!;
}

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
  private client: DiscoverClient | undefined;
  private call: grpc.ClientReadableStream<DiscoverResponse | RefusedResponse> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private quietTimer: NodeJS.Timeout | undefined;
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
    const Client = discoverClientClass();
    this.client ??= new Client(
      grpcTarget(this.registration.endpoint, this.registration.endpointType),
      grpc.credentials.createInsecure(),
      // Its own connection: grpc-js otherwise shares one per address across clients, and a
      // handler that registers again would be called over the failed, backing-off one.
      { ...CHANNEL_OPTIONS, "grpc.use_local_subchannel_pool": 1 },
    );
    const call = this.client.Discover(this.run.request);
    this.call = call;
    let answered = false;
    let listed = false;
    const started = Date.now();
    clearTimeout(this.quietTimer);
    this.quietTimer = setTimeout(() => {
      if (listed || call !== this.call) return;
      this.log.warn(
        { waitedMs: Date.now() - started, answered },
        "external handler has sent no device list since Discover was called; its devices are published once it does",
      );
    }, this.run.registry.firstListWarnMs ?? FIRST_LIST_WARN_MS);
    this.client.waitForReady(Date.now() + CONNECT_TIMEOUT_MS, (err) => {
      if (!err || answered || call !== this.call) return;
      this.ended(call, false, grpc.status.UNAVAILABLE, `no HTTP/2 handshake within ${CONNECT_TIMEOUT_MS} ms`);
      call.cancel();
    });
    call.on("metadata", () => {
      answered = true;
    });
    call.on("data", (response: DiscoverResponse | RefusedResponse) => {
      answered = true;
      listed = true;
      clearTimeout(this.quietTimer);
      this.failures = 0;
      this.accept(response);
    });
    call.on("error", (err: grpc.ServiceError) => this.ended(call, answered, err.code, err.details || err.message));
    call.on("end", () => this.ended(call, answered, grpc.status.OK, "the handler ended the stream"));
  }

  private accept(response: DiscoverResponse | RefusedResponse): void {
    if ("refused" in response) {
      this.refuse(response.refused);
      return;
    }
    try {
      const { devices, problems } = acceptDevices(response.devices ?? []);
      const summary = problems.join("; ");
      if (summary !== this.lastProblems && summary !== "")
        this.log.warn({ problems }, "external handler sent devices that cannot be published as sent");
      this.lastProblems = summary;
      this.run.lists.set(this.registration.endpoint, devices);
      this.run.notify();
    } catch (err) {
      this.refuse(err instanceof Error ? err.message : String(err));
    }
  }

  /**
   * A list that cannot be used at all: its devices are not published and the last list is not
   * replaced. The discovery fails with the reason (the agent logs it, records a DiscoveryFailed
   * Event on the configuration and calls Discover again with backoff); the devices published
   * before stay, since the agent publishes nothing new for a failed discovery.
   */
  private refuse(why: string): void {
    this.log.error({ why }, "external handler list refused; the last list stays published");
    this.run.fail(
      new Error(
        `external handler ${this.run.name} (${this.registration.endpoint}) sent a device list Spindle refuses: ${why}; the last list stays published`,
      ),
    );
  }

  private ended(
    call: grpc.ClientReadableStream<DiscoverResponse | RefusedResponse>,
    answered: boolean,
    code: number,
    why: string,
  ) {
    if (this.stopped || call !== this.call) return;
    this.call = undefined;
    clearTimeout(this.quietTimer);
    call.removeAllListeners();
    call.on("error", () => {});
    if (code === grpc.status.RESOURCE_EXHAUSTED && /larger than max/.test(why)) {
      // grpc-js refused a message from its length prefix, unread: a list too big to take.
      this.refuse(`a list over the ${MAX_MESSAGE_BYTES}-byte message bound (${why})`);
      return;
    }
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
    clearTimeout(this.quietTimer);
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
