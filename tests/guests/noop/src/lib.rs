//! Benchmark fixture: parses the JSON payload (the work a real handler does at least) and
//! acknowledges.
use ferry_plugin_sdk::{Event, Handler, Result, Subscription};

struct Noop;

impl Handler for Noop {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("*")]
    }

    fn handle(event: Event) -> Result {
        let value: serde_json::Value = event.json()?;
        std::hint::black_box(value);
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Noop);
