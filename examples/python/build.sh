#!/usr/bin/env bash
# Build the Python example plugin (inventory/app.py) into a WebAssembly component.
#
#   examples/python/build.sh [OUT_DIR]        default OUT_DIR: examples/python/build
#
# Creates examples/python/.venv on first use and installs the pinned componentize-py into it
# (from PyPI; nothing else is downloaded). componentize-py bundles its own CPython (3.14) and
# standard library into the component, so the local python3 only runs pip.
# Writes OUT_DIR/inventory-py.wasm (about 18 MB).
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_arg="${1:-$here/build}"
mkdir -p "$out_arg"
out="$(cd "$out_arg" && pwd)"
venv="$here/.venv"

if [[ "$("$venv/bin/componentize-py" --version 2>/dev/null || true)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# componentize-py appends $VIRTUAL_ENV's site-packages to the app's module path; pointing it at
# our venv keeps the interpreter's own site-packages out of the build.
export VIRTUAL_ENV="$venv"

# -p: where the app module (app.py) and the helper (ferry_handler.py) are found.
# The WIT export `handler` makes componentize-py look for a class `Handler` in module `app`.
# wit/: ferry:plugin@0.2.0's subscriber world plus wasi:http/outgoing-handler (see wit/world.wit).
"$venv/bin/componentize-py" -d "$here/wit" -w subscriber \
  componentize -p "$here/inventory" -p "$here" app -o "$out/inventory-py.wasm"

echo "built $out/inventory-py.wasm ($(du -h "$out/inventory-py.wasm" | cut -f1))"
