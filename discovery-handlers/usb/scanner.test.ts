import { setTimeout as sleep } from "node:timers/promises";
import fc from "fast-check";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { fuzzRuns } from "../../test/fuzz.js";
import { type FakeUsbDevice, UsbFixture } from "./mock.js";
import { type ScanRequest, SysfsScanner } from "./scanner.js";
import { readSysfs } from "./sysfs.js";

const log = pino({ level: "silent" });

const fixtures: UsbFixture[] = [];
async function fixture(symlinks = true): Promise<UsbFixture> {
  const f = await UsbFixture.create(undefined, { symlinks });
  fixtures.push(f);
  return f;
}
afterEach(async () => {
  await Promise.all(fixtures.splice(0).map((f) => f.dispose()));
});

const POLL: ScanRequest = { all: true, ports: new Set(), audit: 0 };
/** What a watch or hotplug event for these ports asks for. */
const event = (...ports: string[]): ScanRequest => ({ all: false, ports: new Set(ports), audit: 0 });
/** A scan that compares only the listing: what is left when no event names the device. */
const LISTING: ScanRequest = event();

/**
 * A scanner that trusts the stamps alone (racyMs 0): the tests pace their changes, so a change
 * the stamps miss is the scanner's fault, not the clock's.
 */
const scannerOf = (f: UsbFixture) => new SysfsScanner(f.sysfsRoot, log, { racyMs: 0 });

/** Past the coarsest file system clock tick (10 ms), so consecutive changes get distinct stamps. */
const tick = () => sleep(12);

/**
 * Waits a tick and scans the listing, so nothing is left "racy" from the last changes: after
 * this, only stamps (or the audit) can find the next change.
 */
async function settle(scanner: SysfsScanner): Promise<void> {
  await tick();
  await scanner.scan(LISTING);
}

const cam: FakeUsbDevice = {
  port: "1-1",
  vendorId: "046d",
  productId: "0825",
  serial: "CAM1",
  interfaceClasses: ["0e"],
};
const ftdi: FakeUsbDevice = { port: "1-2", vendorId: "0403", productId: "6001", serial: "FT1" };

describe.each([true, false])("SysfsScanner (symlinks: %s)", (symlinks) => {
  it("finds additions and removals with the listing alone", async () => {
    const f = await fixture(symlinks);
    const scanner = scannerOf(f);
    expect(await scanner.scan(LISTING)).toBe(false);
    expect(scanner.devices()).toEqual([]);
    await f.plug(cam);
    await f.plug(ftdi);
    expect(await scanner.scan(LISTING)).toBe(true);
    expect(scanner.devices()).toEqual(await readSysfs(f.sysfsRoot, log));
    expect(scanner.devices().map((d) => d.port)).toEqual(["1-1", "1-2"]);
    await f.unplug("1-1");
    expect(await scanner.scan(LISTING)).toBe(true);
    expect(scanner.devices().map((d) => d.port)).toEqual(["1-2"]);
    expect(await scanner.scan(LISTING)).toBe(false);
  });

  it("finds a re-enumeration (same device, same port, new devnum) between two scans", async () => {
    const f = await fixture(symlinks);
    const scanner = scannerOf(f);
    await f.plug(cam);
    await scanner.scan(POLL);
    await settle(scanner);
    const before = scanner.devices()[0]!;
    await f.unplug("1-1");
    await f.plug(cam);
    // The listing is the same as before: only the entry's stamp shows the new directory.
    expect(await scanner.scan(LISTING)).toBe(false);
    expect(await scanner.scan(POLL)).toBe(true);
    expect(scanner.devices()[0]?.devnum).not.toBe(before.devnum);
    expect(scanner.devices()).toEqual(await readSysfs(f.sysfsRoot, log));

    // Again, now with an interface of another class under the old interface name: the poll
    // compares device stamps only, and reads the interfaces of a device it reads again.
    await settle(scanner);
    await f.unplug("1-1");
    await f.plug({ ...cam, interfaceClasses: ["03"] });
    expect(await scanner.scan(POLL)).toBe(true);
    expect(scanner.devices()[0]?.interfaceClasses).toEqual(["03"]);
    expect(scanner.devices()).toEqual(await readSysfs(f.sysfsRoot, log));
  });

  it("compares only the ports an event names", async () => {
    const f = await fixture(symlinks);
    const scanner = scannerOf(f);
    await f.plug(cam);
    await f.plug(ftdi);
    await scanner.scan(POLL);
    await settle(scanner);
    await f.removeAttribute("1-1", "serial");
    await f.removeAttribute("1-2", "serial");
    expect(await scanner.scan(event("1-2"))).toBe(true);
    expect(scanner.devices().map((d) => d.serial)).toEqual(["CAM1", undefined]);
    expect(await scanner.scan(event("1-1"))).toBe(true);
    expect(scanner.devices().map((d) => d.serial)).toEqual([undefined, undefined]);
  });

  it("finds attribute changes: in the stamp when files come and go, by the audit when rewritten in place", async () => {
    const f = await fixture(symlinks);
    const scanner = scannerOf(f);
    await f.plug(cam);
    await f.plug(ftdi);
    await scanner.scan(POLL);
    await settle(scanner);
    await f.removeAttribute("1-2", "product");
    await f.writeGarbage("1-2", "product", "Renamed\n"); // a new file: the directory changes
    expect(await scanner.scan(POLL)).toBe(true);
    expect(scanner.devices()[1]?.product).toBe("Renamed");

    await settle(scanner);
    await f.writeGarbage("1-1", "serial", "IN-PLACE\n"); // same file rewritten: no stamp shows it
    await f.writeGarbage("1-2", "serial", "IN-PLACE-TOO\n");
    expect(await scanner.scan(POLL)).toBe(false);
    // Each poll audits one device in turn, so both are found within two polls.
    expect(await scanner.scan({ ...POLL, audit: 1 })).toBe(true);
    await scanner.scan({ ...POLL, audit: 1 });
    expect(scanner.devices().map((d) => d.serial)).toEqual(["IN-PLACE", "IN-PLACE-TOO"]);
    expect(scanner.devices()).toEqual(await readSysfs(f.sysfsRoot, log));
  });

  it("finds interfaces that come and go", async () => {
    const f = await fixture(symlinks);
    const scanner = scannerOf(f);
    await f.plug(cam);
    await scanner.scan(POLL);
    await f.writeGarbage("1-1:1.1", "bInterfaceClass", "01\n");
    expect(await scanner.scan(LISTING)).toBe(true);
    expect(scanner.devices()[0]?.interfaceClasses).toEqual(["01", "0e"]);
    await f.removeAttribute("1-1:1.1", "");
    expect(await scanner.scan(LISTING)).toBe(true);
    expect(scanner.devices()[0]?.interfaceClasses).toEqual(["0e"]);
  });
});

describe("SysfsScanner", () => {
  it("keeps the object of an unchanged device, and reports no change for a rewrite to the same value", async () => {
    const f = await fixture();
    const scanner = scannerOf(f);
    await f.plug(cam);
    await f.plug(ftdi);
    await scanner.scan(POLL);
    await settle(scanner);
    const [first, second] = scanner.devices();
    await f.unplug("1-1");
    await f.plug({ ...cam, port: "1-3" });
    await f.writeGarbage("1-2", "speed", "12\n"); // an attribute we do not read, in a new file
    expect(await scanner.scan({ ...POLL, audit: 10 })).toBe(true);
    expect(scanner.devices()[0]).toBe(second); // 1-2, read again, found the same: same object
    expect(scanner.devices()[1]).not.toBe(first);
    expect(scanner.devices().map((d) => d.port)).toEqual(["1-2", "1-3"]);
    expect(await scanner.scan({ ...POLL, audit: 10 })).toBe(false);
  });

  it("reads a just-changed entry again at the next scan (racy stamps), whatever the request", async () => {
    const f = await fixture();
    // Default racy window: the plug happened within it, so the entry is read again next time.
    const scanner = new SysfsScanner(f.sysfsRoot, log);
    await f.plug(cam);
    await scanner.scan(POLL);
    await f.writeGarbage("1-1", "product", "Changed\n"); // in place: the stamp cannot show it
    expect(await scanner.scan(LISTING)).toBe(true);
    expect(scanner.devices()[0]?.product).toBe("Changed");

    // Trusting the stamps at once, the same change is left to the audit.
    const trusting = scannerOf(f);
    await trusting.scan(POLL);
    await settle(trusting);
    await f.writeGarbage("1-1", "product", "Again\n");
    expect(await trusting.scan(LISTING)).toBe(false);
    expect(trusting.devices()[0]?.product).toBe("Changed");
  });

  it("forgets everything when the root goes away", async () => {
    const f = await fixture();
    const scanner = scannerOf(f);
    await f.plug(cam);
    await scanner.scan(POLL);
    await f.dispose();
    expect(await scanner.scan(POLL)).toBe(true);
    expect(scanner.devices()).toEqual([]);
  });
});

// ---- Property: incremental scans agree with full scans over random sequences of changes ----

const PORTS = ["1-1", "1-2", "1-2.1", "1-2.4.3", "2-1"] as const;
const ATTRIBUTES = ["serial", "product", "manufacturer", "idVendor", "devnum", "bDeviceClass"] as const;

type Change =
  | { kind: "plug"; port: string; device: Omit<FakeUsbDevice, "port"> }
  /** The same device out and back in: a new devnum and new directories under the old names. */
  | { kind: "replug"; port: string }
  | { kind: "unplug"; port: string }
  /** A file removed and written again: the directory changes. */
  | { kind: "replace"; port: string; attribute: string; value: string }
  | { kind: "remove"; port: string; attribute: string }
  /** The same file rewritten: only the audit can see it. */
  | { kind: "rewrite"; port: string; attribute: string; value: string };

const port = fc.constantFrom(...PORTS);
const attribute = fc.constantFrom(...ATTRIBUTES);
const value = fc.oneof(
  fc.constantFrom("0403\n", "6001\n", "09\n", "7\n", "garbage\n", "", "SN-1\n"),
  fc.stringMatching(/^[A-Za-z0-9 ]{0,12}\n$/),
);
const deviceSpec = fc.record({
  vendorId: fc.constantFrom("0403", "046d", "2341"),
  productId: fc.constantFrom("6001", "0825"),
  serial: fc.option(fc.constantFrom("A", "B", "0000"), { nil: undefined }),
  deviceClass: fc.constantFrom("00", "09", "ef"),
  interfaceClasses: fc.array(fc.constantFrom("01", "03", "0e", "ff"), { minLength: 0, maxLength: 3 }),
});
const change: fc.Arbitrary<Change> = fc.oneof(
  fc.record({ kind: fc.constant("plug" as const), port, device: deviceSpec }),
  fc.record({ kind: fc.constant("replug" as const), port }),
  fc.record({ kind: fc.constant("unplug" as const), port }),
  fc.record({ kind: fc.constant("replace" as const), port, attribute, value }),
  fc.record({ kind: fc.constant("remove" as const), port, attribute }),
  fc.record({ kind: fc.constant("rewrite" as const), port, attribute, value }),
);
/** A batch of changes made between two scans, and how that scan is asked for. */
const step = fc.record({
  changes: fc.array(change, { minLength: 1, maxLength: 3 }),
  scan: fc.constantFrom("event" as const, "poll" as const),
});

/** Applies one change to the tree; returns whether it is an in-place rewrite, and the port it touched. */
async function apply(f: UsbFixture, plugged: Map<string, FakeUsbDevice>, c: Change): Promise<boolean> {
  const present = plugged.get(c.port);
  switch (c.kind) {
    case "plug":
      if (present) await f.unplug(c.port);
      plugged.set(c.port, { ...c.device, port: c.port });
      await f.plug({ ...c.device, port: c.port });
      return false;
    case "replug":
      if (!present) return false;
      await f.unplug(c.port);
      await f.plug(present);
      return false;
    case "unplug":
      if (present) await f.unplug(c.port);
      plugged.delete(c.port);
      return false;
    case "replace":
      if (!present) return false;
      await f.removeAttribute(c.port, c.attribute);
      await f.writeGarbage(c.port, c.attribute, c.value);
      return false;
    case "remove":
      if (!present) return false;
      await f.removeAttribute(c.port, c.attribute);
      return false;
    case "rewrite":
      if (!present) return false;
      await f.writeGarbage(c.port, c.attribute, c.value);
      return true;
  }
}

describe("incremental and full scans", () => {
  it("agree after every scan, over random sequences of tree changes", async () => {
    let compared = 0;
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.array(step, { minLength: 1, maxLength: 10 }), async (symlinks, steps) => {
        const f = await UsbFixture.create(undefined, { symlinks });
        try {
          const scanner = scannerOf(f);
          const plugged = new Map<string, FakeUsbDevice>();
          await scanner.scan(POLL);
          for (const { changes, scan } of steps) {
            let inPlace = false;
            const touched = new Set<string>();
            for (const c of changes) {
              if (await apply(f, plugged, c)) inPlace = true;
              else touched.add(c.port);
            }
            // An event names what a watch on the root would see; the poll compares every stamp.
            await scanner.scan(scan === "event" ? event(...touched) : { ...POLL, audit: 1 });
            if (inPlace) {
              // Only the audit sees in-place rewrites: one poll per port has audited every device.
              for (let i = 0; i < PORTS.length; i++) await scanner.scan({ ...POLL, audit: 1 });
            }
            expect(scanner.devices()).toEqual(await readSysfs(f.sysfsRoot, log));
            compared++;
            await tick();
          }
        } finally {
          await f.dispose();
        }
      }),
      { numRuns: fuzzRuns(25, "incremental usb scans") },
    );
    expect(compared).toBeGreaterThan(25);
  });
});
