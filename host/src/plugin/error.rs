//! Why a file is not a usable plugin: one error type for every step of loading.

use std::path::PathBuf;

use super::contract::Contract;

/// Why a file is not a usable plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file name cannot name a subscriber.
    #[error("bad plugin file name: {0}")]
    Name(String),
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
    )]
    NotComponent,
    /// wasmtime refused to compile it.
    #[error("invalid component: {0}")]
    Compile(String),
    /// Built against a version of the contract this host does not implement.
    #[error("built against contract {package}@{found}, but this host implements {expected}")]
    WrongContract {
        /// The contract package.
        package: &'static str,
        /// Version the plugin uses.
        found: String,
        /// Every version the host implements, e.g. `ferry:plugin@0.1.0, ferry:plugin@0.2.0`.
        expected: String,
    },
    /// Does not export the handler of any version.
    #[error(
        "missing export `{}` (or the handler of another version this host implements: {}; exports: {found})",
        Contract::V0_1.handler_export(),
        Contract::all_names()
    )]
    MissingExport {
        /// What it exports instead.
        found: String,
    },
    /// A file in the upcaster directory that does not export the upcaster interface.
    #[error("not an upcaster: it does not export `ferry:plugin/upcast@0.2.0` (exports: {found})")]
    NotUpcaster {
        /// What it exports instead.
        found: String,
    },
    /// An upcaster's `steps` export failed.
    #[error("its `steps` export failed: {0}")]
    Steps(String),
    /// Imports something ferry does not provide.
    #[error("cannot link: {0}")]
    Link(String),
    /// Its `subscriptions` export failed.
    #[error("its `subscriptions` export failed: {0}")]
    Subscriptions(String),
    /// It declares no subscription and the operator gave none.
    #[error("declares no subscriptions")]
    NoSubscriptions,
    /// It would read a stream it was not granted, or too many.
    #[error("{0}")]
    NotGranted(String),
}
