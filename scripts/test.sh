#!/usr/bin/env bash
# Run every check and test ferry has, as CI does: formatting, clippy (warnings are errors),
# the Python and JavaScript example plugins built from source, the whole test suite, and the
# benchmark in quick mode (so it cannot rot; no timing assertions).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== module dependencies (no import cycle in the library)"
"$root/scripts/module-deps.sh"

echo "== Python and JavaScript example plugins"
mkdir -p "$root/target/polyglot"
"$root/examples/python/build.sh" "$root/target/polyglot"
"$root/examples/javascript/build.sh" "$root/target/polyglot"
export FERRY_PYTHON_PLUGIN="$root/target/polyglot/inventory-py.wasm"
export FERRY_JS_PLUGIN="$root/target/polyglot/welcome-js.wasm"

echo "== the Rust SDK's test doubles and a handler's own tests (machine target, no host)"
host_target="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$root/plugin-sdk" && cargo test --quiet --target "$host_target")
(cd "$root/examples/inventory" && cargo test --quiet --target "$host_target")
(cd "$root/examples/welcome" && cargo test --quiet --target "$host_target")
echo "== Python and JavaScript handlers' own tests (test doubles, no host)"
(cd "$root/examples/python/inventory" && python3 -m unittest -q test_app)
(cd "$root/examples/javascript" && node --import ./ferry-testing.mjs --test welcome/)

echo "== cargo test"
cargo test --workspace --quiet
echo "== the fault, edge and reload tests twice more (a flaky test is a defect)"
for round in 2 3; do
  echo "-- round $round"
  cargo test -p ferry-host --quiet --test all -- recovery:: edges:: reload::
done
echo "== no function over 80 lines in host/src"
python3 scripts/long-functions.py host/src
echo "== the otel feature (OTLP export, trace continuation)"
cargo clippy -p ferry-host --all-targets --features otel --quiet -- -D warnings
cargo test -p ferry-host --features otel --quiet --lib telemetry
cargo test -p ferry-host --features otel --quiet --test all otlp

echo "== benchmark, quick mode"
cargo run --quiet -p ferry-host -- bench --quick \
  --python "$FERRY_PYTHON_PLUGIN" --javascript "$FERRY_JS_PLUGIN" --out "$root/target/bench/quick.json"
cargo run --quiet -p ferry-host -- bench --cluster --quick --out "$root/target/bench/cluster-quick.json"
echo "== all checks passed"
