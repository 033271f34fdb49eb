import { isIP } from "node:net";
import { passesFilter, passesFilterAny } from "../filter.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { boundProperties, propertyValue } from "../sanitize.js";
import { type OnvifDetails, onvifDetails, onvifDetailsForNode } from "./details.js";
import { type CameraCredentials, type CameraReadResult, readCamera } from "./device-service.js";
import { parseHostPort, type Sender, type UnicastTarget, WsDiscoveryClient, type WsdEndpoint } from "./ws-discovery.js";

/** At most this many cameras are tracked (a flood of Hellos must not grow memory without end). */
export const MAX_CAMERAS = 512;
/** Cameras read at the same time. */
const READ_CONCURRENCY = 8;
/** Bounds on published values. */
const MAX_SCOPES_CHARS = 2048;
const MAX_INFO_CHARS = 256;
const MAX_URI_CHARS = 1024;
const MAX_PROBLEM_CHARS = 512;

/** The identity of an endpoint address: the bare UUID in lower case (as Akri), else the address in lower case. */
export function endpointId(address: string): string {
  const lower = address.toLowerCase();
  const match = /^(?:urn:)?uuid:(.+)$/.exec(lower);
  return match?.[1] ?? lower;
}

/** Credentials for one camera from the resolved discoveryProperties (see details.ts for the keys). */
export function credentialsFor(
  properties: Record<string, string>,
  id: string,
  address: string,
): CameraCredentials | undefined {
  const own = (field: "username" | "password") => {
    for (const key of [id, address, address.toLowerCase()]) {
      const value = properties[`${key}.${field}`];
      if (value !== undefined) return value;
    }
    return properties[field];
  };
  const username = own("username");
  if (username === undefined || username === "") return undefined;
  return { username, password: own("password") ?? "" };
}

/** A MAC in lower case with colons, or undefined when the text is not a MAC. */
export function normalizeMac(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const hex = raw.trim().toLowerCase();
  if (!/^[0-9a-f]{2}([:-]?[0-9a-f]{2}){5}$/.test(hex)) return undefined;
  const digits = hex.replace(/[:-]/g, "");
  return digits.match(/../g)?.join(":");
}

/** A URL safe to publish: parses, no user info (cameras sometimes embed credentials), bounded. */
function publicUri(raw: string | undefined, schemes: string[]): string | undefined {
  if (raw === undefined) return undefined;
  try {
    const url = new URL(propertyValue(raw, MAX_URI_CHARS * 4).trim());
    if (!schemes.includes(url.protocol)) return undefined;
    url.username = "";
    url.password = "";
    const href = url.href;
    return href.length > MAX_URI_CHARS ? undefined : href;
  } catch {
    return undefined;
  }
}

function hostOf(xaddr: string): string | undefined {
  try {
    return new URL(xaddr).hostname.replace(/^\[|\]$/g, "");
  } catch {
    return undefined;
  }
}

interface Camera {
  id: string;
  endpoint: WsdEndpoint;
  from: Sender;
  xaddr: string;
  ip: string;
  /** When a probe answer or Hello last showed it. */
  seenAt: number;
  /** Bumped by Hello and Bye so a read that finishes late is not applied to a newer state. */
  epoch: number;
  /** The last completed read, and what it was for (XAddr + metadata version). */
  read?: { key: string; result: CameraReadResult; at: number };
  readingKey?: string;
}

function cacheKey(camera: Pick<Camera, "xaddr" | "endpoint">): string {
  return `${camera.xaddr} ${camera.endpoint.metadataVersion ?? ""}`;
}

/** Chooses the XAddr on the address the answer came from (a camera answers from its own address), else the first. */
function chooseXAddr(endpoint: WsdEndpoint, from: Sender): string | undefined {
  return endpoint.xaddrs.find((x) => hostOf(x) === from.address) ?? endpoint.xaddrs[0];
}

function ipOf(xaddr: string, from: Sender): string {
  const host = hostOf(xaddr);
  return host !== undefined && isIP(host) !== 0 ? host : from.address;
}

/** The published device for one camera. */
export function toDevice(
  camera: Pick<Camera, "id" | "endpoint" | "xaddr" | "ip">,
  result: CameraReadResult,
  secret?: string,
): DiscoveredDevice {
  const { details } = result;
  const props: Record<string, string> = {
    ONVIF_DEVICE_SERVICE_URL: camera.xaddr,
    ONVIF_DEVICE_UUID: camera.id,
    ONVIF_DEVICE_IP_ADDRESS: camera.ip,
  };
  const mac = macOf(result, camera.ip);
  if (mac) props.ONVIF_DEVICE_MAC_ADDRESS = mac;
  const stream = publicUri(details.streamUri, ["rtsp:", "rtsps:", "http:", "https:"]);
  if (stream) props.ONVIF_STREAM_URI = stream;
  const info: [string, string | undefined][] = [
    ["ONVIF_MANUFACTURER", details.manufacturer],
    ["ONVIF_MODEL", details.model],
    ["ONVIF_FIRMWARE_VERSION", details.firmwareVersion],
    ["ONVIF_SERIAL_NUMBER", details.serialNumber],
    ["ONVIF_HARDWARE_ID", details.hardwareId],
  ];
  for (const [name, raw] of info) {
    const value = propertyValue(raw, MAX_INFO_CHARS).trim();
    if (value) props[name] = value;
  }
  let scopes = "";
  for (const scope of camera.endpoint.scopes) {
    const next = scopes ? `${scopes} ${scope}` : scope;
    if (next.length > MAX_SCOPES_CHARS) break;
    scopes = next;
  }
  if (scopes) props.ONVIF_SCOPES = scopes;
  const properties = boundProperties(props);
  // Defence in depth: a camera echoing the password must not get it published.
  if (secret && secret.length >= 4) {
    for (const [name, value] of Object.entries(properties)) if (value.includes(secret)) delete properties[name];
  }
  const device: DiscoveredDevice = { id: camera.id, properties };
  if (result.problem !== undefined) {
    let problem = propertyValue(result.problem, MAX_PROBLEM_CHARS);
    if (secret && secret.length >= 4) problem = problem.split(secret).join("***");
    device.problem = problem;
  }
  return device;
}

function macOf(result: CameraReadResult, ip: string): string | undefined {
  const nics = (result.details.interfaces ?? []).filter((n) => n.enabled && normalizeMac(n.mac));
  const nic = nics.find((n) => n.ipv4.includes(ip)) ?? nics[0];
  return normalizeMac(nic?.mac);
}

/** The filters known before a camera is read: UUID, scopes, IP. */
export function passesEarlyFilters(details: OnvifDetails, endpoint: WsdEndpoint, id: string, ip: string): boolean {
  return (
    passesFilterAny(details.uuids, [id, endpoint.uuid]) &&
    passesFilterAny(details.scopes, endpoint.scopes) &&
    passesFilter(details.ipAddresses, ip)
  );
}

async function* discover({
  details,
  properties,
  signal,
  log,
}: DiscoveryContext<OnvifDetails>): AsyncGenerator<DiscoveredDevice[]> {
  if (signal.aborted) return;
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  signal.addEventListener("abort", onAbort, { once: true });

  const cameras = new Map<string, Camera>();
  const inflight = new Set<Promise<void>>();
  let dirty = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    dirty = true;
    wake?.();
  };
  stop.signal.addEventListener("abort", () => wake?.(), { once: true });

  // A simple semaphore for camera reads.
  let running = 0;
  const queue: (() => void)[] = [];
  const acquire = () =>
    new Promise<void>((resolve) => {
      if (running < READ_CONCURRENCY) {
        running++;
        resolve();
      } else queue.push(resolve);
    });
  const release = () => {
    const next = queue.shift();
    if (next) next();
    else running--;
  };

  const unicast: UnicastTarget[] = (details.unicastHosts ?? [])
    .map(parseHostPort)
    .filter((t): t is UnicastTarget => t !== undefined);

  // Filter items are MACs as operators write them (02-AB-…, 02:ab:…, 02ab…): compared in the form published.
  const macFilter = details.macAddresses && {
    ...details.macAddresses,
    items: details.macAddresses.items.map((item) => normalizeMac(item) ?? item),
  };

  let warnedFull = false;
  // A logical clock: sightings and probe rounds are ordered without relying on millisecond timestamps.
  let clock = 0;

  const startRead = (camera: Camera) => {
    const key = cacheKey(camera);
    const epoch = camera.epoch;
    camera.readingKey = key;
    const credentials = credentialsFor(properties, camera.id, camera.endpoint.uuid);
    const task = (async () => {
      await acquire();
      try {
        if (stop.signal.aborted) return;
        const result = await readCamera({
          xaddr: camera.xaddr,
          ...(credentials ? { credentials } : {}),
          timeoutMs: details.requestTimeoutSeconds * 1000,
          maxResponseBytes: details.maxResponseBytes,
          signal: stop.signal,
        });
        const current = cameras.get(camera.id);
        if (stop.signal.aborted || current !== camera || camera.epoch !== epoch || camera.readingKey !== key) return;
        const previous = camera.read?.result.problem;
        camera.read = { key, result, at: Date.now() };
        camera.readingKey = undefined;
        if (result.problem && result.problem !== previous) {
          log.info({ camera: camera.id, problem: result.problem }, "onvif: camera not fully read");
        } else if (!result.problem) log.debug({ camera: camera.id }, "onvif: camera read");
        notify();
      } catch (err) {
        // readCamera never throws; this is a bug guard.
        log.error({ camera: camera.id, err: String(err) }, "onvif: camera read failed");
      } finally {
        release();
      }
    })();
    inflight.add(task);
    void task.finally(() => inflight.delete(task));
  };

  /** A camera seen in a probe answer or a Hello. */
  const sighting = (endpoint: WsdEndpoint, from: Sender, how: "probe" | "hello") => {
    const id = endpointId(endpoint.uuid);
    const xaddr = chooseXAddr(endpoint, from);
    if (xaddr === undefined) return;
    const ip = ipOf(xaddr, from);
    const existing = cameras.get(id);
    if (!passesEarlyFilters(details, endpoint, id, ip)) {
      if (existing) {
        cameras.delete(id);
        notify();
      }
      return;
    }
    let camera = existing;
    if (!camera) {
      if (cameras.size >= MAX_CAMERAS) {
        if (!warnedFull) log.warn({ max: MAX_CAMERAS }, "onvif: too many cameras; ignoring new ones");
        warnedFull = true;
        return;
      }
      camera = { id, endpoint, from, xaddr, ip, seenAt: ++clock, epoch: 0 };
      cameras.set(id, camera);
      log.debug({ camera: id, xaddr, how }, "onvif: camera found");
    }
    const changed =
      camera.xaddr !== xaddr || camera.ip !== ip || camera.endpoint.scopes.join(" ") !== endpoint.scopes.join(" ");
    Object.assign(camera, { endpoint, from, xaddr, ip, seenAt: ++clock });
    const key = cacheKey(camera);
    if (how === "hello") {
      // A Hello re-reads the camera (it may have rebooted with new settings), unless a read of
      // the same address is already under way: that one answers this Hello too.
      if (camera.readingKey !== key) {
        camera.epoch++;
        startRead(camera);
      } else if (changed && camera.read) notify();
      return;
    }
    // Probe answers reuse the cached read unless the address or metadata version changed; a read
    // that found a problem is retried once per round.
    const stale = camera.read?.key !== key;
    const retry = camera.read?.result.problem !== undefined && camera.readingKey === undefined;
    if ((stale || retry) && camera.readingKey !== key) startRead(camera);
    else if (changed && camera.read) notify();
  };

  const bye = (endpoint: WsdEndpoint) => {
    const id = endpointId(endpoint.uuid);
    const camera = cameras.get(id);
    if (!camera) return;
    camera.epoch++;
    cameras.delete(id);
    log.debug({ camera: id }, "onvif: camera said Bye");
    notify();
  };

  let probing = false;
  let probeAgain = false;
  let probeTimer: NodeJS.Timeout | undefined;
  let client: WsDiscoveryClient | undefined;

  const probeRound = async () => {
    if (!client) return;
    const started = ++clock;
    const answers = await client.probe(details.discoveryTimeoutSeconds * 1000, unicast, stop.signal);
    if (stop.signal.aborted) return;
    for (const answer of answers) sighting(answer, answer.from, "probe");
    let dropped = false;
    for (const [id, camera] of cameras) {
      if (camera.seenAt < started) {
        cameras.delete(id);
        camera.epoch++;
        dropped = true;
        log.debug({ camera: id }, "onvif: camera no longer answers probes");
      }
    }
    if (dropped) notify();
  };

  const runProbes = async () => {
    if (probing) {
      probeAgain = true;
      return;
    }
    probing = true;
    clearTimeout(probeTimer);
    try {
      do {
        probeAgain = false;
        await probeRound();
      } while (probeAgain && !stop.signal.aborted);
    } catch (err) {
      log.warn({ err: String(err) }, "onvif: probe round failed");
    } finally {
      probing = false;
      if (!stop.signal.aborted) probeTimer = setTimeout(() => void runProbes(), details.probeIntervalSeconds * 1000);
    }
  };

  try {
    client = await WsDiscoveryClient.open({
      ...(details.interface ? { interface: details.interface } : {}),
      log,
      onHello: (endpoint, from) => {
        if (!endpoint.onvif) return;
        // A Hello without addresses asks for a Resolve; our Probe finds the camera the same way.
        if (endpoint.xaddrs.length === 0) void runProbes();
        else sighting(endpoint, from, "hello");
      },
      onBye: (endpoint) => bye(endpoint),
    });
    if (stop.signal.aborted) return;

    // The first set: one probe round and the reads it started.
    await runProbes();
    // Reads never reject and are bounded by their timeouts (and by the abort).
    while (inflight.size > 0 && !stop.signal.aborted) await Promise.race([...inflight]);

    let last: string | undefined;
    while (!stop.signal.aborted) {
      dirty = false;
      const devices = buildDevices();
      const canonical = JSON.stringify(devices);
      if (canonical !== last) {
        last = canonical;
        yield devices;
      }
      if (!dirty && !stop.signal.aborted) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    stop.abort();
    clearTimeout(probeTimer);
    client?.close();
    await Promise.allSettled([...inflight]);
  }

  function buildDevices(): DiscoveredDevice[] {
    const devices: DiscoveredDevice[] = [];
    for (const camera of cameras.values()) {
      if (!camera.read) continue;
      const credentials = credentialsFor(properties, camera.id, camera.endpoint.uuid);
      const device = toDevice(camera, camera.read.result, credentials?.password);
      if (!passesFilter(macFilter, device.properties.ONVIF_DEVICE_MAC_ADDRESS)) continue;
      devices.push(device);
    }
    return devices.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }
}

/** `forNode`: the agent resolves per-node details (`nodeInterfaces`) before `discover`. */
export const onvifHandler: DiscoveryHandler<OnvifDetails> & {
  forNode(details: OnvifDetails, nodeName: string): OnvifDetails;
} = {
  name: "onvif",
  shared: true,
  detailsSchema: onvifDetails,
  forNode: onvifDetailsForNode,
  discover,
};
