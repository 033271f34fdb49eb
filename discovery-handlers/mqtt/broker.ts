import { isIPv4, isIPv6 } from "node:net";
import { Bonjour, type Service } from "bonjour-service";

/** Where the broker is: given as a URI, or found over mDNS (`_mqtt._tcp`). */

export const MQTT_SERVICE_TYPE = "mqtt";

/** The broker URI as published in properties: scheme, host and port only (never credentials). */
export function publicBrokerUri(uri: string): string {
  const url = new URL(uri);
  const port = url.port || (url.protocol === "mqtts:" ? "8883" : "1883");
  return `${url.protocol}//${url.hostname}:${port}`;
}

/** `mqtt://<address>:<port>` for a resolved service, preferring IPv4; undefined without an address. */
export function brokerUriOf(service: Pick<Service, "addresses" | "referer" | "port">): string | undefined {
  const addresses = [...(service.addresses ?? []), ...(service.referer ? [service.referer.address] : [])];
  const address = addresses.find((a) => isIPv4(a)) ?? addresses.find((a) => isIPv6(a) && !a.startsWith("fe80"));
  if (!address || !service.port) return undefined;
  return isIPv6(address) ? `mqtt://[${address}]:${service.port}` : `mqtt://${address}:${service.port}`;
}

export interface FindBrokerOptions {
  /** Local IP address of the interface to query on (multicast goes out there only). */
  interface?: string;
  signal: AbortSignal;
  /** How often to ask again while nothing answers (doubles up to a minute). */
  queryIntervalMs?: number;
}

/**
 * Browses `_mqtt._tcp` until a broker answers; its URI, or undefined when the signal aborts first.
 */
export function findBrokerOverMdns(options: FindBrokerOptions): Promise<string | undefined> {
  if (options.signal.aborted) return Promise.resolve(undefined);
  // bonjour-service passes these through to multicast-dns; its types leave them out.
  const mdnsOptions = options.interface ? { interface: options.interface, bind: "0.0.0.0" } : {};
  const bonjour = new Bonjour(mdnsOptions as ConstructorParameters<typeof Bonjour>[0]);
  return new Promise((resolve) => {
    let interval = options.queryIntervalMs ?? 2_000;
    let timer: NodeJS.Timeout | undefined;
    const finish = (uri: string | undefined) => {
      clearTimeout(timer);
      options.signal.removeEventListener("abort", onAbort);
      browser.stop();
      bonjour.destroy();
      resolve(uri);
    };
    const onAbort = () => finish(undefined);
    const browser = bonjour.find({ type: MQTT_SERVICE_TYPE, protocol: "tcp" }, (service) => {
      const uri = brokerUriOf(service);
      if (uri) finish(uri);
    });
    const requery = () => {
      browser.update();
      interval = Math.min(interval * 2, 60_000);
      timer = setTimeout(requery, interval);
    };
    timer = setTimeout(requery, interval);
    options.signal.addEventListener("abort", onAbort, { once: true });
  });
}
