import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import type { DiscoveredDevice } from "../handler.js";
import { DEFAULT_SYSFS_ROOT, type UsbDetails, usbDetails } from "./details.js";
import { hotplugPort, scanUsb, usbHandler } from "./handler.js";
import { UsbFixture } from "./mock.js";

const log = pino({ level: "silent" });

const fixtures: UsbFixture[] = [];
const controllers: AbortController[] = [];
afterEach(async () => {
  for (const c of controllers.splice(0)) c.abort();
  await Promise.all(fixtures.splice(0).map((f) => f.dispose()));
});

async function fixture(): Promise<UsbFixture> {
  const f = await UsbFixture.create();
  fixtures.push(f);
  await f.plug({
    port: "1-1",
    vendorId: "046d",
    productId: "0825",
    serial: "CAM1",
    deviceClass: "ef",
    interfaceClasses: ["0e", "01"],
  });
  await f.plug({ port: "1-2", vendorId: "0403", productId: "6001", serial: "FTDI9", manufacturer: "FTDI" });
  await f.plug({ port: "1-3", vendorId: "0403", productId: "6015", product: "FT231X", deviceClass: "02" });
  return f;
}

/** Runs discover in the background, keeping every set it yields. */
function run(details: UsbDetails) {
  const controller = new AbortController();
  controllers.push(controller);
  const sets: DiscoveredDevice[][] = [];
  const done = (async () => {
    for await (const set of usbHandler.discover({ details, properties: {}, signal: controller.signal, log })) {
      sets.push(set);
    }
  })();
  return { sets, done, controller, latest: () => sets.at(-1) };
}

/** Polls until `check` holds; generous, since this is about behaviour, not speed. */
async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const ports = (set: DiscoveredDevice[] | undefined) => (set ?? []).map((d) => d.properties.USB_PORT_PATH).sort();

describe("usbDetails", () => {
  it("defaults and validates", () => {
    expect(usbDetails.parse({})).toEqual({ sysfsRoot: DEFAULT_SYSFS_ROOT, pollSeconds: 5, includeHubs: false });
    expect(usbDetails.safeParse({ vendorIds: { items: ["46d"] } }).success).toBe(false);
    expect(usbDetails.safeParse({ productIds: { items: ["0x0825"] } }).success).toBe(false);
    expect(usbDetails.safeParse({ classes: { items: ["0e0"] } }).success).toBe(false);
    expect(usbDetails.safeParse({ pollSeconds: 0 }).success).toBe(false);
    expect(usbDetails.safeParse({ unknown: 1 }).success).toBe(false);
    expect(usbDetails.parse({ vendorIds: { items: ["046D"] } }).vendorIds).toEqual({
      action: "Include",
      items: ["046D"],
    });
  });
});

describe("filters", () => {
  const cases: [string, Record<string, unknown>, string[]][] = [
    ["no filter", {}, ["1-1", "1-2", "1-3"]],
    ["vendor include (any case)", { vendorIds: { items: ["0403"] } }, ["1-2", "1-3"]],
    ["vendor exclude", { vendorIds: { action: "Exclude", items: ["0403"] } }, ["1-1"]],
    ["product include", { productIds: { items: ["6015", "0825"] } }, ["1-1", "1-3"]],
    ["product exclude", { productIds: { action: "Exclude", items: ["6015"] } }, ["1-1", "1-2"]],
    ["serial include (no serial never matches)", { serials: { items: ["ftdi9"] } }, ["1-2"]],
    ["serial exclude (no serial passes)", { serials: { action: "Exclude", items: ["CAM1"] } }, ["1-2", "1-3"]],
    ["class include on device class", { classes: { items: ["02"] } }, ["1-3"]],
    ["class include on an interface class", { classes: { items: ["0E"] } }, ["1-1"]],
    ["class exclude", { classes: { action: "Exclude", items: ["ff"] } }, ["1-1"]],
    ["manufacturer", { manufacturers: { items: ["ftdi"] } }, ["1-2"]],
    ["product name", { productNames: { items: ["FT231X"] } }, ["1-3"]],
    ["combined", { vendorIds: { items: ["0403"] }, serials: { action: "Exclude", items: ["FTDI9"] } }, ["1-3"]],
  ];
  it.each(cases)("%s", async (_name, filters, expected) => {
    const f = await fixture();
    const details = usbDetails.parse({ sysfsRoot: f.sysfsRoot, ...filters });
    expect(ports(await scanUsb(details, log))).toEqual(expected);
  });
});

describe("hubs", () => {
  async function withHubs(): Promise<UsbFixture> {
    const f = await fixture();
    await f.plug({
      port: "1-4",
      vendorId: "05e3",
      productId: "0610",
      product: "USB2.0 Hub",
      deviceClass: "09",
      interfaceClasses: ["09"],
    });
    await f.plug({ port: "1-4.1", vendorId: "2341", productId: "0043", serial: "UNO" });
    return f;
  }

  it("leaves hubs out by default, and never lists root hubs", async () => {
    const f = await withHubs();
    expect(ports(await scanUsb(usbDetails.parse({ sysfsRoot: f.sysfsRoot }), log))).toEqual([
      "1-1",
      "1-2",
      "1-3",
      "1-4.1",
    ]);
  });

  it("lists hubs with includeHubs", async () => {
    const f = await withHubs();
    const details = usbDetails.parse({ sysfsRoot: f.sysfsRoot, includeHubs: true });
    expect(ports(await scanUsb(details, log))).toEqual(["1-1", "1-2", "1-3", "1-4", "1-4.1"]);
    // The class filter then sees them like any device.
    const onlyHubs = usbDetails.parse({ sysfsRoot: f.sysfsRoot, includeHubs: true, classes: { items: ["09"] } });
    expect(ports(await scanUsb(onlyHubs, log))).toEqual(["1-4"]);
  });
});

describe("hotplugPort", () => {
  it("names the sysfs entry of a libusb device", () => {
    expect(hotplugPort({ busNumber: 1, portNumbers: [4, 2] })).toBe("1-4.2");
    expect(hotplugPort({ busNumber: 3, portNumbers: [1] })).toBe("3-1");
  });

  it("says nothing for root hubs and for devices libusb cannot place", () => {
    expect(hotplugPort({ busNumber: 1, portNumbers: [] })).toBeUndefined();
    expect(hotplugPort({ busNumber: 1 })).toBeUndefined();
    expect(hotplugPort({ busNumber: 1, portNumbers: [1, 2, 3, 4, 5, 6, 7, 8, 9] })).toBeUndefined();
    const throwing = Object.defineProperty({ busNumber: 1 }, "portNumbers", {
      get: () => {
        throw new Error("LIBUSB_ERROR_NO_DEVICE");
      },
    });
    expect(hotplugPort(throwing)).toBeUndefined();
  });
});

describe("discover", () => {
  it("yields the set at start, then on plug and unplug", async () => {
    const f = await fixture();
    // A long poll: a quick update can only come from the directory watch.
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600 }));
    await until(() => r.sets.length === 1);
    expect(ports(r.sets[0])).toEqual(["1-1", "1-2", "1-3"]);

    await f.plug({ port: "1-4.2", vendorId: "2341", productId: "0043", serial: "ARDUINO1", product: "Uno" });
    await until(() => ports(r.latest()).includes("1-4.2"), 5_000);
    const uno = r.latest()?.find((d) => d.id === "usb:2341:0043:ARDUINO1");
    expect(uno?.properties).toMatchObject({ USB_PRODUCT: "Uno", USB_SERIAL: "ARDUINO1", USB_PORT_PATH: "1-4.2" });

    await f.unplug("1-2");
    await until(() => !ports(r.latest()).includes("1-2"), 5_000);
    expect(ports(r.latest())).toEqual(["1-1", "1-3", "1-4.2"]);

    r.controller.abort();
    await r.done;
  });

  it("applies filters to hotplugged devices", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600, vendorIds: { items: ["2341"] } }));
    await until(() => r.sets.length === 1);
    expect(r.sets[0]).toEqual([]);
    await f.plug({ port: "1-5", vendorId: "1111", productId: "2222" });
    await f.plug({ port: "1-6", vendorId: "2341", productId: "0043" });
    await until(() => ports(r.latest()).length > 0, 5_000);
    expect(ports(r.latest())).toEqual(["1-6"]);
    r.controller.abort();
    await r.done;
  });

  it("notices changes the watch cannot see on the poll", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 1 }));
    await until(() => r.sets.length === 1);
    // Inside a device directory: a watch on the root directory does not fire.
    await f.writeGarbage("1-3", "product", "Renamed\n");
    await until(() => r.latest()?.some((d) => d.properties.USB_PRODUCT === "Renamed") ?? false, 5_000);
    r.controller.abort();
    await r.done;
  });

  it("yields only when the set changes", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 1 }));
    await until(() => r.sets.length === 1);
    // Watch events and polls that change nothing reported: an attribute we do not publish,
    // an interface of no device, an entry without valid ids.
    await f.writeGarbage("1-1", "speed", "5000\n");
    await f.writeGarbage("1-8:1.0", "bInterfaceClass", "03\n");
    await f.writeGarbage("1-9", "idVendor", "garbage\n");
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(r.sets.length).toBe(1);
    r.controller.abort();
    await r.done;
  });

  it("gives an unchanged device the same object in every set, so consumers can skip it by reference", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600 }));
    await until(() => r.sets.length === 1);
    await f.plug({ port: "1-4", vendorId: "2341", productId: "0043", serial: "ARDUINO1" });
    await until(() => r.sets.length === 2, 5_000);
    const [before, after] = r.sets as [DiscoveredDevice[], DiscoveredDevice[]];
    for (const device of before) expect(after.find((d) => d.id === device.id)).toBe(device);
    r.controller.abort();
    await r.done;
  });

  it("hides hubs that are plugged in, unless asked to list them", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600 }));
    const withHubs = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600, includeHubs: true }));
    await until(() => r.sets.length === 1 && withHubs.sets.length === 1);
    await f.plug({ port: "1-5", vendorId: "05e3", productId: "0610", deviceClass: "09", interfaceClasses: ["09"] });
    await f.plug({ port: "1-5.1", vendorId: "2341", productId: "0043" });
    await until(() => ports(r.latest()).includes("1-5.1") && ports(withHubs.latest()).includes("1-5.1"), 5_000);
    expect(ports(r.latest())).not.toContain("1-5");
    expect(ports(withHubs.latest())).toContain("1-5");
    r.controller.abort();
    withHubs.controller.abort();
    await Promise.all([r.done, withHubs.done]);
  });

  it("yields nothing for changes to devices the filters leave out", async () => {
    const f = await fixture();
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 600, vendorIds: { items: ["0403"] } }));
    await until(() => r.sets.length === 1);
    await f.plug({ port: "1-5", vendorId: "1111", productId: "2222" });
    await f.unplug("1-1");
    await f.plug({ port: "1-6", vendorId: "0403", productId: "6001", serial: "LAST" });
    await until(() => ports(r.latest()).includes("1-6"), 5_000);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(r.sets.map(ports)).toEqual([
      ["1-2", "1-3"],
      ["1-2", "1-3", "1-6"],
    ]);
    r.controller.abort();
    await r.done;
  });

  it("ends the iterator on abort and leaves no watcher or timer", async () => {
    const f = await fixture();
    const count = (kind: string) => process.getActiveResourcesInfo().filter((r) => r === kind).length;
    const watchersBefore = count("FSEventWrap");
    const timersBefore = count("Timeout");
    const r = run(usbDetails.parse({ sysfsRoot: f.sysfsRoot, pollSeconds: 1 }));
    await until(() => r.sets.length === 1);
    expect(count("FSEventWrap")).toBe(watchersBefore + 1);
    r.controller.abort();
    await r.done; // ends, rather than hanging
    await new Promise((resolve) => setTimeout(resolve, 50)); // a closed handle leaves the list a tick later
    expect(count("FSEventWrap")).toBe(watchersBefore);
    expect(count("Timeout")).toBeLessThanOrEqual(timersBefore);
    // Later plugs reach no one.
    await f.plug({ port: "1-7", vendorId: "1111", productId: "2222" });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(r.sets.length).toBe(1);
  });

  it("stops while the consumer is not pulling", async () => {
    const f = await fixture();
    const controller = new AbortController();
    const it = usbHandler
      .discover({
        details: usbDetails.parse({ sysfsRoot: f.sysfsRoot }),
        properties: {},
        signal: controller.signal,
        log,
      })
      [Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    controller.abort();
    expect(await it.next()).toEqual({ done: true, value: undefined });
  });

  it("yields nothing when already aborted", async () => {
    const f = await fixture();
    const sets: unknown[] = [];
    const details = usbDetails.parse({ sysfsRoot: f.sysfsRoot });
    for await (const set of usbHandler.discover({ details, properties: {}, signal: AbortSignal.abort(), log })) {
      sets.push(set);
    }
    expect(sets).toEqual([]);
  });

  it("picks up a root that appears after start", async () => {
    const later = `${(await fixture()).base}/later`;
    const r = run(usbDetails.parse({ sysfsRoot: `${later}/bus/usb/devices`, pollSeconds: 1 }));
    await until(() => r.sets.length === 1);
    expect(r.sets[0]).toEqual([]);
    const g = await UsbFixture.create(later);
    await g.plug({ port: "1-1", vendorId: "046d", productId: "0825" });
    await until(() => ports(r.latest()).includes("1-1"));
    r.controller.abort();
    await r.done;
  });

  it("runs on the real sysfs path with libusb hotplug, even on a machine without USB", async () => {
    // This VM has no /sys/bus/usb and no /dev/bus/usb: the usb module must neither crash nor
    // leave an unhandled rejection, and the handler must still report (an empty) set and stop.
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown) => rejections.push(reason);
    process.on("unhandledRejection", onRejection);
    try {
      const r = run(usbDetails.parse({}));
      await until(() => r.sets.length === 1);
      expect(Array.isArray(r.sets[0])).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 300));
      r.controller.abort();
      await r.done;
      expect(rejections).toEqual([]);
    } finally {
      process.off("unhandledRejection", onRejection);
    }
  });
});
