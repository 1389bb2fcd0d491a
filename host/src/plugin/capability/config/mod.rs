//! The `config` capability: values the operator granted a plugin, read by key.
//!
//! Grant: `[subscribers.NAME.config]` (or `[config]` in the plugin's `NAME.toml`), a table of
//! strings; none by default. A key the operator did not grant reads as absent, so a plugin
//! cannot tell an ungranted key from an unset one. No limits: the operator wrote the values.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::seam::{Capability, Current};
use crate::config::Effective;
use crate::plugin::bindings::{v0_1, v0_2};
use crate::plugin::contract::Contract;

/// The `config` capability.
pub struct Config;

/// A store's view of the granted values.
pub struct ConfigCtx {
    values: Arc<BTreeMap<String, String>>,
}

impl Capability for Config {
    /// The granted values.
    type Grant = BTreeMap<String, String>;
    type Ctx = ConfigCtx;

    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "config",
        "reads config values: grant each under `[subscribers.NAME.config]` (or `[config]` in NAME.toml); ungranted keys read as absent",
    )];

    fn grant(_subscriber: &Arc<str>, settings: &Effective, _services: &super::seam::Services) -> Self::Grant {
        settings.config.clone()
    }

    fn ctx(grant: &Arc<Self::Grant>) -> ConfigCtx {
        ConfigCtx { values: grant.clone() }
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        contract: Contract,
        get: fn(&mut T) -> &mut ConfigCtx,
    ) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => v0_1::ferry::plugin::config::add_to_linker::<T, HasSelf<ConfigCtx>>(linker, get),
            Contract::V0_2 => v0_2::ferry::plugin::config::add_to_linker::<T, HasSelf<ConfigCtx>>(linker, get),
        }
    }

    fn begin(_ctx: &mut ConfigCtx, _current: &Arc<Current>) {}
}

impl v0_1::ferry::plugin::config::Host for ConfigCtx {
    fn get(&mut self, key: String) -> Option<String> {
        self.values.get(&key).cloned()
    }
}

impl v0_2::ferry::plugin::config::Host for ConfigCtx {
    fn get(&mut self, key: String) -> Option<String> {
        self.values.get(&key).cloned()
    }
}
