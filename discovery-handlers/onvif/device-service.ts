import http from "node:http";
import https from "node:https";
import type onvifModule from "onvif";
import { attribute, children, escapeXml, parseXml, shortError, text, type XmlNode, path as xmlPath } from "./xml.js";

/**
 * Reads one camera's details through the maintained `onvif` package (agsh): it builds the SOAP
 * requests, does WS-UsernameToken PasswordDigest with the clock offset from
 * GetSystemDateAndTime, falls back to HTTP Digest, and picks the media service from
 * GetServices/GetCapabilities.
 *
 * The package is not safe on its own against a hostile or broken camera, so every call here is
 * wrapped:
 * - a hard timeout per call (its own socket timeout only covers idle sockets, and some
 *   unexpected responses make it never call back at all);
 * - a response bound, enforced on the response stream through the HTTP agent we hand it (it
 *   buffers bodies without limit): more than `maxResponseBytes` and the response is cut;
 * - a guard against one input that makes its namespace-stripping regex (`/xmlns([^=]*?)=.../`)
 *   quadratic and freeze the event loop: every `xmlns` in a body must meet its `=` soon;
 * - nothing it calls back with is trusted: values are read from the raw XML with our own safe
 *   parser (its `linerase` also turns firmware "1.10" into the number 1.1), bounded and
 *   sanitized by the caller; every error becomes a short problem text.
 * We call the individual operations rather than `connect()`, which throws inside callbacks (and
 * then hangs) for profile layouts it does not recognize.
 */

export interface CameraCredentials {
  username: string;
  password: string;
}

export interface ReadCameraOptions {
  /** Device service URL (an XAddr from WS-Discovery). */
  xaddr: string;
  credentials?: CameraCredentials;
  /** Hard limit per SOAP call. */
  timeoutMs: number;
  /** Largest response body accepted per call. */
  maxResponseBytes: number;
  signal?: AbortSignal;
}

export interface NetworkInterfaceInfo {
  mac?: string;
  ipv4: string[];
  enabled: boolean;
}

/** Raw values as the camera gave them (unsanitized: the handler bounds and cleans them). */
export interface CameraDetails {
  manufacturer?: string;
  model?: string;
  firmwareVersion?: string;
  serialNumber?: string;
  hardwareId?: string;
  interfaces?: NetworkInterfaceInfo[];
  profileToken?: string;
  streamUri?: string;
}

export interface CameraReadResult {
  details: CameraDetails;
  /** Why the camera could not be fully read; never contains credentials. */
  problem?: string;
}

type Kind = "timeout" | "unauthorized" | "too-large" | "malformed" | "network" | "fault" | "aborted" | "other";

/** A failed call, already classified and described without secrets. */
export class CameraCallError extends Error {
  constructor(
    readonly kind: Kind,
    readonly operation: string,
    detail: string,
  ) {
    super(`${operation}: ${detail}`);
  }
  /** After these, further calls to the same camera are pointless (it is not answering, or too big). */
  get fatal(): boolean {
    return this.kind === "timeout" || this.kind === "too-large" || this.kind === "network" || this.kind === "aborted";
  }
}

// ---- the HTTP agent that bounds responses -----------------------------------------------------

const XMLNS = [0x78, 0x6d, 0x6c, 0x6e, 0x73]; // "xmlns"
/** An `xmlns` must meet its `=` within this many bytes. */
const XMLNS_WINDOW = 64;

interface Guard {
  maxBytes: number;
  onViolation: (reason: string) => void;
}

function guardRequest(req: http.ClientRequest, guard: Guard): void {
  req.prependListener("response", (res: http.IncomingMessage) => {
    // A response destroyed mid-body must not raise an unhandled 'error'.
    res.on("error", () => undefined);
    let bytes = 0;
    let matched = 0;
    let since = -1;
    let violated = false;
    const violate = (reason: string) => {
      if (violated) return;
      violated = true;
      guard.onViolation(reason);
      res.destroy();
      req.destroy();
    };
    res.prependListener("data", (chunk: Buffer) => {
      if (violated) return;
      bytes += chunk.length;
      if (bytes > guard.maxBytes) return violate(`response larger than ${guard.maxBytes} bytes`);
      for (let i = 0; i < chunk.length; i++) {
        const b = chunk[i];
        if (since >= 0) {
          if (b === 0x3d) since = -1;
          else if (++since > XMLNS_WINDOW) return violate("response has a malformed namespace declaration");
        }
        if (b === XMLNS[matched]) {
          matched++;
          if (matched === XMLNS.length) {
            matched = 0;
            if (since < 0) since = 0;
          }
        } else {
          matched = b === XMLNS[0] ? 1 : 0;
        }
      }
    });
  });
}

type AddRequest = (this: http.Agent, req: http.ClientRequest, options: unknown) => void;

function guardedAgent(secure: boolean, guard: Guard): http.Agent {
  // Cameras use self-signed certificates; WS-Security digests are no weaker over unverified TLS than over HTTP.
  const agent = secure ? new https.Agent({ keepAlive: false, rejectUnauthorized: false }) : new http.Agent();
  const base = (http.Agent.prototype as unknown as { addRequest: AddRequest }).addRequest;
  (agent as unknown as { addRequest: AddRequest }).addRequest = function (req, options) {
    guardRequest(req, guard);
    base.call(this, req, options);
  };
  return agent;
}

// ---- one session with one camera --------------------------------------------------------------

type Callback = (err: unknown, data?: unknown, xml?: string) => void;

interface CamLike {
  uri?: Record<string, unknown>;
  media2Support?: boolean;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  removeAllListeners(): unknown;
  getSystemDateAndTime(cb: Callback): void;
  getServices(includeCapability: boolean, cb: Callback): void;
  getCapabilities(cb: Callback): void;
  getDeviceInformation(cb: Callback): void;
  getNetworkInterfaces(cb: Callback): void;
  getProfiles(cb: Callback): void;
  getStreamUri(options: { protocol: string; profileToken: string }, cb: Callback): void;
}

const AUTH_TEXT = /not ?authori[sz]ed|unauthori[sz]ed|authentication failed|access denied|forbidden/i;

// The onvif package (and its XML stack) loads with the first camera read, not with the agent.
let onvif: typeof onvifModule | undefined;

class Session {
  private readonly agent: http.Agent;
  private readonly cam: CamLike;
  private lastStatus: number | undefined;
  private pending: ((error: CameraCallError) => void) | undefined;
  private readonly onAbort = () => this.pending?.(new CameraCallError("aborted", "read", "stopped"));

  constructor(
    url: URL,
    private readonly options: ReadCameraOptions,
  ) {
    const secure = url.protocol === "https:";
    this.agent = guardedAgent(secure, {
      maxBytes: options.maxResponseBytes,
      onViolation: (reason) => this.pending?.(new CameraCallError("too-large", "response", reason)),
    });
    const credentials = options.credentials;
    this.cam = new onvif!.Cam({
      hostname: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port ? Number(url.port) : secure ? 443 : 80,
      path: `${url.pathname}${url.search}`,
      // The package writes the user name into the XML unescaped.
      ...(credentials ? { username: escapeXml(credentials.username), password: credentials.password } : {}),
      timeout: options.timeoutMs,
      autoconnect: false,
      // Service URLs from GetServices keep this host and port: a camera cannot send us elsewhere.
      preserveAddress: true,
      useSecure: secure,
      agent: this.agent,
    }) as unknown as CamLike;
    this.cam.on("error", () => undefined);
    this.cam.on("warning", () => undefined);
    this.cam.on("rawResponse", (_xml: unknown, status: unknown) => {
      this.lastStatus = typeof status === "number" ? status : undefined;
    });
    options.signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  get hasMedia(): boolean {
    return Boolean(this.cam.uri?.media || (this.cam.media2Support && this.cam.uri?.media2));
  }

  get media2(): boolean {
    return Boolean(this.cam.media2Support);
  }

  disableMedia2(): void {
    this.cam.media2Support = false;
  }

  /** One SOAP call: resolves with the raw response XML, or rejects with a classified error. */
  call(operation: string, invoke: (cam: CamLike, cb: Callback) => void): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      if (this.options.signal?.aborted) {
        reject(new CameraCallError("aborted", operation, "stopped"));
        return;
      }
      let done = false;
      this.lastStatus = undefined;
      const finish = (error: CameraCallError | undefined, xml?: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.pending = undefined;
        if (error) reject(error);
        else resolve(xml ?? "");
      };
      const timer = setTimeout(
        () => finish(new CameraCallError("timeout", operation, `no answer within ${this.options.timeoutMs} ms`)),
        this.options.timeoutMs,
      );
      this.pending = (error) =>
        finish(new CameraCallError(error.kind, operation, error.message.replace(/^[^:]*: /, "")));
      try {
        invoke(this.cam, (err, _data, xml) => {
          if (err) finish(this.classify(operation, err));
          else if (typeof xml !== "string") finish(new CameraCallError("malformed", operation, "empty response"));
          else finish(undefined, xml);
        });
      } catch (err) {
        finish(this.classify(operation, err));
      }
    });
  }

  private classify(operation: string, err: unknown): CameraCallError {
    const message = shortError(err);
    const code = typeof err === "object" && err !== null ? (err as { code?: unknown }).code : undefined;
    if (this.lastStatus === 401 || this.lastStatus === 403 || AUTH_TEXT.test(message)) {
      return new CameraCallError("unauthorized", operation, "not authorized");
    }
    if (message === "Network timeout") return new CameraCallError("timeout", operation, "no answer (socket timeout)");
    if (typeof code === "string" && /^E[A-Z]+$/.test(code)) {
      return new CameraCallError("network", operation, `connection failed (${code})`);
    }
    if (message.startsWith("ONVIF SOAP Fault")) {
      return new CameraCallError("fault", operation, `SOAP fault: ${message.slice("ONVIF SOAP Fault: ".length)}`);
    }
    if (err instanceof TypeError) return new CameraCallError("malformed", operation, "unexpected response structure");
    if (
      /Wrong ONVIF SOAP response|entity|tag|attribute|Non-whitespace|Unexpected|Invalid|Unclosed|Text data/i.test(
        message,
      )
    ) {
      return new CameraCallError("malformed", operation, `malformed response (${message})`);
    }
    return new CameraCallError("other", operation, message);
  }

  close(): void {
    this.options.signal?.removeEventListener("abort", this.onAbort);
    this.pending = undefined;
    this.cam.removeAllListeners();
    // Ends every socket, including a request a hanging camera never answered.
    this.agent.destroy();
  }
}

// ---- reading the raw responses ----------------------------------------------------------------

function responseBody(xml: string, element: string, maxChars: number): XmlNode | undefined {
  const parsed = parseXml(xml, { maxChars, maxTags: 100_000 });
  if (!parsed.ok) return undefined;
  return xmlPath(parsed.value, "Envelope", "Body", element);
}

export function deviceInformation(xml: string, maxChars: number): Partial<CameraDetails> | undefined {
  const body = responseBody(xml, "GetDeviceInformationResponse", maxChars);
  if (body === undefined) return undefined;
  const field = (name: string) => text(xmlPath(body, name));
  const out: Partial<CameraDetails> = {};
  const entries: [keyof CameraDetails, string][] = [
    ["manufacturer", "Manufacturer"],
    ["model", "Model"],
    ["firmwareVersion", "FirmwareVersion"],
    ["serialNumber", "SerialNumber"],
    ["hardwareId", "HardwareId"],
  ];
  for (const [key, name] of entries) {
    const value = field(name);
    if (value !== undefined && value !== "") (out as Record<string, string>)[key] = value;
  }
  return out;
}

export function networkInterfaces(xml: string, maxChars: number): NetworkInterfaceInfo[] | undefined {
  const body = responseBody(xml, "GetNetworkInterfacesResponse", maxChars);
  if (body === undefined) return undefined;
  const out: NetworkInterfaceInfo[] = [];
  for (const nic of children(body, "NetworkInterfaces", 32)) {
    const ipv4: string[] = [];
    const config = xmlPath(nic, "IPv4", "Config");
    for (const kind of ["Manual", "FromDHCP", "LinkLocal"]) {
      for (const entry of children(config, kind, 16)) {
        const address = text(xmlPath(entry, "Address"));
        if (address) ipv4.push(address);
      }
    }
    const mac = text(xmlPath(nic, "Info", "HwAddress"));
    out.push({ ...(mac ? { mac } : {}), ipv4, enabled: text(xmlPath(nic, "Enabled")) !== "false" });
  }
  return out;
}

function profileTokens(xml: string, maxChars: number): { token: string; video: boolean }[] | undefined {
  const body = responseBody(xml, "GetProfilesResponse", maxChars);
  if (body === undefined) return undefined;
  const out: { token: string; video: boolean }[] = [];
  for (const profile of children(body, "Profiles", 64)) {
    const token = attribute(profile, "token");
    if (!token || token.length > 64) continue;
    const video =
      xmlPath(profile, "VideoEncoderConfiguration") !== undefined ||
      xmlPath(profile, "Configurations", "VideoEncoder") !== undefined;
    out.push({ token, video });
  }
  return out;
}

function streamUri(xml: string, maxChars: number): string | undefined {
  const body = responseBody(xml, "GetStreamUriResponse", maxChars);
  return text(xmlPath(body, "MediaUri", "Uri")) ?? text(xmlPath(body, "Uri"));
}

// ---- the read ---------------------------------------------------------------------------------

/** Turn a call error into the camera's problem text. */
function describe(err: unknown, hasCredentials: boolean): string {
  if (err instanceof CameraCallError) {
    switch (err.kind) {
      case "unauthorized":
        return hasCredentials
          ? `not authorized: the camera rejected the configured credentials (${err.operation})`
          : `not authorized: the camera requires credentials and none are configured (${err.operation})`;
      case "timeout":
        return `timeout: ${err.message}`;
      case "too-large":
        return `response too large: ${err.message}`;
      default:
        return err.message;
    }
  }
  return shortError(err);
}

/**
 * Read a camera: device information, network interfaces (MAC), profiles and the RTSP stream URI.
 * Never throws; what could not be read is described in `problem` (the first failure wins).
 */
export async function readCamera(options: ReadCameraOptions): Promise<CameraReadResult> {
  const details: CameraDetails = {};
  let url: URL;
  try {
    url = new URL(options.xaddr);
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("unsupported scheme");
  } catch {
    return { details, problem: "invalid device service URL" };
  }
  const hasCredentials = Boolean(options.credentials?.username);
  const problems: string[] = [];
  const max = options.maxResponseBytes;
  onvif ??= (await import("onvif")).default;
  const session = new Session(url, options);
  /** A step whose failure is recorded and skipped, unless the camera stopped answering (or, with stopOnAuth, refused us). */
  const optional = async (run: () => Promise<void>, stopOnAuth = false) => {
    try {
      await run();
    } catch (err) {
      if (err instanceof CameraCallError && (err.fatal || (stopOnAuth && err.kind === "unauthorized"))) throw err;
      problems.push(describe(err, hasCredentials));
    }
  };
  try {
    // Liveness and the clock offset the package uses for WS-Security digests.
    await session.call("GetSystemDateAndTime", (cam, cb) => cam.getSystemDateAndTime(cb));

    // GetServices (ONVIF 2.x) names the media service; ONVIF 1.x cameras answer it with a SOAP
    // fault and name their services in GetCapabilities instead. A camera read completely through
    // GetCapabilities is complete: the GetServices failure only counts when the fallback fails too.
    let servicesError: unknown;
    try {
      await session.call("GetServices", (cam, cb) => cam.getServices(false, cb));
    } catch (err) {
      if (err instanceof CameraCallError && err.fatal) throw err;
      servicesError = err;
    }
    if (!session.hasMedia) {
      try {
        await session.call("GetCapabilities", (cam, cb) => cam.getCapabilities(cb));
      } catch (err) {
        if (err instanceof CameraCallError && err.fatal) throw err;
        // Neither call named a media service: keep going without media (reported below).
        problems.push(describe(servicesError ?? err, hasCredentials));
      }
    }

    await optional(async () => {
      const xml = await session.call("GetDeviceInformation", (cam, cb) => cam.getDeviceInformation(cb));
      const info = deviceInformation(xml, max);
      if (info) Object.assign(details, info);
      else problems.push("GetDeviceInformation: malformed response");
    }, true);

    await optional(async () => {
      const xml = await session.call("GetNetworkInterfaces", (cam, cb) => cam.getNetworkInterfaces(cb));
      const nics = networkInterfaces(xml, max);
      if (nics) details.interfaces = nics;
      else problems.push("GetNetworkInterfaces: malformed response");
    });

    if (!session.hasMedia) {
      problems.push("no media service: stream URI unknown");
    } else {
      let profiles: { token: string; video: boolean }[] | undefined;
      await optional(async () => {
        try {
          profiles = profileTokens(await session.call("GetProfiles", (cam, cb) => cam.getProfiles(cb)), max);
        } catch (err) {
          // Some cameras advertise Media2 but fail it; use Media1 then, as the package's connect() does.
          if (!(err instanceof CameraCallError) || err.fatal || !session.media2) throw err;
          session.disableMedia2();
          profiles = profileTokens(await session.call("GetProfiles", (cam, cb) => cam.getProfiles(cb)), max);
        }
      });
      const chosen = profiles?.find((p) => p.video) ?? profiles?.[0];
      if (profiles !== undefined && chosen === undefined) problems.push("GetProfiles: no media profile");
      if (chosen) {
        details.profileToken = chosen.token;
        await optional(async () => {
          const xml = await session.call("GetStreamUri", (cam, cb) =>
            cam.getStreamUri({ protocol: "RTSP", profileToken: escapeXml(chosen.token) }, cb),
          );
          const uri = streamUri(xml, max);
          if (uri) details.streamUri = uri;
          else problems.push("GetStreamUri: no URI in response");
        });
      }
    }
  } catch (err) {
    problems.unshift(describe(err, hasCredentials));
  } finally {
    session.close();
  }
  return problems.length > 0 ? { details, problem: problems[0] } : { details };
}
