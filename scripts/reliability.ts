/**
 * `npm run reliability`: runs the fault suite (test/e2e/faults.test.ts) and the fuzzers, then
 * prints the figures as a table and writes it to docs/reliability.md. FUZZ_SCALE multiplies the
 * fuzz inputs (npm run fuzz uses 20).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const dir = mkdtempSync(join(tmpdir(), "spindle-reliability-"));
const figures = join(dir, "figures.jsonl");
const fuzz = join(dir, "fuzz.jsonl");
const results = join(dir, "results.json");
writeFileSync(figures, "");
writeFileSync(fuzz, "");

const FUZZ_FILES = [
  "discovery-handlers/onvif/ws-discovery.test.ts",
  "test/unit/soap-fuzz.test.ts",
  "discovery-handlers/mqtt/parsers.property.test.ts",
  "discovery-handlers/usb/sysfs.test.ts",
  "discovery-handlers/mdns/handler.test.ts",
  "discovery-handlers/sanitize.test.ts",
];

function vitest(args: string[], env: NodeJS.ProcessEnv): number {
  const r = spawnSync(join(ROOT, "node_modules/.bin/vitest"), ["run", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "inherit", "inherit"],
  });
  return r.status ?? 1;
}

const started = Date.now();
const fuzzStatus = vitest(["--project", "unit", ...FUZZ_FILES], { FUZZ_REPORT: fuzz });
const faultStatus = vitest(
  [
    "--project",
    "e2e",
    "test/e2e/faults.test.ts",
    "--reporter=default",
    "--reporter=json",
    `--outputFile.json=${results}`,
  ],
  {
    RELIABILITY_REPORT: figures,
  },
);

type Assertion = { title: string; status: string; duration?: number };
const report = JSON.parse(readFileSync(results, "utf8")) as { testResults: { assertionResults: Assertion[] }[] };
const faults = report.testResults.flatMap((f) => f.assertionResults);
const inputs = new Map<string, number>();
for (const line of readFileSync(fuzz, "utf8").split("\n").filter(Boolean)) {
  const { parser, runs } = JSON.parse(line) as { parser: string; runs: number };
  inputs.set(parser, (inputs.get(parser) ?? 0) + runs);
}
const measured = readFileSync(figures, "utf8")
  .split("\n")
  .filter(Boolean)
  .map((l) => JSON.parse(l) as { figure: string; value: number; unit: string });

const lines = [
  "# Reliability",
  "",
  `Produced by \`npm run reliability\` on ${new Date().toISOString().slice(0, 10)} (${Math.round((Date.now() - started) / 1000)} s; FUZZ_SCALE=${process.env.FUZZ_SCALE ?? 1}).`,
  "The fault suite is `test/e2e/faults.test.ts`: real apiserver, etcd, agents, controllers and Mosquitto.",
  "",
  "## Faults",
  "",
  "| fault | survived | time |",
  "| --- | --- | --- |",
  ...faults.map(
    (a) => `| ${a.title} | ${a.status === "passed" ? "yes" : "**no**"} | ${((a.duration ?? 0) / 1000).toFixed(1)} s |`,
  ),
  "",
  `Survived: ${faults.filter((a) => a.status === "passed").length} of ${faults.length}.`,
  "",
  "## Measured",
  "",
  "| figure | value |",
  "| --- | --- |",
  ...measured.map((m) => `| ${m.figure} | ${m.value} ${m.unit} |`),
  "",
  "## Inputs tried per parser (property tests, fast-check)",
  "",
  "| parser | inputs |",
  "| --- | --- |",
  ...[...inputs].map(([parser, n]) => `| ${parser} | ${n} |`),
  "",
];
const markdown = lines.join("\n");
writeFileSync(join(ROOT, "docs", "reliability.md"), markdown);
process.stdout.write(`\n${markdown}\n`);
process.exit(fuzzStatus || faultStatus);
