//! The versions of the `ferry:plugin` contract this host implements, side by side.
//!
//! A plugin is built against one version; the host links every version into one linker
//! (each capability links its interfaces for the versions it belongs to, see
//! [`super::capability`]) and picks the version a component exports its handler from. A
//! version only ever gains interfaces in a newer one, so a plugin built against `0.1.0`
//! keeps loading when `0.2.0` adds some. `instance::{Pre, Instance}` hide which version's
//! bindings a plugin uses from the code that runs it.

use wasmtime::component::Component;

/// The package name of the contract.
pub const PACKAGE: &str = "ferry:plugin";

/// One version of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contract {
    /// `ferry:plugin@0.1.0`: handler, log, config, publish.
    V0_1,
    /// `ferry:plugin@0.2.0`: the interfaces of 0.1.0 (new capabilities are added here only).
    V0_2,
}

impl Contract {
    /// Every version this host implements, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

    /// The version as it appears in interface names, e.g. `0.1.0`.
    pub fn version(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }

    /// The full name of `interface` in this version, e.g. `ferry:plugin/log@0.1.0`.
    pub fn interface(self, interface: &str) -> String {
        format!("{PACKAGE}/{interface}@{}", self.version())
    }

    /// The export every plugin of this version provides.
    pub fn handler_export(self) -> String {
        self.interface("handler")
    }

    /// The version whose handler `component` exports, if any.
    pub fn of(engine: &wasmtime::Engine, component: &Component) -> Option<Contract> {
        let exports: Vec<String> =
            component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
        Self::ALL.into_iter().find(|c| exports.contains(&c.handler_export()))
    }

    /// Every version, as `ferry:plugin@0.1.0, ferry:plugin@0.2.0`.
    pub fn all_names() -> String {
        Self::ALL.map(|c| format!("{PACKAGE}@{}", c.version())).join(", ")
    }
}

/// The guard of the versions side by side: a plugin built against 0.1.0 keeps loading and
/// behaves as the same handler built against 0.2.0.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::{EngineConfig, LimitsConfig, SubscriberConfig};
    use crate::event::Event;
    use crate::handler::Effects;
    use crate::handler::{Invoke as _, Job, Outcome};
    use crate::plugin::capability::Grants;
    use crate::plugin::invoke::Runner;
    use crate::plugin::{Engine, Plugin};

    /// Plugins are built against this file: changing it breaks every one of them. A new
    /// interface goes into a new version of the package instead.
    #[test]
    fn the_0_1_0_contract_is_unchanged_byte_for_byte() {
        use sha2::Digest as _;
        let wit = include_bytes!("../../../plugin-sdk/wit/ferry.wit");
        assert_eq!(
            crate::plugin::cache::hex(&sha2::Sha256::digest(wit)),
            "36c4d256757ce31bcdc48d267fee2c3f76e0e1be6852769382718d6a4a7c7ea9"
        );
    }

    async fn runner(engine: &Engine, path: &str) -> Runner {
        let limits = LimitsConfig::default();
        let plugin = Plugin::load(engine, Path::new(path), None, &limits).await.expect("load");
        let settings = SubscriberConfig {
            config: Some([("echo_to".to_string(), "echoes".to_string())].into()),
            publish_streams: Some(vec!["echoes".into()]),
            ..Default::default()
        }
        .fill();
        let grants = Arc::new(Grants::new("echo", &plugin.version, &settings));
        Runner::with_concurrency(engine.clone(), plugin, grants, 1)
    }

    /// What an outcome says, without the ids the host makes up.
    fn said(outcome: Outcome) -> String {
        match outcome {
            Outcome::Handled { effects: Effects { follow_ups, .. } } => follow_ups
                .iter()
                .map(|f| {
                    let e = &f.event;
                    format!("{} {} {} {:?} {:?}", f.stream, e.event_type, e.source, e.causationid, e.data)
                })
                .collect::<Vec<_>>()
                .join("; "),
            Outcome::Failed { kind, reason, delay_hint } => format!("{kind:?} {reason} {delay_hint:?}"),
            Outcome::HostError(e) => panic!("host error: {e}"),
        }
    }

    #[tokio::test]
    async fn plugins_of_0_1_0_and_0_2_0_load_and_behave_the_same() {
        let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
        let old = runner(&engine, ferry_test_fixtures::CONTRACT_V0_1).await;
        let new = runner(&engine, ferry_test_fixtures::CONTRACT_V0_2).await;
        assert_eq!(old.plugin().pre.contract(), Contract::V0_1);
        assert_eq!(new.plugin().pre.contract(), Contract::V0_2);
        assert_eq!(old.plugin().declared, new.plugin().declared, "the same subscriptions");
        for data in [r#"{"n":1}"#, r#"{"act":"reject"}"#, r#"{"act":"retry"}"#] {
            let mut event = Event::new("T", "test", data);
            event.subject = Some("s".into());
            let job = |event: Event| {
                Arc::new(Job { event, stream: "events".into(), entry_id: "1-0".into(), attempt: 2, prefetched: None })
            };
            let (a, b) = (old.handle(job(event.clone())).await, new.handle(job(event)).await);
            let (a, b) = (said(a), said(b));
            assert_eq!(a, b, "{data}");
            assert!(!a.is_empty(), "{data}: something happened");
        }
        let handled = said(
            old.handle(Arc::new(Job {
                event: Event::new("T", "test", "{}"),
                stream: "events".into(),
                entry_id: "1-0".into(),
                attempt: 1,
                prefetched: None,
            }))
            .await,
        );
        assert!(handled.starts_with("echoes Echoed echo "), "{handled}");
        // The recorder, the fixture most tests run, is built with the SDK, which binds 0.2.0
        // since SDK 0.2.0 (the 0.1.0 plugins are guarded by the contract-0.1 fixture above).
        let limits = LimitsConfig::default();
        let recorder = Plugin::load(&engine, Path::new(ferry_test_fixtures::RECORDER), None, &limits).await;
        assert_eq!(recorder.expect("load").pre.contract(), Contract::V0_2);
    }
}
