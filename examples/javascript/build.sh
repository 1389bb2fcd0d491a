#!/usr/bin/env bash
# Build the JavaScript example plugin (welcome/app.js) into a WebAssembly component.
#
#   examples/javascript/build.sh [OUT_DIR]    default OUT_DIR: examples/javascript/build
#
# Installs the versions pinned in package-lock.json (npm ci, from the npm registry) when
# node_modules is missing or older than the lockfile, then runs build.mjs, which calls
# componentize-js with `fetch()` (its `http` feature: the component imports wasi:http) and
# without `fetch-event`.
# Writes OUT_DIR/welcome-js.wasm (about 12 MB). Needs Node.js >= 20.19.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_arg="${1:-$here/build}"
mkdir -p "$out_arg"
out="$(cd "$out_arg" && pwd)"

cd "$here"
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
node build.mjs "$out"
