import type { Service } from "bonjour-service";
import { openBonjour } from "./bonjour.js";

export interface AdvertiseOptions {
  name: string;
  /** Bare type ("http") as bonjour-service takes it. */
  type: string;
  port: number;
  protocol?: "tcp" | "udp";
  txt?: Record<string, string>;
  /** IPv4 address of the interface to advertise on, e.g. "127.0.0.1" in tests. */
  interface?: string;
  /** Host name in the SRV record; the machine's host name when omitted. */
  host?: string;
  /** Overrides every record's TTL (seconds), to watch expiry without waiting 2 minutes. */
  ttl?: number;
}

export interface Advertisement {
  /** Withdraws the service with a goodbye (TTL 0) and closes the socket. */
  stop(): Promise<void>;
  /** Vanishes without a goodbye, like a device losing power: browsers must notice by TTL. */
  crash(): Promise<void>;
}

/**
 * Publishes one DNS-SD service with bonjour-service, on its own socket, for tests and demos.
 * Resolves once the first announcement is sent (after bonjour's name probe, ~1 s).
 */
export async function advertiseService(options: AdvertiseOptions): Promise<Advertisement> {
  let failure: unknown;
  const socket = openBonjour(options.interface, (err) => {
    failure ??= err;
  });
  const service: Service = socket.bonjour.publish({
    name: options.name,
    type: options.type,
    port: options.port,
    protocol: options.protocol ?? "tcp",
    txt: options.txt ?? {},
    ...(options.host === undefined ? {} : { host: options.host }),
  });
  if (options.ttl !== undefined) {
    // The registry reads records() when it announces (after probing) and answers queries from
    // that copy, so replacing it now sets the TTL of everything sent. Goodbyes still use 0.
    const ttl = options.ttl;
    const records = service.records.bind(service);
    service.records = () => records().map((record) => ({ ...record, ttl }));
  }
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(failure ?? new Error(`${options.name} was not published in 5 s`)), 5_000);
      service.once("up", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  } catch (err) {
    await socket.destroy();
    throw err;
  }
  return {
    stop: async () => {
      await new Promise<void>((resolve) => service.stop?.(() => resolve()));
      await socket.destroy();
    },
    crash: () => socket.destroy(),
  };
}
