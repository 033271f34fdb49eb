import { chmod, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, inject, it } from "vitest";
import { Api, ApiError } from "../../src/k8s/api.js";
import { KubeConfig } from "../../src/k8s/kubeconfig.js";

type Config = { users: { name: string; user: Record<string, unknown> }[] };

/**
 * Spindle's own kubeconfig loader (what the agent and controller run with) against the sandbox
 * apiserver: every credential form it reads must authenticate for real, and a wrong one must not.
 */
describe("kubeconfig auth against the apiserver", () => {
  let dir: string;
  let admin: Config & Record<string, unknown>;
  let token: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "spindle-kubeconfig-"));
    admin = JSON.parse(await readFile(inject("kubeconfig"), "utf8"));
    token = String(admin.users[0]!.user.token);
  });

  /** The admin kubeconfig with its user's credentials replaced by `user`. */
  async function withUser(name: string, user: Record<string, unknown>): Promise<KubeConfig> {
    const path = join(dir, name);
    await writeFile(path, JSON.stringify({ ...admin, users: admin.users.map((u) => ({ ...u, user })) }));
    return KubeConfig.load(path);
  }

  const namespaces = async (kc: KubeConfig) =>
    (await Api.for(kc).request<{ items: { metadata: { name: string } }[] }>("GET", "/api/v1/namespaces")).items.map(
      (n) => n.metadata.name,
    );

  it("authenticates with an inline token, a token file and an exec credential plugin", async () => {
    await writeFile(join(dir, "token"), `${token}\n`);
    const plugin = join(dir, "credential.sh");
    await writeFile(
      plugin,
      `#!/bin/sh\necho '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"'"$SANDBOX_TOKEN"'"}}'\n`,
    );
    await chmod(plugin, 0o700);
    const configs = [
      await withUser("inline", { token }),
      await withUser("file", { tokenFile: join(dir, "token") }),
      await withUser("exec", { exec: { command: plugin, env: [{ name: "SANDBOX_TOKEN", value: token }] } }),
    ];
    for (const kc of configs) expect(await namespaces(kc)).toContain("kube-system");
  });

  it("is refused with a wrong token", async () => {
    const err = await namespaces(await withUser("wrong", { token: "not-the-token" })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe(401);
  });
});
