//! First-party plugin: logs every event it receives (type, id, source, size) at info level.
//!
//! Useful to watch a stream while developing. It subscribes to every type (`*`); narrow it
//! with `subscriptions` in its `event-logger.toml` beside the `.wasm`.

use ferry_plugin_sdk::{Event, Handler, Result, Subscription, log};

struct EventLogger;

impl Handler for EventLogger {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("*")]
    }

    fn handle(event: Event) -> Result {
        log::info(&format!(
            "{} {} v{} from {} ({} bytes, attempt {})",
            event.event_type(),
            event.id(),
            event.schema_version(),
            event.source(),
            event.data().len(),
            event.attempt()
        ));
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(EventLogger);
