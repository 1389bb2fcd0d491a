//! Notifications module: sends a welcome message when the users module registers a user.

use ferry_plugin_sdk::{Event, Handler, Result, Subscription, log};
use serde::Deserialize;

#[derive(Deserialize)]
struct UserRegistered {
    email: String,
    name: String,
}

struct Welcome;

impl Handler for Welcome {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("UserRegistered")]
    }

    fn handle(event: Event) -> Result {
        let user: UserRegistered = event.json()?;
        log::info(&format!("sending welcome message to {} <{}>", user.name, user.email));
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Welcome);
