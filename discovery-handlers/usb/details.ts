import { z } from "zod";
import { filterList } from "../filter.js";

export const DEFAULT_SYSFS_ROOT = "/sys/bus/usb/devices";

/** A filter list whose items must look like sysfs writes them: `pattern` (compared ignoring case). */
function hexFilter(pattern: RegExp, what: string) {
  return filterList.extend({ items: z.array(z.string().regex(pattern, `expected ${what}`)).max(256) });
}

export const usbDetails = z.strictObject({
  sysfsRoot: z
    .string()
    .min(1)
    .max(4096)
    .default(DEFAULT_SYSFS_ROOT)
    .meta({ description: "Directory shaped like /sys/bus/usb/devices; tests point it at a fixture tree." }),
  vendorIds: hexFilter(/^[0-9a-fA-F]{4}$/, "4 hex digits, e.g. 046d").optional(),
  productIds: hexFilter(/^[0-9a-fA-F]{4}$/, "4 hex digits, e.g. 0825").optional(),
  serials: filterList.optional(),
  classes: hexFilter(/^[0-9a-fA-F]{2}$/, "2 hex digits, e.g. 0e")
    .optional()
    .meta({ description: "USB class codes; a device matches on its device class or any interface class." }),
  manufacturers: filterList.optional(),
  productNames: filterList.optional(),
  includeHubs: z.boolean().default(false).meta({
    description:
      "List USB hubs (device class 09) as devices too; by default they are left out. Root hubs (usbN) never are.",
  }),
  pollSeconds: z.number().min(1).max(3600).default(5).meta({
    description:
      "Safety-net rescan interval, for changes no event reports; it reads only entries that are new or whose directory changed.",
  }),
});
export type UsbDetails = z.infer<typeof usbDetails>;
