#!/usr/bin/env bash
# Which of the `ferry` library's top-level modules import which (from `crate::` paths in
# host/src, the binary's main.rs and cli/ excluded), and whether any import cycle exists.
# Prints one "module -> dependencies" line per module, then "no import cycle" and exits 0,
# or names the modules of each cycle (tsort's "input contains a loop") and exits 1.
set -euo pipefail
cd "$(dirname "$0")/../host/src"

edges=$(
  find . -name '*.rs' ! -path './cli/*' ! -name main.rs ! -name lib.rs | sort | while read -r file; do
    rel=${file#./}
    from=${rel%%/*}
    from=${from%.rs}
    # One line per file, so `use crate::{a, b::c}` spread over lines is read whole; comments dropped.
    sed 's://.*$::' "$file" | tr '\n' ' ' |
      grep -oE 'crate::(\{[^}]*\}|[a-z_][a-z0-9_]*)' |
      sed -E 's/^crate:://; s/[{}]//g' | tr ',' '\n' |
      sed -E 's/^[[:space:]]+//; s/::.*$//; s/[[:space:]].*$//' |
      grep -E '^[a-z_][a-z0-9_]*$' | grep -vx "$from" | grep -vx self |
      sed "s/^/$from /" || true
  done | sort -u
)

# Every module, even one importing nothing, appears as a node.
nodes=$(find . -maxdepth 2 -name '*.rs' ! -path './cli/*' ! -name main.rs ! -name lib.rs |
  sed -E 's:^\./::; s:/.*$::; s:\.rs$::' | sort -u)
for n in $nodes; do
  deps=$(awk -v m="$n" '$1 == m { printf "%s ", $2 }' <<<"$edges")
  printf '%-14s -> %s\n' "$n" "${deps:-(nothing)}"
done

# The runtime never depends on what is wired around it.
status=0
for outer in admin reload redis_server; do
  users=$(awk -v m="$outer" '$2 == m { printf "%s ", $1 }' <<<"$edges")
  if [ -n "$users" ]; then
    echo "runtime module(s) ${users}import $outer: only the binary and tests may wire it in"
    status=1
  fi
done

if out=$({ echo "$edges"; for n in $nodes; do echo "$n $n"; done; } | tsort 2>&1 >/dev/null) && [ -z "$out" ]; then
  echo "no import cycle among $(wc -w <<<"$nodes") modules"
  exit "$status"
else
  echo "import cycle(s):"
  echo "$out"
  exit 1
fi
