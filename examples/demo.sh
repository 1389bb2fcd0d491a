#!/usr/bin/env bash
# The end-to-end demo: build the example plugins and ferry, then run `ferry demo`, which
# starts its own redis-server unless --redis URL is given. Extra arguments go to `ferry demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
"$root/examples/build-plugins.sh" "$root/target/demo-plugins"
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p ferry-host --bin ferry
exec "$root/target/release/ferry" demo --plugins "$root/target/demo-plugins" "$@"
