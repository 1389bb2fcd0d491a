#!/usr/bin/env bash
# The benchmark: builds the guest fixtures (and uses the Python/JS example plugins when they
# are built), then runs `ferry bench` in release mode. Extra arguments go to `ferry bench`
# (e.g. --quick). Results: a table on stdout and target/bench/results.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --quiet --release --target wasm32-wasip2 \
  --manifest-path "$root/tests/guests/Cargo.toml" --target-dir "$root/target/guests"
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p ferry-host --bin ferry
args=(--guests "$root/target/guests/wasm32-wasip2/release" --out "$root/target/bench/results.json")
py="${FERRY_PYTHON_PLUGIN:-$root/examples/python/build/inventory-py.wasm}"
js="${FERRY_JS_PLUGIN:-$root/examples/javascript/build/welcome-js.wasm}"
[ -f "$py" ] && args+=(--python "$py")
[ -f "$js" ] && args+=(--javascript "$js")
exec "$root/target/release/ferry" bench "${args[@]}" "$@"
