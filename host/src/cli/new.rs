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

const WIT: &str = include_str!("../../../plugin-sdk/wit/ferry.wit");
const SDK_LIB: &str = include_str!("../../../plugin-sdk/src/lib.rs");
const SDK_MANIFEST: &str = include_str!("../../../plugin-sdk/Cargo.toml");
const PY_HANDLER: &str = include_str!("../../../examples/python/ferry_handler.py");
const PY_TESTING: &str = include_str!("../../../examples/python/ferry_testing.py");
const JS_HANDLER: &str = include_str!("../../../examples/javascript/ferry-handler.js");
const JS_TESTING: &str = include_str!("../../../examples/javascript/ferry-testing.mjs");

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
    let handler = r##"//! A ferry plugin: reserves an order's stock, rejects an order without a quantity, and
//! publishes `StockReserved` to the stream granted as config `publish`.

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, log};

struct Plugin;

impl Handler for Plugin {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("OrderCreated")]
    }

    fn handle(event: Event) -> Result {
        let order: serde_json::Value = event.json()?; // bad JSON: rejected, dead-lettered at once
        let quantity = order["quantity"].as_u64().unwrap_or(0);
        if quantity == 0 {
            return Err(Error::reject("an order needs a quantity"));
        }
        log::info(&format!("reserving {quantity} for {}", event.id()));
        if let Some(stream) = config::get("publish") {
            let reserved = serde_json::json!({ "order": order["order_id"], "quantity": quantity });
            publish::send(Outgoing::json("StockReserved", &reserved)?.to_stream(&stream))?;
        }
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Plugin);

// `cargo test --target <your machine's target>`: no host, no Redis (see ferry_plugin_sdk::testing).
#[cfg(test)]
mod tests {
    use ferry_plugin_sdk::{Event, Handler, testing};

    #[test]
    fn an_order_is_reserved_and_its_follow_up_published_where_granted() {
        testing::reset();
        testing::set_config("publish", "stock");
        let event = Event::builder("OrderCreated").data(r#"{"order_id":"o-1","quantity":2}"#).build();
        super::Plugin::handle(event).expect("handled");
        assert_eq!(testing::published()[0].event_type, "StockReserved");
    }

    #[test]
    fn an_order_without_a_quantity_is_rejected() {
        testing::reset();
        let event = Event::builder("OrderCreated").data(r#"{"order_id":"o-1"}"#).build();
        assert!(super::Plugin::handle(event).expect_err("rejected").is_reject());
    }
}
"##;
    let readme = format!(
        r#"# {name}

A ferry plugin in Rust (made by `ferry new rust {name}`).

```sh
cargo test --target "$(rustc -vV | sed -n 's/^host: //p')"    # the handler's own tests
cargo build --release                                          # target/wasm32-wasip2/release/{krate}.wasm
ferry plugins invoke target/wasm32-wasip2/release/{krate}.wasm --event event.json \
  --config publish=stock --publish-stream stock                # one call, no Redis
cp target/wasm32-wasip2/release/{krate}.wasm /srv/ferry/plugins/{name}.wasm    # ferry run hot-loads it
```

Needs Rust 1.95+ with `rustup target add wasm32-wasip2`.
"#
    );
    vec![
        ("Cargo.toml", manifest),
        (".cargo/config.toml", "[build]\ntarget = \"wasm32-wasip2\"\n".to_string()),
        ("src/lib.rs", handler.to_string()),
        ("event.json", EVENT.to_string()),
        ("README.md", readme),
        (".gitignore", "/target\n".to_string()),
        ("ferry-plugin-sdk/Cargo.toml", bundled_sdk_manifest()),
        ("ferry-plugin-sdk/src/lib.rs", SDK_LIB.to_string()),
        ("ferry-plugin-sdk/wit/ferry.wit", WIT.to_string()),
    ]
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
    vec![
        ("app.py", PY_APP.to_string()),
        ("test_app.py", PY_TEST.to_string()),
        ("ferry_handler.py", PY_HANDLER.to_string()),
        ("ferry_testing.py", PY_TESTING.to_string()),
        ("wit/ferry.wit", WIT.to_string()),
        ("build.sh", python_build(name)),
        ("event.json", EVENT.to_string()),
        ("README.md", python_readme(name)),
        (".gitignore", ".venv/\n__pycache__/\n*.wasm\n".to_string()),
    ]
}

/// The Python plugin's handler (`app.py`).
const PY_APP: &str = r#""""A ferry plugin: reserves an order's stock, rejects an order without a quantity, and
publishes StockReserved to the stream granted as config "publish"."""

from ferry_handler import Event, FerryHandler, Reject, config, log, publish


class Handler(FerryHandler):
    subscribe = ["OrderCreated"]

    def on_event(self, event: Event) -> None:
        order = event.json()  # malformed JSON -> Reject
        quantity = int(order.get("quantity") or 0) if isinstance(order, dict) else 0
        if quantity == 0:
            raise Reject("an order needs a quantity")
        log.info(f"reserving {quantity} for {event.id}")
        stream = config.get("publish")
        if stream:
            publish.send_json("StockReserved", {"order": order.get("order_id"), "quantity": quantity}, stream=stream)
"#;

/// The Python plugin's own tests (`test_app.py`).
const PY_TEST: &str = r#""""The handler's own tests: no host, no Redis (python3 -m unittest)."""

import unittest

import ferry_testing as ft  # first: installs the test doubles for the host's interfaces
from ferry_handler import Reject

from app import Handler


class HandlerTest(unittest.TestCase):
    def test_an_order_is_reserved_and_its_follow_up_published_where_granted(self):
        ft.reset(config={"publish": "stock"})
        Handler().on_event(ft.event("OrderCreated", {"order_id": "o-1", "quantity": 2}))
        self.assertEqual(ft.published()[0].event_type, "StockReserved")

    def test_an_order_without_a_quantity_is_rejected(self):
        ft.reset()
        with self.assertRaises(Reject):
            Handler().on_event(ft.event("OrderCreated", {"order_id": "o-1"}))


if __name__ == "__main__":
    unittest.main()
"#;

/// The Python plugin's `build.sh`.
fn python_build(name: &str) -> String {
    format!(
        r#"#!/usr/bin/env bash
# Build {name}.wasm with componentize-py (installed, pinned, into .venv on first use).
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

A ferry plugin in Python (made by `ferry new python {name}`).

```sh
python3 -m unittest                     # the handler's own tests
./build.sh                              # {name}.wasm (componentize-py, pinned, into .venv)
ferry plugins invoke {name}.wasm --event event.json --config publish=stock --publish-stream stock
```
"#
    )
}

fn javascript(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app.js", JS_APP.to_string()),
        ("app.test.mjs", JS_TEST.to_string()),
        ("ferry-handler.js", JS_HANDLER.to_string()),
        ("ferry-testing.mjs", JS_TESTING.to_string()),
        ("wit/ferry.wit", WIT.to_string()),
        ("package.json", javascript_package(name)),
        ("build.mjs", javascript_build(name)),
        ("event.json", EVENT.to_string()),
        ("README.md", javascript_readme(name)),
        (".gitignore", "node_modules/\n*.wasm\n".to_string()),
    ]
}

/// The JavaScript plugin's handler (`app.js`).
const JS_APP: &str = r#"// A ferry plugin: reserves an order's stock, rejects an order without a quantity, and
// publishes StockReserved to the stream granted as config `publish`.
import { config, defineHandler, log, publish, Reject } from './ferry-handler.js';

export const handler = defineHandler({
  subscribe: ['OrderCreated'],

  handle(event) {
    const order = event.json(); // malformed JSON -> Reject
    const quantity = Number(order?.quantity ?? 0);
    if (!quantity) throw new Reject('an order needs a quantity');
    log.info(`reserving ${quantity} for ${event.id}`);
    const stream = config.get('publish');
    if (stream) publish.sendJson('StockReserved', { order: order.order_id, quantity }, { stream });
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

test('an order is reserved and its follow-up published where granted', () => {
  testing.reset({ config: { publish: 'stock' } });
  handler.handle(...testing.event('OrderCreated', { order_id: 'o-1', quantity: 2 }));
  assert.equal(testing.published()[0].eventType, 'StockReserved');
});

test('an order without a quantity is rejected', () => {
  testing.reset();
  assert.throws(() => handler.handle(...testing.event('OrderCreated', { order_id: 'o-1' })), (e) => e.payload?.tag === 'reject');
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
        r#"// Build {name}.wasm with componentize-js (`npm install` first). The `http` and
// `fetch-event` features are off: no wasi:http import (it needs a [subscribers.NAME.http] grant).
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
  disableFeatures: ['http', 'fetch-event'],
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

A ferry plugin in JavaScript (made by `ferry new javascript {name}`).

```sh
npm test                                # the handler's own tests (node:test, no host)
npm install && npm run build            # {name}.wasm (componentize-js)
ferry plugins invoke {name}.wasm --event event.json --config publish=stock --publish-stream stock
```
"#
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
