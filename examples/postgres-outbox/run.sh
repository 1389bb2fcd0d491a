#!/usr/bin/env bash
# The PostgreSQL outbox end to end, on a PostgreSQL and a Redis this script starts itself (own
# ports, own temp dir, stopped on exit): the orders module writes an order and its OrderCreated
# in one transaction; `ferry run` relays the outbox table ([relay]) and the inventory plugin
# handles the event and publishes StockReserved to the `reservations` stream.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pgbin="${FERRY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL is needed (apt-get install postgresql)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

work="$(mktemp -d /tmp/ferry-pg-outbox-XXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port="$(free_port)"; redis_port="$(free_port)"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; as_pg=(runuser -u postgres --); fi
ferry_pid=""
cleanup() {
  [ -n "$ferry_pid" ] && kill "$ferry_pid" 2>/dev/null && wait "$ferry_pid" 2>/dev/null || true
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null 2>&1 || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building ferry, the orders module and the plugins"
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p ferry-host -p ferry-example-postgres-outbox
"$root/examples/build-plugins.sh" "$work/plugins" >/dev/null
rm "$work/plugins/welcome.wasm" "$work/plugins/event-logger.wasm"
ferry="$root/target/release/ferry"

echo "== starting PostgreSQL on $pg_port and Redis on $redis_port"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres -A trust -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" start >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --logfile "$work/redis.log" --dir "$work"
pg="postgres://postgres@127.0.0.1:$pg_port/postgres"
redis="redis://127.0.0.1:$redis_port"

echo "== ferry relay init"
"$ferry" relay init --postgres "$pg"

cat > "$work/ferry.toml" <<TOML
redis = "$redis"
plugins = "$work/plugins"
watch = false
[admin]
listen = ""
[relay]
postgres = "$pg"
[subscribers.inventory]
start = "beginning"
publish_streams = ["reservations"]
[subscribers.inventory.config]
publish = "reservations"
TOML
echo "== ferry run (host + relay)"
FERRY_LOG=info "$ferry" run --config "$work/ferry.toml" >"$work/ferry.log" 2>&1 &
ferry_pid=$!

echo "== the orders module"
"$root/target/release/orders" "$pg"

for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$redis_port" XLEN reservations)" -ge 1 ] && break
  sleep 0.1
done
echo "== outbox table"
psql "$pg" -c "SELECT id, type, partitionkey, published_at IS NOT NULL AS published FROM ferry_outbox"
echo "== stream events"
redis-cli -p "$redis_port" XRANGE events - +
echo "== stream reservations (the inventory plugin's follow-up)"
redis-cli -p "$redis_port" XRANGE reservations - +
grep -E "reserved|active relay" "$work/ferry.log" || true
[ "$(redis-cli -p "$redis_port" XLEN reservations)" -eq 1 ] || { echo "no StockReserved: see log" >&2; cat "$work/ferry.log" >&2; exit 1; }
echo "== ok: one committed order, one OrderCreated relayed and handled; the rolled-back order left no trace"
