import { randomUUID } from "node:crypto";
import dgram from "node:dgram";
import type { Logger } from "../../src/log/logger.js";
import { children, escapeXml, isRecord, parseXml, path, shortError, text, type XmlNode } from "./xml.js";

/**
 * A small WS-Discovery (2005/04, SOAP-over-UDP) client and the message builders the fake camera
 * uses. ONVIF cameras answer a multicast Probe for `dn:NetworkVideoTransmitter` with a unicast
 * ProbeMatch, announce themselves with a multicast Hello and leave with a multicast Bye.
 *
 * Sockets (why two): the Probe goes out of a socket bound to an ephemeral port, so the unicast
 * ProbeMatch answers come back to this process and no other. If probes were sent from a shared
 * 0.0.0.0:3702 socket (SO_REUSEADDR), the kernel hands each unicast answer to only one of the
 * sockets sharing the port (another agent, a local camera, a test fake), so answers would be
 * lost. Hello and Bye arrive by multicast on a second socket bound to 239.255.255.250:3702 with
 * reuseAddr: every socket in the group gets a copy of each multicast datagram, and a socket
 * bound to the group address takes no unicast traffic meant for other sockets on port 3702 (on
 * systems that refuse to bind a group address it falls back to 0.0.0.0:3702).
 *
 * Multicast only ever goes to 239.255.255.250:3702 on the chosen interface (IP_MULTICAST_IF and
 * the group membership both name it; a loopback receiver must name it or it hears nothing), and
 * unicast only to the hosts listed.
 */

export const WSD_GROUP = "239.255.255.250";
export const WSD_PORT = 3702;
/** Datagrams longer than this are dropped unread. */
export const MAX_DATAGRAM = 64 * 1024;

export const NS = {
  soap: "http://www.w3.org/2003/05/soap-envelope",
  addressing: "http://schemas.xmlsoap.org/ws/2004/08/addressing",
  discovery: "http://schemas.xmlsoap.org/ws/2005/04/discovery",
  network: "http://www.onvif.org/ver10/network/wsdl",
  device: "http://www.onvif.org/ver10/device/wsdl",
} as const;

const ACTION = {
  probe: `${NS.discovery}/Probe`,
  probeMatches: `${NS.discovery}/ProbeMatches`,
  hello: `${NS.discovery}/Hello`,
  bye: `${NS.discovery}/Bye`,
} as const;
const DISCOVERY_TO = "urn:schemas-xmlsoap-org:ws:2005:04:discovery";
const ANONYMOUS = `${NS.addressing}/role/anonymous`;

/** Bounds on what one message may contribute; longer tokens are dropped, extra ones ignored. */
export const LIMITS = {
  matches: 16,
  xaddrs: 8,
  scopes: 64,
  types: 16,
  tokenChars: 1024,
  addressChars: 256,
  tags: 4096,
} as const;

/** One endpoint as a ProbeMatch, Hello or Bye describes it. All strings are sanitized and bounded. */
export interface WsdEndpoint {
  /** EndpointReference Address, e.g. `urn:uuid:5f5a69c2-…`: the stable identity. */
  uuid: string;
  /** Device service URLs (http/https only). */
  xaddrs: string[];
  scopes: string[];
  /** Types as written (`dn:NetworkVideoTransmitter`). */
  types: string[];
  /** True when a type resolves to the ONVIF NetworkVideoTransmitter or ONVIF Device type. */
  onvif: boolean;
  metadataVersion?: string;
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

export interface ProbeMatches {
  relatesTo?: string;
  matches: WsdEndpoint[];
}

export interface ProbeRequest {
  messageId?: string;
  types: string[];
  scopes: string[];
}

type Envelope = { action?: string; messageId?: string; relatesTo?: string; body: XmlNode; xml: string };

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

function toText(input: unknown): string | undefined {
  if (typeof input === "string") return input;
  if (Buffer.isBuffer(input)) return input.toString("utf8");
  return undefined;
}

function envelope(input: unknown): ParseResult<Envelope> {
  const xml = toText(input);
  if (xml === undefined) return { ok: false, error: "not text" };
  if (Buffer.byteLength(xml) > MAX_DATAGRAM) return { ok: false, error: "message larger than 64 KiB" };
  const parsed = parseXml(xml, { maxChars: MAX_DATAGRAM, maxTags: LIMITS.tags });
  if (!parsed.ok) return parsed;
  const env = parsed.value.Envelope;
  const body = path(env, "Body");
  if (!isRecord(env) || body === undefined) return { ok: false, error: "not a SOAP envelope" };
  const header = path(env, "Header");
  return {
    ok: true,
    value: {
      action: token(text(path(header, "Action")), LIMITS.tokenChars),
      messageId: token(text(path(header, "MessageID")), LIMITS.addressChars),
      relatesTo: token(text(path(header, "RelatesTo")), LIMITS.addressChars),
      body,
      xml,
    },
  };
}

/** One whitespace-free token: control characters removed, undefined when empty or too long. */
function token(raw: string | undefined, max: number): string | undefined {
  if (raw === undefined) return undefined;
  const clean = raw.replace(CONTROL, "").trim();
  if (clean.length === 0 || clean.length > max || /\s/.test(clean)) return undefined;
  return clean;
}

/** A whitespace-separated list (Scopes, Types, XAddrs), each item sanitized, bounded in length and count. */
function list(raw: string | undefined, maxItems: number, maxChars: number = LIMITS.tokenChars): string[] {
  if (raw === undefined) return [];
  const out: string[] = [];
  const seen = new Set<string>();
  // Split on XML whitespace only; other control characters are removed from each item.
  for (const part of raw.slice(0, maxItems * (maxChars + 1) * 4).split(/[ \t\r\n]+/)) {
    const item = token(part, maxChars);
    if (item === undefined || seen.has(item)) continue;
    seen.add(item);
    out.push(item);
    if (out.length >= maxItems) break;
  }
  return out;
}

/** http(s) URLs only, normalized; anything else (javascript:, file:, garbage) is dropped. */
function xaddrList(raw: string | undefined): string[] {
  const out: string[] = [];
  for (const item of list(raw, LIMITS.xaddrs * 4)) {
    try {
      const url = new URL(item);
      if ((url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") continue;
      if (url.username || url.password) continue;
      if (!out.includes(url.href)) out.push(url.href);
    } catch {
      // not a URL
    }
    if (out.length >= LIMITS.xaddrs) break;
  }
  return out;
}

/** Prefix → namespace, from the declarations in the raw message (scoping ignored: messages are tiny). */
function namespaceOf(xml: string, prefix: string): string | undefined {
  if (!/^[A-Za-z_][\w.-]{0,63}$/.test(prefix)) return undefined;
  const match = new RegExp(`xmlns:${prefix.replace(/\./g, "\\.")}\\s*=\\s*["']([^"']{1,512})["']`).exec(xml);
  return match?.[1];
}

/** True when one of the QNames is ONVIF's NetworkVideoTransmitter (or the ONVIF device type). */
export function isOnvifType(types: string[], xml: string): boolean {
  return types.some((qname) => {
    const colon = qname.indexOf(":");
    const local = colon === -1 ? qname : qname.slice(colon + 1);
    const ns = colon === -1 ? undefined : namespaceOf(xml, qname.slice(0, colon));
    if (local === "NetworkVideoTransmitter") return ns === undefined || ns === NS.network;
    return local === "Device" && ns === NS.device;
  });
}

function endpoint(node: XmlNode, xml: string, needAddresses: boolean): ParseResult<WsdEndpoint> {
  const uuid = token(text(path(node, "EndpointReference", "Address")), LIMITS.addressChars);
  if (uuid === undefined) return { ok: false, error: "missing or invalid EndpointReference Address" };
  if (!/^[\x21-\x7e]+$/.test(uuid)) return { ok: false, error: "EndpointReference Address is not printable ASCII" };
  const types = list(text(path(node, "Types")), LIMITS.types, 256);
  const xaddrs = xaddrList(text(path(node, "XAddrs")));
  if (needAddresses && xaddrs.length === 0) return { ok: false, error: "no usable XAddrs" };
  const metadataVersion = token(text(path(node, "MetadataVersion")), 32);
  return {
    ok: true,
    value: {
      uuid,
      xaddrs,
      scopes: list(text(path(node, "Scopes")), LIMITS.scopes),
      types,
      onvif: isOnvifType(types, xml),
      ...(metadataVersion === undefined ? {} : { metadataVersion }),
    },
  };
}

function kind(env: Envelope, element: string, action: string): boolean {
  return env.action === action || (env.action === undefined && path(env.body, element) !== undefined);
}

/** A ProbeMatches message: the matches with usable addresses (others dropped). Never throws. */
export function parseProbeMatches(input: string | Buffer): ParseResult<ProbeMatches> {
  try {
    const env = envelope(input);
    if (!env.ok) return env;
    if (!kind(env.value, "ProbeMatches", ACTION.probeMatches))
      return { ok: false, error: "not a ProbeMatches message" };
    const matches: WsdEndpoint[] = [];
    for (const node of children(path(env.value.body, "ProbeMatches"), "ProbeMatch", LIMITS.matches)) {
      const parsed = endpoint(node, env.value.xml, true);
      if (parsed.ok && !matches.some((m) => m.uuid === parsed.value.uuid)) matches.push(parsed.value);
    }
    if (matches.length === 0) return { ok: false, error: "no usable ProbeMatch" };
    return {
      ok: true,
      value: { ...(env.value.relatesTo === undefined ? {} : { relatesTo: env.value.relatesTo }), matches },
    };
  } catch (err) {
    return { ok: false, error: shortError(err) };
  }
}

/** A Hello message (XAddrs may be absent: the device then expects a Resolve, or our next Probe). */
export function parseHello(input: string | Buffer): ParseResult<WsdEndpoint> {
  try {
    const env = envelope(input);
    if (!env.ok) return env;
    if (!kind(env.value, "Hello", ACTION.hello)) return { ok: false, error: "not a Hello message" };
    const node = path(env.value.body, "Hello");
    if (node === undefined) return { ok: false, error: "empty Hello" };
    return endpoint(node, env.value.xml, false);
  } catch (err) {
    return { ok: false, error: shortError(err) };
  }
}

/** A Bye message: only the address matters. */
export function parseBye(input: string | Buffer): ParseResult<WsdEndpoint> {
  try {
    const env = envelope(input);
    if (!env.ok) return env;
    if (!kind(env.value, "Bye", ACTION.bye)) return { ok: false, error: "not a Bye message" };
    const node = path(env.value.body, "Bye");
    if (node === undefined) return { ok: false, error: "empty Bye" };
    return endpoint(node, env.value.xml, false);
  } catch (err) {
    return { ok: false, error: shortError(err) };
  }
}

/** A Probe (what the fake camera answers). */
export function parseProbe(input: string | Buffer): ParseResult<ProbeRequest> {
  try {
    const env = envelope(input);
    if (!env.ok) return env;
    if (!kind(env.value, "Probe", ACTION.probe)) return { ok: false, error: "not a Probe message" };
    const node = path(env.value.body, "Probe");
    return {
      ok: true,
      value: {
        ...(env.value.messageId === undefined ? {} : { messageId: env.value.messageId }),
        types: list(text(path(node, "Types")), LIMITS.types, 256),
        scopes: list(text(path(node, "Scopes")), LIMITS.scopes),
      },
    };
  } catch (err) {
    return { ok: false, error: shortError(err) };
  }
}

/** Which WS-Discovery message a datagram holds, by Action (or body element when Action is missing). */
export function messageKind(input: string | Buffer): "Probe" | "ProbeMatches" | "Hello" | "Bye" | undefined {
  const xml = toText(input);
  if (xml === undefined) return undefined;
  for (const [name, action] of [
    ["ProbeMatches", ACTION.probeMatches],
    ["Probe", ACTION.probe],
    ["Hello", ACTION.hello],
    ["Bye", ACTION.bye],
  ] as const) {
    if (xml.includes(action)) return name;
  }
  return undefined;
}

// ---- builders -------------------------------------------------------------------------------

function envelopeXml(action: string, messageId: string, extraHeader: string, body: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>` +
    `<s:Envelope xmlns:s="${NS.soap}" xmlns:a="${NS.addressing}" xmlns:d="${NS.discovery}" ` +
    `xmlns:dn="${NS.network}" xmlns:tds="${NS.device}">` +
    `<s:Header><a:Action s:mustUnderstand="1">${action}</a:Action>` +
    `<a:MessageID>${escapeXml(messageId)}</a:MessageID>${extraHeader}</s:Header>` +
    `<s:Body>${body}</s:Body></s:Envelope>`
  );
}

export function newMessageId(): string {
  return `uuid:${randomUUID()}`;
}

/** A Probe for ONVIF NetworkVideoTransmitters. */
export function buildProbe(messageId: string, types = "dn:NetworkVideoTransmitter", scopes: string[] = []): string {
  const scopeXml = scopes.length > 0 ? `<d:Scopes>${escapeXml(scopes.join(" "))}</d:Scopes>` : "";
  return envelopeXml(
    ACTION.probe,
    messageId,
    `<a:ReplyTo><a:Address>${ANONYMOUS}</a:Address></a:ReplyTo><a:To s:mustUnderstand="1">${DISCOVERY_TO}</a:To>`,
    `<d:Probe><d:Types>${escapeXml(types)}</d:Types>${scopeXml}</d:Probe>`,
  );
}

export interface EndpointDescription {
  address: string;
  types: string;
  scopes: string[];
  xaddrs: string[];
  metadataVersion: number;
}

function endpointXml(e: EndpointDescription, withAddresses: boolean): string {
  const addresses = withAddresses
    ? `<d:Types>${escapeXml(e.types)}</d:Types><d:Scopes>${escapeXml(e.scopes.join(" "))}</d:Scopes>` +
      `<d:XAddrs>${escapeXml(e.xaddrs.join(" "))}</d:XAddrs>`
    : "";
  return (
    `<a:EndpointReference><a:Address>${escapeXml(e.address)}</a:Address></a:EndpointReference>` +
    `${addresses}<d:MetadataVersion>${e.metadataVersion}</d:MetadataVersion>`
  );
}

function appSequence(instanceId: number, messageNumber: number): string {
  return `<d:AppSequence InstanceId="${instanceId}" MessageNumber="${messageNumber}"/>`;
}

export function buildProbeMatches(
  e: EndpointDescription,
  relatesTo: string | undefined,
  sequence: { instanceId: number; messageNumber: number },
): string {
  const relates = relatesTo === undefined ? "" : `<a:RelatesTo>${escapeXml(relatesTo)}</a:RelatesTo>`;
  return envelopeXml(
    ACTION.probeMatches,
    newMessageId(),
    `${relates}<a:To s:mustUnderstand="1">${ANONYMOUS}</a:To>${appSequence(sequence.instanceId, sequence.messageNumber)}`,
    `<d:ProbeMatches><d:ProbeMatch>${endpointXml(e, true)}</d:ProbeMatch></d:ProbeMatches>`,
  );
}

export function buildHello(e: EndpointDescription, sequence: { instanceId: number; messageNumber: number }): string {
  return envelopeXml(
    ACTION.hello,
    newMessageId(),
    `<a:To s:mustUnderstand="1">${DISCOVERY_TO}</a:To>${appSequence(sequence.instanceId, sequence.messageNumber)}`,
    `<d:Hello>${endpointXml(e, true)}</d:Hello>`,
  );
}

export function buildBye(e: EndpointDescription, sequence: { instanceId: number; messageNumber: number }): string {
  return envelopeXml(
    ACTION.bye,
    newMessageId(),
    `<a:To s:mustUnderstand="1">${DISCOVERY_TO}</a:To>${appSequence(sequence.instanceId, sequence.messageNumber)}`,
    `<d:Bye>${endpointXml(e, false)}</d:Bye>`,
  );
}

/** True when an attribute-free check says a Probe asks for what a device offers (types by local name, scopes by prefix). */
export function probeMatchesDevice(probe: ProbeRequest, deviceTypes: string[], deviceScopes: string[]): boolean {
  const local = (q: string) => q.slice(q.indexOf(":") + 1);
  const offered = new Set(deviceTypes.map(local));
  if (!probe.types.every((t) => offered.has(local(t)))) return false;
  // RFC 3986 prefix matching (WS-Discovery's default MatchBy), segment-wise.
  return probe.scopes.every((wanted) =>
    deviceScopes.some((have) => {
      const w = wanted.replace(/\/+$/, "");
      const h = have.replace(/\/+$/, "");
      return h === w || h.startsWith(`${w}/`);
    }),
  );
}

// ---- client ---------------------------------------------------------------------------------

export interface Sender {
  address: string;
  port: number;
}

export interface ProbeAnswer extends WsdEndpoint {
  from: Sender;
}

export interface UnicastTarget {
  host: string;
  port: number;
}

/** Parse `host` or `host:port` (IPv4 address or DNS name); undefined when malformed. */
export function parseHostPort(value: string): UnicastTarget | undefined {
  const match = /^([A-Za-z0-9.-]{1,253})(?::([0-9]{1,5}))?$/.exec(value.trim());
  if (!match) return undefined;
  const host = match[1];
  const port = match[2] === undefined ? WSD_PORT : Number(match[2]);
  if (host === undefined || port < 1 || port > 65535) return undefined;
  return { host, port };
}

export interface WsDiscoveryClientOptions {
  /** IPv4 address of the interface to send and receive multicast on; the system default when absent. */
  interface?: string;
  /** Listen for Hello and Bye (default true). */
  listen?: boolean;
  log: Logger;
  onHello?: (endpoint: WsdEndpoint, from: Sender) => void;
  onBye?: (endpoint: WsdEndpoint, from: Sender) => void;
}

export function bindSocket(socket: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    socket.once("error", onError);
    socket.bind(port, address, () => {
      socket.off("error", onError);
      resolve();
    });
  });
}

function closeQuietly(socket: dgram.Socket | undefined): void {
  if (!socket) return;
  try {
    socket.close();
  } catch {
    // already closed
  }
}

/**
 * The WS-Discovery client one handler instance uses: `probe()` rounds on an ephemeral-port socket,
 * Hello/Bye delivered through the callbacks. `close()` releases both sockets.
 */
export class WsDiscoveryClient {
  /** Open probes: MessageID → where its answers go. */
  private readonly collectors = new Map<string, (answer: ProbeAnswer) => void>();
  private closed = false;

  private constructor(
    private readonly options: WsDiscoveryClientOptions,
    private readonly probeSocket: dgram.Socket,
    private readonly listenSocket: dgram.Socket | undefined,
  ) {}

  static async open(options: WsDiscoveryClientOptions): Promise<WsDiscoveryClient> {
    const { log } = options;
    const iface = options.interface;
    const probeSocket = dgram.createSocket({ type: "udp4" });
    try {
      await bindSocket(probeSocket, 0, iface ?? "0.0.0.0");
      if (iface) probeSocket.setMulticastInterface(iface);
      probeSocket.setMulticastTTL(1);
      probeSocket.setMulticastLoopback(true);
    } catch (err) {
      closeQuietly(probeSocket);
      throw err;
    }
    let listenSocket: dgram.Socket | undefined;
    if (options.listen !== false) {
      listenSocket = await openListener(iface, log);
    }
    const client = new WsDiscoveryClient(options, probeSocket, listenSocket);
    probeSocket.on("message", (msg, rinfo) => client.onProbeSocketMessage(msg, rinfo));
    probeSocket.on("error", (err) => log.warn({ err: shortError(err) }, "onvif: WS-Discovery probe socket error"));
    listenSocket?.on("message", (msg, rinfo) => client.onListenMessage(msg, rinfo));
    listenSocket?.on("error", (err) => log.warn({ err: shortError(err) }, "onvif: WS-Discovery listener error"));
    return client;
  }

  /** True when Hello and Bye are heard. */
  get listening(): boolean {
    return this.listenSocket !== undefined;
  }

  /**
   * Send a Probe (twice, as SOAP-over-UDP repeats multicast) to the group and to each unicast
   * target, and collect the ProbeMatches that arrive within `windowMs`, de-duplicated by address.
   */
  async probe(windowMs: number, unicast: UnicastTarget[], signal?: AbortSignal): Promise<ProbeAnswer[]> {
    if (this.closed) return [];
    const messageId = newMessageId();
    const probe = Buffer.from(buildProbe(messageId));
    const answers = new Map<string, ProbeAnswer>();
    this.collectors.set(messageId, (answer) => {
      if (!answers.has(answer.uuid)) answers.set(answer.uuid, answer);
    });
    const send = () => {
      if (this.closed) return;
      this.send(probe, WSD_PORT, WSD_GROUP);
      for (const target of unicast) this.send(probe, target.port, target.host);
    };
    try {
      send();
      await sleep(Math.min(windowMs / 3, 100 + Math.random() * 150), signal);
      send();
      await sleep(windowMs, signal);
    } finally {
      // Late answers to this probe are ignored from now on.
      this.collectors.delete(messageId);
    }
    return [...answers.values()];
  }

  close(): void {
    this.closed = true;
    this.collectors.clear();
    closeQuietly(this.probeSocket);
    closeQuietly(this.listenSocket);
  }

  private send(message: Buffer, port: number, host: string): void {
    try {
      this.probeSocket.send(message, port, host, (err) => {
        if (err) this.options.log.debug({ host, port, err: shortError(err) }, "onvif: probe send failed");
      });
    } catch (err) {
      this.options.log.debug({ host, port, err: shortError(err) }, "onvif: probe send failed");
    }
  }

  private onProbeSocketMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length > MAX_DATAGRAM || this.collectors.size === 0) return;
    const parsed = parseProbeMatches(msg);
    if (!parsed.ok) {
      this.options.log.debug({ from: rinfo.address, err: parsed.error }, "onvif: ignored datagram");
      return;
    }
    // An answer that names a probe must name one of ours still open; one without RelatesTo
    // (some cameras omit it) counts for every open probe.
    const relatesTo = parsed.value.relatesTo;
    const targets =
      relatesTo === undefined
        ? [...this.collectors.values()]
        : [this.collectors.get(relatesTo)].filter((c) => c !== undefined);
    for (const collect of targets) {
      for (const match of parsed.value.matches)
        collect({ ...match, from: { address: rinfo.address, port: rinfo.port } });
    }
  }

  private onListenMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length > MAX_DATAGRAM) return;
    const kind = messageKind(msg);
    const from = { address: rinfo.address, port: rinfo.port };
    if (kind === "Hello") {
      const parsed = parseHello(msg);
      if (parsed.ok) this.options.onHello?.(parsed.value, from);
      else this.options.log.debug({ from: rinfo.address, err: parsed.error }, "onvif: ignored Hello");
    } else if (kind === "Bye") {
      const parsed = parseBye(msg);
      if (parsed.ok) this.options.onBye?.(parsed.value, from);
      else this.options.log.debug({ from: rinfo.address, err: parsed.error }, "onvif: ignored Bye");
    }
  }
}

async function openListener(iface: string | undefined, log: Logger): Promise<dgram.Socket | undefined> {
  for (const address of [WSD_GROUP, "0.0.0.0"]) {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
    try {
      await bindSocket(socket, WSD_PORT, address);
      if (iface) socket.addMembership(WSD_GROUP, iface);
      else socket.addMembership(WSD_GROUP);
      return socket;
    } catch (err) {
      closeQuietly(socket);
      log.debug({ address, err: shortError(err) }, "onvif: cannot listen for Hello/Bye here");
    }
  }
  log.warn("onvif: not listening for Hello/Bye; cameras are found by probes only");
  return undefined;
}

/** Resolves after `ms`, or at once when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
