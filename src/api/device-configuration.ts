import { z } from "zod";
import { conditions, objectMeta } from "./common.js";

const keyRef = z.strictObject({
  name: z.string().min(1).max(253),
  namespace: z.string().min(1).max(63),
  key: z.string().min(1).max(253),
  optional: z.boolean().default(false),
});

/** A value a discovery handler reads, given inline or from a Secret or ConfigMap (Akri's discoveryProperties). */
export const discoveryProperty = z
  .strictObject({
    name: z.string().min(1).max(253),
    value: z.string().max(65536).optional(),
    valueFrom: z
      .strictObject({
        secretKeyRef: keyRef.optional(),
        configMapKeyRef: keyRef.optional(),
      })
      .meta({
        "x-kubernetes-validations": [
          {
            rule: "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message: "valueFrom needs exactly one of secretKeyRef or configMapKeyRef",
          },
        ],
      })
      .optional(),
  })
  .meta({
    "x-kubernetes-validations": [
      {
        rule: "has(self.value) != has(self.valueFrom)",
        message: "a discovery property needs exactly one of value or valueFrom",
      },
    ],
  });
export type DiscoveryProperty = z.infer<typeof discoveryProperty>;

/**
 * On a Node: the external discovery handlers registered with its agent (comma-separated). The
 * controller accepts a configuration naming a handler that is not built in once a node has it.
 */
export const EXTERNAL_HANDLERS_ANNOTATION = "spindle.dev/external-handlers";

export const deviceConfigurationSpec = z.strictObject({
  discoveryHandler: z.strictObject({
    name: z
      .string()
      .max(63)
      .meta({
        description:
          "The discovery handler: usb, onvif, mqtt, mdns, opcua, or an external handler registered with the agents over Akri's protocol.",
        "x-kubernetes-validations": [{ rule: "self.size() > 0", message: "discoveryHandler.name must not be empty" }],
      }),
    discoveryDetails: z
      .record(z.string(), z.unknown())
      .default({})
      .meta({ description: "Handler-specific settings, validated by the handler's own schema." }),
    discoveryProperties: z
      .array(discoveryProperty)
      .max(64)
      .default([])
      .meta({ "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"] }),
  }),
  capacity: z
    .int()
    .max(1000)
    .default(1)
    .meta({
      description: "How many SpinApp replicas may use one device at once.",
      "x-kubernetes-validations": [{ rule: "self >= 1", message: "capacity must be at least 1" }],
    }),
  offlineGraceSeconds: z
    .int()
    .min(0)
    .max(86400)
    .default(300)
    .meta({ description: "How long a device that stops being reported is kept before it is removed." }),
  properties: z
    .record(z.string().max(253), z.string().max(4096))
    .default({})
    .meta({ description: "Extra properties added to every device of this configuration." }),
});
export type DeviceConfigurationSpec = z.infer<typeof deviceConfigurationSpec>;

export const deviceConfigurationStatus = z.strictObject({
  observedGeneration: z.int().min(0).optional(),
  deviceCount: z.int().min(0).optional(),
  conditions: conditions.optional(),
});

export const deviceConfiguration = z.object({
  apiVersion: z.literal("spindle.dev/v1alpha1"),
  kind: z.literal("DeviceConfiguration"),
  metadata: objectMeta,
  spec: deviceConfigurationSpec,
  status: deviceConfigurationStatus.optional(),
});
export type DeviceConfiguration = z.infer<typeof deviceConfiguration>;
