import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { allCrdsYaml, crdFileName, crdYaml, KINDS } from "../api/crds.js";

export const CRDS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../crds");
/** Helm installs CRDs from the chart's own crds/ folder: the same files. */
const CHART_CRDS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../charts/spindle/crds");

/** `spindle crds`: print the CRDs, or with --write regenerate crds/ from the zod schemas. */
export async function crdsCommand(options: { write?: boolean }): Promise<void> {
  if (!options.write) {
    process.stdout.write(allCrdsYaml());
    return;
  }
  for (const dir of [CRDS_DIR, CHART_CRDS_DIR]) await writeCrds(dir);
}

async function writeCrds(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const kind of KINDS) {
    const path = join(dir, crdFileName(kind));
    const yaml = crdYaml(kind);
    const old = await readFile(path, "utf8").catch(() => "");
    if (old !== yaml) {
      await writeFile(path, yaml);
      process.stderr.write(`wrote ${path}\n`);
    }
  }
}
