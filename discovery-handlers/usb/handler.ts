import { type FSWatcher, watch } from "node:fs";
import type { Logger } from "../../src/log/logger.js";
import { passesFilter, passesFilterAny } from "../filter.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { DEFAULT_SYSFS_ROOT, type UsbDetails, usbDetails } from "./details.js";
import { AUDIT_PER_POLL, type ScanRequest, SysfsScanner } from "./scanner.js";
import { classifyEntry, readSysfs, type SysfsUsbDevice, toDiscovered } from "./sysfs.js";

/** Events come in bursts (a device and its interfaces appear one by one): rescan once after they settle. */
const DEBOUNCE_MS = 30;
/**
 * libusb reports a device when its own uevent arrives; the kernel registers its interfaces a
 * little later. The ports a hotplug event named are looked at once more after this long.
 */
const HOTPLUG_SETTLE_MS = 1000;
/** USB class code of hubs (bDeviceClass). */
const HUB_CLASS = "09";

export function matchesFilters(device: SysfsUsbDevice, details: UsbDetails): boolean {
  return (
    (details.includeHubs || device.deviceClass !== HUB_CLASS) &&
    passesFilter(details.vendorIds, device.vendorId) &&
    passesFilter(details.productIds, device.productId) &&
    passesFilter(details.serials, device.serial) &&
    passesFilter(details.manufacturers, device.manufacturer) &&
    passesFilter(details.productNames, device.product) &&
    passesFilterAny(details.classes, [
      ...(device.deviceClass === undefined ? [] : [device.deviceClass]),
      ...device.interfaceClasses,
    ])
  );
}

/** One full scan: the filtered device set, never throwing. */
export async function scanUsb(details: UsbDetails, log: Logger): Promise<DiscoveredDevice[]> {
  const devices = await readSysfs(details.sysfsRoot, log);
  return toDiscovered(devices.filter((d) => matchesFilters(d, details)));
}

/** The sysfs port a libusb device sits on (`1-1.2`), or undefined for a root hub or when libusb cannot say. */
export function hotplugPort(device: unknown): string | undefined {
  try {
    const { busNumber, portNumbers } = device as { busNumber?: number; portNumbers?: number[] };
    if (typeof busNumber !== "number" || !Array.isArray(portNumbers) || portNumbers.length === 0) return undefined;
    const port = `${busNumber}-${portNumbers.join(".")}`;
    return classifyEntry(port)?.kind === "device" ? port : undefined;
  } catch {
    return undefined;
  }
}

/**
 * libusb hotplug through the `usb` package. Only meaningful for the real sysfs: kernel-created
 * sysfs entries raise no inotify events, so this is what makes real plugs fast. The module is
 * native and may fail to load, or libusb may find no /dev/bus/usb: then the poll is all we have.
 * `onChange` gets the device's port (undefined when libusb cannot say which).
 * Returns the function that removes the listeners (which also stops libusb's hotplug thread).
 */
async function listenHotplug(onChange: (port: string | undefined) => void, log: Logger): Promise<() => void> {
  try {
    const { usb } = await import("usb");
    const listener = (device: unknown) => onChange(hotplugPort(device));
    usb.on("attach", listener);
    usb.on("detach", listener);
    return () => {
      usb.off("attach", listener);
      usb.off("detach", listener);
    };
  } catch (err) {
    log.debug({ err: String(err) }, "usb: no libusb hotplug events, relying on the poll");
    return () => undefined;
  }
}

/** What the next scan must look at, gathered from events until it runs. */
class PendingScan {
  private all = false;
  private audit = false;
  private ports = new Set<string>();

  /** A change at `port`; undefined when the event does not say where (then every stamp is compared). */
  change(port: string | undefined): void {
    if (port === undefined) this.all = true;
    else this.ports.add(port);
  }

  poll(): void {
    this.all = true;
    this.audit = true;
  }

  /** The request for the scan about to run; starts gathering the next one. */
  take(): ScanRequest {
    const request = { all: this.all, ports: this.ports, audit: this.audit ? AUDIT_PER_POLL : 0 };
    this.all = false;
    this.audit = false;
    this.ports = new Set();
    return request;
  }
}

function sameSet(a: DiscoveredDevice[] | undefined, b: DiscoveredDevice[]): boolean {
  return a !== undefined && a.length === b.length && a.every((d, i) => d === b[i]);
}

async function* discover({ details, signal, log }: DiscoveryContext<UsbDetails>): AsyncGenerator<DiscoveredDevice[]> {
  if (signal.aborted) return;
  const pending = new PendingScan();
  /** A scan is due: the first one, the poll's, or one after a burst of events settled. */
  let due = true;
  let wake: (() => void) | undefined;
  const rescan = () => {
    due = true;
    wake?.();
  };
  let debounce: NodeJS.Timeout | undefined;
  /** Schedules a scan once events settle; `port` (if any) is compared, undefined compares every device. */
  const changed = (port: string | undefined | null) => {
    if (port !== null) pending.change(port);
    clearTimeout(debounce);
    debounce = setTimeout(rescan, DEBOUNCE_MS);
  };
  // fs.watch sees fixture trees (and any tree a process writes); sysfs itself stays silent. Its
  // events name the entry, so only that device is compared; one without a name compares all.
  let watcher: FSWatcher | undefined;
  const onWatch = (_event: string, filename: string | Buffer | null) => {
    // Any other name (a root hub, a stray file) needs only the listing, which every scan compares.
    changed(filename === null ? undefined : (classifyEntry(String(filename))?.port ?? null));
  };
  const ensureWatcher = () => {
    if (watcher || signal.aborted) return;
    try {
      watcher = watch(details.sysfsRoot, onWatch);
      watcher.on("error", (err) => {
        log.debug({ err: String(err) }, "usb: sysfs watch failed, relying on the poll");
        watcher?.close();
        watcher = undefined;
      });
    } catch (err) {
      // Root missing or not watchable; the next scan tries again, so a root that appears later is watched.
      log.debug({ root: details.sysfsRoot, err: String(err) }, "usb: cannot watch sysfs root");
    }
  };
  const poll = setInterval(() => {
    pending.poll();
    rescan();
  }, details.pollSeconds * 1000);
  let settle: NodeJS.Timeout | undefined;
  const settlePorts = new Set<string | undefined>();
  const hotplug = (port: string | undefined) => {
    changed(port);
    settlePorts.add(port);
    clearTimeout(settle);
    settle = setTimeout(() => {
      for (const p of settlePorts) changed(p);
      settlePorts.clear();
    }, HOTPLUG_SETTLE_MS);
  };
  let stopHotplug: (() => void) | undefined;
  const stop = () => {
    clearInterval(poll);
    clearTimeout(debounce);
    clearTimeout(settle);
    watcher?.close();
    watcher = undefined;
    stopHotplug?.();
    stopHotplug = undefined;
    wake?.();
  };
  signal.addEventListener("abort", stop, { once: true });
  try {
    if (details.sysfsRoot === DEFAULT_SYSFS_ROOT) {
      const remove = await listenHotplug(hotplug, log);
      // Aborted while the module loaded: stop() has already run, so remove the listeners here.
      if (signal.aborted) remove();
      else stopHotplug = remove;
    }
    const scanner = new SysfsScanner(details.sysfsRoot, log);
    /** The DiscoveredDevice made for each device object, so an unchanged device is the same object in every set. */
    const made = new WeakMap<SysfsUsbDevice, DiscoveredDevice>();
    let last: DiscoveredDevice[] | undefined;
    while (!signal.aborted) {
      due = false;
      const request = pending.take();
      ensureWatcher();
      const devicesChanged = await scanner.scan(request);
      if (signal.aborted) break;
      if (devicesChanged || last === undefined) {
        const set = toDiscovered(
          scanner.devices().filter((d) => matchesFilters(d, details)),
          made,
        );
        // Only a real change is news: a device that changed outside the filters changes nothing.
        if (!sameSet(last, set)) {
          last = set;
          yield set;
        }
      }
      if (!due && !signal.aborted) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    }
  } finally {
    signal.removeEventListener("abort", stop);
    stop();
  }
}

export const usbHandler: DiscoveryHandler<UsbDetails> = {
  name: "usb",
  shared: false,
  detailsSchema: usbDetails,
  discover,
};
