import { chmod, mkdtemp, readFile, writeFile } from "node:fs/promises";
import type { RequestOptions } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { beforeEach, describe, expect, it } from "vitest";
import { KubeConfig } from "./kubeconfig.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "kubeconfig-"));
});

async function options(kc: KubeConfig): Promise<RequestOptions & { headers: Record<string, string> }> {
  const opts: RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  return opts as RequestOptions & { headers: Record<string, string> };
}

const config = (users: object[], extra: object = {}) => ({
  "current-context": "ctx",
  clusters: [{ name: "c", cluster: { server: "https://127.0.0.1:6443", "certificate-authority": "ca.crt" } }],
  contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }],
  users,
  ...extra,
});

describe("KubeConfig", () => {
  it("reads YAML with a CA path relative to the file, a token and impersonation", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    await writeFile(
      join(dir, "config"),
      [
        "apiVersion: v1",
        "current-context: ctx",
        "clusters:",
        "- name: c",
        "  cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt, tls-server-name: api}",
        "contexts:",
        "- {name: ctx, context: {cluster: c, user: u}}",
        "users:",
        "- {name: u, user: {token: abc, as: 'system:serviceaccount:ns:sa'}}",
      ].join("\n"),
    );
    const kc = await KubeConfig.load(join(dir, "config"));
    expect(kc.getCurrentCluster().server).toBe("https://127.0.0.1:6443");
    const opts = await options(kc);
    expect(opts.ca?.toString()).toBe("CA");
    expect(opts.servername).toBe("api");
    expect(opts.headers.Authorization).toBe("Bearer abc");
    expect(opts.headers["Impersonate-User"]).toBe("system:serviceaccount:ns:sa");
  });

  it("decodes inline client certificate data and sets basic auth", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    const user = {
      "client-certificate-data": Buffer.from("CERT").toString("base64"),
      "client-key-data": Buffer.from("KEY").toString("base64"),
      username: "admin",
      password: "pw",
    };
    await writeFile(join(dir, "config"), JSON.stringify(config([{ name: "u", user }])));
    const opts = await options(await KubeConfig.load(join(dir, "config")));
    expect([opts.cert?.toString(), opts.key?.toString(), opts.auth]).toEqual(["CERT", "KEY", "admin:pw"]);
    expect(opts.headers.Authorization).toBeUndefined();
  });

  it("merges $KUBECONFIG files: the first to define a name or the current context wins", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    await writeFile(join(dir, "a"), JSON.stringify({ users: [{ name: "u", user: { token: "first" } }] }));
    await writeFile(join(dir, "b"), JSON.stringify(config([{ name: "u", user: { token: "second" } }])));
    const env = { KUBECONFIG: [join(dir, "a"), join(dir, "missing"), join(dir, "b")].join(":") };
    const opts = await options(await KubeConfig.load(undefined, env));
    expect(opts.headers.Authorization).toBe("Bearer first");
  });

  it("falls back to the pod's service account and re-reads its token file", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    await writeFile(join(dir, "token"), "t1\n");
    const kc = await KubeConfig.load(undefined, { HOME: dir, KUBERNETES_SERVICE_HOST: "10.0.0.1" }, dir);
    expect(kc.getCurrentCluster().server).toBe("https://10.0.0.1:443");
    expect((await options(kc)).headers.Authorization).toBe("Bearer t1");
    await writeFile(join(dir, "token"), "t2\n");
    // Within a minute the token read before is used; a rotated token is picked up after that.
    expect((await options(kc)).headers.Authorization).toBe("Bearer t1");
    (kc as unknown as { tokenRead: { at: number } }).tokenRead.at -= 61_000;
    expect((await options(kc)).headers.Authorization).toBe("Bearer t2");
  });

  it("runs an exec credential plugin once until its credential expires", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    const plugin = join(dir, "plugin.sh");
    // Prints a token numbered by how often it ran, expiring at the time in $EXPIRY.
    await writeFile(
      plugin,
      [
        "#!/bin/sh",
        `n=$(cat "${dir}/runs" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "${dir}/runs"`,
        'test -n "$KUBERNETES_EXEC_INFO" || exit 3',
        'echo "{\\"apiVersion\\":\\"client.authentication.k8s.io/v1\\",\\"kind\\":\\"ExecCredential\\",\\"status\\":{\\"token\\":\\"tok$n\\",\\"expirationTimestamp\\":\\"$EXPIRY\\"}}"',
      ].join("\n"),
    );
    await chmod(plugin, 0o755);
    const soon = new Date(Date.now() + 5_000).toISOString();
    const user = { exec: { command: "./plugin.sh", env: [{ name: "EXPIRY", value: soon }] } };
    await writeFile(join(dir, "config"), JSON.stringify(config([{ name: "u", user }])));
    const kc = await KubeConfig.load(join(dir, "config"));
    // Concurrent first calls share one run; a credential that expires within 10 s is renewed.
    const first = await Promise.all([options(kc), options(kc)]);
    expect(first.map((o) => o.headers.Authorization)).toEqual(["Bearer tok1", "Bearer tok1"]);
    expect((await options(kc)).headers.Authorization).toBe("Bearer tok2");
    expect((await readFile(join(dir, "runs"), "utf8")).trim()).toBe("2");
  });

  it("keeps an exec credential that does not expire soon", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    const plugin = join(dir, "plugin.sh");
    await writeFile(
      plugin,
      `#!/bin/sh\necho '{"kind":"ExecCredential","status":{"token":"long","expirationTimestamp":"2999-01-01T00:00:00Z"}}'\n`,
    );
    await chmod(plugin, 0o755);
    await writeFile(join(dir, "config"), JSON.stringify(config([{ name: "u", user: { exec: { command: plugin } } }])));
    const kc = await KubeConfig.load(join(dir, "config"));
    for (let i = 0; i < 3; i++) expect((await options(kc)).headers.Authorization).toBe("Bearer long");
    expect(kc.execRuns).toBe(1);
  });

  it("fails a plugin that prints no credential without echoing its output", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    const plugin = join(dir, "plugin.sh");
    await writeFile(plugin, "#!/bin/sh\necho 'secret-but-not-json'\n");
    await chmod(plugin, 0o755);
    await writeFile(join(dir, "config"), JSON.stringify(config([{ name: "u", user: { exec: { command: plugin } } }])));
    const kc = await KubeConfig.load(join(dir, "config"));
    const err = await options(kc).catch((e: Error) => e);
    expect(String(err)).toMatch(/printed no ExecCredential JSON/);
    expect(String(err)).not.toMatch(/secret/);
  });

  it("refuses auth-provider users, an unknown context and a malformed file, naming the problem", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    const path = join(dir, "config");
    await writeFile(path, JSON.stringify(config([{ name: "u", user: { "auth-provider": { name: "gcp" } } }])));
    await expect(KubeConfig.load(path)).rejects.toThrow(/auth-provider gcp is not supported/);
    await writeFile(path, JSON.stringify(config([{ name: "u", user: {} }], { "current-context": "other" })));
    await expect(KubeConfig.load(path)).rejects.toThrow(/context other is not defined/);
    await writeFile(path, JSON.stringify({ clusters: [{ name: "c", cluster: { server: 5 } }] }));
    await expect(KubeConfig.load(path)).rejects.toThrow(/kubeconfig .*server/s);
    await expect(KubeConfig.load(undefined, { HOME: dir }, dir)).rejects.toThrow(/no kubeconfig/);
  });

  it("whatever the files, every user field comes from the first file that names the user", async () => {
    await writeFile(join(dir, "ca.crt"), "CA");
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.option(fc.string({ minLength: 1, maxLength: 8 })), { minLength: 1, maxLength: 4 }),
        async (tokens) => {
          // Each file defines user u with its token (or not at all when null); the last file has the rest.
          const paths: string[] = [];
          for (const token of tokens) {
            const path = join(dir, `merge-${n++}`);
            paths.push(path);
            await writeFile(path, JSON.stringify(token === null ? {} : { users: [{ name: "u", user: { token } }] }));
          }
          const last = join(dir, `merge-${n++}`);
          await writeFile(last, JSON.stringify(config([{ name: "u", user: { token: "fallback" } }])));
          const opts = await options(await KubeConfig.fromFiles([...paths, last]));
          expect(opts.headers.Authorization).toBe(`Bearer ${tokens.find((t) => t !== null) ?? "fallback"}`);
        },
      ),
      { numRuns: 50 },
    );
  });
});
