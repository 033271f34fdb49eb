import { z } from "zod";
import { conditions, objectMeta } from "./common.js";

/** Upper bounds on what a device may put into its Device object: devices are untrusted. */
export const MAX_PROPERTIES = 64;
export const MAX_PROPERTY_VALUE = 4096;
export const PROPERTY_NAME = /^[A-Z][A-Z0-9_]*$/;
/** Host paths an (external) handler asks to give a workload: Akri's Mount and DeviceSpec. */
export const MAX_HOST_PATHS = 32;
const hostPath = z.string().min(1).max(4096).regex(/^\//);

export const deviceMount = z.strictObject({
  containerPath: hostPath,
  hostPath,
  readOnly: z.boolean().default(false),
});
export type DeviceMount = z.infer<typeof deviceMount>;

export const deviceNode = z.strictObject({
  containerPath: hostPath,
  hostPath,
  permissions: z
    .string()
    .regex(/^[rwm]{0,3}$/)
    .default("rw")
    .meta({ description: "cgroup device permissions: some of r, w, m." }),
});
export type DeviceNode = z.infer<typeof deviceNode>;

export const deviceSpec = z.strictObject({
  configurationName: z
    .string()
    .max(253)
    .meta({
      "x-kubernetes-validations": [{ rule: "self.size() > 0", message: "configurationName must not be empty" }],
    }),
  handler: z.string().min(1).max(63),
  shared: z.boolean(),
  id: z.string().min(1).max(1024).meta({ description: "The stable identity the device name is hashed from." }),
  nodes: z.array(z.string().min(1).max(253)).max(5000).meta({
    description: "The nodes that currently see this device.",
    "x-kubernetes-list-type": "set",
  }),
  properties: z
    .record(z.string().max(253).regex(PROPERTY_NAME), z.string().max(MAX_PROPERTY_VALUE))
    .default({})
    .meta({ description: "Connection details, never secrets." }),
  capacity: z.int().min(1).max(1000),
  mounts: z.array(deviceMount).max(MAX_HOST_PATHS).optional().meta({
    description:
      "Host paths the handler asks to mount (Akri's Mount). Kept for consumers that run containers; Spin apps cannot open host files.",
    "x-kubernetes-list-type": "atomic",
  }),
  deviceSpecs: z.array(deviceNode).max(MAX_HOST_PATHS).optional().meta({
    description:
      "Host device nodes the handler asks to pass in (Akri's DeviceSpec). Kept for consumers that run containers; Spin apps cannot open device files.",
    "x-kubernetes-list-type": "atomic",
  }),
});
export type DeviceSpec = z.infer<typeof deviceSpec>;

export const allocation = z.strictObject({
  slot: z.int().min(0).max(999),
  holder: z.string().min(1).max(317).meta({ description: "<namespace>/<SpinApp name> holding this slot." }),
});
export type Allocation = z.infer<typeof allocation>;

export const deviceStatus = z.strictObject({
  allocations: z
    .array(allocation)
    .max(1000)
    .optional()
    .meta({ "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["slot"] }),
  used: z.int().min(0).optional(),
  conditions: conditions.optional(),
});
export type DeviceStatus = z.infer<typeof deviceStatus>;

export const device = z.object({
  apiVersion: z.literal("spindle.dev/v1alpha1"),
  kind: z.literal("Device"),
  metadata: objectMeta,
  spec: deviceSpec,
  status: deviceStatus.optional(),
});
export type Device = z.infer<typeof device>;
