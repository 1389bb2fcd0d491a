//! `ferry new rust|python|javascript NAME`: scaffold a plugin project that builds and passes
//! its own tests as generated. The binary carries everything the project needs (the Rust
//! SDK, the WIT package, the Python and JavaScript helpers and their test doubles), so a user
//! who installed only `ferry` can write a plugin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

/// The language of the new plugin.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Language {
    /// Rust, through the bundled `ferry-plugin-sdk`.
    Rust,
    /// Python, through componentize-py.
    Python,
    /// JavaScript, through componentize-js.
    Javascript,
}

/// `ferry new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's language.
    pub language: Language,
    /// The plugin's name (its subscriber name: the `.wasm` file's stem), also the directory.
    pub name: String,
    /// Where to create the directory (default: the current one).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// The package the Rust SDK binds (`ferry:plugin@0.2.0`: 0.1.0's interfaces and `state`).
const WIT_V2: &str = include_str!("../../../plugin-sdk/wit-0.2.0/ferry.wit");
/// The SDK's source files, as `ferry new rust` writes them.
const SDK_SOURCES: [(&str, &str); 4] = [
    ("ferry-plugin-sdk/src/lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    ("ferry-plugin-sdk/src/state.rs", include_str!("../../../plugin-sdk/src/state.rs")),
    ("ferry-plugin-sdk/src/http.rs", include_str!("../../../plugin-sdk/src/http.rs")),
    ("ferry-plugin-sdk/src/testing.rs", include_str!("../../../plugin-sdk/src/testing.rs")),
];
const SDK_MANIFEST: &str = include_str!("../../../plugin-sdk/Cargo.toml");
const PY_HANDLER: &str = include_str!("../../../examples/python/ferry_handler.py");
const PY_TESTING: &str = include_str!("../../../examples/python/ferry_testing.py");
const JS_HANDLER: &str = include_str!("../../../examples/javascript/ferry-handler.js");
const JS_TESTING: &str = include_str!("../../../examples/javascript/ferry-testing.mjs");

/// The Python world (ferry's `subscriber` plus `wasi:http/outgoing-handler`) and the WIT
/// packages it uses, as `examples/python/wit/` has them.
const PY_WIT: [(&str, &str); 9] = [
    ("wit/world.wit", include_str!("../../../examples/python/wit/world.wit")),
    ("wit/deps/ferry.wit", WIT_V2),
    ("wit/deps/cli.wit", include_str!("../../../examples/python/wit/deps/cli.wit")),
    ("wit/deps/clocks.wit", include_str!("../../../examples/python/wit/deps/clocks.wit")),
    ("wit/deps/filesystem.wit", include_str!("../../../examples/python/wit/deps/filesystem.wit")),
    ("wit/deps/http.wit", include_str!("../../../examples/python/wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../../examples/python/wit/deps/io.wit")),
    ("wit/deps/random.wit", include_str!("../../../examples/python/wit/deps/random.wit")),
    ("wit/deps/sockets.wit", include_str!("../../../examples/python/wit/deps/sockets.wit")),
];

/// The committed state `invoke --state` starts the Python and JavaScript templates from.
const STATE: &str = r#"{ "reserved:sku-1": "3" }
"#;

const EVENT: &str = r#"{
  "type": "OrderCreated",
  "source": "orders",
  "partitionkey": "o-1",
  "data": { "order_id": "o-1", "sku": "sku-1", "quantity": 2 }
}
"#;

/// Run `ferry new`.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let valid = !args.name.is_empty()
        && args.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && args.name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        anyhow::bail!("a plugin name is lowercase letters, digits and `-`, starting with a letter: `{}`", args.name);
    }
    let root = args.dir.join(&args.name);
    if root.exists() {
        anyhow::bail!("{} exists already", root.display());
    }
    let files = match args.language {
        Language::Rust => rust(&args.name),
        Language::Python => python(&args.name),
        Language::Javascript => javascript(&args.name),
    };
    for (path, text) in &files {
        write(&root, path, text)?;
    }
    #[cfg(unix)]
    for (path, _) in files.iter().filter(|(p, _)| p.ends_with(".sh")) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(0o755))?;
    }
    println!(
        "created {} ({:?} plugin `{}`); next: see {}/README.md",
        root.display(),
        args.language,
        args.name,
        root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write(root: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let file = root.join(path);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
}

/// The Rust plugin `ferry new rust` writes: stock in state, a follow-up, its own tests.
const RUST_HANDLER: &str = r##"//! A ferry plugin: reserves an order's stock, kept in ferry's handler state (`stock:SKU`),
//! rejects an order it cannot serve, and publishes `StockReserved` to the stream granted as
//! config `publish`. State writes commit with the event's acknowledgement: a rejected or
//! retried event leaves none behind. Grants: `state = true` (`ferry plugins invoke` grants it).

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, log, state};

struct Plugin;

impl Handler for Plugin {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("OrderCreated")]
    }

    fn handle(event: Event) -> Result {
        let order: serde_json::Value = event.json()?; // bad JSON: rejected, dead-lettered at once
        let quantity = order["quantity"].as_i64().unwrap_or(0);
        if quantity <= 0 {
            return Err(Error::reject("an order needs a quantity"));
        }
        let sku = order["sku"].as_str().unwrap_or("unknown");
        let left = state::increment(&format!("stock:{sku}"), -quantity)?;
        if left < 0 {
            // Rejected: this event's writes (the decrement) are dropped with it.
            return Err(Error::reject(format!("insufficient stock for {quantity} x {sku}")));
        }
        log::info(&format!("reserved {quantity} x {sku} for {} ({left} left)", event.id()));
        if let Some(stream) = config::get("publish") {
            let reserved = serde_json::json!({ "order": order["order_id"], "sku": sku, "quantity": quantity });
            publish::send(Outgoing::json("StockReserved", &reserved)?.to_stream(&stream))?;
        }
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Plugin);

// `cargo test --target <your machine's target>`: no host, no Redis (see ferry_plugin_sdk::testing).
#[cfg(test)]
mod tests {
    use ferry_plugin_sdk::{Event, testing};

    fn order(quantity: u32) -> Event {
        Event::builder("OrderCreated").data(format!(r#"{{"order_id":"o-1","sku":"sku-1","quantity":{quantity}}}"#)).build()
    }

    #[test]
    fn an_order_takes_its_stock_and_its_follow_up_is_published_where_granted() {
        testing::reset();
        testing::set_config("publish", "stock");
        testing::set_state("stock:sku-1", "10");
        testing::handle::<super::Plugin>(order(2)).expect("handled");
        assert_eq!(testing::state_value("stock:sku-1"), Some(b"8".to_vec()));
        assert_eq!(testing::published()[0].event_type, "StockReserved");
    }

    #[test]
    fn an_order_it_cannot_serve_is_rejected_and_takes_nothing() {
        testing::reset();
        testing::set_state("stock:sku-1", "1");
        assert!(testing::handle::<super::Plugin>(order(2)).expect_err("rejected").is_reject());
        assert_eq!(testing::state_value("stock:sku-1"), Some(b"1".to_vec()));
    }
}
"##;

/// The state `ferry plugins invoke --state` starts the generated plugin from.
const RUST_STATE: &str = "{ \"stock:sku-1\": 10 }\n";

fn rust(name: &str) -> Vec<(&'static str, String)> {
    let krate = name.replace('-', "_");
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A guest crate: built for wasm32-wasip2 (.cargo/config.toml), in a workspace of its own.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK, as `ferry new` wrote it (the ferry-plugin-sdk of the ferry that made the project).
ferry-plugin-sdk = {{ path = "ferry-plugin-sdk" }}
serde_json = "1"

[profile.release]
opt-level = "s"
strip = true
"#
    );

    let readme = format!(
        r#"# {name}

A ferry plugin in Rust (made by `ferry new rust {name}`).

```sh
cargo test --target "$(rustc -vV | sed -n 's/^host: //p')"    # the handler's own tests
cargo build --release                                          # target/wasm32-wasip2/release/{krate}.wasm
ferry plugins invoke target/wasm32-wasip2/release/{krate}.wasm --event event.json \
  --state state.json --config publish=stock --publish-stream stock    # one call, no Redis
cp target/wasm32-wasip2/release/{krate}.wasm /srv/ferry/plugins/{name}.wasm    # ferry run hot-loads it
```

`invoke` prints the disposition, the follow-ups, the state writes and the log lines; `--json`
adds the state after the call (feed it back with `--state`). A plugin that calls an HTTP API
(`ferry_plugin_sdk::http`) is run with `--http-allow https://api.example` (real requests).
In `ferry run`, grant state with `state = true` in its `[subscribers.{name}]` (or `{name}.toml`).

Needs Rust 1.95+ with `rustup target add wasm32-wasip2`.
"#
    );
    let mut files = vec![
        ("Cargo.toml", manifest),
        (".cargo/config.toml", "[build]\ntarget = \"wasm32-wasip2\"\n".to_string()),
        ("src/lib.rs", RUST_HANDLER.to_string()),
        ("event.json", EVENT.to_string()),
        ("state.json", RUST_STATE.to_string()),
        ("README.md", readme),
        (".gitignore", "/target\n".to_string()),
        ("ferry-plugin-sdk/Cargo.toml", bundled_sdk_manifest()),
        ("ferry-plugin-sdk/wit-0.2.0/ferry.wit", WIT_V2.to_string()),
    ];
    files.extend(SDK_SOURCES.iter().map(|(path, text)| (*path, text.to_string())));
    files
}

/// The SDK's own manifest without its `[workspace]` table: inside the new project the SDK is a
/// member of the project's workspace, not a workspace of its own (same dependencies, always).
fn bundled_sdk_manifest() -> String {
    let mut out = String::new();
    let mut in_workspace = false;
    for line in SDK_MANIFEST.lines() {
        if line.starts_with('[') {
            in_workspace = line.trim() == "[workspace]";
        }
        if !in_workspace && !line.starts_with("# The SDK is a guest crate") && !line.starts_with("# `cargo build`") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn python(name: &str) -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("app.py", PY_APP.to_string()),
        ("test_app.py", PY_TEST.to_string()),
        ("ferry_handler.py", PY_HANDLER.to_string()),
        ("ferry_testing.py", PY_TESTING.to_string()),
        ("build.sh", python_build(name)),
        ("event.json", EVENT.to_string()),
        ("state.json", STATE.to_string()),
        ("README.md", python_readme(name)),
        (".gitignore", ".venv/\n__pycache__/\n*.wasm\n".to_string()),
    ];
    files.extend(PY_WIT.iter().map(|(path, text)| (*path, text.to_string())));
    files
}

/// The Python plugin's handler (`app.py`).
const PY_APP: &str = r#""""A ferry plugin: reserves an order's stock in state, tells the warehouse over HTTP and
publishes StockReserved to the stream granted as config "publish".

State (grant `state = true`): `reserved:SKU` counts the units reserved; config "stock"
(default 100) is what each SKU has. An order over what is left is rejected, and its
increment is discarded with it: state changes only with an acknowledged event.
HTTP (grant `[http] allow = ["https://warehouse.example"]`): if config "warehouse_url" is
set, each reservation is POSTed there. A call is at least once (a retried event calls
again); the request's Idempotency-Key header, equal on every attempt, lets the warehouse
dedupe.
"""

from ferry_handler import Event, FerryHandler, HttpError, Reject, Retry, config, http, log, publish, state


class Handler(FerryHandler):
    subscribe = ["OrderCreated"]

    def on_event(self, event: Event) -> None:
        order = event.json()  # malformed JSON -> Reject
        quantity = int(order.get("quantity") or 0) if isinstance(order, dict) else 0
        if quantity <= 0:
            raise Reject("an order needs a quantity")
        sku = str(order.get("sku", "unknown"))
        stock = int(config.get("stock", "100"))
        reserved = state.increment(f"reserved:{sku}", quantity)
        if reserved > stock:
            raise Reject(f"only {stock - reserved + quantity} x {sku} left")
        log.info(f"reserving {quantity} x {sku} for {event.id} ({stock - reserved} left)")
        reservation = {"order": order.get("order_id"), "sku": sku, "quantity": quantity}
        warehouse = config.get("warehouse_url")
        if warehouse:
            try:
                response = http.post_json(warehouse, reservation)
            except HttpError as e:  # no response: not granted, unreachable, timed out
                raise Retry(f"warehouse unreachable: {e}") from None
            if not response.ok:
                raise Retry(f"warehouse answered {response.status}")
        stream = config.get("publish")
        if stream:
            publish.send_json("StockReserved", reservation, stream=stream)
"#;

/// The Python plugin's own tests (`test_app.py`).
const PY_TEST: &str = r#""""The handler's own tests: no host, no Redis (python3 -m unittest)."""

import unittest

import ferry_testing as ft  # first: installs the test doubles for the host's interfaces

from app import Handler

WAREHOUSE = "http://warehouse.test/reservations"


def order(quantity=2):
    return ft.event("OrderCreated", {"order_id": "o-1", "sku": "A", "quantity": quantity})


class HandlerTest(unittest.TestCase):
    def test_an_order_is_reserved_in_state_told_to_the_warehouse_and_published(self):
        ft.reset(config={"publish": "stock", "warehouse_url": WAREHOUSE}, http=lambda request: (201, "{}"))
        self.assertEqual(ft.handle(Handler(), order()), "ack")
        self.assertEqual(ft.state(), {"reserved:A": b"2"})
        self.assertEqual(ft.requests()[0].json(), {"order": "o-1", "sku": "A", "quantity": 2})
        self.assertEqual(ft.published()[0].event_type, "StockReserved")

    def test_an_order_over_the_stock_left_is_rejected_and_reserves_nothing(self):
        ft.reset(config={"stock": "4"}, state={"reserved:A": "3"})
        self.assertEqual(ft.handle(Handler(), order()), "reject")
        self.assertEqual(ft.state(), {"reserved:A": b"3"})

    def test_a_warehouse_that_fails_is_a_retry_that_reserves_nothing(self):
        ft.reset(config={"warehouse_url": WAREHOUSE}, http=lambda request: (503, "busy"))
        self.assertEqual(ft.handle(Handler(), order()), "retry")
        self.assertEqual(ft.state(), {})

    def test_an_order_without_a_quantity_is_rejected(self):
        ft.reset()
        self.assertEqual(ft.handle(Handler(), ft.event("OrderCreated", {"order_id": "o-1"})), "reject")


if __name__ == "__main__":
    unittest.main()
"#;

/// The Python plugin's `build.sh`.
fn python_build(name: &str) -> String {
    format!(
        r#"#!/usr/bin/env bash
# Build {name}.wasm with componentize-py (installed, pinned, into .venv on first use).
# wit/world.wit: ferry:plugin@0.2.0's subscriber world plus wasi:http/outgoing-handler.
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
if [[ "$("$here/.venv/bin/componentize-py" --version 2>/dev/null || true)" != "componentize-py 0.25.1" ]]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==0.25.1"
fi
export VIRTUAL_ENV="$here/.venv"
"$here/.venv/bin/componentize-py" -d "$here/wit" -w subscriber componentize -p "$here" app -o "$here/{name}.wasm"
echo "built $here/{name}.wasm"
"#
    )
}

/// The Python plugin's README.
fn python_readme(name: &str) -> String {
    format!(
        r#"# {name}

A ferry plugin in Python (made by `ferry new python {name}`): it keeps stock levels in state
and tells a warehouse API over HTTP.

```sh
python3 -m unittest                     # the handler's own tests
./build.sh                              # {name}.wasm (componentize-py, pinned, into .venv)
ferry plugins invoke {name}.wasm --event event.json --state state.json \
  --http-allow http://127.0.0.1:8080 --config publish=stock --publish-stream stock
```

{GRANTS}"#
    )
}

/// What the Python and JavaScript READMEs say about the grants.
const GRANTS: &str = r#"`--state` is the committed state the call starts from; `--http-allow` grants an origin (the
plugin imports `wasi:http`, so it loads only with one). Add `--config
warehouse_url=http://127.0.0.1:8080/reservations` to make the call for real. In `ferry run`,
the plugin's `NAME.toml` grants the same:

```toml
state = true
publish_streams = ["stock"]
[config]
publish = "stock"
warehouse_url = "https://warehouse.example/reservations"
[http]
allow = ["https://warehouse.example"]
```

State changes exactly once per event (committed with its acknowledgement); an HTTP call is at
least once, and carries `Idempotency-Key: SUBSCRIBER:EVENT_ID` for the receiver to dedupe.
"#;

fn javascript(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app.js", JS_APP.to_string()),
        ("app.test.mjs", JS_TEST.to_string()),
        ("ferry-handler.js", JS_HANDLER.to_string()),
        ("ferry-testing.mjs", JS_TESTING.to_string()),
        ("wit/ferry.wit", WIT_V2.to_string()),
        ("package.json", javascript_package(name)),
        ("build.mjs", javascript_build(name)),
        ("event.json", EVENT.to_string()),
        ("state.json", STATE.to_string()),
        ("README.md", javascript_readme(name)),
        (".gitignore", "node_modules/\n*.wasm\n".to_string()),
    ]
}

/// The JavaScript plugin's handler (`app.js`).
const JS_APP: &str = r#"// A ferry plugin: reserves an order's stock in state, tells the warehouse over HTTP and
// publishes StockReserved to the stream granted as config `publish`.
//
// State (grant `state = true`): `reserved:SKU` counts the units reserved; config `stock`
// (default 100) is what each SKU has. An order over what is left is rejected, and its
// increment is discarded with it: state changes only with an acknowledged event.
// HTTP (grant `[http] allow = ["https://warehouse.example"]`): if config `warehouse_url` is
// set, each reservation is POSTed there with fetch(). A call is at least once (a retried
// event calls again); the request's Idempotency-Key header, equal on every attempt, lets the
// warehouse dedupe.
import { config, defineHandler, log, publish, Reject, Retry, state } from './ferry-handler.js';

export const handler = defineHandler({
  subscribe: ['OrderCreated'],

  async handle(event) {
    const order = event.json(); // malformed JSON -> Reject
    const quantity = Number(order?.quantity ?? 0);
    if (!(quantity > 0)) throw new Reject('an order needs a quantity');
    const sku = String(order.sku ?? 'unknown');
    const stock = Number(config.get('stock', '100'));
    const reserved = state.increment(`reserved:${sku}`, quantity);
    if (reserved > stock) throw new Reject(`only ${stock - reserved + quantity} x ${sku} left`);
    log.info(`reserving ${quantity} x ${sku} for ${event.id} (${stock - reserved} left)`);
    const reservation = { order: order.order_id, sku, quantity };
    const warehouse = config.get('warehouse_url');
    if (warehouse) {
      let response;
      try {
        response = await fetch(warehouse, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(reservation),
        });
      } catch (e) {
        throw new Retry(`warehouse unreachable: ${e.message}`); // not granted, unreachable, timed out
      }
      if (!response.ok) throw new Retry(`warehouse answered ${response.status}`);
    }
    const stream = config.get('publish');
    if (stream) publish.sendJson('StockReserved', reservation, { stream });
  },
});
"#;

/// The JavaScript plugin's own tests (`app.test.mjs`).
const JS_TEST: &str = r#"// The handler's own tests: no host, no Redis.
//   node --import ./ferry-testing.mjs --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { testing } from './ferry-testing.mjs';
const { handler } = await import('./app.js');

const WAREHOUSE = 'http://warehouse.test/reservations';
const order = (quantity = 2) => testing.event('OrderCreated', { order_id: 'o-1', sku: 'A', quantity });

test('an order is reserved in state, told to the warehouse and published', async () => {
  testing.reset({ config: { publish: 'stock', warehouse_url: WAREHOUSE }, http: () => new Response('{}', { status: 201 }) });
  assert.equal(await testing.handle(handler, ...order()), 'ack');
  assert.deepEqual(testing.state(), { 'reserved:A': '2' });
  assert.deepEqual(testing.requests()[0].json(), { order: 'o-1', sku: 'A', quantity: 2 });
  assert.equal(testing.published()[0].eventType, 'StockReserved');
});

test('an order over the stock left is rejected and reserves nothing', async () => {
  testing.reset({ config: { stock: '4' }, state: { 'reserved:A': '3' } });
  assert.equal(await testing.handle(handler, ...order()), 'reject');
  assert.deepEqual(testing.state(), { 'reserved:A': '3' });
});

test('a warehouse that fails is a retry that reserves nothing', async () => {
  testing.reset({ config: { warehouse_url: WAREHOUSE }, http: () => new Response('busy', { status: 503 }) });
  assert.equal(await testing.handle(handler, ...order()), 'retry');
  assert.deepEqual(testing.state(), {});
});

test('an order without a quantity is rejected', async () => {
  testing.reset();
  assert.equal(await testing.handle(handler, ...testing.event('OrderCreated', { order_id: 'o-1' })), 'reject');
});
"#;

/// The JavaScript plugin's `package.json`.
fn javascript_package(name: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "version": "0.1.0",
  "type": "module",
  "scripts": {{
    "test": "node --import ./ferry-testing.mjs --test",
    "build": "node build.mjs"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "0.23.0"
  }}
}}
"#
    )
}

/// The JavaScript plugin's `build.mjs`.
fn javascript_build(name: &str) -> String {
    format!(
        r#"// Build {name}.wasm with componentize-js (`npm install` first), against ferry:plugin@0.2.0.
// The `http` feature stays on for fetch(): the component imports wasi:http, so it loads only
// for a subscriber with a [subscribers.NAME.http] grant. `fetch-event` (incoming) is off.
import {{ componentize }} from '@bytecodealliance/componentize-js';
import {{ writeFile }} from 'node:fs/promises';
import {{ dirname, resolve }} from 'node:path';
import {{ fileURLToPath }} from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
process.chdir(here);
const {{ component }} = await componentize({{
  sourcePath: resolve(here, 'app.js'),
  witPath: resolve(here, 'wit'),
  worldName: 'subscriber',
  disableFeatures: ['fetch-event'],
}});
await writeFile(resolve(here, '{name}.wasm'), component);
console.log('built {name}.wasm');
"#
    )
}

/// The JavaScript plugin's README.
fn javascript_readme(name: &str) -> String {
    format!(
        r#"# {name}

A ferry plugin in JavaScript (made by `ferry new javascript {name}`): it keeps stock levels in
state and tells a warehouse API over HTTP with `fetch()`.

```sh
npm test                                # the handler's own tests (node:test, no host)
npm install && npm run build            # {name}.wasm (componentize-js)
ferry plugins invoke {name}.wasm --event event.json --state state.json \
  --http-allow http://127.0.0.1:8080 --config publish=stock --publish-stream stock
```

{GRANTS}"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_sdk_manifest_is_the_sdks_own_without_its_workspace() {
        let manifest = super::bundled_sdk_manifest();
        assert!(!manifest.contains("[workspace]"), "{manifest}");
        assert!(manifest.contains("name = \"ferry-plugin-sdk\"") && manifest.contains("wit-bindgen"), "{manifest}");
    }
}
