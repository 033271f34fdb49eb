import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import dgram from "node:dgram";
import http from "node:http";
import type { AddressInfo } from "node:net";
import {
  bindSocket,
  buildBye,
  buildHello,
  buildProbeMatches,
  type EndpointDescription,
  MAX_DATAGRAM,
  messageKind,
  parseProbe,
  probeMatchesDevice,
  WSD_GROUP,
  WSD_PORT,
} from "./ws-discovery.js";
import { escapeXml, isRecord, parseXml, path, text, type XmlNode } from "./xml.js";

/**
 * A fake ONVIF camera for tests and demos: WS-Discovery (Probe → ProbeMatch, Hello on start, Bye
 * on stop) and the device and media SOAP services the `onvif` package needs, over node:http on
 * the given address only. Several run in one process: they share UDP port 3702 (reuseAddr, bound
 * to the group address, so each gets every multicast Probe), and each answers from its own
 * socket bound to its own address.
 */

export type Misbehaviour =
  /** SOAP responses are cut-off XML; a broken ProbeMatch datagram precedes the real one. */
  | "malformed-xml"
  /** SOAP responses (and a datagram before the real ProbeMatch) are billion-laughs documents. */
  | "xml-bomb"
  /** SOAP responses are several megabytes. */
  | "huge-response"
  /** SOAP requests are never answered. */
  | "hang"
  /** ProbeMatch and device information full of control characters, 10 KB strings, path separators, bogus URLs. */
  | "hostile-probe-match";

export interface FakeProfile {
  token: string;
  name?: string;
  encoding?: string;
  width?: number;
  height?: number;
}

export interface FakeCameraOptions {
  /** Endpoint UUID (bare, or `urn:uuid:…`). */
  uuid: string;
  /** Address the HTTP server and the WS-Discovery answer socket bind to (default 127.0.0.1). */
  ip?: string;
  /** Interface address for multicast (default 127.0.0.1). */
  interface?: string;
  /** HTTP port (default: any free port). */
  port?: number;
  /** UDP port for unicast Probes and for everything the camera sends (default: any free port). */
  unicastPort?: number;
  scopes?: string[];
  mac?: string;
  manufacturer?: string;
  model?: string;
  firmware?: string;
  serial?: string;
  hardwareId?: string;
  profiles?: FakeProfile[];
  credentials?: { username: string; password: string };
  misbehave?: Misbehaviour;
  /**
   * "2.x" (default) serves GetServices. "1.x" behaves like firmware older than ONVIF 2.0:
   * GetServices is answered with the generic fault for an unsupported action (HTTP 500,
   * env:Receiver / ter:ActionNotSupported), and the services are named only by GetCapabilities,
   * whose SupportedVersions say 1.2.
   */
  onvifVersion?: "1.x" | "2.x";
  /** Announce with Hello on start (default true). */
  hello?: boolean;
  /**
   * Take part in multicast (default true). When false the camera answers unicast Probes at
   * `unicastProbeAddress` only and sends no Hello or Bye, like a camera on a network without multicast.
   */
  multicast?: boolean;
}

const DEFAULT_SCOPES = [
  "onvif://www.onvif.org/type/video_encoder",
  "onvif://www.onvif.org/Profile/Streaming",
  "onvif://www.onvif.org/hardware/FakeCam",
  "onvif://www.onvif.org/name/FakeCamera",
];
const TYPES = "dn:NetworkVideoTransmitter tds:Device";
const MAX_REQUEST = 64 * 1024;
const HUGE_BYTES = 8 * 1024 * 1024;

const NS = {
  soap: "http://www.w3.org/2003/05/soap-envelope",
  tt: "http://www.onvif.org/ver10/schema",
  tds: "http://www.onvif.org/ver10/device/wsdl",
  trt: "http://www.onvif.org/ver10/media/wsdl",
  ter: "http://www.onvif.org/ver10/error",
};

function soap(body: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>` +
    `<SOAP-ENV:Envelope xmlns:SOAP-ENV="${NS.soap}" xmlns:tt="${NS.tt}" xmlns:tds="${NS.tds}" ` +
    `xmlns:trt="${NS.trt}" xmlns:ter="${NS.ter}"><SOAP-ENV:Body>${body}</SOAP-ENV:Body></SOAP-ENV:Envelope>`
  );
}

function fault(code: string, subcode: string, reason: string): string {
  return soap(
    `<SOAP-ENV:Fault><SOAP-ENV:Code><SOAP-ENV:Value>SOAP-ENV:${code}</SOAP-ENV:Value>` +
      `<SOAP-ENV:Subcode><SOAP-ENV:Value>${subcode}</SOAP-ENV:Value></SOAP-ENV:Subcode></SOAP-ENV:Code>` +
      `<SOAP-ENV:Reason><SOAP-ENV:Text xml:lang="en">${escapeXml(reason)}</SOAP-ENV:Text></SOAP-ENV:Reason>` +
      `</SOAP-ENV:Fault>`,
  );
}

/** A billion-laughs document: 10^9 "lol"s if a parser expanded it. */
export function billionLaughs(root = "<s:Envelope><s:Body><x>&lol9;</x></s:Body></s:Envelope>"): string {
  let entities = '<!ENTITY lol "lol">';
  for (let i = 1; i <= 9; i++) {
    const previous = i === 1 ? "&lol;" : `&lol${i - 1};`;
    entities += `<!ENTITY lol${i} "${previous.repeat(10)}">`;
  }
  return `<?xml version="1.0"?><!DOCTYPE lolz [${entities}]>${root}`;
}

const HOSTILE_TEXT = `Evil\u0007Corp\u001b[31m/../../../etc/passwd\\..\\windows\u2028${"M".repeat(10_000)}`;

export class FakeCamera {
  /** Endpoint address, `urn:uuid:…`. */
  readonly address: string;
  /** The bare UUID in lower case (the handler's device id). */
  readonly id: string;
  readonly ip: string;
  readonly iface: string;
  /** Requests served, by SOAP operation. */
  readonly calls: Record<string, number> = {};
  private server: http.Server | undefined;
  private multicast: dgram.Socket | undefined;
  private unicast: dgram.Socket | undefined;
  private readonly instanceId = Math.floor(Date.now() / 1000);
  private messageNumber = 0;
  private metadataVersion = 1;
  private stopped = false;
  private readonly hanging = new Set<http.ServerResponse>();

  private constructor(readonly options: FakeCameraOptions) {
    const bare = options.uuid.replace(/^urn:uuid:/i, "").toLowerCase();
    this.id = bare;
    this.address = `urn:uuid:${bare}`;
    this.ip = options.ip ?? "127.0.0.1";
    this.iface = options.interface ?? "127.0.0.1";
  }

  static async start(options: FakeCameraOptions): Promise<FakeCamera> {
    const camera = new FakeCamera(options);
    try {
      await camera.listen();
    } catch (err) {
      await camera.stop({ bye: false });
      throw err;
    }
    if (options.hello !== false && options.multicast !== false) await camera.sendHello();
    return camera;
  }

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  /** The device service URL (the XAddr). */
  get xaddr(): string {
    return `http://${this.ip}:${this.port}/onvif/device_service`;
  }

  get mediaXAddr(): string {
    return `http://${this.ip}:${this.port}/onvif/media_service`;
  }

  /** `ip:port` where this camera answers unicast Probes. */
  get unicastProbeAddress(): string {
    const port = (this.unicast?.address() as AddressInfo | undefined)?.port ?? 0;
    return `${this.ip}:${port}`;
  }

  get scopes(): string[] {
    return this.options.scopes ?? DEFAULT_SCOPES;
  }

  get profiles(): FakeProfile[] {
    return this.options.profiles ?? [{ token: "profile_1", name: "main", encoding: "H264", width: 1920, height: 1080 }];
  }

  streamUri(token: string): string {
    return `rtsp://${this.ip}:8554/${encodeURIComponent(token)}`;
  }

  /** Announce (again), e.g. after changing nothing but wanting a re-read. */
  async sendHello(): Promise<void> {
    await this.sendMulticast(buildHello(this.describe(), this.sequence()));
  }

  /** Stop everything; by default say Bye first (`bye: false` simulates a camera losing power). */
  async stop(options: { bye?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    if (options.bye !== false && this.multicast) {
      await this.sendMulticast(buildBye(this.describe(), this.sequence())).catch(() => undefined);
    }
    this.stopped = true;
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
    const server = this.server;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    for (const socket of [this.multicast, this.unicast]) {
      try {
        socket?.close();
      } catch {
        // already closed
      }
    }
  }

  // ---- setup ----

  private async listen(): Promise<void> {
    const server = http.createServer((req, res) => this.onRequest(req, res));
    this.server = server;
    server.on("clientError", (_err, socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.options.port ?? 0, this.ip, () => {
        server.off("error", reject);
        resolve();
      });
    });

    const unicast = dgram.createSocket({ type: "udp4" });
    this.unicast = unicast;
    unicast.on("error", () => undefined);
    await bindSocket(unicast, this.options.unicastPort ?? 0, this.ip);
    unicast.setMulticastInterface(this.iface);
    unicast.setMulticastTTL(1);
    unicast.on("message", (msg, rinfo) => this.onDatagram(msg, rinfo));

    if (this.options.multicast === false) return;
    let lastError: unknown;
    for (const address of [WSD_GROUP, "0.0.0.0"]) {
      const multicast = dgram.createSocket({ type: "udp4", reuseAddr: true });
      multicast.on("error", () => undefined);
      try {
        await bindSocket(multicast, WSD_PORT, address);
        multicast.addMembership(WSD_GROUP, this.iface);
        multicast.on("message", (msg, rinfo) => this.onDatagram(msg, rinfo));
        this.multicast = multicast;
        return;
      } catch (err) {
        lastError = err;
        multicast.close();
      }
    }
    throw lastError;
  }

  private describe(): EndpointDescription {
    return {
      address: this.address,
      types: TYPES,
      scopes: this.scopes,
      xaddrs: [this.xaddr],
      metadataVersion: this.metadataVersion,
    };
  }

  private sequence() {
    return { instanceId: this.instanceId, messageNumber: ++this.messageNumber };
  }

  private sendMulticast(xml: string): Promise<void> {
    return this.sendTo(xml, WSD_PORT, WSD_GROUP);
  }

  private sendTo(xml: string, port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = this.unicast;
      if (!socket || this.stopped) return resolve();
      socket.send(xml, port, host, (err) => (err ? reject(err) : resolve()));
    });
  }

  // ---- WS-Discovery ----

  private onDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (this.stopped || msg.length > MAX_DATAGRAM || messageKind(msg) !== "Probe") return;
    const probe = parseProbe(msg);
    if (!probe.ok || !probeMatchesDevice(probe.value, TYPES.split(" "), this.scopes)) return;
    const reply = async () => {
      const mode = this.options.misbehave;
      if (mode === "malformed-xml") {
        await this.sendTo(
          `<s:Envelope xmlns:s="${NS.soap}"><s:Body><d:ProbeMatches><d:ProbeMatch><a:Address>`,
          rinfo.port,
          rinfo.address,
        );
      } else if (mode === "xml-bomb") {
        await this.sendTo(billionLaughs(), rinfo.port, rinfo.address);
      }
      const xml =
        mode === "hostile-probe-match"
          ? this.hostileProbeMatch(probe.value.messageId)
          : buildProbeMatches(this.describe(), probe.value.messageId, this.sequence());
      await this.sendTo(xml, rinfo.port, rinfo.address);
    };
    // WS-Discovery answers after a short random delay.
    setTimeout(() => void reply().catch(() => undefined), Math.floor(Math.random() * 20));
  }

  private hostileProbeMatch(relatesTo: string | undefined): string {
    const scopes = [
      ...this.scopes,
      "onvif://www.onvif.org/name/../../../../etc/passwd",
      "onvif://www.onvif.org/location/C:\\Windows\\System32\\..\\",
      `onvif://www.onvif.org/name/${"A".repeat(10_000)}`,
      "onvif://www.onvif.org/name/bell\u0007\u0001\u001b[31mred\u2028\u0085",
      "onvif://www.onvif.org/hardware/CTRLREF",
      ...Array.from({ length: 300 }, (_, i) => `onvif://www.onvif.org/extra/${i}`),
    ];
    const xaddrs = [
      "javascript:alert(1)",
      "file:///etc/passwd",
      `http://${"b".repeat(10_000)}.example/onvif/device_service`,
      "http://user:secret@203.0.113.9/onvif/device_service",
      "http://../../etc/passwd",
      this.xaddr,
    ];
    const xml = buildProbeMatches(
      { address: this.address, types: TYPES, scopes, xaddrs, metadataVersion: this.metadataVersion },
      relatesTo,
      this.sequence(),
    );
    return xml.replace("CTRLREF", "&#1;&#x1b;&#x2028;ref&#0;&#xD800;");
  }

  // ---- SOAP ----

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_REQUEST) tooBig = true;
      else chunks.push(chunk);
    });
    req.on("error", () => undefined);
    res.on("error", () => undefined);
    req.on("end", () => {
      if (tooBig) {
        res.writeHead(413).end();
        return;
      }
      try {
        this.respond(Buffer.concat(chunks).toString("utf8"), req, res);
      } catch {
        if (!res.headersSent) res.writeHead(500).end();
      }
    });
  }

  private respond(body: string, req: http.IncomingMessage, res: http.ServerResponse): void {
    const parsed = parseXml(body, { maxChars: MAX_REQUEST, maxTags: 2000 });
    const envelope = parsed.ok ? parsed.value.Envelope : undefined;
    const soapBody = path(envelope, "Body");
    const operation = isRecord(soapBody) ? Object.keys(soapBody).find((k) => !k.startsWith("@_")) : undefined;
    if (!operation) {
      this.send(res, 400, fault("Sender", "ter:InvalidArgVal", "Bad request"));
      return;
    }
    this.calls[operation] = (this.calls[operation] ?? 0) + 1;
    const request = isRecord(soapBody) ? soapBody[operation] : undefined;

    switch (this.options.misbehave) {
      case "hang":
        this.hanging.add(res);
        res.on("close", () => this.hanging.delete(res));
        return;
      case "malformed-xml":
        this.send(res, 200, soap(`<tds:${operation}Response><tt:Broken attr="1><tt:Unclosed>`).slice(0, -40));
        return;
      case "xml-bomb":
        this.send(res, 200, billionLaughs());
        return;
      case "huge-response":
        this.sendHuge(res);
        return;
      default:
    }

    // GetSystemDateAndTime is answered without authentication, as ONVIF requires.
    if (operation !== "GetSystemDateAndTime" && this.options.credentials && !this.authorized(envelope)) {
      this.send(res, 400, fault("Sender", "ter:NotAuthorized", "Sender not Authorized"));
      return;
    }
    const media = req.url?.includes("media") ?? false;
    const answer = this.operation(operation, request, media);
    if (answer === undefined) {
      // SOAP 1.2 HTTP binding: a Receiver fault goes with status 500.
      this.send(res, 500, fault("Receiver", "ter:ActionNotSupported", "Optional Action Not Implemented"));
      return;
    }
    this.send(res, 200, soap(answer));
  }

  private send(res: http.ServerResponse, status: number, xml: string): void {
    res.writeHead(status, { "Content-Type": "application/soap+xml; charset=utf-8" });
    res.end(xml);
  }

  private sendHuge(res: http.ServerResponse): void {
    res.writeHead(200, { "Content-Type": "application/soap+xml; charset=utf-8" });
    res.write(`<?xml version="1.0"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="${NS.soap}"><SOAP-ENV:Body><x>`);
    const chunk = "A".repeat(64 * 1024);
    let sent = 0;
    const pump = () => {
      while (sent < HUGE_BYTES && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) {
          res.once("drain", pump);
          return;
        }
      }
      if (!res.destroyed) res.end("</x></SOAP-ENV:Body></SOAP-ENV:Envelope>");
    };
    pump();
  }

  /** WS-UsernameToken PasswordDigest: Base64(SHA1(nonce + created + password)). */
  private authorized(envelope: XmlNode): boolean {
    const credentials = this.options.credentials;
    if (!credentials) return true;
    const token = path(envelope, "Header", "Security", "UsernameToken");
    const username = text(path(token, "Username"));
    const digest = text(path(token, "Password"));
    const nonce = text(path(token, "Nonce"));
    const created = text(path(token, "Created"));
    if (username !== credentials.username || !digest || !nonce || !created) return false;
    const expected = createHash("sha1")
      .update(Buffer.concat([Buffer.from(nonce, "base64"), Buffer.from(created), Buffer.from(credentials.password)]))
      .digest();
    const given = Buffer.from(digest, "base64");
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  private operation(operation: string, request: XmlNode, media: boolean): string | undefined {
    const hostile = this.options.misbehave === "hostile-probe-match";
    const base = `http://${this.ip}:${this.port}`;
    const profile = (token: string | undefined) => this.profiles.find((p) => p.token === token);
    switch (operation) {
      case "GetSystemDateAndTime": {
        const now = new Date();
        return (
          `<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>` +
          `<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>` +
          `<tt:UTCDateTime><tt:Time><tt:Hour>${now.getUTCHours()}</tt:Hour><tt:Minute>${now.getUTCMinutes()}</tt:Minute>` +
          `<tt:Second>${now.getUTCSeconds()}</tt:Second></tt:Time><tt:Date><tt:Year>${now.getUTCFullYear()}</tt:Year>` +
          `<tt:Month>${now.getUTCMonth() + 1}</tt:Month><tt:Day>${now.getUTCDate()}</tt:Day></tt:Date></tt:UTCDateTime>` +
          `</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>`
        );
      }
      case "GetServices": {
        if (this.options.onvifVersion === "1.x") return undefined;
        const service = (ns: string, xaddr: string, major: number, minor: number) =>
          `<tds:Service><tds:Namespace>${ns}</tds:Namespace><tds:XAddr>${xaddr}</tds:XAddr>` +
          `<tds:Version><tt:Major>${major}</tt:Major><tt:Minor>${minor}</tt:Minor></tds:Version></tds:Service>`;
        return (
          `<tds:GetServicesResponse>${service(NS.tds, this.xaddr, 2, 60)}${service(NS.trt, this.mediaXAddr, 2, 60)}` +
          `</tds:GetServicesResponse>`
        );
      }
      case "GetCapabilities": {
        const [major, minor] = this.options.onvifVersion === "1.x" ? [1, 2] : [2, 60];
        return (
          `<tds:GetCapabilitiesResponse><tds:Capabilities>` +
          `<tt:Device><tt:XAddr>${this.xaddr}</tt:XAddr><tt:System><tt:DiscoveryResolve>false</tt:DiscoveryResolve>` +
          `<tt:DiscoveryBye>true</tt:DiscoveryBye><tt:RemoteDiscovery>false</tt:RemoteDiscovery>` +
          `<tt:SystemBackup>false</tt:SystemBackup><tt:SystemLogging>false</tt:SystemLogging>` +
          `<tt:FirmwareUpgrade>false</tt:FirmwareUpgrade><tt:SupportedVersions><tt:Major>${major}</tt:Major>` +
          `<tt:Minor>${minor}</tt:Minor></tt:SupportedVersions></tt:System></tt:Device>` +
          `<tt:Media><tt:XAddr>${this.mediaXAddr}</tt:XAddr><tt:StreamingCapabilities>` +
          `<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>` +
          `</tt:StreamingCapabilities></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>`
        );
      }
      case "GetDeviceInformation": {
        const field = (value: string | undefined, fallback: string) =>
          escapeXml(hostile ? `${HOSTILE_TEXT}${value ?? fallback}` : (value ?? fallback));
        return (
          `<tds:GetDeviceInformationResponse>` +
          `<tds:Manufacturer>${field(this.options.manufacturer, "Spindle")}</tds:Manufacturer>` +
          `<tds:Model>${field(this.options.model, "FakeCam")}</tds:Model>` +
          `<tds:FirmwareVersion>${field(this.options.firmware, "1.0")}</tds:FirmwareVersion>` +
          `<tds:SerialNumber>${field(this.options.serial, this.id.slice(0, 8))}</tds:SerialNumber>` +
          `<tds:HardwareId>${field(this.options.hardwareId, "fake-1")}</tds:HardwareId>` +
          `</tds:GetDeviceInformationResponse>`
        );
      }
      case "GetScopes":
        return `<tds:GetScopesResponse>${this.scopes
          .map(
            (s) =>
              `<tds:Scopes><tt:ScopeDef>Fixed</tt:ScopeDef><tt:ScopeItem>${escapeXml(s)}</tt:ScopeItem></tds:Scopes>`,
          )
          .join("")}</tds:GetScopesResponse>`;
      case "GetNetworkInterfaces": {
        const mac = hostile ? `${HOSTILE_TEXT}` : (this.options.mac ?? "02:00:00:00:00:01");
        return (
          `<tds:GetNetworkInterfacesResponse><tds:NetworkInterfaces token="eth0"><tt:Enabled>true</tt:Enabled>` +
          `<tt:Info><tt:Name>eth0</tt:Name><tt:HwAddress>${escapeXml(mac)}</tt:HwAddress><tt:MTU>1500</tt:MTU></tt:Info>` +
          `<tt:IPv4><tt:Enabled>true</tt:Enabled><tt:Config><tt:Manual><tt:Address>${this.ip}</tt:Address>` +
          `<tt:PrefixLength>8</tt:PrefixLength></tt:Manual><tt:DHCP>false</tt:DHCP></tt:Config></tt:IPv4>` +
          `</tds:NetworkInterfaces></tds:GetNetworkInterfacesResponse>`
        );
      }
      case "GetProfiles":
        if (!media) return undefined;
        return `<trt:GetProfilesResponse>${this.profiles.map((p) => profileXml(p)).join("")}</trt:GetProfilesResponse>`;
      case "GetVideoSources":
        if (!media) return undefined;
        return (
          `<trt:GetVideoSourcesResponse><trt:VideoSources token="vs_1"><tt:Framerate>25</tt:Framerate>` +
          `<tt:Resolution><tt:Width>1920</tt:Width><tt:Height>1080</tt:Height></tt:Resolution></trt:VideoSources>` +
          `</trt:GetVideoSourcesResponse>`
        );
      case "GetStreamUri":
      case "GetSnapshotUri": {
        if (!media) return undefined;
        const chosen = profile(text(path(request, "ProfileToken")));
        if (!chosen) return undefined;
        const uri =
          operation === "GetStreamUri"
            ? this.streamUri(chosen.token)
            : `${base}/snapshot/${encodeURIComponent(chosen.token)}.jpg`;
        return (
          `<trt:${operation}Response><trt:MediaUri><tt:Uri>${escapeXml(uri)}</tt:Uri>` +
          `<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>` +
          `<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:${operation}Response>`
        );
      }
      default:
        return undefined;
    }
  }
}

function profileXml(p: FakeProfile): string {
  const width = p.width ?? 1920;
  const height = p.height ?? 1080;
  return (
    `<trt:Profiles token="${escapeXml(p.token)}" fixed="true"><tt:Name>${escapeXml(p.name ?? p.token)}</tt:Name>` +
    `<tt:VideoSourceConfiguration token="vsc_1"><tt:Name>vsc</tt:Name><tt:UseCount>1</tt:UseCount>` +
    `<tt:SourceToken>vs_1</tt:SourceToken><tt:Bounds x="0" y="0" width="${width}" height="${height}"/>` +
    `</tt:VideoSourceConfiguration>` +
    `<tt:VideoEncoderConfiguration token="vec_${escapeXml(p.token)}"><tt:Name>vec</tt:Name><tt:UseCount>1</tt:UseCount>` +
    `<tt:Encoding>${escapeXml(p.encoding ?? "H264")}</tt:Encoding>` +
    `<tt:Resolution><tt:Width>${width}</tt:Width><tt:Height>${height}</tt:Height></tt:Resolution>` +
    `<tt:Quality>5</tt:Quality><tt:RateControl><tt:FrameRateLimit>25</tt:FrameRateLimit>` +
    `<tt:EncodingInterval>1</tt:EncodingInterval><tt:BitrateLimit>4096</tt:BitrateLimit></tt:RateControl>` +
    `<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration></trt:Profiles>`
  );
}

/** A fresh bare UUID for a fake camera. */
export function fakeUuid(): string {
  return randomUUID();
}
