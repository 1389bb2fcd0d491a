//! The `config` capability: values the operator granted a plugin, read by key.
//!
//! Grant: `[subscribers.NAME.config]` (or `[config]` in the plugin's `NAME.toml`), a table of
//! strings; none by default. A key the operator did not grant reads as absent, so a plugin
//! cannot tell an ungranted key from an unset one. No limits: the operator wrote the values.

use std::collections::BTreeMap;

use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::config::Effective;
use crate::plugin::bindings::{v0_1, v0_2};
use crate::plugin::contract::Contract;
use crate::plugin::sandbox::HostState;

/// The `config` capability.
pub struct Config;

impl Capability for Config {
    /// The granted values.
    type Grant = BTreeMap<String, String>;
    type Call = ();

    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "config",
        "reads config values: grant each under `[subscribers.NAME.config]` (or `[config]` in NAME.toml); ungranted keys read as absent",
    )];

    fn grant(settings: &Effective) -> Self::Grant {
        settings.config.clone()
    }

    fn link(linker: &mut Linker<HostState>, contract: Contract) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => v0_1::ferry::plugin::config::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
            Contract::V0_2 => v0_2::ferry::plugin::config::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
        }
    }
}

impl HostState {
    fn config_get(&self, key: &str) -> Option<String> {
        self.grants.config.get(key).cloned()
    }
}

impl v0_1::ferry::plugin::config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config_get(&key)
    }
}

impl v0_2::ferry::plugin::config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config_get(&key)
    }
}
