import { constants } from "node:fs";
import { type FileHandle, open, readdir } from "node:fs/promises";
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

// `<bus>-<port>[.<port>]...`: at most 7 tiers below the root hub. Root hubs (`usbN`) and the
// root hub's own interface (`1-0:1.0`) do not match DEVICE_ENTRY and are skipped.
const DEVICE_ENTRY = /^\d{1,3}-\d{1,3}(?:\.\d{1,3}){0,6}$/;
const INTERFACE_ENTRY = /^(\d{1,3}-\d{1,3}(?:\.\d{1,3}){0,6}):\d{1,3}\.\d{1,3}$/;

/** One USB device as read from sysfs, already validated and bounded. */
export interface SysfsUsbDevice {
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
  /** Class codes of the device's interfaces (sorted, unique): many devices say "00" and put the class here. */
  interfaceClasses: string[];
}

/** Reads at most MAX_ATTRIBUTE_BYTES of a regular file; anything else (missing, dir, FIFO) is undefined. */
async function readAttribute(dir: string, name: string): Promise<string | undefined> {
  let handle: FileHandle | undefined;
  try {
    // O_NONBLOCK: a FIFO planted in a tree must not hang the scan (no effect on regular files).
    handle = await open(path.join(dir, name), constants.O_RDONLY | constants.O_NONBLOCK);
    if (!(await handle.stat()).isFile()) return undefined;
    const buffer = Buffer.alloc(MAX_ATTRIBUTE_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, MAX_ATTRIBUTE_BYTES, 0);
    return buffer.toString("utf8", 0, bytesRead);
  } catch {
    return undefined;
  } finally {
    await handle?.close().catch(() => undefined);
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

async function readDevice(
  root: string,
  port: string,
  interfaceClasses: Set<string> | undefined,
  log: Logger,
): Promise<SysfsUsbDevice | undefined> {
  const dir = path.join(root, port);
  const names = [
    "idVendor",
    "idProduct",
    "busnum",
    "devnum",
    "serial",
    "manufacturer",
    "product",
    "bDeviceClass",
  ] as const;
  const raw = await Promise.all(names.map((name) => readAttribute(dir, name)));
  const [idVendor, idProduct, busnumText, devnumText, serial, manufacturer, product, bDeviceClass] = raw;
  const vendorId = parseHex(idVendor, 4);
  const productId = parseHex(idProduct, 4);
  const busnum = parseNumber(busnumText);
  const devnum = parseNumber(devnumText);
  if (vendorId === undefined || productId === undefined || busnum === undefined || devnum === undefined) {
    log.debug(
      { port, idVendor: vendorId, idProduct: productId, busnum, devnum },
      "usb: skipping entry with missing or malformed attributes",
    );
    return undefined;
  }
  const device: SysfsUsbDevice = {
    port,
    vendorId,
    productId,
    busnum,
    devnum,
    interfaceClasses: [...(interfaceClasses ?? [])].sort(),
  };
  const serialValue = parseString(serial);
  if (serialValue !== undefined) device.serial = serialValue;
  const manufacturerValue = parseString(manufacturer);
  if (manufacturerValue !== undefined) device.manufacturer = manufacturerValue;
  const productValue = parseString(product);
  if (productValue !== undefined) device.product = productValue;
  const deviceClass = parseHex(bDeviceClass, 2);
  if (deviceClass !== undefined) device.deviceClass = deviceClass;
  return device;
}

/**
 * Reads every USB device under `root` (shaped like /sys/bus/usb/devices: symlinks on a real
 * system, plain directories in fixtures). Never throws: an unreadable root is an empty list, and
 * an entry with missing or malformed attributes is skipped.
 */
export async function readSysfs(root: string, log: Logger): Promise<SysfsUsbDevice[]> {
  let entries: string[];
  try {
    entries = (await readdir(root)).sort().slice(0, MAX_ENTRIES);
  } catch (err) {
    log.debug({ root, err: String(err) }, "usb: cannot read sysfs root");
    return [];
  }
  const interfaceClasses = new Map<string, Set<string>>();
  for (const name of entries) {
    const port = INTERFACE_ENTRY.exec(name)?.[1];
    if (port === undefined) continue;
    const cls = parseHex(await readAttribute(path.join(root, name), "bInterfaceClass"), 2);
    if (cls === undefined) continue;
    const set = interfaceClasses.get(port) ?? new Set<string>();
    set.add(cls);
    interfaceClasses.set(port, set);
  }
  const devices: SysfsUsbDevice[] = [];
  for (const name of entries) {
    if (!DEVICE_ENTRY.test(name)) continue;
    const device = await readDevice(root, name, interfaceClasses.get(name), log);
    if (device) devices.push(device);
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
 */
export function toDiscovered(devices: SysfsUsbDevice[]): DiscoveredDevice[] {
  const serialKey = (d: SysfsUsbDevice) => `${d.vendorId}:${d.productId}:${escapeSerial(d.serial ?? "")}`;
  const counts = new Map<string, number>();
  for (const d of devices) {
    if (d.serial !== undefined) counts.set(serialKey(d), (counts.get(serialKey(d)) ?? 0) + 1);
  }
  return devices
    .map((d) => ({
      id:
        d.serial !== undefined && counts.get(serialKey(d)) === 1
          ? `usb:${serialKey(d)}`
          : `usb:${d.vendorId}:${d.productId}:port:${d.port}`,
      properties: usbProperties(d),
    }))
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
