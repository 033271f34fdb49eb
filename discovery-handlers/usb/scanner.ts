import { type Stats, statSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../src/log/logger.js";
import {
  classifyEntry,
  listEntries,
  nextTurn,
  READS_PER_TURN,
  readDeviceAttributes,
  readInterfaceClass,
  type SysfsDeviceAttributes,
  type SysfsUsbDevice,
  withInterfaces,
} from "./sysfs.js";

/**
 * Devices the poll re-reads in turn whatever their stamps say: a safety net for attributes
 * rewritten in place, which no directory stamp shows (the kernel does not do that to the
 * attributes we read, but a tree written by hand or by a tool may). 1,000 devices take
 * 1000/16 polls, about 5 minutes at the default 5 s poll, for 16 reads per poll.
 */
export const AUDIT_PER_POLL = 16;

/**
 * File system timestamps are coarse (a clock tick, up to 10 ms): a change made in the same tick
 * as our read would leave the stamp as it was. An entry whose stamp is this recent when it is
 * read is read again at the next scan (git's "racy clean" rule).
 */
export const RACY_MS = 100;

/** What one scan should compare, beyond the listing (which every scan compares in full). */
export interface ScanRequest {
  /** Compare every device entry's stamp: the poll, or an event that does not say what changed. */
  all: boolean;
  /** Ports whose device and interface entries to compare: the ones hotplug and watch events name. */
  ports: ReadonlySet<string>;
  /** Re-read this many devices, in turn, whatever their stamps (the poll's safety net). */
  audit: number;
}

export interface ScannerOptions {
  /** See RACY_MS; tests that pace their changes set 0 to see the stamps alone at work. */
  racyMs?: number;
}

interface Entry {
  /** Identity of the entry's directory: inode, size, link count, mtime, ctime (a re-plug makes a new directory). */
  stamp: string;
  /** Read so soon after its last change that a change in the same clock tick would not show: read again. */
  racy: boolean;
}

interface DeviceEntry extends Entry {
  /** undefined for an entry with missing or malformed attributes (kept, so it is not read again and again). */
  attributes: SysfsDeviceAttributes | undefined;
}

interface InterfaceEntry extends Entry {
  port: string;
  interfaceClass: string | undefined;
}

function stampOf(stat: Stats): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.nlink}:${stat.mtimeMs}:${stat.ctimeMs}`;
}

/** stat following the symlink (sysfs entries are links into /sys/devices); undefined when it cannot be had. */
function statEntry(file: string): Stats | undefined {
  try {
    return statSync(file, { throwIfNoEntry: false });
  } catch {
    return undefined; // a loop of links, no permission: the entry is as good as gone
  }
}

function sameAttributes(a: SysfsDeviceAttributes | undefined, b: SysfsDeviceAttributes | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return (
    a.port === b.port &&
    a.vendorId === b.vendorId &&
    a.productId === b.productId &&
    a.busnum === b.busnum &&
    a.devnum === b.devnum &&
    a.serial === b.serial &&
    a.manufacturer === b.manufacturer &&
    a.product === b.product &&
    a.deviceClass === b.deviceClass
  );
}

function sameClasses(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((cls, i) => cls === b[i]);
}

/**
 * Incremental rescans of a sysfs USB tree. Each scan lists the root (one cheap directory read),
 * drops entries that are gone and reads the new ones; of the entries it knew, it reads again only
 * those whose stamp (one stat) changed, among the ones the request asks it to compare. So a scan
 * costs the listing, one stat per compared entry and reads for what changed, rather than nine
 * file reads per device; `devices()` agrees with a full `readSysfs` of the same tree (the
 * property test in scanner.test.ts checks it over random sequences of changes).
 *
 * Reads are synchronous (see sysfs.ts), in batches between turns of the event loop.
 */
export class SysfsScanner {
  private deviceEntries = new Map<string, DeviceEntry>();
  private interfaceEntries = new Map<string, InterfaceEntry>();
  /** Interface entry names by port. */
  private interfacesOf = new Map<string, Set<string>>();
  /** Complete devices by port; an unchanged device keeps its object from scan to scan. */
  private assembled = new Map<string, SysfsUsbDevice>();
  private sorted: SysfsUsbDevice[] = [];
  /** The port the last audit ended at; the next one goes on from there. */
  private auditCursor = "";
  private racyMs: number;

  constructor(
    readonly root: string,
    private log: Logger,
    options: ScannerOptions = {},
  ) {
    this.racyMs = options.racyMs ?? RACY_MS;
  }

  /** The devices found by the last scan, sorted by port, as readSysfs lists them. */
  devices(): SysfsUsbDevice[] {
    return this.sorted;
  }

  /** Brings what is known in line with the tree; true when a device appeared, went or changed. */
  async scan(request: ScanRequest): Promise<boolean> {
    const started = Date.now();
    const names = listEntries(this.root, this.log) ?? [];
    const listed = new Set(names);
    const dirty = new Set<string>();
    for (const port of this.deviceEntries.keys()) {
      if (!listed.has(port)) this.dropDevice(port, dirty);
    }
    for (const name of this.interfaceEntries.keys()) {
      if (!listed.has(name)) this.dropInterface(name, dirty);
    }
    const devicePorts: string[] = [];
    const interfaceNames: string[] = [];
    for (const name of names) {
      const kind = classifyEntry(name)?.kind;
      if (kind === "device") devicePorts.push(name);
      else if (kind === "interface") interfaceNames.push(name);
    }
    const audited = this.auditPorts(devicePorts, request.audit);
    /** Ports whose device directory was read again: their interfaces may be new ones under old names. */
    const reread = new Set<string>();
    let reads = 0;
    const racyAfter = started - this.racyMs;

    for (const port of devicePorts) {
      const known = this.deviceEntries.get(port);
      const forced = known === undefined || known.racy || audited.has(port);
      if (!forced && !request.all && !request.ports.has(port)) continue;
      const stat = statEntry(path.join(this.root, port));
      if (!stat) {
        this.dropDevice(port, dirty);
        continue;
      }
      const stamp = stampOf(stat);
      if (!forced && stamp === known?.stamp) continue;
      if (++reads % READS_PER_TURN === 0) await nextTurn();
      const attributes = readDeviceAttributes(this.root, port, this.log);
      const same = known !== undefined && sameAttributes(known.attributes, attributes);
      if (!same) dirty.add(port);
      reread.add(port);
      this.deviceEntries.set(port, {
        stamp,
        racy: Math.max(stat.mtimeMs, stat.ctimeMs) >= racyAfter,
        attributes: same ? known.attributes : attributes,
      });
    }

    for (const name of interfaceNames) {
      const port = classifyEntry(name)!.port;
      const known = this.interfaceEntries.get(name);
      const forced = known === undefined || known.racy || audited.has(port) || reread.has(port);
      if (!forced && !request.ports.has(port)) continue;
      const stat = statEntry(path.join(this.root, name));
      if (!stat) {
        this.dropInterface(name, dirty);
        continue;
      }
      const stamp = stampOf(stat);
      if (!forced && stamp === known?.stamp) continue;
      if (++reads % READS_PER_TURN === 0) await nextTurn();
      const interfaceClass = readInterfaceClass(this.root, name);
      if (known?.interfaceClass !== interfaceClass || known === undefined) dirty.add(port);
      this.interfaceEntries.set(name, {
        stamp,
        racy: Math.max(stat.mtimeMs, stat.ctimeMs) >= racyAfter,
        port,
        interfaceClass,
      });
      const set = this.interfacesOf.get(port) ?? new Set<string>();
      set.add(name);
      this.interfacesOf.set(port, set);
    }

    return this.assemble(dirty);
  }

  /** The next `count` device ports after the cursor, wrapping around. */
  private auditPorts(ports: string[], count: number): Set<string> {
    const chosen = new Set<string>();
    if (count <= 0 || ports.length === 0) return chosen;
    let i = ports.findIndex((port) => port > this.auditCursor);
    if (i < 0) i = 0;
    while (chosen.size < Math.min(count, ports.length)) {
      chosen.add(ports[i]!);
      this.auditCursor = ports[i]!;
      i = (i + 1) % ports.length;
    }
    return chosen;
  }

  private dropDevice(port: string, dirty: Set<string>): void {
    this.deviceEntries.delete(port);
    dirty.add(port);
  }

  private dropInterface(name: string, dirty: Set<string>): void {
    const entry = this.interfaceEntries.get(name);
    if (!entry) return;
    this.interfaceEntries.delete(name);
    const set = this.interfacesOf.get(entry.port);
    set?.delete(name);
    if (set?.size === 0) this.interfacesOf.delete(entry.port);
    dirty.add(entry.port);
  }

  /** Rebuilds the devices of the ports that changed; true when any of them really did. */
  private assemble(dirty: Set<string>): boolean {
    let changed = false;
    for (const port of dirty) {
      const attributes = this.deviceEntries.get(port)?.attributes;
      const before = this.assembled.get(port);
      if (!attributes) {
        if (before) {
          this.assembled.delete(port);
          changed = true;
        }
        continue;
      }
      const classes = [...(this.interfacesOf.get(port) ?? [])].map(
        (name) => this.interfaceEntries.get(name)?.interfaceClass,
      );
      const next = withInterfaces(attributes, classes);
      if (before && sameAttributes(before, next) && sameClasses(before.interfaceClasses, next.interfaceClasses)) {
        continue;
      }
      this.assembled.set(port, next);
      changed = true;
    }
    if (changed) {
      this.sorted = [...this.assembled.keys()].sort().map((port) => this.assembled.get(port)!);
    }
    return changed;
  }
}
