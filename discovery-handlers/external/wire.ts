import protobuf from "protobufjs";
import {
  type DeviceMount,
  type DeviceNode,
  MAX_HOST_PATHS,
  MAX_PROPERTIES,
  MAX_PROPERTY_VALUE,
  PROPERTY_NAME,
} from "../../src/api/device.js";
import type { DiscoveredDevice } from "../handler.js";
import type { DiscoverResponse, WireDevice, WireDeviceSpec, WireMount } from "./protocol.js";

/**
 * What an external handler streams is untrusted: these turn wire devices into DiscoveredDevices
 * (and back, for the SDK). A device that cannot be published as sent is dropped, never cut:
 * a truncated id or URL would be a different, wrong device.
 */

/** More devices than this in one response and the whole response is refused (the last list stays). */
export const MAX_DEVICES_PER_RESPONSE = 10_000;
/**
 * More properties, mounts and device specs than this, summed over one response's devices, and
 * the whole response is refused. With MAX_DEVICES_PER_RESPONSE and the gRPC message bound
 * (protocol.ts MAX_MESSAGE_BYTES) this bounds what decoding one response can allocate.
 */
export const MAX_ENTRIES_PER_RESPONSE = 200_000;
export const MAX_ID_LENGTH = 1024;
const MAX_PATH = 4096;

// The characters sanitize.ts strips (C0/C1, DEL, line/paragraph separators, bidi overrides):
// a value holding one is dropped here, so the publisher never changes a value silently.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/;

/** A DiscoverResponse the agent refused before decoding it. */
export interface RefusedResponse {
  devices: [];
  refused: string;
}

const DEVICE_TAG = (1 << 3) | 2; // DiscoverResponse.devices: field 1, length-delimited

/**
 * Decodes a DiscoverResponse from its bytes, but only after counting its devices and their
 * entries from the bytes alone: decoding allocates an object per device and per entry (16 MiB
 * of empty devices is 8 million objects, gigabytes), so a response over the bounds is refused
 * unread. Bytes that are not a DiscoverResponse are refused too, never partly used.
 */
export function readDiscoverResponse(
  bytes: Buffer,
  decode: (bytes: Buffer) => DiscoverResponse,
): DiscoverResponse | RefusedResponse {
  let devices = 0;
  let entries = 0;
  try {
    const reader = protobuf.Reader.create(bytes);
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag !== DEVICE_TAG) {
        reader.skipType(tag & 7);
        continue;
      }
      const end = reader.uint32() + reader.pos;
      if (end > reader.len) throw new Error("a device runs past the end of the message");
      devices++;
      if (entries > MAX_ENTRIES_PER_RESPONSE) {
        reader.pos = end; // over already: only devices are still counted, for the message
        continue;
      }
      while (reader.pos < end) {
        const field = reader.uint32();
        if (field >>> 3 >= 2 && field >>> 3 <= 4) entries++;
        reader.skipType(field & 7);
      }
      if (reader.pos !== end) throw new Error("a device's fields run past its end");
    }
  } catch (err) {
    return refused(`not a valid DiscoverResponse (${err instanceof Error ? err.message : String(err)})`);
  }
  if (devices > MAX_DEVICES_PER_RESPONSE)
    return refused(`${devices} devices in one list (at most ${MAX_DEVICES_PER_RESPONSE})`);
  if (entries > MAX_ENTRIES_PER_RESPONSE)
    return refused(
      `more than ${MAX_ENTRIES_PER_RESPONSE} properties, mounts and device specs in one list, over ${devices} devices`,
    );
  try {
    return decode(bytes);
  } catch (err) {
    return refused(`not a valid DiscoverResponse (${err instanceof Error ? err.message : String(err)})`);
  }
}

function refused(why: string): RefusedResponse {
  return { devices: [], refused: why };
}

export interface AcceptedDevices {
  devices: DiscoveredDevice[];
  /** Why devices or parts of them were dropped, one line per kind of problem (bounded). */
  problems: string[];
}

/** Validates one DiscoverResponse's devices; throws when the response as a whole is refused. */
export function acceptDevices(wire: readonly WireDevice[]): AcceptedDevices {
  if (wire.length > MAX_DEVICES_PER_RESPONSE)
    throw new Error(`${wire.length} devices in one list (at most ${MAX_DEVICES_PER_RESPONSE})`);
  const problems = new Map<string, number>();
  const problem = (p: string) => problems.set(p, (problems.get(p) ?? 0) + 1);
  const ids = new Set<string>();
  const devices: DiscoveredDevice[] = [];
  for (const d of wire) {
    const id = typeof d?.id === "string" ? d.id : "";
    if (id.length === 0 || id.length > MAX_ID_LENGTH || CONTROL.test(id)) {
      problem(`device id empty, longer than ${MAX_ID_LENGTH} or with control characters: device dropped`);
      continue;
    }
    if (ids.has(id)) {
      problem("duplicate device id: the first one kept");
      continue;
    }
    ids.add(id);
    const properties: Record<string, string> = {};
    let count = 0;
    for (const name of Object.keys(d.properties ?? {}).sort()) {
      const value = d.properties[name];
      if (!PROPERTY_NAME.test(name) || name.length > 253) {
        problem("property name not [A-Z][A-Z0-9_]*: property dropped");
        continue;
      }
      if (typeof value !== "string" || value.length > MAX_PROPERTY_VALUE || CONTROL.test(value)) {
        problem(
          `property value longer than ${MAX_PROPERTY_VALUE} characters or with control characters: property dropped`,
        );
        continue;
      }
      if (count >= MAX_PROPERTIES) {
        problem(`more than ${MAX_PROPERTIES} properties: the rest (in name order) dropped`);
        break;
      }
      properties[name] = value;
      count++;
    }
    const device: DiscoveredDevice = { id, properties };
    const mounts = acceptPaths(d.mounts, toMount, problem, "mount");
    const deviceSpecs = acceptPaths(d.device_specs, toDeviceNode, problem, "device spec");
    if (mounts.length > 0) device.mounts = mounts;
    if (deviceSpecs.length > 0) device.deviceSpecs = deviceSpecs;
    devices.push(device);
  }
  return { devices, problems: [...problems].map(([p, n]) => `${n} × ${p}`) };
}

function validPath(p: unknown): p is string {
  return typeof p === "string" && p.startsWith("/") && p.length <= MAX_PATH && !CONTROL.test(p);
}

function toMount(m: WireMount): DeviceMount | undefined {
  if (!validPath(m?.container_path) || !validPath(m.host_path)) return undefined;
  return { containerPath: m.container_path, hostPath: m.host_path, readOnly: m.read_only === true };
}

function toDeviceNode(s: WireDeviceSpec): DeviceNode | undefined {
  if (!validPath(s?.container_path) || !validPath(s.host_path)) return undefined;
  const permissions = typeof s.permissions === "string" && s.permissions !== "" ? s.permissions : "rw";
  if (!/^[rwm]{1,3}$/.test(permissions)) return undefined;
  return { containerPath: s.container_path, hostPath: s.host_path, permissions };
}

function acceptPaths<W, T>(
  list: readonly W[] | undefined,
  convert: (w: W) => T | undefined,
  problem: (p: string) => void,
  what: string,
): T[] {
  const out: T[] = [];
  for (const w of list ?? []) {
    if (out.length >= MAX_HOST_PATHS) {
      problem(`more than ${MAX_HOST_PATHS} ${what}s: the rest dropped`);
      break;
    }
    const t = convert(w);
    if (t) out.push(t);
    else problem(`${what} with a relative, over-long or invalid path or permissions: dropped`);
  }
  return out;
}

/** A handler's device as the SDK sends it. */
export function toWireDevice(d: DiscoveredDevice): WireDevice {
  return {
    id: d.id,
    properties: d.properties,
    mounts: (d.mounts ?? []).map((m) => ({
      container_path: m.containerPath,
      host_path: m.hostPath,
      read_only: m.readOnly,
    })),
    device_specs: (d.deviceSpecs ?? []).map((s) => ({
      container_path: s.containerPath,
      host_path: s.hostPath,
      permissions: s.permissions,
    })),
  };
}
