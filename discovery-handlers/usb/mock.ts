import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

/** A device to put into a fixture tree. Ids are hex as sysfs writes them ("046d"). */
export interface FakeUsbDevice {
  /** sysfs entry name, e.g. "1-1" or "1-1.2"; the bus number is the part before the dash. */
  port: string;
  vendorId: string;
  productId: string;
  serial?: string;
  manufacturer?: string;
  product?: string;
  /** bDeviceClass, 2 hex digits; "00" (class per interface) when omitted. */
  deviceClass?: string;
  /** bInterfaceClass of each interface; one vendor-specific ("ff") interface when omitted. */
  interfaceClasses?: string[];
  busnum?: number;
  /** Next free number on the bus when omitted, like the kernel's allocation on each plug. */
  devnum?: number;
}

const PCI_PARENT = path.join("devices", "pci0000:00", "0000:00:14.0");

/**
 * A temporary tree shaped like /sys/bus/usb/devices, for tests and demos. By default entries
 * are symlinks into a `devices/` tree, as on a real system; `{ symlinks: false }` uses plain
 * directories. Every attribute ends in "\n" like the kernel's. Entries appear by rename, so a
 * watcher or scan never sees half a device; interfaces appear before their device.
 */
export class UsbFixture {
  private readonly nextDevnum = new Map<number, number>();

  private constructor(
    /** The tree's top directory; removed by dispose(). */
    readonly base: string,
    /** Pass this as `sysfsRoot`. */
    readonly sysfsRoot: string,
    private readonly symlinks: boolean,
  ) {}

  /** Builds the tree in `root` (which must not exist yet) or in a fresh temp dir, with root hub `usb1`. */
  static async create(root?: string, options: { symlinks?: boolean } = {}): Promise<UsbFixture> {
    let base: string;
    if (root === undefined) base = await mkdtemp(path.join(tmpdir(), "spindle-usb-"));
    else {
      await mkdir(root); // fails if it exists: dispose() deletes the whole tree, so it must be ours
      base = root;
    }
    const fixture = new UsbFixture(base, path.join(base, "bus", "usb", "devices"), options.symlinks ?? true);
    await mkdir(fixture.sysfsRoot, { recursive: true });
    await mkdir(path.join(base, "staging"));
    await fixture.ensureRootHub(1);
    return fixture;
  }

  /** Adds a device (and its interface entries `<port>:1.N`) the way the kernel does on a plug. */
  async plug(device: FakeUsbDevice): Promise<void> {
    const bus = device.busnum ?? Number(device.port.split("-")[0]);
    if (!/^\d+-\d+(\.\d+)*$/.test(device.port) || !Number.isInteger(bus)) {
      throw new Error(`bad port ${device.port}`);
    }
    await this.ensureRootHub(bus);
    const devnum = device.devnum ?? this.nextDevnum.get(bus) ?? 2;
    this.nextDevnum.set(bus, Math.max(devnum, this.nextDevnum.get(bus) ?? 2) + 1);
    const deviceClass = device.deviceClass ?? "00";
    const interfaceClasses = device.interfaceClasses ?? ["ff"];
    const attributes: Record<string, string> = {
      idVendor: device.vendorId,
      idProduct: device.productId,
      busnum: String(bus),
      devnum: String(devnum),
      bDeviceClass: deviceClass,
      bcdDevice: "0100",
      bNumConfigurations: "1",
      bNumInterfaces: String(interfaceClasses.length).padStart(2, " "),
      speed: "480",
      version: " 2.00",
    };
    if (device.serial !== undefined) attributes.serial = device.serial;
    if (device.manufacturer !== undefined) attributes.manufacturer = device.manufacturer;
    if (device.product !== undefined) attributes.product = device.product;
    const interfaces = interfaceClasses.map((cls, i) => ({
      name: `${device.port}:1.${i}`,
      attributes: { bInterfaceClass: cls, bInterfaceNumber: String(i).padStart(2, "0"), bAlternateSetting: " 0" },
    }));

    const staged = await this.stage(attributes);
    for (const iface of interfaces) await this.writeDir(path.join(staged, iface.name), iface.attributes);
    if (this.symlinks) {
      const real = path.join(this.base, PCI_PARENT, `usb${bus}`, device.port);
      await rm(real, { recursive: true, force: true });
      await rename(staged, real);
      for (const iface of interfaces) await this.publishLink(iface.name, path.join(real, iface.name));
      await this.publishLink(device.port, real);
    } else {
      for (const iface of interfaces) {
        await rename(await this.stage(iface.attributes), path.join(this.sysfsRoot, iface.name));
      }
      await rename(staged, path.join(this.sysfsRoot, device.port));
    }
  }

  /** Removes a device: its entry first, as a watcher would see the kernel do it, then its interfaces. */
  async unplug(port: string): Promise<void> {
    await this.removeEntry(port);
    for (const name of await readdir(this.sysfsRoot)) {
      if (name.startsWith(`${port}:`)) await this.removeEntry(name);
    }
    if (this.symlinks) {
      for (const hub of await readdir(path.join(this.base, PCI_PARENT))) {
        await rm(path.join(this.base, PCI_PARENT, hub, port), { recursive: true, force: true });
      }
    }
  }

  /** Overwrites (or creates) one attribute of an entry with anything; creates the entry as a plain dir if missing. */
  async writeGarbage(entry: string, attribute: string, content: string | Uint8Array): Promise<void> {
    const dir = path.join(this.sysfsRoot, entry);
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, attribute), content);
  }

  /** Deletes one attribute file (or directory) of an entry. */
  async removeAttribute(entry: string, attribute: string): Promise<void> {
    await rm(path.join(this.sysfsRoot, entry, attribute), { recursive: true, force: true });
  }

  async dispose(): Promise<void> {
    await rm(this.base, { recursive: true, force: true });
  }

  private async ensureRootHub(bus: number): Promise<void> {
    const name = `usb${bus}`;
    const entries = await readdir(this.sysfsRoot);
    if (entries.includes(name)) return;
    const attributes = {
      idVendor: "1d6b",
      idProduct: "0002",
      busnum: String(bus),
      devnum: "1",
      bDeviceClass: "09",
      manufacturer: "Linux 6.1.0 xhci-hcd",
      product: "xHCI Host Controller",
      serial: `0000:00:14.0`,
    };
    const rootInterface = `${bus}-0:1.0`;
    const staged = await this.stage(attributes);
    await this.writeDir(path.join(staged, rootInterface), { bInterfaceClass: "09", bInterfaceNumber: "00" });
    if (this.symlinks) {
      const real = path.join(this.base, PCI_PARENT, name);
      await mkdir(path.dirname(real), { recursive: true });
      await rename(staged, real);
      await this.publishLink(rootInterface, path.join(real, rootInterface));
      await this.publishLink(name, real);
    } else {
      await rename(
        await this.stage({ bInterfaceClass: "09", bInterfaceNumber: "00" }),
        path.join(this.sysfsRoot, rootInterface),
      );
      await rename(staged, path.join(this.sysfsRoot, name));
    }
  }

  /** A complete directory outside the watched root, ready to be renamed into place. */
  private async stage(attributes: Record<string, string>): Promise<string> {
    const dir = path.join(this.base, "staging", randomUUID());
    await this.writeDir(dir, attributes);
    return dir;
  }

  private async writeDir(dir: string, attributes: Record<string, string>): Promise<void> {
    await mkdir(dir, { recursive: true });
    for (const [name, value] of Object.entries(attributes)) await writeFile(path.join(dir, name), `${value}\n`);
  }

  /** A relative symlink like the kernel's (`../../../devices/...`), created aside then renamed in. */
  private async publishLink(name: string, target: string): Promise<void> {
    const temp = path.join(this.base, "staging", randomUUID());
    await symlink(path.relative(this.sysfsRoot, target), temp);
    await rename(temp, path.join(this.sysfsRoot, name));
  }

  private async removeEntry(name: string): Promise<void> {
    const temp = path.join(this.base, "staging", randomUUID());
    try {
      await rename(path.join(this.sysfsRoot, name), temp);
    } catch {
      return; // not there
    }
    await rm(temp, { recursive: true, force: true });
  }
}
