import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { crdFileName, crdYaml, customResourceDefinition, KINDS } from "../../src/api/crds.js";
import { CRDS_DIR } from "../../src/commands/crds.js";

type Node = Record<string, unknown>;

function walk(node: Node, path: string, visit: (node: Node, path: string) => void): void {
  visit(node, path);
  for (const [key, child] of Object.entries((node.properties as Record<string, Node>) ?? {})) {
    walk(child, `${path}.${key}`, visit);
  }
  if (node.items) walk(node.items as Node, `${path}[]`, visit);
  if (node.additionalProperties && typeof node.additionalProperties === "object") {
    walk(node.additionalProperties as Node, `${path}{}`, visit);
  }
}

describe("CRDs", () => {
  for (const kind of KINDS) {
    it(`crds/${crdFileName(kind)} is what the zod schema generates (run \`npm run crds\` after changing src/api)`, async () => {
      const committed = await readFile(join(CRDS_DIR, crdFileName(kind)), "utf8");
      expect(committed).toBe(crdYaml(kind));
    });

    it(`${kind.kind} schema is structural`, () => {
      const crd = customResourceDefinition(kind) as Node;
      const version = ((crd.spec as Node).versions as Node[])[0]!;
      const root = (version.schema as Node).openAPIV3Schema as Node;
      const problems: string[] = [];
      walk(root, "", (node, path) => {
        if (
          node.type === undefined &&
          !node["x-kubernetes-preserve-unknown-fields"] &&
          !node["x-kubernetes-int-or-string"]
        )
          problems.push(`${path}: no type`);
        if (node.additionalProperties !== undefined && node.properties !== undefined)
          problems.push(`${path}: properties and additionalProperties together`);
        for (const banned of ["$ref", "$schema", "anyOf", "oneOf", "propertyNames", "const"]) {
          if (banned in node) problems.push(`${path}: ${banned}`);
        }
      });
      expect(problems).toEqual([]);
    });
  }

  it("gives every kind printer columns, short names and a status subresource", () => {
    for (const kind of KINDS) {
      const spec = (customResourceDefinition(kind) as Node).spec as Node;
      const version = (spec.versions as Node[])[0]!;
      expect((spec.names as Node).shortNames).not.toHaveLength(0);
      expect(version.subresources).toEqual({ status: {} });
      expect((version.additionalPrinterColumns as Node[]).map((c) => c.name)).toContain("Age");
    }
  });

  it("shows configuration, nodes, capacity and used for devices", () => {
    const devices = KINDS.find((k) => k.kind === "Device")!;
    expect(devices.columns.map((c) => c.name)).toEqual(
      expect.arrayContaining(["Configuration", "Nodes", "Capacity", "Used", "Age"]),
    );
  });
});
