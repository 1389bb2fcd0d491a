//! The handler contract between the consume pipeline and whatever runs handlers.
//!
//! `consume` asks for one event to be handled and gets one outcome back; `plugin` runs a
//! WebAssembly handler to give it. Both import this module and nothing of each other, so the
//! pipeline can be driven by a native handler (the benchmark's baseline, tests) and the
//! plugin side knows nothing of Redis.

use crate::event::Event;

/// What a handled event leaves for the settle to write atomically with its acknowledgement.
/// Each capability adds its own (see `plugin::capability::Capability::finish`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Follow-up events queued through `publish`, in order.
    pub follow_ups: Vec<FollowUp>,
}

impl Effects {
    /// Whether the settle has nothing to write besides the acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.follow_ups.is_empty()
    }
}

/// A follow-up event queued through `publish`, written when the handled event is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    /// Target stream.
    pub stream: String,
    /// The event.
    pub event: Event,
}
