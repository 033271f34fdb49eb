import { closeSync, constants, fstatSync, openSync, readdirSync, readSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../src/log/logger.js";
import type { DiscoveredDevice } from "../handler.js";
import { boundProperties, propertyValue } from "../sanitize.js";

/** Most bytes read from one attribute file: the kernel never writes more than a page. */
export const MAX_ATTRIBUTE_BYTES = 4096;
/** A USB string descriptor holds at most 126 UTF-16 code units; longer text is not from a real device. */
export const MAX_USB_STRING = 126;
/** Most directory entries one scan looks at, so a hostile tree cannot make a scan unbounded. */
const MAX_ENTRIES = 4096;
/** Entries read between two turns of the event loop, so a cold read of 1,000 devices does not block it. */
export const READS_PER_TURN = 64;

// `<bus>-<port>[.<port>]...`: at most 7 tiers below the root hub. Root hubs (`usbN`) and the
// root hub's own interface (`1-0:1.0`) do not match DEVICE_ENTRY and are skipped.
const DEVICE_ENTRY = /^\d{1,3}-\d{1,3}(?:\.\d{1,3}){0,6}$/;
const INTERFACE_ENTRY = /^(\d{1,3}-\d{1,3}(?:\.\d{1,3}){0,6}):\d{1,3}\.\d{1,3}$/;

/** What a device entry's own attributes say (its interfaces are entries of their own). */
export interface SysfsDeviceAttributes {
  /** The sysfs entry name, e.g. `1-1.2`: the physical port path. */
  port: string;
  vendorId: string;
  productId: string;
  busnum: number;
  devnum: number;
  serial?: string;
  manufacturer?: string;
  product?: string;
  deviceClass?: string;
}

/** One USB device as read from sysfs, already validated and bounded. */
export interface SysfsUsbDevice extends SysfsDeviceAttributes {
  /** Class codes of the device's interfaces (sorted, unique): many devices say "00" and put the class here. */
  interfaceClasses: string[];
}

/** What an entry of the root is: a device (`1-1.2`), one of its interfaces (`1-1.2:1.0`), or neither. */
export type SysfsEntry = { kind: "device"; port: string } | { kind: "interface"; port: string } | undefined;

export function classifyEntry(name: string): SysfsEntry {
  if (DEVICE_ENTRY.test(name)) return { kind: "device", port: name };
  const port = INTERFACE_ENTRY.exec(name)?.[1];
  return port === undefined ? undefined : { kind: "interface", port };
}

/** The root's entry names, sorted and bounded; undefined when the root cannot be read. */
export function listEntries(root: string, log: Logger): string[] | undefined {
  try {
    return readdirSync(root).sort().slice(0, MAX_ENTRIES);
  } catch (err) {
    log.debug({ root, err: String(err) }, "usb: cannot read sysfs root");
    return undefined;
  }
}

/** Lets other work run between batches of synchronous reads. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// sysfs attributes are made in memory by the kernel when read: synchronous reads cost a sixth of
// the CPU of fs.promises (measured: 0.09 vs 0.54 ms per device), and one scan reads one at a time.
const readBuffer = Buffer.alloc(MAX_ATTRIBUTE_BYTES);

/** Reads at most MAX_ATTRIBUTE_BYTES of a regular file; anything else (missing, dir, FIFO) is undefined. */
function readAttribute(dir: string, name: string): string | undefined {
  let fd: number | undefined;
  try {
    // O_NONBLOCK: a FIFO planted in a tree must not hang the scan (no effect on regular files).
    fd = openSync(path.join(dir, name), constants.O_RDONLY | constants.O_NONBLOCK);
    if (!fstatSync(fd).isFile()) return undefined;
    const bytesRead = readSync(fd, readBuffer, 0, MAX_ATTRIBUTE_BYTES, 0);
    return readBuffer.toString("utf8", 0, bytesRead);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // nothing to do: the descriptor is gone either way
      }
    }
  }
}

/** Hex attribute (`idVendor`, `bDeviceClass`): exactly `digits` hex digits, lower-cased. */
function parseHex(text: string | undefined, digits: number): string | undefined {
  const value = text?.trim();
  return value !== undefined && value.length === digits && /^[0-9a-fA-F]+$/.test(value)
    ? value.toLowerCase()
    : undefined;
}

/** Decimal attribute (`busnum`, `devnum`): 1..999, so the /dev node's 3-digit padding holds. */
function parseNumber(text: string | undefined): number | undefined {
  const value = text?.trim();
  if (value === undefined || !/^\d{1,3}$/.test(value)) return undefined;
  const n = Number(value);
  return n >= 1 ? n : undefined;
}

/** String descriptor: control characters (and the kernel's trailing newline) removed, trimmed, bounded. */
function parseString(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  let value = propertyValue(text, MAX_ATTRIBUTE_BYTES).trim().slice(0, MAX_USB_STRING);
  // The cut may split a surrogate pair; drop the orphaned half.
  if (/[\uD800-\uDBFF]$/.test(value)) value = value.slice(0, -1);
  return value.length > 0 ? value : undefined;
}

/** A device entry's attributes; undefined (and logged at debug) when required ones are missing or malformed. */
export function readDeviceAttributes(root: string, port: string, log: Logger): SysfsDeviceAttributes | undefined {
  const dir = path.join(root, port);
  const vendorId = parseHex(readAttribute(dir, "idVendor"), 4);
  const productId = parseHex(readAttribute(dir, "idProduct"), 4);
  const busnum = parseNumber(readAttribute(dir, "busnum"));
  const devnum = parseNumber(readAttribute(dir, "devnum"));
  if (vendorId === undefined || productId === undefined || busnum === undefined || devnum === undefined) {
    log.debug(
      { port, idVendor: vendorId, idProduct: productId, busnum, devnum },
      "usb: skipping entry with missing or malformed attributes",
    );
    return undefined;
  }
  const device: SysfsDeviceAttributes = { port, vendorId, productId, busnum, devnum };
  const serial = parseString(readAttribute(dir, "serial"));
  if (serial !== undefined) device.serial = serial;
  const manufacturer = parseString(readAttribute(dir, "manufacturer"));
  if (manufacturer !== undefined) device.manufacturer = manufacturer;
  const product = parseString(readAttribute(dir, "product"));
  if (product !== undefined) device.product = product;
  const deviceClass = parseHex(readAttribute(dir, "bDeviceClass"), 2);
  if (deviceClass !== undefined) device.deviceClass = deviceClass;
  return device;
}

/** An interface entry's class code (`bInterfaceClass`), or undefined. */
export function readInterfaceClass(root: string, name: string): string | undefined {
  return parseHex(readAttribute(path.join(root, name), "bInterfaceClass"), 2);
}

/** The device with the classes of its interfaces (sorted, unique). */
export function withInterfaces(
  attributes: SysfsDeviceAttributes,
  interfaceClasses: Iterable<string | undefined>,
): SysfsUsbDevice {
  const classes = new Set<string>();
  for (const cls of interfaceClasses) if (cls !== undefined) classes.add(cls);
  return { ...attributes, interfaceClasses: [...classes].sort() };
}

/**
 * Reads every USB device under `root` (shaped like /sys/bus/usb/devices: symlinks on a real
 * system, plain directories in fixtures), all of it, every time: the reference that incremental
 * rescans (scanner.ts) must agree with. Never throws: an unreadable root is an empty list, and
 * an entry with missing or malformed attributes is skipped.
 */
export async function readSysfs(root: string, log: Logger): Promise<SysfsUsbDevice[]> {
  const entries = listEntries(root, log) ?? [];
  const interfaceClasses = new Map<string, (string | undefined)[]>();
  let reads = 0;
  for (const name of entries) {
    const entry = classifyEntry(name);
    if (entry?.kind !== "interface") continue;
    if (++reads % READS_PER_TURN === 0) await nextTurn();
    const classes = interfaceClasses.get(entry.port) ?? [];
    classes.push(readInterfaceClass(root, name));
    interfaceClasses.set(entry.port, classes);
  }
  const devices: SysfsUsbDevice[] = [];
  for (const name of entries) {
    if (classifyEntry(name)?.kind !== "device") continue;
    if (++reads % READS_PER_TURN === 0) await nextTurn();
    const attributes = readDeviceAttributes(root, name, log);
    if (attributes) devices.push(withInterfaces(attributes, interfaceClasses.get(name) ?? []));
  }
  return devices;
}

/** `/dev/bus/usb/BBB/DDD`, the character node libusb opens. */
export function devnode(busnum: number, devnum: number): string {
  return `/dev/bus/usb/${String(busnum).padStart(3, "0")}/${String(devnum).padStart(3, "0")}`;
}

/** Escapes the identity separator, so no serial can pose as another device's `port:` identity. */
function escapeSerial(serial: string): string {
  return serial.replace(/%/g, "%25").replace(/:/g, "%3A");
}

export function usbProperties(device: SysfsUsbDevice): Record<string, string> {
  const props: Record<string, string> = {
    USB_VENDOR_ID: device.vendorId,
    USB_PRODUCT_ID: device.productId,
    USB_BUSNUM: String(device.busnum),
    USB_DEVNUM: String(device.devnum),
    USB_DEVNODE: devnode(device.busnum, device.devnum),
    USB_PORT_PATH: device.port,
  };
  if (device.serial !== undefined) props.USB_SERIAL = device.serial;
  if (device.manufacturer !== undefined) props.USB_MANUFACTURER = device.manufacturer;
  if (device.product !== undefined) props.USB_PRODUCT = device.product;
  if (device.deviceClass !== undefined) props.USB_CLASS = device.deviceClass;
  if (device.interfaceClasses.length > 0) props.USB_INTERFACE_CLASSES = device.interfaceClasses.join(",");
  return boundProperties(props);
}

/**
 * Devices with stable identities, sorted by id. Identity is vendor:product:serial, which
 * survives re-plugs and moves between ports. Without a serial it is the port path, which
 * survives a re-plug into the same port (devnum changes on every plug, so it is not used).
 * Cheap devices often share one serial ("0000"): when several present devices have the same
 * vendor:product:serial, the serial does not tell them apart and they fall back to the port path.
 *
 * With `made`, a device object seen before gives back the very DiscoveredDevice made for it
 * (unless its id changed), so consumers can tell unchanged devices by reference.
 */
export function toDiscovered(
  devices: SysfsUsbDevice[],
  made?: WeakMap<SysfsUsbDevice, DiscoveredDevice>,
): DiscoveredDevice[] {
  const serialKey = (d: SysfsUsbDevice) => `${d.vendorId}:${d.productId}:${escapeSerial(d.serial ?? "")}`;
  const counts = new Map<string, number>();
  for (const d of devices) {
    if (d.serial !== undefined) counts.set(serialKey(d), (counts.get(serialKey(d)) ?? 0) + 1);
  }
  return devices
    .map((d) => {
      const id =
        d.serial !== undefined && counts.get(serialKey(d)) === 1
          ? `usb:${serialKey(d)}`
          : `usb:${d.vendorId}:${d.productId}:port:${d.port}`;
      const before = made?.get(d);
      if (before?.id === id) return before;
      const found: DiscoveredDevice = { id, properties: before?.properties ?? usbProperties(d) };
      made?.set(d, found);
      return found;
    })
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
