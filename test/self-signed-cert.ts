import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

/** A throwaway self-signed P-256 certificate for 127.0.0.1, made with the openssl CLI. */
export async function selfSignedCert(): Promise<{ key: Buffer; cert: Buffer }> {
  const dir = await mkdtemp(join(tmpdir(), "spindle-cert-"));
  try {
    const keyFile = join(dir, "key.pem");
    const certFile = join(dir, "cert.pem");
    await promisify(execFile)("openssl", [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-keyout", keyFile, "-out", certFile, "-days", "1", "-subj", "/CN=127.0.0.1"],
      ...["-addext", "subjectAltName=IP:127.0.0.1"],
    ]).catch((err: NodeJS.ErrnoException) => {
      throw err.code === "ENOENT"
        ? new Error("test certificates are made with the openssl CLI: apt-get install openssl")
        : err;
    });
    const [key, cert] = await Promise.all([readFile(keyFile), readFile(certFile)]);
    return { key, cert };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
