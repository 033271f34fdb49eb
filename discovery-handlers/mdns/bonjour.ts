import { Bonjour } from "bonjour-service";

/** The multicast-dns socket inside bonjour-service; not in its types, so this is the part we use. */
export interface MdnsSocket {
  on(event: "response", listener: (packet: MdnsPacket) => void): unknown;
  on(event: "error" | "warning", listener: (err: Error) => void): unknown;
  removeListener(event: "response", listener: (packet: MdnsPacket) => void): unknown;
  query(name: string, type: string): void;
}
export interface MdnsRecord {
  name: string;
  type: string;
  ttl?: number;
}
export interface MdnsPacket {
  answers: MdnsRecord[];
  additionals: MdnsRecord[];
}

/**
 * A bonjour-service instance whose socket errors are reported, never thrown (its default error
 * handling throws from an event handler, which would take the process down).
 *
 * With `iface`, multicast goes out of and is joined on that interface only. The socket must then
 * bind 0.0.0.0: multicast-dns otherwise binds the interface address, and a socket bound to
 * 127.0.0.1 never receives datagrams addressed to 224.0.0.251. `interface` and `bind` are
 * multicast-dns options bonjour-service passes through but does not declare, hence the cast.
 */
export function openBonjour(
  iface: string | undefined,
  onError: (err: unknown) => void,
  onWarning: (err: unknown) => void = () => undefined,
): { bonjour: Bonjour; mdns: MdnsSocket; destroy(): Promise<void> } {
  const options = iface === undefined ? {} : { interface: iface, bind: "0.0.0.0" };
  const bonjour = new Bonjour(options as ConstructorParameters<typeof Bonjour>[0], onError);
  const mdns = (bonjour as unknown as { server: { mdns: MdnsSocket } }).server.mdns;
  mdns.on("error", onError);
  mdns.on("warning", onWarning);
  let destroyed: Promise<void> | undefined;
  return {
    bonjour,
    mdns,
    destroy: () => {
      destroyed ??= new Promise<void>((resolve) => bonjour.destroy(() => resolve()));
      return destroyed;
    },
  };
}
