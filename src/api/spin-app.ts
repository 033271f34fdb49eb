import { z } from "zod";
import { objectMeta } from "./common.js";

/**
 * The part of SpinKube's SpinApp (core.spinkube.dev/v1alpha1) that Spindle writes. Not ours:
 * the real CRD from spin-operator is the authority; this schema catches mistakes before a write.
 */
export const SPINAPP_GROUP = "core.spinkube.dev";
export const SPINAPP_VERSION = "v1alpha1";
export const SPINAPP_PLURAL = "spinapps";

/** spin-operator derives longer names from the SpinApp's, so SpinApp names stop at 52. */
export const SPINAPP_NAME_MAX = 52;

/** Spin variable names: lowercase letters, digits and single underscores, starting with a letter. */
export const SPIN_VARIABLE_NAME = /^[a-z][a-z0-9]*(_[a-z0-9]+)*$/;

const keySelector = z.looseObject({
  name: z.string().min(1),
  key: z.string().min(1),
  optional: z.boolean().optional(),
});

export const spinVariable = z
  .strictObject({
    name: z
      .string()
      .max(253)
      .regex(SPIN_VARIABLE_NAME, "must be a Spin variable name: [a-z][a-z0-9_]*, no __, no trailing _"),
    value: z.string().max(65536).optional(),
    valueFrom: z
      .looseObject({ secretKeyRef: keySelector.optional(), configMapKeyRef: keySelector.optional() })
      .optional(),
  })
  .refine((v) => v.value === undefined || v.valueFrom === undefined, "a variable has value or valueFrom, not both");
export type SpinVariable = z.infer<typeof spinVariable>;

export const spinAppSpec = z.looseObject({
  image: z.string().min(1, "image is required"),
  executor: z.string().min(1, "executor is required"),
  replicas: z
    .int()
    .min(1, "replicas must be at least 1 (Spindle deletes a SpinApp rather than scaling to 0)")
    .max(1000)
    .default(1),
  variables: z.array(spinVariable).optional(),
  resources: z
    .looseObject({
      limits: z.record(z.string(), z.union([z.string(), z.number()])).optional(),
      requests: z.record(z.string(), z.union([z.string(), z.number()])).optional(),
    })
    .optional(),
});
export type SpinAppSpec = z.infer<typeof spinAppSpec>;

export const spinApp = z.object({
  apiVersion: z.literal(`${SPINAPP_GROUP}/${SPINAPP_VERSION}`),
  kind: z.literal("SpinApp"),
  metadata: objectMeta.extend({
    name: z
      .string()
      .min(1)
      .max(SPINAPP_NAME_MAX)
      .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a DNS-1123 label"),
    namespace: z.string().min(1),
  }),
  spec: spinAppSpec,
});
export type SpinApp = z.infer<typeof spinApp>;
