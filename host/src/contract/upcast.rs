//! Upcasting: converting an event's payload between schema versions of its type, so a
//! subscriber that accepts only newer (or other) versions still gets the events producers
//! wrote at older ones.
//!
//! An upcaster is a plugin of its own world (`ferry:plugin/upcast@0.2.0`, loaded by
//! `plugin::upcaster`) that offers steps `(type, from, to)`. This module knows nothing of
//! wasm: it holds the active set of [`Convert`]ers, swapped whole on reload like the schema
//! registry, and finds the shortest chain of steps from an event's version to one a
//! subscriber accepts ([`Upcasters::plan`]). Applying a [`Plan`] converts the payload step by
//! step and checks the result against the target version's schema. The stored entry is never
//! rewritten: the converted event exists only for the handler's call, on every path that
//! reaches a handler (new, retried, replayed), because they all pass the same dispatch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use super::Registry;
use crate::event::Event;

/// One conversion an upcaster offers: a payload of `event_type` at `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Step {
    /// The event type.
    pub event_type: String,
    /// The version it converts from.
    pub from: u32,
    /// The version it converts to.
    pub to: u32,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}->{}", self.event_type, self.from, self.to)
    }
}

/// A future a converter returns.
pub type Converting<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;

/// What converts payloads: an upcaster plugin (`plugin::upcaster::Upcaster`), or a test's.
pub trait Convert: Send + Sync + std::fmt::Debug {
    /// Its name and version, for reasons and logs (`orders-upcaster 3f2a…`).
    fn name(&self) -> String;
    /// The steps it offers.
    fn steps(&self) -> &[Step];
    /// Convert `data` along `step` (one of [`Convert::steps`]), or say why not.
    fn convert<'a>(&'a self, step: &'a Step, data: &'a [u8]) -> Converting<'a>;
}

/// The active upcasters: each step offered by exactly one.
#[derive(Default)]
pub struct Upcasters {
    active: RwLock<Arc<Table>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters").field("steps", &self.steps()).finish()
    }
}

/// A step with the converter that offers it.
type Hop = (Step, Arc<dyn Convert>);

/// Steps by event type, each with its converter.
#[derive(Default)]
struct Table {
    by_type: BTreeMap<String, Vec<Hop>>,
}

/// Why a set of upcasters cannot be made active.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    /// Two upcasters offer the same step: which one runs would be an accident.
    #[error("step {step} is offered by both {first} and {second}: remove one")]
    Duplicate {
        /// The step.
        step: String,
        /// One upcaster.
        first: String,
        /// The other.
        second: String,
    },
    /// A step from a version to itself.
    #[error("step {0} converts a version to itself")]
    Loop(String),
}

impl Upcasters {
    /// Make `converters` the active set, or refuse it (the active set stays).
    pub fn replace(&self, converters: Vec<Arc<dyn Convert>>) -> Result<(), UpcastError> {
        let mut by_step: BTreeMap<Step, Arc<dyn Convert>> = BTreeMap::new();
        for c in converters {
            for step in c.steps() {
                if step.from == step.to {
                    return Err(UpcastError::Loop(step.to_string()));
                }
                if let Some(first) = by_step.get(step) {
                    return Err(UpcastError::Duplicate {
                        step: step.to_string(),
                        first: first.name(),
                        second: c.name(),
                    });
                }
                by_step.insert(step.clone(), c.clone());
            }
        }
        let mut table = Table::default();
        for (step, c) in by_step {
            table.by_type.entry(step.event_type.clone()).or_default().push((step, c));
        }
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        Ok(())
    }

    /// Every active step, sorted.
    pub fn steps(&self) -> Vec<Step> {
        let table = self.table();
        table.by_type.values().flatten().map(|(s, _)| s.clone()).collect()
    }

    fn table(&self) -> Arc<Table> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The shortest chain of steps from `from` to a version of `event_type` that `accepts`
    /// says yes to (among equally short ones, to the highest version), if any. `None` also when
    /// `from` itself is accepted: nothing to convert.
    pub fn plan(&self, event_type: &str, from: u32, accepts: impl Fn(u32) -> bool) -> Option<Plan> {
        if accepts(from) {
            return None;
        }
        let table = self.table();
        let steps = table.by_type.get(event_type)?;
        // Breadth first over versions; each version is reached by its shortest chain.
        let mut how: BTreeMap<u32, usize> = BTreeMap::new();
        let mut seen = BTreeSet::from([from]);
        let mut frontier = VecDeque::from([from]);
        let mut found: Option<u32> = None;
        while found.is_none() && !frontier.is_empty() {
            let mut next = VecDeque::new();
            for v in frontier {
                for (i, (step, _)) in steps.iter().enumerate() {
                    if step.from == v && seen.insert(step.to) {
                        how.insert(step.to, i);
                        next.push_back(step.to);
                    }
                }
            }
            found = next.iter().copied().filter(|v| accepts(*v)).max();
            frontier = next;
        }
        let mut v = found?;
        let mut hops = Vec::new();
        while v != from {
            let i = *how.get(&v)?;
            let (step, converter) = &steps[i];
            hops.push((step.clone(), converter.clone()));
            v = step.from;
        }
        hops.reverse();
        Some(Plan { hops })
    }
}

/// The chain of steps that converts one event for one subscriber.
#[derive(Clone)]
pub struct Plan {
    hops: Vec<Hop>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.hops.iter().map(|(s, _)| s.to_string())).finish()
    }
}

impl Plan {
    /// The version the chain ends at.
    pub fn target(&self) -> Option<u32> {
        self.hops.last().map(|(s, _)| s.to)
    }

    /// The steps, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.hops.iter().map(|(s, _)| s)
    }

    /// `event` converted along the chain, its `schemaversion` the target's, checked against
    /// the target schema when `contracts` has one (a `dataschema` naming the old version is
    /// dropped); or why it cannot be, naming the step and the upcaster.
    pub async fn apply(&self, event: &Event, contracts: Option<&Registry>) -> Result<Event, String> {
        let mut data = event.data.clone();
        for (step, converter) in &self.hops {
            data = converter
                .convert(step, &data)
                .await
                .map_err(|e| format!("upcasting {step} failed in {}: {e}", converter.name()))?;
        }
        let mut converted = event.clone();
        converted.data = data;
        if let Some(to) = self.target() {
            converted.schemaversion = to;
            converted.dataschema = None;
        }
        if let Some(contracts) = contracts {
            contracts.prepare(&mut converted).map_err(|e| format!("the upcast payload is invalid: {e}"))?;
        }
        Ok(converted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A converter that appends its step to a JSON array payload.
    #[derive(Debug)]
    struct Appender(String, Vec<Step>);

    impl Convert for Appender {
        fn name(&self) -> String {
            self.0.clone()
        }
        fn steps(&self) -> &[Step] {
            &self.1
        }
        fn convert<'a>(&'a self, step: &'a Step, data: &'a [u8]) -> Converting<'a> {
            Box::pin(async move {
                let mut v: Vec<String> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
                v.push(step.to_string());
                serde_json::to_vec(&v).map_err(|e| e.to_string())
            })
        }
    }

    fn step(t: &str, from: u32, to: u32) -> Step {
        Step { event_type: t.into(), from, to }
    }

    fn upcasters(steps: &[(u32, u32)]) -> Upcasters {
        let u = Upcasters::default();
        let c: Arc<dyn Convert> =
            Arc::new(Appender("u".into(), steps.iter().map(|(f, t)| step("T", *f, *t)).collect()));
        u.replace(vec![c]).expect("valid");
        u
    }

    #[test]
    fn the_shortest_chain_to_an_accepted_version_is_planned() {
        let u = upcasters(&[(1, 2), (2, 3), (3, 4), (1, 3)]);
        let plan = u.plan("T", 1, |v| v == 4).expect("a chain");
        let steps: Vec<String> = plan.steps().map(Step::to_string).collect();
        assert_eq!(steps, ["T@1->3", "T@3->4"]);
        assert_eq!(plan.target(), Some(4));
        // Among equally short chains, the highest accepted version.
        let plan = u.plan("T", 1, |v| v == 2 || v == 3).expect("a chain");
        assert_eq!(plan.target(), Some(3));
        assert!(u.plan("T", 1, |v| v == 1).is_none(), "accepted as it is");
        assert!(u.plan("T", 1, |v| v == 9).is_none(), "no chain");
        assert!(u.plan("Other", 1, |v| v == 2).is_none(), "no steps for the type");
    }

    #[tokio::test]
    async fn applying_a_plan_converts_step_by_step_and_sets_the_version() {
        let u = upcasters(&[(1, 2), (2, 3)]);
        let mut event = Event::new("T", "tests", "[]");
        event.schemaversion = 1;
        event.dataschema = Some("urn:T:1".into());
        let converted = u.plan("T", 1, |v| v == 3).expect("plan").apply(&event, None).await.expect("converted");
        assert_eq!(converted.data, br#"["T@1->2","T@2->3"]"#);
        assert_eq!((converted.schemaversion, converted.dataschema.as_deref(), &converted.id), (3, None, &event.id));
        // A step that fails names itself and its upcaster.
        let mut bad = event.clone();
        bad.data = b"{}".to_vec();
        let err = u.plan("T", 1, |v| v == 3).expect("plan").apply(&bad, None).await.expect_err("fails");
        assert!(err.starts_with("upcasting T@1->2 failed in u:"), "{err}");
    }

    #[test]
    fn a_step_offered_twice_or_to_itself_is_refused_and_the_active_set_stays() {
        let u = upcasters(&[(1, 2)]);
        let a: Arc<dyn Convert> = Arc::new(Appender("a".into(), vec![step("T", 2, 3)]));
        let b: Arc<dyn Convert> = Arc::new(Appender("b".into(), vec![step("T", 2, 3)]));
        let err = u.replace(vec![a.clone(), b]).expect_err("duplicate");
        assert!(err.to_string().contains("offered by both a and b"), "{err}");
        let same: Arc<dyn Convert> = Arc::new(Appender("s".into(), vec![step("T", 2, 2)]));
        assert!(matches!(u.replace(vec![same]), Err(UpcastError::Loop(_))));
        assert_eq!(u.steps(), [step("T", 1, 2)], "the active set stays");
        u.replace(vec![a]).expect("valid");
        assert_eq!(u.steps(), [step("T", 2, 3)]);
    }
}
