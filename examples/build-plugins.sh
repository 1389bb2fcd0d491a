#!/usr/bin/env bash
# Build the Rust example and first-party plugins for wasm32-wasip2 and copy them into OUT_DIR.
# Usage: examples/build-plugins.sh [OUT_DIR]   (default: target/demo-plugins)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/target/demo-plugins}"
mkdir -p "$out"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
for crate in examples/inventory examples/welcome plugins/event-logger; do
  cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path "$root/$crate/Cargo.toml" --target-dir "$root/target/guests"
done
cp "$root/target/guests/wasm32-wasip2/release/ferry_example_inventory.wasm" "$out/inventory.wasm"
cp "$root/target/guests/wasm32-wasip2/release/ferry_example_welcome.wasm" "$out/welcome.wasm"
cp "$root/target/guests/wasm32-wasip2/release/ferry_plugin_event_logger.wasm" "$out/event-logger.wasm"
echo "plugins in $out: $(cd "$out" && ls *.wasm | tr '\n' ' ')"
