#!/usr/bin/env bash
# Install what ferry's build and tests need and a fresh machine may lack: the wasm32-wasip2
# Rust target, redis-server, PostgreSQL (outbox relay tests), Chromium (status-page test and the
# console's browser walk, driven by tests/browser's playwright-core). Python (componentize-py) and
# JavaScript (componentize-js) toolchains are installed, pinned, by the examples' build
# scripts into examples/*/ (venv, node_modules). Idempotent; quiet when all is present.
set -euo pipefail

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The relay's tests start their own PostgreSQL with initdb/pg_ctl (found in /usr/lib/postgresql/*/bin).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The clock-skew tests run a host under libfaketime.
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
# The Python example's build (and `ferry new python`'s) makes a venv: Debian's python3 has no
# ensurepip without python3-venv.
if ! command -v python3 >/dev/null; then
  missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
command -v node >/dev/null || missing+=(nodejs npm)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi
# componentize-js (the JavaScript example, `ferry new javascript`) needs Node.js 20.19 or newer;
# a distribution's package may be older: say so rather than fail later inside npm.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "setup: Node.js $(node --version) is older than 20.19, which componentize-js needs" >&2
fi
# The console's browser walk (host/tests/all/console_browser.rs) drives /usr/bin/chromium through
# playwright-core, pinned by tests/browser/package-lock.json; playwright-core downloads no browser.
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
wanted="$(node -p "require('$browser_dir/package-lock.json').packages['node_modules/playwright-core'].version")"
have="$(node -p "try { require('$browser_dir/node_modules/playwright-core/package.json').version } catch { '' }")"
if [ "$wanted" != "$have" ]; then
  echo "setup: installing playwright-core $wanted for the browser walk (tests/browser)"
  (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
