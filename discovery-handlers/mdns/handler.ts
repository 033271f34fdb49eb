import type { Browser, Service } from "bonjour-service";
import { MAX_PROPERTIES } from "../../src/api/device.js";
import { passesFilter } from "../filter.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { boundProperties, propertyName, propertyValue } from "../sanitize.js";
import { type MdnsPacket, openBonjour } from "./bonjour.js";
import { type MdnsDetails, mdnsDetails, mdnsDetailsForNode, type ServiceType, serviceTypes } from "./details.js";

/** First set after this long: answers to the opening query arrive within ~120 ms (RFC 6762 §6). */
const SETTLE_MS = 1_000;
/** One packet often brings several services: report them together. */
const DEBOUNCE_MS = 50;
/** Expiry check interval; short, so even a TTL of a few seconds is re-queried in its 80-100% window. */
const SWEEP_MS = 250;
/** A busy or hostile LAN can announce without limit; the set we report is bounded. */
const MAX_DEVICES = 1_024;

const sameName = (a: string | undefined, b: string | undefined) =>
  a !== undefined && b !== undefined && a.toLowerCase() === b.toLowerCase();

/** TXT value of `key` (keys are case-insensitive, RFC 6763 §6.4); "" for a key without a value. */
function txtValue(txt: unknown, key: string): string | undefined {
  if (!txt || typeof txt !== "object") return undefined;
  const found = Object.keys(txt).find((k) => sameName(k, key));
  return found === undefined ? undefined : propertyValue((txt as Record<string, unknown>)[found]);
}

export function matchesFilters(service: Service, details: MdnsDetails): boolean {
  if (!passesFilter(details.names, propertyValue(service.name))) return false;
  return Object.entries(details.txt ?? {}).every(([key, list]) => passesFilter(list, txtValue(service.txt, key)));
}

/** A service as a device. Everything in it came off the network: sanitized and bounded here. */
export function toDevice(type: ServiceType, service: Service): DiscoveredDevice {
  const core: Record<string, string> = {
    MDNS_NAME: propertyValue(service.name),
    MDNS_HOST: propertyValue(service.host),
    MDNS_ADDRESSES: propertyValue((service.addresses ?? []).join(",")),
    MDNS_PORT: propertyValue(service.port),
    MDNS_TYPE: type.label,
  };
  for (const [name, value] of Object.entries(core)) if (value === "") delete core[name];
  // TXT keys share the property budget with the core ones, which must never be the ones cut.
  const txt: Record<string, string> = {};
  const raw: unknown = service.txt;
  if (raw && typeof raw === "object") {
    const room = MAX_PROPERTIES - Object.keys(core).length;
    for (const key of Object.keys(raw).sort()) {
      if (Object.keys(txt).length >= room) break;
      const name = propertyName("MDNS_TXT_", key);
      // Keys that differ only in punctuation map to one name: the first in sort order wins.
      if (name === undefined || name in txt) continue;
      txt[name] = propertyValue((raw as Record<string, unknown>)[key]);
    }
  }
  // Names compare case-insensitively, so the identity is lower case; the fqdn is unique per type.
  const fqdn = propertyValue(service.fqdn || `${service.name}.${type.label}.local`, 900).toLowerCase();
  return { id: `mdns:${type.label}:${fqdn}`, properties: boundProperties({ ...txt, ...core }, MAX_PROPERTIES) };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/*
 * Liveness. bonjour-service reports goodbyes (TTL 0) as `down`, but its own expiry is no use:
 * it stamps `lastSeen` when it first sees a service and never again, so `Browser.expire()` alone
 * would drop live services once the PTR TTL (8 h for its own services) ran out, and keep dead
 * ones that long too. So we keep the stamps ourselves, from the SRV record: a service is alive
 * while its SRV (host and port; TTL 120 s from bonjour and Apple) is. Every SRV we hear refreshes
 * `lastSeen`/`ttl` on bonjour's service object; from 80% of the TTL on we ask for the SRV again,
 * about every 5% (RFC 6762 §5.2), and a service still silent at 100% goes through
 * `Browser.expire()`, which drops it and emits `down` (and it comes back `up` if it returns).
 */
async function* discover({ details, signal, log }: DiscoveryContext<MdnsDetails>): AsyncGenerator<DiscoveredDevice[]> {
  if (signal.aborted) return;
  const types = serviceTypes(details);
  const socket = openBonjour(
    details.interface,
    (err) => log.warn({ err: String(err) }, "mdns: socket error"),
    (err) => log.debug({ err: String(err) }, "mdns: bad packet"),
  );
  let pending = false;
  let wake: (() => void) | undefined;
  let debounce: NodeJS.Timeout | undefined;
  const changed = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      pending = true;
      wake?.();
    }, DEBOUNCE_MS);
  };

  const browsers: { type: ServiceType; browser: Browser }[] = types.map((type) => {
    const browser = socket.bonjour.find({ type: type.name, protocol: type.protocol });
    for (const event of ["up", "down", "srv-update", "txt-update"] as const) browser.on(event, changed);
    return { type, browser };
  });

  // Registered after the browsers, so a new service exists by the time its SRV is stamped here.
  const onResponse = (packet: MdnsPacket) => {
    const now = Date.now();
    for (const record of [...(packet.answers ?? []), ...(packet.additionals ?? [])]) {
      if (record.type !== "SRV") continue;
      for (const { browser } of browsers) {
        for (const service of browser.services) {
          if (!sameName(service.fqdn, record.name)) continue;
          service.lastSeen = now;
          // An SRV goodbye: gone in a second (RFC 6762 §10.1), unless it is re-announced.
          service.ttl = record.ttl && record.ttl > 0 ? record.ttl : 1;
        }
      }
    }
  };
  socket.mdns.on("response", onResponse);

  const queried = new Map<string, number>();
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const { browser } of browsers) {
      for (const service of browser.services) {
        if (!service.ttl || service.lastSeen === undefined) continue;
        const ttlMs = service.ttl * 1000;
        const asked = queried.get(service.fqdn) ?? 0;
        if (now - service.lastSeen >= 0.8 * ttlMs && (asked < service.lastSeen || now - asked >= 0.05 * ttlMs)) {
          queried.set(service.fqdn, now);
          socket.mdns.query(service.fqdn, "SRV");
        }
      }
      browser.expire();
    }
    const live = new Set(browsers.flatMap(({ browser }) => browser.services.map((s) => s.fqdn)));
    for (const fqdn of queried.keys()) if (!live.has(fqdn)) queried.delete(fqdn);
  }, SWEEP_MS);

  const stop = () => {
    clearInterval(sweep);
    clearTimeout(debounce);
    socket.mdns.removeListener("response", onResponse);
    for (const { browser } of browsers) {
      browser.stop();
      browser.removeAllListeners();
    }
    void socket.destroy();
    wake?.();
  };
  signal.addEventListener("abort", stop, { once: true });

  const collect = (): DiscoveredDevice[] => {
    const devices = new Map<string, DiscoveredDevice>();
    for (const { type, browser } of browsers) {
      for (const service of browser.services) {
        if (!matchesFilters(service, details)) continue;
        const device = toDevice(type, service);
        if (!devices.has(device.id)) devices.set(device.id, device);
      }
    }
    return [...devices.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).slice(0, MAX_DEVICES);
  };

  try {
    await sleep(SETTLE_MS, signal);
    let last: string | undefined;
    while (!signal.aborted) {
      pending = false;
      const devices = collect();
      const canonical = JSON.stringify(devices);
      if (canonical !== last) {
        last = canonical;
        yield devices;
      }
      if (!pending && !signal.aborted) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    }
  } finally {
    signal.removeEventListener("abort", stop);
    stop();
    await socket.destroy();
  }
}

/** `forNode`: the agent resolves per-node details (`nodeInterfaces`) before `discover`. */
export const mdnsHandler: DiscoveryHandler<MdnsDetails> & {
  forNode(details: MdnsDetails, nodeName: string): MdnsDetails;
} = {
  name: "mdns",
  shared: true,
  detailsSchema: mdnsDetails,
  forNode: mdnsDetailsForNode,
  discover,
};
