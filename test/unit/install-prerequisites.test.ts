import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";

const SCRIPT = readFileSync(resolve(import.meta.dirname, "../../scripts/install-prerequisites.sh"), "utf8");

/** Runs the script on stdin (so it needs no readable checkout), from `/`, as `argv`. */
function runScript(argv: string[]) {
  return spawnSync(argv[0]!, [...argv.slice(1)], { input: SCRIPT, cwd: "/", encoding: "utf8", timeout: 20_000 });
}

describe("scripts/install-prerequisites.sh (the pretest step of npm test)", () => {
  it("only checks, silently, when everything is installed", () => {
    const r = runScript(["bash", "-s"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  it("says what to install, and how, when it is not root and cannot sudo", () => {
    // A fresh machine, as far as the script can tell: /usr/sbin (where Debian puts mosquitto
    // and ip) is an empty tmpfs in a private mount namespace, and the user is nobody.
    const r = runScript([
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "bash",
      "-c",
      "mount -t tmpfs none /usr/sbin && exec setpriv --reuid=nobody --regid=nogroup --clear-groups bash -s",
    ]);
    expect(r.stderr, "needs root (unshare --mount, tmpfs, setpriv from util-linux)").not.toMatch(
      /unshare: |mount: |setpriv: /,
    );
    expect(r.stdout).not.toMatch(/installing/);
    expect(r.stderr).toContain("the tests need the Debian packages mosquitto");
    expect(r.stderr).toContain("is not root and cannot use sudo");
    expect(r.stderr).toContain("apt-get update && apt-get install -y mosquitto");
    expect(r.status).toBe(1);
  });
});
