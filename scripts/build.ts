/**
 * `npm run build`: the production build that the image runs (bin/spindle.js loads it when
 * NODE_ENV=production). One minified ESM bundle of src/cli.ts for Node 20+, split so that each
 * command's code is a chunk loaded only when that command runs (src/cli.ts imports the commands
 * lazily). Everything is bundled except native modules (`usb`), which stay in node_modules.
 *
 * `spindle dev`, `spindle sandbox` and `spindle simulate` are left out: they need the repository
 * (examples/, tools/, the simulated devices, mocks and aedes) and run from the sources.
 * docs/decisions.md has the figures behind bundling over plain tsc output.
 */
import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

const ROOT = resolve(import.meta.dirname, "..");

/** Native addons (and their loaders) cannot be bundled: they are imported from node_modules. */
export const EXTERNAL = ["usb"];

/**
 * Optional peer dependencies that bundled code import()s on a path it never takes by default
 * (node-opcua's lock helper @ster5/global-mutex: proper-lockfile). They are not installed, so
 * esbuild must leave them external instead of failing the build.
 */
export const OPTIONAL_ABSENT = ["proper-lockfile"];

/** Commands that run from the sources only; the build has a stub that says so. */
const SOURCE_ONLY: Record<string, string> = {
  "./commands/dev.js": "devCommand",
  "./commands/sandbox.js": "sandboxCommand",
  "./commands/simulate.js": "simulateCommand",
};

const sourceOnly: esbuild.Plugin = {
  name: "source-only-commands",
  setup(build) {
    build.onResolve({ filter: /^\.\/commands\/(dev|sandbox|simulate)\.js$/ }, (args) =>
      args.importer === resolve(ROOT, "src/cli.ts") ? { path: args.path, namespace: "source-only" } : undefined,
    );
    build.onLoad({ filter: /.*/, namespace: "source-only" }, (args) => {
      const command = args.path.replace(/^\.\/commands\/|\.js$/g, "");
      const message = `spindle ${command} runs from the sources (a clone with npm ci), not from the production build`;
      return {
        contents: `export function ${SOURCE_ONLY[args.path]}() { throw new Error(${JSON.stringify(message)}); }`,
      };
    });
  },
};

/** Builds into `outdir` (emptied first) and returns esbuild's metafile: every output and its inputs. */
export async function build(outdir = resolve(ROOT, "dist")): Promise<esbuild.Metafile> {
  await rm(outdir, { recursive: true, force: true });
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: ["src/cli.ts"],
    outdir,
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    minify: true,
    // Maps for `NODE_OPTIONS=--enable-source-maps`; never loaded otherwise.
    sourcemap: "linked",
    sourcesContent: false,
    external: [...EXTERNAL, ...OPTIONAL_ABSENT],
    plugins: [sourceOnly],
    // Bundled CommonJS packages call require() for Node's built-in modules.
    banner: {
      js: 'import { createRequire as __spindleRequire } from "node:module"; const require = __spindleRequire(import.meta.url);',
    },
    // The compiler options that change emitted code, fixed here so the build needs no tsconfig.json.
    tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true, useDefineForClassFields: true } },
    metafile: true,
    logLevel: "warning",
    legalComments: "none",
  });
  return result.metafile;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const started = Date.now();
  const metafile = await build();
  const bytes = Object.entries(metafile.outputs)
    .filter(([file]) => !file.endsWith(".map"))
    .reduce((sum, [, o]) => sum + o.bytes, 0);
  process.stderr.write(`built dist/ (${(bytes / 1024).toFixed(0)} KiB of JavaScript) in ${Date.now() - started} ms\n`);
}
