import { MAX_PROPERTY_VALUE, PROPERTY_NAME } from "../src/api/device.js";

/**
 * Everything a device says about itself is untrusted. These turn it into values that are safe
 * to publish: bounded, printable, valid where they become names.
 */

// C0/C1 control characters, DEL, Unicode line/paragraph separators and bidi overrides.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** A property value: control characters removed, cut to the published bound. */
export function propertyValue(raw: unknown, max = MAX_PROPERTY_VALUE): string {
  const text = typeof raw === "string" ? raw : raw === undefined || raw === null ? "" : String(raw);
  const clean = text.replace(CONTROL, "");
  return clean.length > max ? clean.slice(0, max) : clean;
}

/** A property name from device input (TXT keys, topic parts): upper case, [A-Z0-9_], starts with a letter. */
export function propertyName(prefix: string, raw: string): string | undefined {
  const body = raw
    .toUpperCase()
    .replace(/[^A-Z0-9]+/g, "_")
    .replace(/^_+|_+$/g, "")
    .slice(0, 200);
  if (body.length === 0) return undefined;
  const name = `${prefix}${body}`;
  return PROPERTY_NAME.test(name) ? name : undefined;
}

/** Bound a whole property map: valid names, bounded values, at most `limit` entries (sorted, so the cut is stable). */
export function boundProperties(props: Record<string, string>, limit = 64): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(props).sort()) {
    if (Object.keys(out).length >= limit) break;
    if (!PROPERTY_NAME.test(name) || name.length > 253) continue;
    out[name] = propertyValue(props[name]);
  }
  return out;
}
