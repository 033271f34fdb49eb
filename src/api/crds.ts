import { stringify } from "yaml";
import { z } from "zod";
import { GROUP, VERSION } from "./common.js";
import { deviceSpec, deviceStatus } from "./device.js";
import { deviceConfigurationSpec, deviceConfigurationStatus } from "./device-configuration.js";
import { deviceSpinAppSpec, deviceSpinAppStatus } from "./device-spin-app.js";

type JsonSchema = { [key: string]: unknown };

interface PrinterColumn {
  name: string;
  type: "string" | "integer" | "date" | "boolean";
  jsonPath: string;
  priority?: number;
}

interface KindDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  scope: "Cluster" | "Namespaced";
  spec: z.ZodType;
  status: z.ZodType;
  columns: PrinterColumn[];
}

const age: PrinterColumn = { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" };

export const KINDS: KindDefinition[] = [
  {
    kind: "DeviceConfiguration",
    plural: "deviceconfigurations",
    singular: "deviceconfiguration",
    shortNames: ["dc", "devconf"],
    scope: "Cluster",
    spec: deviceConfigurationSpec,
    status: deviceConfigurationStatus,
    columns: [
      { name: "Handler", type: "string", jsonPath: ".spec.discoveryHandler.name" },
      { name: "Capacity", type: "integer", jsonPath: ".spec.capacity" },
      { name: "Accepted", type: "string", jsonPath: '.status.conditions[?(@.type=="Accepted")].status' },
      { name: "Devices", type: "integer", jsonPath: ".status.deviceCount" },
      age,
    ],
  },
  {
    kind: "Device",
    plural: "devices",
    singular: "device",
    shortNames: ["dev"],
    scope: "Cluster",
    spec: deviceSpec,
    status: deviceStatus,
    columns: [
      { name: "Configuration", type: "string", jsonPath: ".spec.configurationName" },
      { name: "Nodes", type: "string", jsonPath: ".spec.nodes" },
      { name: "Capacity", type: "integer", jsonPath: ".spec.capacity" },
      { name: "Used", type: "integer", jsonPath: ".status.used" },
      { name: "Shared", type: "boolean", jsonPath: ".spec.shared", priority: 1 },
      age,
    ],
  },
  {
    kind: "DeviceSpinApp",
    plural: "devicespinapps",
    singular: "devicespinapp",
    shortNames: ["dsa"],
    scope: "Namespaced",
    spec: deviceSpinAppSpec,
    status: deviceSpinAppStatus,
    columns: [
      { name: "Configuration", type: "string", jsonPath: ".spec.deviceConfiguration" },
      { name: "Matched", type: "integer", jsonPath: ".status.matchedDevices" },
      { name: "Bound", type: "integer", jsonPath: ".status.boundDevices" },
      { name: "Ready", type: "integer", jsonPath: ".status.readySpinApps" },
      { name: "Status", type: "string", jsonPath: '.status.conditions[?(@.type=="DevicesAvailable")].reason' },
      age,
    ],
  },
];

/** zod -> OpenAPI 3.0 -> a structural schema the apiserver accepts. */
export function structuralSchema(schema: z.ZodType): JsonSchema {
  return toStructural(z.toJSONSchema(schema, { target: "openapi-3.0", io: "input" }) as JsonSchema, "");
}

const SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

function toStructural(node: JsonSchema, path: string): JsonSchema {
  if ("$ref" in node) throw new Error(`${path || "schema"}: recursive schemas cannot become CRDs`);
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "properties") {
      const props: JsonSchema = {};
      for (const [name, child] of Object.entries(value as JsonSchema)) {
        props[name] = toStructural(child as JsonSchema, `${path}.${name}`);
      }
      out.properties = props;
    } else if (key === "items") {
      out.items = toStructural(value as JsonSchema, `${path}[]`);
    } else if (key === "additionalProperties") {
      if (value === false) continue; // CRDs prune unknown fields already; false next to properties is forbidden
      if (Object.keys(value as JsonSchema).length === 0) out["x-kubernetes-preserve-unknown-fields"] = true;
      else out.additionalProperties = toStructural(value as JsonSchema, `${path}{}`);
    } else if (key === "anyOf" || key === "oneOf") {
      const types = (value as JsonSchema[]).map((v) => v.type).sort();
      if (types.join() === "integer,string" || types.join() === "number,string") {
        out["x-kubernetes-int-or-string"] = true;
      } else {
        throw new Error(`${path}: unions other than int-or-string cannot become CRD schemas`);
      }
    } else if ((key === "maximum" && value === SAFE_INTEGER) || (key === "minimum" && value === -SAFE_INTEGER)) {
    } else {
      out[key] = value;
    }
  }
  if (out.type === undefined && !out["x-kubernetes-int-or-string"]) {
    out["x-kubernetes-preserve-unknown-fields"] = true;
  }
  return out;
}

export function customResourceDefinition(def: KindDefinition): JsonSchema {
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `${def.plural}.${GROUP}` },
    spec: {
      group: GROUP,
      scope: def.scope,
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: ["spindle"],
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: def.columns,
          schema: {
            openAPIV3Schema: {
              type: "object",
              required: ["spec"],
              properties: {
                apiVersion: { type: "string" },
                kind: { type: "string" },
                metadata: { type: "object" },
                spec: structuralSchema(def.spec),
                status: structuralSchema(def.status),
              },
            },
          },
        },
      ],
    },
  };
}

export function crdFileName(def: KindDefinition): string {
  return `${GROUP}_${def.plural}.yaml`;
}

export function crdYaml(def: KindDefinition): string {
  return `# Generated from src/api by \`spindle crds --write\`; do not edit.\n${stringify(customResourceDefinition(def), { lineWidth: 0 })}`;
}

export function allCrdsYaml(): string {
  return KINDS.map(crdYaml).join("---\n");
}
