//! Host capabilities: what a plugin may import from ferry, one folder each, behind one trait.
//!
//! Spin's factors are the model. A capability ([`seam::Capability`]) reads its grant from
//! the subscriber's settings (deny by default), links its WIT interfaces into the linker for
//! the contract versions it belongs to, keeps a context in every store (its grant and its
//! per-call state), and hands back the effects that the settle commits with the event's
//! acknowledgement. [`registry!`] below is the one place every capability is registered, one
//! line each; it generates [`Grants`] (what a subscriber was granted), [`Ctxs`] (what one
//! store holds) and the functions that visit them all.
//!
//! Adding a capability: a folder here with its `mod.rs` implementing the trait (and one file
//! per WIT interface if it has several), its config field or table in
//! `config::SubscriberConfig` if the operator grants it, and one line in `registry!`.

pub mod config;
pub mod http;
pub mod log;
pub mod publish;
pub mod seam;
pub mod state;

use std::sync::Arc;

use wasmtime::component::Linker;

use self::seam::{Capability, Current, Services};
use crate::config::{Effective, LimitsConfig};
use crate::handler::Effects;
use crate::plugin::contract::Contract;

/// A store that holds every capability's context.
pub trait HasCapabilities: Send + 'static {
    /// The contexts.
    fn capabilities(&mut self) -> &mut Ctxs;
}

/// Registers every capability: `field: Type`, one line each. Generates [`Grants`] (with the
/// subscriber's name, version and limits), [`Ctxs`], [`link`] and [`imports`].
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
                pub $field: Arc<<$capability as Capability>::Grant>,
            )*
        }

        impl Grants {
            /// What `settings` grant subscriber `subscriber` running version `version`, with
            /// no host services (no schema registry).
            pub fn new(subscriber: &str, version: &str, settings: &Effective) -> Self {
                Self::with(subscriber, version, settings, &Services::default())
            }

            /// [`Grants::new`] with the host's `services`.
            pub fn with(subscriber: &str, version: &str, settings: &Effective, services: &Services) -> Self {
                let subscriber: Arc<str> = subscriber.into();
                Self {
                    version: version.into(),
                    limits: settings.limits,
                    $($field: Arc::new(<$capability as Capability>::grant(&subscriber, settings, services)),)*
                    subscriber,
                }
            }
        }

        /// What one store holds, per capability.
        pub struct Ctxs {
            $(
                #[doc = concat!("`", stringify!($field), "`'s context.")]
                pub $field: <$capability as Capability>::Ctx,
            )*
        }

        impl Ctxs {
            /// The contexts of a new store of a subscriber with `grants`.
            pub fn new(grants: &Grants) -> Self {
                Self { $($field: <$capability as Capability>::ctx(&grants.$field),)* }
            }

            /// A call on `current` begins.
            pub fn begin(&mut self, current: &Arc<Current>) {
                $(<$capability as Capability>::begin(&mut self.$field, current);)*
            }

            /// The handler succeeded: what every capability hands to the settle.
            pub fn finish(&mut self) -> Effects {
                let mut effects = Effects::default();
                $(<$capability as Capability>::finish(&mut self.$field, &mut effects);)*
                effects
            }

            /// The first grant the call needed and the operator has not given, if any.
            pub fn denied(&mut self) -> Option<String> {
                let mut denied = None;
                $(denied = denied.or_else(|| <$capability as Capability>::denied(&mut self.$field));)*
                denied
            }
        }

        /// Link every capability's interfaces of `contract`.
        pub fn link<T: HasCapabilities>(linker: &mut Linker<T>, contract: Contract) -> wasmtime::Result<()> {
            $(<$capability as Capability>::link(linker, contract, |s: &mut T| &mut s.capabilities().$field)?;)*
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
    state: state::State,
    http: http::Http,
}

impl Grants {
    /// Nothing granted but `limits`: no config values, no streams to publish to.
    pub fn none(subscriber: &str, version: &str, limits: LimitsConfig) -> Self {
        let settings = crate::config::SubscriberConfig { limits: Some(limits), ..Default::default() }.fill();
        Self::new(subscriber, version, &settings)
    }
}
