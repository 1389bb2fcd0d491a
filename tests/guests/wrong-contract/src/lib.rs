//! Test fixture: a handler built against another version of the contract (9.0.0).
wit_bindgen::generate!({ world: "subscriber", path: "wit" });

use exports::ferry::plugin::handler::{Delivery, Event, Guest, HandlerError, Subscription};

struct Old;

impl Guest for Old {
    fn subscriptions() -> Vec<Subscription> {
        Vec::new()
    }
    fn handle(_event: Event, _delivery: Delivery) -> Result<(), HandlerError> {
        Ok(())
    }
}

export!(Old);
