# syntax=docker/dockerfile:1
# One image for the agent and the controller (charts/spindle runs it as both).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/spindle-dev/spindle:0.1.0 .
#
# Node.js 24, the current LTS (Node 20 reached end of life in April 2026). The code runs on
# Node >= 20 (package.json `engines`); the tests run on the machine's Node.
#
# The image runs the production build (`npm run build`: esbuild bundles in dist/, one chunk per
# command), not the TypeScript sources: no tsx, no TypeScript compiler, no sources, no mocks.
# test/unit/runtime.test.ts starts `agent` and `controller` from exactly this file set.

ARG NODE_IMAGE=node:24-bookworm-slim

# Stage 1: build dist/, then drop the dev dependencies (tsx, esbuild, typescript, ...).
FROM ${NODE_IMAGE} AS build
# The usb addon links libudev.so.1 (for hotplug); installed here so the check below can load it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: no dependency needs its install script here, whatever npm's policy on them.
# usb@2 ships prebuilt N-API addons (prebuilds/linux-x64 for glibc and musl, prebuilds/linux-arm64)
# and node-gyp-build picks the matching one when the module loads; esbuild's binary comes from
# its platform package (@esbuild/linux-x64 or -arm64), an optional dependency npm picks per
# platform. So no compiler or Python in this stage. The last command fails the build, not the
# pod, if the addon does not load on this platform.
RUN npm ci --ignore-scripts --no-audit --no-fund \
 && node -e "require('usb'); console.log('usb addon loads on', process.platform, process.arch)"
COPY scripts/build.ts ./scripts/
COPY src ./src
COPY discovery-handlers ./discovery-handlers
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# Stage 2: the runtime: production dependencies and the build output only.
FROM ${NODE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev1 \
 && rm -rf /var/lib/apt/lists/*
# bin/spindle.js runs dist/ only with NODE_ENV=production.
ENV NODE_ENV=production
# Two glibc malloc arenas instead of one per thread: memory freed after a burst (the agent's cold
# start of 1,000 devices) goes back to the system. Measured with `npm run bench`: agent 106.6 ->
# 77.2 MiB, controller 121.8 -> 100.5 MiB at steady state with 1,100 devices (docs/decisions.md).
# The benches read this line and run their processes with it.
ENV MALLOC_ARENA_MAX=2
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json package-lock.json ./
COPY bin ./bin
# 65532: the conventional "nonroot" uid/gid (distroless); the chart runs as it too.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
ENTRYPOINT ["node", "bin/spindle.js"]
CMD ["--help"]
