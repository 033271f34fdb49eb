import { execFileSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import fc from "fast-check";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { fuzzRuns } from "../../test/fuzz.js";
import { UsbFixture } from "./mock.js";
import { MAX_USB_STRING, readSysfs, toDiscovered } from "./sysfs.js";

const log = pino({ level: "silent" });
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

const fixtures: UsbFixture[] = [];
async function fixture(symlinks = true): Promise<UsbFixture> {
  const f = await UsbFixture.create(undefined, { symlinks });
  fixtures.push(f);
  return f;
}
afterEach(async () => {
  await Promise.all(fixtures.splice(0).map((f) => f.dispose()));
});

async function realisticTree(symlinks: boolean): Promise<UsbFixture> {
  const f = await fixture(symlinks);
  await f.plug({
    port: "1-1",
    vendorId: "046d",
    productId: "0825",
    serial: "A1B2C3D4",
    manufacturer: "Logitech",
    product: "Webcam C270",
    deviceClass: "ef",
    interfaceClasses: ["0e", "0e", "01", "01"],
    devnum: 5,
  });
  await f.plug({ port: "1-2", vendorId: "05e3", productId: "0610", product: "USB2.0 Hub", deviceClass: "09" });
  await f.plug({ port: "1-2.3", vendorId: "0403", productId: "6001", devnum: 9, interfaceClasses: ["ff"] });
  await f.plug({ port: "2-1", vendorId: "0781", productId: "5583", serial: "4C53", devnum: 12 });
  return f;
}

describe.each([true, false])("readSysfs (symlinks: %s)", (symlinks) => {
  it("reads devices and skips root hubs and interfaces", async () => {
    const f = await realisticTree(symlinks);
    const devices = await readSysfs(f.sysfsRoot, log);
    expect(devices.map((d) => d.port)).toEqual(["1-1", "1-2", "1-2.3", "2-1"]);

    const found = toDiscovered(devices);
    const webcam = found.find((d) => d.id === "usb:046d:0825:A1B2C3D4");
    expect(webcam?.properties).toEqual({
      USB_VENDOR_ID: "046d",
      USB_PRODUCT_ID: "0825",
      USB_SERIAL: "A1B2C3D4",
      USB_MANUFACTURER: "Logitech",
      USB_PRODUCT: "Webcam C270",
      USB_CLASS: "ef",
      USB_INTERFACE_CLASSES: "01,0e",
      USB_BUSNUM: "1",
      USB_DEVNUM: "5",
      USB_DEVNODE: "/dev/bus/usb/001/005",
      USB_PORT_PATH: "1-1",
    });
    const serialAdapter = found.find((d) => d.id === "usb:0403:6001:port:1-2.3");
    expect(serialAdapter?.properties).toEqual({
      USB_VENDOR_ID: "0403",
      USB_PRODUCT_ID: "6001",
      USB_CLASS: "00",
      USB_INTERFACE_CLASSES: "ff",
      USB_BUSNUM: "1",
      USB_DEVNUM: "9",
      USB_DEVNODE: "/dev/bus/usb/001/009",
      USB_PORT_PATH: "1-2.3",
    });
    expect(found.find((d) => d.properties.USB_PORT_PATH === "2-1")?.properties.USB_DEVNODE).toBe(
      "/dev/bus/usb/002/012",
    );
    // Sorted by id, no hubs of the host controller.
    expect(found.map((d) => d.id)).toEqual([
      "usb:0403:6001:port:1-2.3",
      "usb:046d:0825:A1B2C3D4",
      "usb:05e3:0610:port:1-2",
      "usb:0781:5583:4C53",
    ]);
  });
});

describe("identity", () => {
  it("stays the same across a re-plug with a new devnum", async () => {
    const f = await fixture();
    await f.plug({ port: "1-4", vendorId: "1234", productId: "abcd", serial: "SN1" });
    await f.plug({ port: "1-5", vendorId: "1234", productId: "5678" });
    const before = toDiscovered(await readSysfs(f.sysfsRoot, log));
    await f.unplug("1-4");
    await f.unplug("1-5");
    expect(await readSysfs(f.sysfsRoot, log)).toEqual([]);
    await f.plug({ port: "1-4", vendorId: "1234", productId: "abcd", serial: "SN1" });
    await f.plug({ port: "1-5", vendorId: "1234", productId: "5678" });
    const after = toDiscovered(await readSysfs(f.sysfsRoot, log));
    expect(after.map((d) => d.id)).toEqual(before.map((d) => d.id));
    expect(after.map((d) => d.id)).toEqual(["usb:1234:5678:port:1-5", "usb:1234:abcd:SN1"]);
    expect(after[1]?.properties.USB_DEVNUM).not.toBe(before[1]?.properties.USB_DEVNUM);
    expect(after[1]?.properties.USB_DEVNODE).not.toBe(before[1]?.properties.USB_DEVNODE);
  });

  it("follows a serial to another port", async () => {
    const f = await fixture();
    await f.plug({ port: "1-4", vendorId: "1234", productId: "abcd", serial: "SN1" });
    const [before] = toDiscovered(await readSysfs(f.sysfsRoot, log));
    await f.unplug("1-4");
    await f.plug({ port: "1-6.1", vendorId: "1234", productId: "abcd", serial: "SN1" });
    const [after] = toDiscovered(await readSysfs(f.sysfsRoot, log));
    expect(after?.id).toBe(before?.id);
    expect(after?.properties.USB_PORT_PATH).toBe("1-6.1");
  });

  it("falls back to the port when several devices share a serial", async () => {
    const f = await fixture();
    await f.plug({ port: "1-1", vendorId: "1a86", productId: "7523", serial: "0000" });
    await f.plug({ port: "1-2", vendorId: "1a86", productId: "7523", serial: "0000" });
    await f.plug({ port: "1-3", vendorId: "1a86", productId: "7524", serial: "0000" });
    expect(toDiscovered(await readSysfs(f.sysfsRoot, log)).map((d) => d.id)).toEqual([
      "usb:1a86:7523:port:1-1",
      "usb:1a86:7523:port:1-2",
      "usb:1a86:7524:0000",
    ]);
  });

  it("escapes the separator so a serial cannot pose as a port identity", async () => {
    const f = await fixture();
    await f.plug({ port: "1-1", vendorId: "1234", productId: "abcd", serial: "port:1-2" });
    await f.plug({ port: "1-2", vendorId: "1234", productId: "abcd" });
    const ids = toDiscovered(await readSysfs(f.sysfsRoot, log)).map((d) => d.id);
    expect(ids).toEqual(["usb:1234:abcd:port%3A1-2", "usb:1234:abcd:port:1-2"]);
  });
});

describe("untrusted attributes", () => {
  it("skips entries with missing or garbage attributes without throwing", async () => {
    const f = await fixture();
    await f.plug({ port: "1-1", vendorId: "046d", productId: "0825" });
    for (const port of ["1-2", "1-3", "1-4", "1-5", "1-6", "1-7", "1-8", "1-9"]) {
      await f.plug({ port, vendorId: "1111", productId: "2222" });
    }
    await f.writeGarbage("1-2", "idVendor", "zzzz\n");
    await f.removeAttribute("1-3", "idProduct");
    await f.writeGarbage("1-4", "busnum", "abc\n");
    await f.writeGarbage("1-5", "devnum", "0\n");
    await f.writeGarbage("1-6", "idVendor", new Uint8Array([0xff, 0xfe, 0x00, 0x01, 0x80]));
    await f.removeAttribute("1-7", "idVendor");
    await mkdir(path.join(f.sysfsRoot, "1-7", "idVendor")); // a directory where a file belongs
    await f.removeAttribute("1-8", "devnum");
    execFileSync("mkfifo", [path.join(f.sysfsRoot, "1-8", "devnum")]); // must not hang the read
    await f.writeGarbage("1-9", "idProduct", "22222222\n");
    await writeFile(path.join(f.sysfsRoot, "3-1"), "not a directory\n");
    await f.writeGarbage("4-1", "serial", "an entry with nothing else\n");

    const devices = await readSysfs(f.sysfsRoot, log);
    expect(devices.map((d) => d.port)).toEqual(["1-1"]);
  });

  it("treats an unreadable root as no devices", async () => {
    await expect(readSysfs("/nonexistent/spindle/usb", log)).resolves.toEqual([]);
  });

  it("bounds long strings and strips control characters", async () => {
    const f = await fixture();
    await f.plug({
      port: "1-1",
      vendorId: "046D",
      productId: "0825",
      manufacturer: "M".repeat(10_000),
      product: "Cam\u0007\u001b[31mRed\u0085\u2028",
      serial: "  SN\r\n42\u0000 ",
    });
    const [device] = toDiscovered(await readSysfs(f.sysfsRoot, log));
    expect(device?.properties.USB_MANUFACTURER).toBe("M".repeat(MAX_USB_STRING));
    expect(device?.properties.USB_PRODUCT).toBe("Cam[31mRed");
    expect(device?.properties.USB_SERIAL).toBe("SN42");
    expect(device?.properties.USB_VENDOR_ID).toBe("046d"); // hex is lower-cased
    expect(device?.id).toBe("usb:046d:0825:SN42");
  });

  it("omits string properties that are empty after cleaning", async () => {
    const f = await fixture();
    await f.plug({ port: "1-1", vendorId: "046d", productId: "0825", serial: "\u0001\u0002", manufacturer: "   " });
    const [device] = toDiscovered(await readSysfs(f.sysfsRoot, log));
    expect(device?.properties).not.toHaveProperty("USB_SERIAL");
    expect(device?.properties).not.toHaveProperty("USB_MANUFACTURER");
    expect(device?.id).toBe("usb:046d:0825:port:1-1");
  });

  it("never throws and only produces bounded, printable values for any attribute contents", async () => {
    const f = await fixture(false);
    const garbage = fc.oneof(
      fc.constantFrom("", "\n", "0x12\n", "-1\n", "1e3\n", " 1 \n", "１\n"),
      fc.string({ unit: "binary", maxLength: 300 }),
      fc.uint8Array({ maxLength: 6000 }),
    );
    // Mostly valid required attributes, so devices are produced and their values checked.
    const hex = (n: number) =>
      fc.oneof({ arbitrary: fc.stringMatching(new RegExp(`^[0-9a-fA-F]{${n}}\n?$`)), weight: 4 }, garbage);
    const num = fc.oneof({ arbitrary: fc.integer({ min: 1, max: 999 }).map((n) => `${n}\n`), weight: 4 }, garbage);
    const text = fc.oneof(garbage, fc.string({ unit: "grapheme", maxLength: 200 }), fc.string({ maxLength: 10_000 }));
    const record = fc.record({
      idVendor: hex(4),
      idProduct: hex(4),
      busnum: num,
      devnum: num,
      bDeviceClass: fc.oneof(hex(2), garbage),
      serial: text,
      manufacturer: text,
      product: text,
    });
    let produced = 0;
    await fc.assert(
      fc.asyncProperty(record, fc.oneof(hex(2), garbage), async (attributes, iface) => {
        for (const [name, value] of Object.entries(attributes)) await f.writeGarbage("1-1", name, value);
        await f.writeGarbage("1-1:1.0", "bInterfaceClass", iface);
        const found = toDiscovered(await readSysfs(f.sysfsRoot, log));
        produced += found.length;
        for (const device of found) {
          expect(device.id.length).toBeLessThanOrEqual(1024);
          expect(CONTROL.test(device.id)).toBe(false);
          for (const [name, value] of Object.entries(device.properties)) {
            expect(name).toMatch(/^USB_[A-Z_]+$/);
            expect(value.length).toBeGreaterThan(0);
            expect(value.length).toBeLessThanOrEqual(MAX_USB_STRING);
            expect(CONTROL.test(value)).toBe(false);
          }
        }
      }),
      { numRuns: fuzzRuns(1000, "sysfs attributes") },
    );
    expect(produced).toBeGreaterThan(20);
  });
});
