/**
 * The production runtime: what `npm run build` emits, what each command loads, and the image's
 * file set. Docker is not needed: the image's files (package.json, package-lock.json, bin/, dist/
 * and the production dependencies) are put together in a temp dir and run from there.
 *
 * The production dependencies are copied from this repository's node_modules (`npm ls --omit=dev`),
 * not installed from the registry, so this runs in seconds and offline; the tree is the one
 * `npm ci --omit=dev` would give for this lockfile.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { isBuiltin } from "node:module";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Metafile } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HANDLERS } from "../../discovery-handlers/index.js";
import { HANDLER_SCHEMAS } from "../../discovery-handlers/schemas.js";
import { build, EXTERNAL, OPTIONAL_ABSENT } from "../../scripts/build.js";
import { type StubApiserver, startStubApiserver } from "../stub-apiserver.js";

const REPO = resolve(import.meta.dirname, "../..");
const run = promisify(execFile);

/** Modules no command run in production may load: dev tools, the sandbox, simulators, mocks, tests. */
const NEVER_IN_PRODUCTION = [
  /^src\/sandbox\//,
  /^src\/dev\//,
  /^src\/commands\/(dev|sandbox|simulate)\.ts$/,
  /^src\/simulate\//,
  /node_modules\/aedes\//,
  /(^|\/)mock\.ts$/,
  /(^|\/)testing\.ts$/,
  /(^|\/)fake-camera\.ts$/,
  /\.test\.ts$/,
  /^test\//,
];
const NOT_IN_AGENT = [...NEVER_IN_PRODUCTION, /^src\/controller\//, /^src\/commands\/controller\.ts$/];
/**
 * Handler code, and the packages only it uses, that the controller needs none of: of a handler's
 * directory only details.ts (and mqtt's common.ts, which its details use) is for the controller.
 */
const HANDLER_CODE = [
  /^discovery-handlers\/[^/]+\/(?!details\.ts$|common\.ts$)[^/]+$/,
  /node_modules\/(mqtt|bonjour-service|protobufjs|onvif|fast-xml-parser)\//,
];

/**
 * Optional packages that bundled code require()s inside try/catch (ws: bufferutil, utf-8-validate;
 * debug: supports-color; node-fetch: encoding): esbuild leaves them external and they are absent.
 */
const OPTIONAL_REQUIRES = ["bufferutil", "utf-8-validate", "supports-color", "encoding", ...OPTIONAL_ABSENT];

/** Packages a chunk imports from node_modules at run time, beyond Node's own modules and optional ones. */
function packagesImported(externals: Set<string>): string[] {
  return [...externals].filter((e) => !isBuiltin(e) && !OPTIONAL_REQUIRES.includes(e));
}

let app: string;
let metafile: Metafile;

/** Output files reachable from `start` (static imports, and dynamic ones when `dynamic`), keyed by absolute path. */
function closure(
  start: string,
  dynamic: boolean,
): { outputs: Set<string>; inputs: Set<string>; externals: Set<string> } {
  const byPath = new Map(Object.entries(metafile.outputs).map(([k, v]) => [resolve(REPO, k), v]));
  const outputs = new Set<string>();
  const inputs = new Set<string>();
  const externals = new Set<string>();
  const visit = (path: string) => {
    if (outputs.has(path)) return;
    outputs.add(path);
    const output = byPath.get(path)!;
    for (const input of Object.keys(output.inputs)) inputs.add(input);
    for (const i of output.imports) {
      if (i.external) externals.add(i.path);
      else if (i.kind === "import-statement" || (dynamic && i.kind === "dynamic-import")) visit(resolve(REPO, i.path));
    }
  };
  visit(start);
  return { outputs, inputs, externals };
}

/** The output chunk whose entry point is `source` (e.g. src/commands/agent.ts). */
function chunkOf(source: string): string {
  const found = Object.entries(metafile.outputs).find(([, o]) => o.entryPoint === source);
  if (!found) throw new Error(`no output for ${source}`);
  return resolve(REPO, found[0]);
}

function matching(paths: Iterable<string>, patterns: RegExp[]): string[] {
  return [...paths].filter((p) => patterns.some((re) => re.test(p)));
}

/** Writes a module-resolution hook that appends every ESM URL the process loads to `log`. */
async function loadRecorder(dir: string): Promise<string> {
  await writeFile(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs";
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(process.env.SPINDLE_LOAD_LOG, result.url + "\\n");
  return result;
}\n`,
  );
  const register = join(dir, "register.mjs");
  await writeFile(register, `import { register } from "node:module";\nregister("./hooks.mjs", import.meta.url);\n`);
  return register;
}

async function loadedFiles(log: string): Promise<string[]> {
  const urls = (await readFile(log, "utf8").catch(() => "")).split("\n").filter((u) => u.startsWith("file:"));
  return [...new Set(urls.map((u) => fileURLToPath(u)))];
}

/** Spawns `node [--import recorder] bin/spindle.js <args>` in the app dir and waits for `ready` on stderr. */
async function startUntil(
  args: string[],
  ready: RegExp,
  env: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; log: () => string }> {
  const child = spawn(process.execPath, args, {
    cwd: app,
    env: { ...process.env, NODE_ENV: "production", LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stdout!.on("data", (c: Buffer) => {
    log += c.toString("utf8");
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready after 60 s: ${log}`)), 60_000);
    child.stderr!.on("data", (c: Buffer) => {
      log += c.toString("utf8");
      if (ready.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => reject(new Error(`exited with ${code}: ${log}`)));
  });
  return { child, log: () => log };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

beforeAll(async () => {
  app = await mkdtemp(join(tmpdir(), "spindle-image-"));
  metafile = await build(join(app, "dist"));
}, 120_000);

afterAll(async () => {
  if (app) await rm(app, { recursive: true, force: true });
});

describe("the production build", () => {
  it("has a chunk per command and no TypeScript", async () => {
    for (const command of ["agent", "controller", "status", "crds"])
      expect(chunkOf(`src/commands/${command}.ts`)).toBeTruthy();
    const files = await readdir(join(app, "dist"), { recursive: true });
    expect(files.filter((f) => f.endsWith(".ts"))).toEqual([]);
    expect(files).toContain("cli.js");
  });

  it("spindle <command> --help needs commander only: the commands are imported when they run", () => {
    const { inputs, externals } = closure(join(app, "dist/cli.js"), false);
    expect([...inputs].filter((i) => i !== "src/cli.ts" && !i.startsWith("node_modules/commander/"))).toEqual([]);
    expect(packagesImported(externals)).toEqual([]);
  });

  it("the agent loads no controller, sandbox, dev tools, aedes, fake camera, mock or test code", () => {
    const { inputs, externals } = closure(chunkOf("src/commands/agent.ts"), true);
    expect(inputs.has("discovery-handlers/usb/handler.ts"), "sanity: the agent has its handlers").toBe(true);
    expect(matching(inputs, NOT_IN_AGENT)).toEqual([]);
    expect(packagesImported(externals)).toEqual(EXTERNAL);
  });

  it("agent, controller and status never load @kubernetes/client-node (its import alone costs ~25 MiB)", () => {
    for (const command of ["agent", "controller", "status"]) {
      const { inputs } = closure(chunkOf(`src/commands/${command}.ts`), true);
      expect(inputs.has("src/k8s/kubeconfig.ts"), `sanity: ${command} reads a kubeconfig`).toBe(true);
      expect(matching(inputs, [/node_modules\/@kubernetes\/client-node\//]), command).toEqual([]);
    }
  });

  it("the controller loads no sandbox, dev tools, aedes, fake camera, mock or test code", () => {
    const { inputs } = closure(chunkOf("src/commands/controller.ts"), true);
    expect(inputs.has("src/controller/controller.ts"), "sanity").toBe(true);
    expect(matching(inputs, NEVER_IN_PRODUCTION)).toEqual([]);
  });

  it("the controller loads the handlers' details schemas, not the handlers", () => {
    const { inputs, externals } = closure(chunkOf("src/commands/controller.ts"), true);
    expect(inputs.has("discovery-handlers/usb/details.ts"), "sanity: the schemas are there").toBe(true);
    expect(matching(inputs, HANDLER_CODE)).toEqual([]);
    expect(packagesImported(externals)).toEqual([]);
  });

  it("no production command includes dev, sandbox or mock code", () => {
    const all = new Set(Object.values(metafile.outputs).flatMap((o) => Object.keys(o.inputs)));
    expect(matching(all, NEVER_IN_PRODUCTION)).toEqual([]);
  });
});

describe("discovery-handlers/schemas.ts", () => {
  it("names every handler with its own details schema and sharing, without the handler code", () => {
    expect([...HANDLER_SCHEMAS.keys()].sort()).toEqual([...HANDLERS.keys()].sort());
    for (const [name, handler] of HANDLERS) {
      const schema = HANDLER_SCHEMAS.get(name)!;
      expect(schema.name).toBe(handler.name);
      expect(schema.shared, name).toBe(handler.shared);
      expect(schema.detailsSchema, name).toBe(handler.detailsSchema);
    }
  });
});

describe("the image's file set (package.json, package-lock.json, bin/, dist/, production node_modules)", () => {
  let api: StubApiserver;
  let recorder: string;
  let tools: string;

  beforeAll(async () => {
    await cp(join(REPO, "package.json"), join(app, "package.json"));
    await cp(join(REPO, "package-lock.json"), join(app, "package-lock.json"));
    await cp(join(REPO, "bin"), join(app, "bin"), { recursive: true });
    const { stdout } = await run("npm", ["ls", "--omit=dev", "--parseable", "--all"], {
      cwd: REPO,
      maxBuffer: 16 * 1024 * 1024,
    });
    const packages = [...new Set(stdout.split("\n").filter((p) => p.startsWith(join(REPO, "node_modules/"))))];
    for (const pkg of packages) {
      // Nested node_modules are listed (and copied) on their own when they hold production dependencies.
      await cp(pkg, join(app, relative(REPO, pkg)), {
        recursive: true,
        filter: (src) => !relative(pkg, src).split("/").includes("node_modules"),
      });
    }
    tools = await mkdtemp(join(tmpdir(), "spindle-load-log-"));
    recorder = await loadRecorder(tools);
    api = await startStubApiserver();
  }, 120_000);

  afterAll(async () => {
    await api?.close();
    if (tools) await rm(tools, { recursive: true, force: true });
  });

  it("holds no TypeScript sources and no tsx, TypeScript compiler, esbuild, test or dev tooling", async () => {
    const top = await readdir(app);
    expect(top.sort()).toEqual(["bin", "dist", "node_modules", "package-lock.json", "package.json"]);
    const modules = await readdir(join(app, "node_modules"));
    for (const dev of ["tsx", "typescript", "esbuild", "vitest", "aedes", "fast-check", "@biomejs"])
      expect(modules, dev).not.toContain(dev);
    expect(modules).toContain("usb");
  });

  it("loads the usb addon, as the Dockerfile checks", async () => {
    const { stdout } = await run(process.execPath, ["-e", "require('usb'); console.log('usb ok')"], { cwd: app });
    expect(stdout).toContain("usb ok");
  });

  it("spindle agent --help and controller --help run from dist with NODE_ENV=production, loading only cli.js", async () => {
    for (const command of ["agent", "controller"]) {
      const log = join(tools, `${command}-help.log`);
      const { stdout } = await run(process.execPath, ["--import", recorder, "bin/spindle.js", command, "--help"], {
        cwd: app,
        env: { ...process.env, NODE_ENV: "production", SPINDLE_LOAD_LOG: log },
      });
      expect(stdout).toMatch(new RegExp(`Usage: spindle ${command}`));
      const loaded = (await loadedFiles(log)).map((f) => relative(app, f));
      expect(loaded, "sanity: the recorder sees the build").toContain("dist/cli.js");
      const helpers = closure(join(app, "dist/cli.js"), false).outputs;
      expect(loaded.filter((f) => f !== "bin/spindle.js" && !helpers.has(join(app, f)))).toEqual([]);
    }
  });

  it("without the build it cannot fall back to the sources: there is no tsx", async () => {
    const child = await run(process.execPath, ["bin/spindle.js", "agent", "--help"], {
      cwd: app,
      env: { ...process.env, NODE_ENV: "development" },
    }).catch((err: { code: number; stderr: string }) => err);
    expect("code" in child && child.code).toBe(1);
    expect(String((child as { stderr: string }).stderr)).toMatch(/npm run build/);
  });

  for (const { command, args, ready } of [
    { command: "agent", args: ["agent", "--node", "image-test"], ready: /"msg":"agent started"/ },
    { command: "controller", args: ["controller"], ready: /"msg":"controller started"/ },
  ]) {
    it(`spindle ${command} starts against an apiserver and loads only its own chunks from dist`, async () => {
      const log = join(tools, `${command}.log`);
      const { child } = await startUntil(["--import", recorder, "bin/spindle.js", ...args], ready, {
        KUBECONFIG: api.kubeconfig,
        SPINDLE_LOAD_LOG: log,
      });
      await stop(child);
      const loaded = await loadedFiles(log);
      expect(
        loaded.filter((f) => !f.startsWith(`${app}/`)),
        "every module comes from the image's files",
      ).toEqual([]);
      expect(loaded.filter((f) => f.endsWith(".ts"))).toEqual([]);
      const own = closure(chunkOf(`src/commands/${command}.ts`), true).outputs;
      const cli = closure(join(app, "dist/cli.js"), false).outputs;
      const dist = loaded.filter((f) => f.startsWith(join(app, "dist/")));
      expect(dist, "sanity: the recorder sees the command's chunk").toContain(chunkOf(`src/commands/${command}.ts`));
      expect(dist.filter((f) => !own.has(f) && !cli.has(f))).toEqual([]);
    }, 120_000);
  }
});
