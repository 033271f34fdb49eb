#!/usr/bin/env bash
# Installs what Spindle's tests and sandbox need and a fresh machine may lack: Mosquitto (the
# real MQTT broker the tests run against), iproute2 (network namespaces for multicast tests) and
# openssl (test certificates),
# from Debian's packages. Go is checked, not installed: the sandbox builds Kubernetes with it.
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# openssl makes the test certificates of the fault-injecting proxy and the stand-in apiserver.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "error: need root (or sudo) to install ${missing[*]}; install them by hand and rerun" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go >= 1.24 is required to build the sandbox control plane (https://go.dev/dl); it is not on PATH" >&2
  exit 1
fi
node -e 'const [M]=process.versions.node.split(".").map(Number); if (M < 20) { console.error("error: Node.js >= 20 is required, found " + process.version); process.exit(1) }'
