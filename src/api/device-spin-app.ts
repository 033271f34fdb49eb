import { z } from "zod";
import { conditions, objectMeta } from "./common.js";
import { SPIN_VARIABLE_NAME } from "./spin-app.js";

export const propertySelector = z.strictObject({
  matchProperties: z
    .record(z.string().max(253), z.string().max(4096))
    .optional()
    .meta({ description: "Every listed property must equal the given value." }),
  matchExpressions: z
    .array(
      z
        .strictObject({
          property: z.string().min(1).max(253),
          operator: z.enum(["In", "NotIn", "Exists", "DoesNotExist"]),
          values: z.array(z.string().max(4096)).max(64).default([]),
        })
        .meta({
          "x-kubernetes-validations": [
            {
              rule: "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
              message: "In and NotIn need values; Exists and DoesNotExist take none",
            },
          ],
        }),
    )
    .max(32)
    .optional(),
});
export type PropertySelector = z.infer<typeof propertySelector>;

export const variableMapping = z.strictObject({
  name: z
    .string()
    .max(253)
    .regex(SPIN_VARIABLE_NAME, "must be a Spin variable name: [a-z][a-z0-9_]*, no __, no trailing _"),
  fromProperty: z.string().min(1).max(253),
});
export type VariableMapping = z.infer<typeof variableMapping>;

/** Kubernetes label keys and values (apimachinery's IsQualifiedName and IsValidLabelValue). */
export const LABEL_KEY =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
export const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

const celString = (re: RegExp) => re.source.replace(/\\/g, "\\\\");

/** Labels a template gives its SpinApps: checked at admission, so a bad one never reaches a SpinApp. */
export const templateLabels = z
  .record(
    z.string().max(317).regex(LABEL_KEY, "must be a label key: [prefix/]name, name <= 63 alphanumeric, -, _ or ."),
    z.string().max(63).regex(LABEL_VALUE, "must be a label value: <= 63 characters, alphanumeric at both ends"),
  )
  .meta({
    maxProperties: 64,
    "x-kubernetes-validations": [
      {
        rule: `self.all(k, size(k) <= 317 && k.matches('${celString(LABEL_KEY)}'))`,
        message: "label keys must be [prefix/]name with name <= 63 characters, alphanumeric at both ends",
      },
    ],
  });

/** The SpinApp spec is SpinKube's; Spindle checks what it relies on and passes the rest through. */
export const spinAppTemplateSpec = z
  .looseObject({
    image: z.string().max(4096).optional(),
    executor: z.string().max(253).optional(),
    replicas: z.int().min(1, "replicas must be at least 1").max(1000).optional(),
    variables: z
      .array(
        z.looseObject({
          name: z
            .string()
            .max(253)
            .regex(SPIN_VARIABLE_NAME, "must be a Spin variable name: [a-z][a-z0-9_]*, no __, no trailing _"),
        }),
      )
      .max(256)
      .optional(),
  })
  .meta({ description: "A SpinApp spec (core.spinkube.dev/v1alpha1), copied into every SpinApp." });

export const deviceSpinAppSpec = z.strictObject({
  deviceConfiguration: z
    .string()
    .max(253)
    .meta({
      "x-kubernetes-validations": [{ rule: "self.size() > 0", message: "deviceConfiguration must not be empty" }],
    }),
  selector: propertySelector.optional(),
  maxApps: z.int().min(1).max(10000).optional(),
  variables: z
    .array(variableMapping)
    .max(256)
    .optional()
    .meta({
      description: "How device properties become Spin variables. Default: every property, lowercased.",
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["name"],
    }),
  telemetry: z
    .strictObject({
      executor: z
        .string()
        .min(1)
        .max(253)
        .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, "must be a SpinAppExecutor name")
        .meta({
          description:
            "A SpinAppExecutor in this namespace whose deploymentConfig.otel holds Spin's OTLP endpoints (SpinKube gives Spin its OTEL_EXPORTER_OTLP_* env only through the executor). The SpinApps run on it instead of template.spec.executor.",
        }),
    })
    .optional()
    .meta({
      description:
        "Opt-in: the Wasm app's own OpenTelemetry spans. Its pods also get the labels spindle.dev/device and spindle.dev/device-spin-app, which a Collector's k8sattributes processor turns into resource attributes, so each app's spans name their device.",
    }),
  template: z.strictObject({
    metadata: z
      .strictObject({
        labels: templateLabels.optional(),
        annotations: z.record(z.string(), z.string()).optional(),
      })
      .optional(),
    spec: spinAppTemplateSpec,
  }),
});
export type DeviceSpinAppSpec = z.infer<typeof deviceSpinAppSpec>;

/**
 * How many SpinApps a DeviceSpinApp's status names. A whole list at 10,000 bindings is ~1.7 MB
 * with its managed fields, past etcd's 1.5 MiB object limit, and rewritten on every change.
 */
export const MAX_LISTED_SPIN_APPS = 100;

export const boundSpinApp = z.strictObject({
  name: z.string(),
  device: z.string(),
  ready: z.boolean(),
});

export const deviceSpinAppStatus = z.strictObject({
  observedGeneration: z.int().min(0).optional(),
  matchedDevices: z.int().min(0).optional(),
  boundDevices: z.int().min(0).optional(),
  readySpinApps: z.int().min(0).optional(),
  spinApps: z
    .array(boundSpinApp)
    .max(MAX_LISTED_SPIN_APPS)
    .optional()
    .meta({
      description: `At most ${MAX_LISTED_SPIN_APPS} of the SpinApps: those not ready first, then by name (the counts cover all).`,
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["name"],
    }),
  conditions: conditions.optional(),
});
export type DeviceSpinAppStatus = z.infer<typeof deviceSpinAppStatus>;

export const deviceSpinApp = z.object({
  apiVersion: z.literal("spindle.dev/v1alpha1"),
  kind: z.literal("DeviceSpinApp"),
  metadata: objectMeta,
  spec: deviceSpinAppSpec,
  status: deviceSpinAppStatus.optional(),
});
export type DeviceSpinApp = z.infer<typeof deviceSpinApp>;
