# syntax=docker/dockerfile:1
# One image for the agent and the controller (charts/spindle runs it as both).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/spindle-dev/spindle:0.1.0 .
#
# Each platform's stages run on (or are emulated for) that platform, so npm installs the
# platform's own native pieces: esbuild's binary (tsx runs the TypeScript sources; there is no
# build step) and the `usb` module's addon.

ARG NODE_IMAGE=node:20-bookworm-slim

# Stage 1: production dependencies only.
FROM ${NODE_IMAGE} AS deps
# The usb addon links libudev.so.1 (for hotplug); installed here so the check below can load it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# usb@2 ships prebuilt N-API addons (prebuilds/linux-x64 for glibc and musl, prebuilds/linux-arm64)
# and its install script, node-gyp-build, picks the matching one. So `npm ci --omit=dev` is
# enough on linux/amd64 and linux/arm64: no compiler or Python in this stage. (No
# --ignore-scripts: the install scripts of usb and esbuild are what pick the native binaries.)
# The last command fails the build, not the pod, if the addon does not load on this platform.
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force \
 && node -e "require('usb'); console.log('usb addon loads on', process.platform, process.arch)"

# Stage 2: the runtime.
FROM ${NODE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev1 \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY discovery-handlers ./discovery-handlers
# 65532: the conventional "nonroot" uid/gid (distroless); the chart runs as it too.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
ENTRYPOINT ["node", "bin/spindle.js"]
CMD ["--help"]
