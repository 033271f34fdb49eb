import { z } from "zod";

/** Akri's filter list: keep (Include) or drop (Exclude) the items named. */
export const filterList = z
  .strictObject({
    action: z.enum(["Include", "Exclude"]).default("Include"),
    items: z.array(z.string().max(1024)).max(256),
  })
  .meta({ description: "Include keeps only the items listed; Exclude drops them." });
export type FilterList = z.infer<typeof filterList>;

/** True when a value passes the list; no list lets everything pass. Comparison ignores case. */
export function passesFilter(list: FilterList | undefined, value: string | undefined): boolean {
  if (!list) return true;
  const wanted = value?.toLowerCase();
  const listed = wanted !== undefined && list.items.some((item) => item.toLowerCase() === wanted);
  return list.action === "Exclude" ? !listed : listed;
}

/** True when any of the values passes an Include list, or none is excluded by an Exclude list. */
export function passesFilterAny(list: FilterList | undefined, values: string[]): boolean {
  if (!list) return true;
  if (list.action === "Exclude") return values.every((v) => passesFilter(list, v));
  return values.some((v) => passesFilter(list, v));
}
