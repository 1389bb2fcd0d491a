//! Host capabilities: what a plugin may import from ferry, one folder each, behind one trait.
//!
//! Spin's factors are the model. A capability links its WIT interfaces into the linker for
//! the contract versions it belongs to, reads its grant from the subscriber's settings
//! (deny by default), keeps per-call state in the store, and hands back the effects that the
//! settle commits with the event's acknowledgement. [`registry!`] below is the one place
//! every capability is registered, one line each; it generates [`Grants`] (what a subscriber
//! was granted), [`Calls`] (what one call holds) and the functions that visit them all.
//!
//! Adding a capability: a folder here with its `mod.rs` implementing [`Capability`] (and
//! one file per WIT interface if it has several), its config field or table in
//! `config::SubscriberConfig` if the operator grants it, and one line in `registry!`.

pub mod config;
pub mod log;
pub mod publish;

use std::sync::Arc;

use wasmtime::component::Linker;

use super::contract::Contract;
use super::sandbox::{Current, HostState};
use crate::config::{Effective, LimitsConfig};
use crate::handler::Effects;

/// One capability a plugin may import.
pub trait Capability {
    /// What the operator granted one subscriber, shared by all its instances.
    type Grant: std::fmt::Debug + Send + Sync + 'static;
    /// What one call holds while it runs; reset before every call.
    type Call: Default + Send + 'static;

    /// The interfaces this capability provides (names without package and version), each
    /// with what a plugin importing it needs, as `ferry plugins check` says it.
    const IMPORTS: &'static [(&'static str, &'static str)];

    /// The grant `settings` (the subscriber's effective settings) give.
    fn grant(settings: &Effective) -> Self::Grant;

    /// Link this capability's interfaces of `contract` into `linker`. A capability that a
    /// version does not have links nothing for it.
    fn link(linker: &mut Linker<HostState>, contract: Contract) -> wasmtime::Result<()>;

    /// The call is over and the handler succeeded: move what it produced into `effects`,
    /// written by the settle with the acknowledgement. Nothing by default.
    fn finish(_grant: &Self::Grant, _call: &mut Self::Call, _current: &Current, _effects: &mut Effects) {}
}

/// Registers every capability: `field: Type`, one line each. Generates [`Grants`] (with the
/// subscriber's name, version and limits), [`Calls`], [`link`] and [`imports`].
macro_rules! registry {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// Per-subscriber settings every instance of the plugin shares: who it is, its limits,
        /// and what each capability was granted.
        #[derive(Debug)]
        pub struct Grants {
            /// Subscriber name.
            pub subscriber: Arc<str>,
            /// Plugin version id (content hash).
            pub version: Arc<str>,
            /// Sandbox limits.
            pub limits: LimitsConfig,
            $(
                #[doc = concat!("What `", stringify!($field), "` was granted.")]
                pub $field: <$capability as Capability>::Grant,
            )*
        }

        impl Grants {
            /// What `settings` grant subscriber `subscriber` running version `version`.
            pub fn new(subscriber: &str, version: &str, settings: &Effective) -> Self {
                Self {
                    subscriber: subscriber.into(),
                    version: version.into(),
                    limits: settings.limits,
                    $($field: <$capability as Capability>::grant(settings),)*
                }
            }
        }

        /// What one call holds, per capability.
        #[derive(Default)]
        pub struct Calls {
            $(
                #[doc = concat!("`", stringify!($field), "`'s state.")]
                pub $field: <$capability as Capability>::Call,
            )*
        }

        impl Calls {
            /// The handler succeeded: what every capability hands to the settle.
            pub fn finish(&mut self, grants: &Grants, current: &Current) -> Effects {
                let mut effects = Effects::default();
                $(<$capability as Capability>::finish(&grants.$field, &mut self.$field, current, &mut effects);)*
                effects
            }
        }

        /// Link every capability's interfaces of `contract`.
        pub fn link(linker: &mut Linker<HostState>, contract: Contract) -> wasmtime::Result<()> {
            $(<$capability as Capability>::link(linker, contract)?;)*
            Ok(())
        }

        /// Every interface a capability provides, with what a plugin importing it needs.
        pub fn imports() -> impl Iterator<Item = (&'static str, &'static str)> {
            [$(<$capability as Capability>::IMPORTS),*].into_iter().flatten().copied()
        }
    };
}

registry! {
    log: log::Log,
    config: config::Config,
    publish: publish::Publish,
}

impl Grants {
    /// Nothing granted but `limits`: no config values, no streams to publish to.
    pub fn none(subscriber: &str, version: &str, limits: LimitsConfig) -> Self {
        let settings = crate::config::SubscriberConfig { limits: Some(limits), ..Default::default() }.fill();
        Self::new(subscriber, version, &settings)
    }
}
