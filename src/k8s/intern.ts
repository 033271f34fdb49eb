/**
 * One copy of strings that repeat across cached objects. JSON.parse gives every value its own
 * string: at 10,000 Devices and their SpinApps, "spindle.dev/v1alpha1", a configuration's name
 * or uid, a broker URI and the like were 30-40 thousand copies each (~12 MiB of a 75 MiB heap).
 * The table is bounded; when full it starts again, which only costs some sharing.
 */
const table = new Map<string, string>();
const MAX_ENTRIES = 4096;
const MAX_LENGTH = 256;

export function intern<T extends string | undefined>(s: T): T {
  if (s === undefined || s.length > MAX_LENGTH) return s;
  const hit = table.get(s);
  if (hit !== undefined) return hit as T;
  if (table.size >= MAX_ENTRIES) table.clear();
  table.set(s, s);
  return s;
}

/** A JSON value with every string in it interned (a SpinApp's spec, a Device's properties). */
export function internDeep<T>(value: T): T {
  if (typeof value === "string") return intern(value) as T;
  if (Array.isArray(value)) return value.map(internDeep) as T;
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = internDeep(v);
    return out as T;
  }
  return value;
}
