import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { parse } from "yaml";

const run = promisify(execFile);

/** The user name Kubernetes gives a ServiceAccount's tokens. */
export function serviceAccountUser(namespace: string, name: string): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

interface KubeconfigFile {
  users?: { name: string; user: Record<string, unknown> }[];
}

/**
 * Writes `<dir>/<name>.kubeconfig`: a copy of `adminKubeconfig` whose users act as the
 * ServiceAccount `namespace/name` (`as:`, the Impersonate-User header). The sandbox's admin is in
 * system:masters, so it may impersonate; the apiserver then adds the ServiceAccount's groups and
 * authorizes every request as that ServiceAccount, exactly as if it used the account's token.
 */
export async function impersonatingKubeconfig(
  adminKubeconfig: string,
  namespace: string,
  name: string,
  dir: string,
): Promise<string> {
  const config = parse(await readFile(adminKubeconfig, "utf8")) as KubeconfigFile;
  if (!config.users?.length) throw new Error(`${adminKubeconfig} has no users`);
  for (const u of config.users) u.user.as = serviceAccountUser(namespace, name);
  const path = join(dir, `${namespace}-${name}.kubeconfig`);
  await writeFile(path, JSON.stringify(config, null, 2), { mode: 0o600 });
  return path;
}

/** One `kubectl auth can-i` question. */
export interface AccessCheck {
  verb: string;
  /** e.g. "secrets", "devices.spindle.dev", "secrets/some-name" (a resource name). */
  resource: string;
  subresource?: string;
  /** Omitted: cluster-wide (for a namespaced resource: all namespaces). */
  namespace?: string;
}

export function describeCheck(c: AccessCheck): string {
  return `${c.verb} ${c.resource}${c.subresource ? `/${c.subresource}` : ""}${c.namespace ? ` -n ${c.namespace}` : ""}`;
}

/** `kubectl auth can-i` for `user` (impersonated by the admin kubeconfig): true for "yes". */
export async function canI(kubectl: string, kubeconfig: string, user: string, check: AccessCheck): Promise<boolean> {
  const args = ["--kubeconfig", kubeconfig, "auth", "can-i", check.verb, check.resource, "--as", user];
  if (check.subresource) args.push("--subresource", check.subresource);
  args.push(...(check.namespace ? ["--namespace", check.namespace] : ["--all-namespaces"]));
  let answer: string;
  let warnings: string;
  try {
    const { stdout, stderr } = await run(kubectl, args);
    [answer, warnings] = [stdout, stderr];
  } catch (err) {
    // can-i exits 1 for "no"; anything else (no server, a bad flag) is an error.
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (e.code !== 1 || !e.stdout) throw new Error(`kubectl auth can-i ${describeCheck(check)}: ${e.stderr ?? err}`);
    [answer, warnings] = [e.stdout, e.stderr ?? ""];
  }
  // A misspelt resource would answer "no" for the wrong reason.
  if (/doesn't have a resource type/.test(warnings))
    throw new Error(`kubectl auth can-i ${describeCheck(check)}: ${warnings.trim()}`);
  return answer.trim().startsWith("yes");
}

/** The user a kubeconfig acts as, according to the apiserver (SelfSubjectReview). */
export async function whoAmI(kubectl: string, kubeconfig: string): Promise<string> {
  const { stdout } = await run(kubectl, [
    "--kubeconfig",
    kubeconfig,
    "auth",
    "whoami",
    "-o",
    "jsonpath={.status.userInfo.username}",
  ]);
  return stdout.trim();
}
