#!/usr/bin/env bash
# Installs what Spindle's tests need and a fresh Debian machine may lack, from Debian's
# packages: Mosquitto (the real MQTT broker the tests run against), iproute2 (`ip netns` and
# veth for the multicast tests, `ss`), openssl (test certificates) and python3-venv (the
# Python handler of the Akri protocol test). Go and Node.js are
# checked, not installed. `npm test` runs this first (the `pretest` script); when everything is
# there it only checks and prints nothing.
set -euo pipefail

# Debian puts mosquitto and ip in /usr/sbin, which a non-root PATH often lacks.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The Akri protocol test runs a Python handler in a venv with grpcio from PyPI.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  cannot() {
    echo "error: the tests need the Debian packages ${missing[*]}, and $1." >&2
    echo "Install them as root, then rerun:  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  }
  command -v apt-get >/dev/null 2>&1 || cannot "this machine has no apt-get (install mosquitto, iproute2, openssl and python3-venv with its package manager)"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
    as_root=(sudo) # asks for the password on this terminal
  else
    cannot "this user ($(id -un)) is not root and cannot use sudo"
  fi
  echo "installing Debian packages: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go >= 1.26 is required to build the sandbox control plane (https://go.dev/dl); it is not on PATH" >&2
  exit 1
fi
node -e 'const [M]=process.versions.node.split(".").map(Number); if (M < 20) { console.error("error: Node.js >= 20 is required, found " + process.version); process.exit(1) }'
