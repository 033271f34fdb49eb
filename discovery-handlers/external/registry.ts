import { readFileSync } from "node:fs";
import { rename, writeFile } from "node:fs/promises";
import type { Logger } from "../../src/log/logger.js";
import type { DiscoveryHandler } from "../handler.js";
import { ExternalHandler } from "./external-handler.js";
import type { EndpointType, RegisterDiscoveryHandlerRequest } from "./protocol.js";

/** One endpoint registered under a handler name. */
export interface Registration {
  name: string;
  endpoint: string;
  endpointType: EndpointType;
  shared: boolean;
}

/** A registration refused, with the gRPC status it is answered with. */
export class RegistrationError extends Error {
  constructor(
    message: string,
    readonly code: "INVALID_ARGUMENT" | "ALREADY_EXISTS" | "RESOURCE_EXHAUSTED",
  ) {
    super(message);
  }
}

export const MAX_NAMES = 256;
export const MAX_ENDPOINTS_PER_NAME = 16;
/** The same bound as DeviceConfiguration's discoveryHandler.name; Akri uses names like debugEcho. */
const NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_UDS_PATH = 107;

export interface RegistryOptions {
  /** Built-in handler names: an external handler may not take one... */
  builtIn: ReadonlySet<string>;
  /** ...unless the operator listed it here. */
  allowOverride?: ReadonlySet<string>;
  /** Registrations are kept here across agent restarts (Akri forgets them: issue #558). */
  statePath?: string;
  /** How long a Discover stream may go without its first list before it is logged as quiet (tests shorten it). */
  firstListWarnMs?: number;
  log: Logger;
}

/**
 * The external handlers registered with this agent, by name (several endpoints may share one
 * name). Registrations survive an agent restart through `statePath`; an endpoint that cannot be
 * connected to is removed, as in Akri, and the handler registers again when it is back.
 */
export class HandlerRegistry {
  private byName = new Map<string, Registration[]>();
  private handlers = new Map<string, ExternalHandler>();
  private listeners: ((name: string) => void)[] = [];
  private saving: Promise<void> = Promise.resolve();

  constructor(private options: RegistryOptions) {
    if (options.statePath) this.load(options.statePath);
  }

  get firstListWarnMs(): number | undefined {
    return this.options.firstListWarnMs;
  }

  /** Adds or refreshes a registration; throws RegistrationError when it is refused. */
  register(request: RegisterDiscoveryHandlerRequest): Registration {
    const registration = validate(request);
    const { name } = registration;
    if (this.options.builtIn.has(name) && !this.options.allowOverride?.has(name))
      throw new RegistrationError(
        `"${name}" is a built-in discovery handler; an external handler may replace it only when the agent runs with --allow-external-override ${name}`,
        "ALREADY_EXISTS",
      );
    const list = this.byName.get(name) ?? [];
    if (!this.byName.has(name) && this.byName.size >= MAX_NAMES)
      throw new RegistrationError(`at most ${MAX_NAMES} external handler names`, "RESOURCE_EXHAUSTED");
    const at = list.findIndex((r) => r.endpoint === registration.endpoint);
    if (at < 0 && list.length >= MAX_ENDPOINTS_PER_NAME)
      throw new RegistrationError(`at most ${MAX_ENDPOINTS_PER_NAME} endpoints for "${name}"`, "RESOURCE_EXHAUSTED");
    const same = at >= 0 && JSON.stringify(list[at]) === JSON.stringify(registration);
    if (at >= 0) list[at] = registration;
    else list.push(registration);
    this.byName.set(name, list);
    // Handlers register again periodically and whenever a stream closes: only news is logged.
    this.options.log[same ? "debug" : "info"](
      { handler: name, endpoint: registration.endpoint, shared: registration.shared },
      "external discovery handler registered",
    );
    this.handlers.get(name)?.registered(registration);
    if (!same) this.changed(name);
    return registration;
  }

  /** Forgets one endpoint (it could not be connected to). */
  remove(name: string, endpoint: string, reason: string): void {
    const list = this.byName.get(name);
    const left = list?.filter((r) => r.endpoint !== endpoint);
    if (!list || !left || left.length === list.length) return;
    if (left.length > 0) this.byName.set(name, left);
    else this.byName.delete(name);
    this.options.log.warn({ handler: name, endpoint, reason }, "external discovery handler endpoint removed");
    this.changed(name);
  }

  endpoints(name: string): readonly Registration[] {
    return this.byName.get(name) ?? [];
  }

  /** Names with at least one endpoint registered. */
  names(): string[] {
    return [...this.byName.keys()].sort();
  }

  /**
   * The handler for a name while any endpoint is registered under it. The same object every
   * time: a discovery running through it follows endpoints as they come and go.
   */
  get(name: string): DiscoveryHandler<unknown> | undefined {
    if (!this.byName.has(name)) return undefined;
    let handler = this.handlers.get(name);
    if (!handler) {
      handler = new ExternalHandler(name, this);
      this.handlers.set(name, handler);
    }
    return handler;
  }

  /** Called with the handler name on every registration or removal. */
  onChange(listener: (name: string) => void): void {
    this.listeners.push(listener);
  }

  private changed(name: string): void {
    this.save();
    this.handlers.get(name)?.endpointsChanged();
    for (const l of this.listeners) l(name);
  }

  private load(path: string): void {
    let saved: unknown;
    try {
      saved = JSON.parse(readFileSync(path, "utf8"));
    } catch {
      return; // none yet, or unreadable: handlers register again
    }
    for (const r of Array.isArray(saved) ? saved.slice(0, MAX_NAMES * MAX_ENDPOINTS_PER_NAME) : []) {
      try {
        const registration = validate({
          name: r?.name,
          endpoint: r?.endpoint,
          endpoint_type: r?.endpointType,
          shared: r?.shared,
        });
        if (this.options.builtIn.has(registration.name) && !this.options.allowOverride?.has(registration.name))
          continue;
        const list = this.byName.get(registration.name) ?? [];
        if (list.length < MAX_ENDPOINTS_PER_NAME && !list.some((x) => x.endpoint === registration.endpoint))
          list.push(registration);
        this.byName.set(registration.name, list);
      } catch {
        // a bad entry is skipped
      }
    }
    if (this.byName.size > 0)
      this.options.log.info({ handlers: this.names() }, "external discovery handlers remembered from before a restart");
  }

  /** Writes the registrations (atomically, one write at a time). */
  private save(): void {
    const path = this.options.statePath;
    if (!path) return;
    const body = JSON.stringify([...this.byName.values()].flat());
    this.saving = this.saving.then(async () => {
      try {
        await writeFile(`${path}.tmp`, body, { mode: 0o600 });
        await rename(`${path}.tmp`, path);
      } catch (err) {
        this.options.log.warn({ err: String(err), path }, "cannot keep external handler registrations");
      }
    });
  }

  /** Resolves once pending state writes are done. */
  flush(): Promise<void> {
    return this.saving;
  }
}

function validate(request: Partial<RegisterDiscoveryHandlerRequest>): Registration {
  const name = request.name;
  if (typeof name !== "string" || !NAME.test(name))
    throw new RegistrationError(
      `handler name ${JSON.stringify(String(name).slice(0, 80))} must be 1-63 letters, digits, '.', '_' or '-'`,
      "INVALID_ARGUMENT",
    );
  const endpoint = request.endpoint;
  const type: EndpointType = request.endpoint_type === "NETWORK" ? "NETWORK" : "UDS";
  if (request.endpoint_type !== undefined && request.endpoint_type !== "UDS" && request.endpoint_type !== "NETWORK")
    throw new RegistrationError("endpoint_type must be UDS or NETWORK", "INVALID_ARGUMENT");
  if (typeof endpoint !== "string" || endpoint.length === 0)
    throw new RegistrationError("endpoint must not be empty", "INVALID_ARGUMENT");
  if (type === "UDS") {
    if (!endpoint.startsWith("/") || Buffer.byteLength(endpoint) > MAX_UDS_PATH || /[\u0000-\u001f]/.test(endpoint))
      throw new RegistrationError(
        `a UDS endpoint is an absolute socket path of at most ${MAX_UDS_PATH} bytes`,
        "INVALID_ARGUMENT",
      );
  } else {
    let url: URL | undefined;
    try {
      url = new URL(endpoint);
    } catch {
      url = undefined;
    }
    if (url?.protocol !== "http:" || !url.port || endpoint.length > 512)
      throw new RegistrationError('a NETWORK endpoint is "http://<host>:<port>"', "INVALID_ARGUMENT");
  }
  return { name, endpoint, endpointType: type, shared: request.shared === true };
}
