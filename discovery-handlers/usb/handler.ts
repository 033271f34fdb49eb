import { type FSWatcher, watch } from "node:fs";
import type { Logger } from "../../src/log/logger.js";
import { passesFilter, passesFilterAny } from "../filter.js";
import type { DiscoveredDevice, DiscoveryContext, DiscoveryHandler } from "../handler.js";
import { DEFAULT_SYSFS_ROOT, type UsbDetails, usbDetails } from "./details.js";
import { readSysfs, type SysfsUsbDevice, toDiscovered } from "./sysfs.js";

/** Events come in bursts (a device and its interfaces appear one by one): rescan once after they settle. */
const DEBOUNCE_MS = 30;

export function matchesFilters(device: SysfsUsbDevice, details: UsbDetails): boolean {
  return (
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

/** One scan: the filtered device set, never throwing. */
export async function scanUsb(details: UsbDetails, log: Logger): Promise<DiscoveredDevice[]> {
  const devices = await readSysfs(details.sysfsRoot, log);
  return toDiscovered(devices.filter((d) => matchesFilters(d, details)));
}

/**
 * libusb hotplug through the `usb` package. Only meaningful for the real sysfs: kernel-created
 * sysfs entries raise no inotify events, so this is what makes real plugs fast. The module is
 * native and may fail to load, or libusb may find no /dev/bus/usb: then the poll is all we have.
 * Returns the function that removes the listeners (which also stops libusb's hotplug thread).
 */
async function listenHotplug(onChange: () => void, log: Logger): Promise<() => void> {
  try {
    const { usb } = await import("usb");
    usb.on("attach", onChange);
    usb.on("detach", onChange);
    return () => {
      usb.off("attach", onChange);
      usb.off("detach", onChange);
    };
  } catch (err) {
    log.debug({ err: String(err) }, "usb: no libusb hotplug events, relying on the poll");
    return () => undefined;
  }
}

async function* discover({ details, signal, log }: DiscoveryContext<UsbDetails>): AsyncGenerator<DiscoveredDevice[]> {
  if (signal.aborted) return;
  let pending = false;
  let wake: (() => void) | undefined;
  const rescan = () => {
    pending = true;
    wake?.();
  };
  let debounce: NodeJS.Timeout | undefined;
  const changed = () => {
    clearTimeout(debounce);
    debounce = setTimeout(rescan, DEBOUNCE_MS);
  };
  // fs.watch sees fixture trees (and any tree a process writes); sysfs itself stays silent.
  let watcher: FSWatcher | undefined;
  const ensureWatcher = () => {
    if (watcher || signal.aborted) return;
    try {
      watcher = watch(details.sysfsRoot, changed);
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
  const poll = setInterval(rescan, details.pollSeconds * 1000);
  let stopHotplug: (() => void) | undefined;
  const stop = () => {
    clearInterval(poll);
    clearTimeout(debounce);
    watcher?.close();
    watcher = undefined;
    stopHotplug?.();
    stopHotplug = undefined;
    wake?.();
  };
  signal.addEventListener("abort", stop, { once: true });
  try {
    if (details.sysfsRoot === DEFAULT_SYSFS_ROOT) {
      const remove = await listenHotplug(changed, log);
      // Aborted while the module loaded: stop() has already run, so remove the listeners here.
      if (signal.aborted) remove();
      else stopHotplug = remove;
    }
    let last: string | undefined;
    while (!signal.aborted) {
      pending = false;
      ensureWatcher();
      const devices = await scanUsb(details, log);
      if (signal.aborted) break;
      // Only a real change is news: sets are sorted by id with sorted property names.
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
  }
}

export const usbHandler: DiscoveryHandler<UsbDetails> = {
  name: "usb",
  shared: false,
  detailsSchema: usbDetails,
  discover,
};
