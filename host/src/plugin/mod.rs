//! Plugins: everything that touches wasmtime.
//!
//! # Layout
//!
//! - [`load`]: a `.wasm` file into a validated, pre-instantiated [`Plugin`]; [`error`]: why a
//!   file is not one; [`cache`]: the compiled-artifact cache.
//! - [`contract`]: the versions of the `ferry:plugin` contract, side by side; [`bindings`]:
//!   the one `bindgen!` per version; [`instance`]: a component and its instances of
//!   whichever version.
//! - [`capability`]: what a plugin may import (`log`, `config`, `publish`, `state`, and
//!   `wasi:http` as `http`), one folder each behind one trait, registered in one place.
//! - [`engine`]: the one engine and its linker; [`schedule`]: the CPU permits and the epoch
//!   tick; [`throttle`]: a subscriber's adaptive limit of calls in flight.
//! - [`sandbox`]: a store's state; [`limiter`]: its bounds; [`pipe`]: its captured stdio;
//!   [`store`]: a store with its limiter and epoch callback.
//! - [`invoke`]: the [`invoke::Runner`], which runs a handler call (the `handler::Invoke`
//!   trait), with [`pool`] keeping instances and [`failure`] naming what went wrong.
//! - [`upcaster`]: plugins of the `upcaster` world, converting payloads between schema
//!   versions for `contract::upcast`.

pub mod bindings;
pub mod cache;
pub mod capability;
pub mod contract;
pub mod engine;
pub mod error;
pub mod failure;
pub mod instance;
pub mod invoke;
pub mod limiter;
pub mod load;
pub mod pipe;
pub mod pool;
pub mod sandbox;
pub mod schedule;
pub mod state;
pub mod store;
pub mod throttle;
pub mod upcaster;

pub use self::engine::Engine;
pub use self::error::PluginError;
pub use self::load::{Plugin, name_of, version_hash};
