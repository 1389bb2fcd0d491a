//! Notifications module: sends a welcome message through a mail API when the users module
//! registers a user.
//!
//! The API's base URL is config `mail_url` (`POST {mail_url}/messages` with a JSON body);
//! the operator grants the origin with `[subscribers.welcome.http] allow = [...]`. The host
//! adds `Idempotency-Key: welcome:EVENT_ID` to the request, the same on every attempt: an HTTP
//! call is at least once (a retried event calls again), and the key is how the mail API
//! sends one message per user all the same. A 2xx is done, a 4xx is the API refusing this
//! message (rejected: dead-lettered with the reason), anything else is retried.

use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, http, log};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct UserRegistered {
    email: String,
    name: String,
}

#[derive(Serialize)]
struct Message<'a> {
    to: &'a str,
    name: &'a str,
    template: &'static str,
}

struct Welcome;

impl Handler for Welcome {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("UserRegistered")]
    }

    fn handle(event: Event) -> Result {
        let user: UserRegistered = event.json()?;
        let Some(api) = config::get("mail_url") else {
            return Err(Error::retry("no mail API: grant config `mail_url` (and its origin in http.allow)"));
        };
        let message = Message { to: &user.email, name: &user.name, template: "welcome" };
        let response =
            http::Request::post(&format!("{}/messages", api.trim_end_matches('/'))).json(&message)?.send()?;
        match response.status() {
            200..=299 => {
                log::info(&format!("sent welcome message to {} <{}>", user.name, user.email));
                Ok(())
            }
            status @ 400..=499 => {
                Err(Error::reject(format!("the mail API refused it ({status}): {}", response.text())))
            }
            status => Err(Error::retry(format!("the mail API answered {status}"))),
        }
    }
}

ferry_plugin_sdk::plugin!(Welcome);

// `cargo test --target x86_64-unknown-linux-gnu`: the mail API is faked by `testing::respond`.
#[cfg(test)]
mod tests {
    use ferry_plugin_sdk::http::Response;
    use ferry_plugin_sdk::{Event, Handler, testing};

    use super::Welcome;

    const API: &str = "http://mail.test/messages";

    fn registered() -> Event {
        Event::builder("UserRegistered").data(r#"{"email":"ada@example.com","name":"Ada"}"#).build()
    }

    #[test]
    fn a_registered_user_gets_one_message_posted_to_the_mail_api() {
        testing::reset();
        testing::set_config("mail_url", "http://mail.test/");
        testing::respond("POST", API, Response::new(202, "{}"));
        Welcome::handle(registered()).expect("sent");
        let sent = testing::requests();
        assert_eq!(sent.len(), 1);
        let body: serde_json::Value = serde_json::from_slice(&sent[0].body).expect("json");
        assert_eq!(body, serde_json::json!({"to": "ada@example.com", "name": "Ada", "template": "welcome"}));
    }

    #[test]
    fn a_refusal_is_rejected_and_a_server_error_or_timeout_retried() {
        testing::reset();
        testing::set_config("mail_url", "http://mail.test");
        testing::respond("POST", API, Response::new(422, "bad address"));
        assert!(Welcome::handle(registered()).expect_err("refused").is_reject());
        testing::respond("POST", API, Response::new(503, ""));
        assert!(Welcome::handle(registered()).expect_err("unavailable").is_retry());
        testing::fail_request("POST", API, "ConnectionTimeout");
        assert!(Welcome::handle(registered()).expect_err("timeout").is_retry());
    }
}
