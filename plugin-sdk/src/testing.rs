//! Test doubles for the host's imports, used when the crate is built for the machine's own
//! target (`cargo test`) instead of `wasm32-wasip2`: [`crate::config::get`] reads what
//! [`set_config`] granted, [`crate::publish::send`] and [`crate::log`] record what the handler
//! did, [`crate::state`] reads and writes a map ([`set_state`], [`state_value`]), and
//! [`crate::http`] requests get the replies [`respond`] set and are recorded ([`requests`]).
//! Everything is per thread (each test runs on its own); [`reset`] clears it.
//!
//! [`handle`] calls a handler as the host does: when it returns an error, its state writes
//! and follow-ups are dropped (its HTTP requests were sent all the same).
//!
//! ```
//! use ferry_plugin_sdk::{Event, testing};
//! testing::set_config("record_to", "records");
//! let event = Event::builder("OrderCreated").data(r#"{"sku":"A"}"#).build();
//! assert_eq!(event.event_type(), "OrderCreated");
//! assert_eq!(ferry_plugin_sdk::config::get("record_to").as_deref(), Some("records"));
//!
//! testing::set_state("stock:A", "3");
//! assert_eq!(ferry_plugin_sdk::state::increment("stock:A", -1).expect("granted"), 2);
//!
//! testing::respond("POST", "https://mail.example/messages", ferry_plugin_sdk::http::Response::new(202, "{}"));
//! let sent = ferry_plugin_sdk::http::Request::post("https://mail.example/messages").body("hi").send();
//! assert_eq!(sent.expect("a reply was set").status(), 202);
//! assert_eq!(testing::requests()[0].body, b"hi");
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::bindings::ferry::plugin::log::Level;
use crate::bindings::ferry::plugin::types::OutgoingEvent;

/// A follow-up the handler published.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Its type.
    pub event_type: String,
    /// The stream it was sent to (`None`: the handled event's).
    pub stream: Option<String>,
    /// Its payload.
    pub data: Vec<u8>,
    /// Its partition key.
    pub partition_key: Option<String>,
}

#[derive(Default)]
struct State {
    config: BTreeMap<String, String>,
    refused_streams: Vec<String>,
    published: Vec<Published>,
    logs: Vec<String>,
    state: BTreeMap<String, Vec<u8>>,
    state_refused: Option<String>,
    replies: Vec<(String, String, Result<crate::http::Response, crate::http::HttpError>)>,
    requests: Vec<crate::http::Request>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Grant config `key` = `value` to the handler under test.
pub fn set_config(key: &str, value: &str) {
    STATE.with(|s| s.borrow_mut().config.insert(key.to_string(), value.to_string()));
}

/// Make publishing to `stream` fail, as an operator's missing grant does.
pub fn refuse_stream(stream: &str) {
    STATE.with(|s| s.borrow_mut().refused_streams.push(stream.to_string()));
}

/// The follow-ups published so far.
pub fn published() -> Vec<Published> {
    STATE.with(|s| s.borrow().published.clone())
}

/// The log lines written so far, as `LEVEL message`.
pub fn logs() -> Vec<String> {
    STATE.with(|s| s.borrow().logs.clone())
}

/// Set the committed state of `key` before the handler runs.
pub fn set_state(key: &str, value: impl AsRef<[u8]>) {
    STATE.with(|s| s.borrow_mut().state.insert(key.to_string(), value.as_ref().to_vec()));
}

/// The state of `key` now (the handler's writes included).
pub fn state_value(key: &str) -> Option<Vec<u8>> {
    STATE.with(|s| s.borrow().state.get(key).cloned())
}

/// The whole state now.
pub fn state_all() -> BTreeMap<String, Vec<u8>> {
    STATE.with(|s| s.borrow().state.clone())
}

/// Make every state call fail with `reason`, as a host without the grant does.
pub fn refuse_state(reason: &str) {
    STATE.with(|s| s.borrow_mut().state_refused = Some(reason.to_string()));
}

/// Answer the handler's `method` request to `url` (exactly, query included) with `response`,
/// every time. A request with no reply set fails with `HttpRequestDenied`, as a host refuses
/// an origin it was not granted.
pub fn respond(method: &str, url: &str, response: crate::http::Response) {
    STATE.with(|s| s.borrow_mut().replies.push((method.to_string(), url.to_string(), Ok(response))));
}

/// Make the handler's `method` request to `url` fail with `error` (`ConnectionTimeout`, ...).
pub fn fail_request(method: &str, url: &str, error: &str) {
    let error = Err(crate::http::HttpError(error.to_string()));
    STATE.with(|s| s.borrow_mut().replies.push((method.to_string(), url.to_string(), error)));
}

/// The HTTP requests the handler sent so far.
pub fn requests() -> Vec<crate::http::Request> {
    STATE.with(|s| s.borrow().requests.clone())
}

/// Call `H::handle(event)` as the host does: when it fails, its state writes and follow-ups
/// are dropped (logs and HTTP requests stay: they happened).
pub fn handle<H: crate::Handler>(event: crate::Event) -> crate::Result {
    let before = STATE.with(|s| {
        let s = s.borrow();
        (s.state.clone(), s.published.len())
    });
    let result = H::handle(event);
    if result.is_err() {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.state = before.0;
            s.published.truncate(before.1);
        });
    }
    result
}

/// Forget config, follow-ups, logs, state, replies and requests.
pub fn reset() {
    STATE.with(|s| *s.borrow_mut() = State::default());
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn config(key: &str) -> Option<String> {
    STATE.with(|s| s.borrow().config.get(key).cloned())
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    STATE.with(|s| s.borrow_mut().logs.push(format!("{level} {message}")));
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn publish(event: OutgoingEvent) -> Result<String, String> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(stream) = event.stream.as_ref().filter(|st| s.refused_streams.contains(st)) {
            return Err(format!("publishing to stream `{stream}` is not allowed"));
        }
        s.published.push(Published {
            event_type: event.event_type,
            stream: event.stream,
            data: event.data,
            partition_key: event.partitionkey,
        });
        Ok(format!("test-follow-up-{}", s.published.len()))
    })
}

/// The `state` interface's double: the same functions as the generated bindings.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod state {
    use super::STATE;

    fn with<T>(
        f: impl FnOnce(&mut std::collections::BTreeMap<String, Vec<u8>>) -> Result<T, String>,
    ) -> Result<T, String> {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(reason) = &s.state_refused {
                return Err(reason.clone());
            }
            f(&mut s.state)
        })
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
        with(|m| Ok(m.get(key).cloned()))
    }

    pub fn get_many(keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        with(|m| Ok(keys.iter().map(|k| m.get(k).cloned()).collect()))
    }

    pub fn exists(key: &str) -> Result<bool, String> {
        with(|m| Ok(m.contains_key(key)))
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        with(|m| {
            m.insert(key.to_string(), value.to_vec());
            Ok(())
        })
    }

    pub fn delete(key: &str) -> Result<(), String> {
        with(|m| {
            m.remove(key);
            Ok(())
        })
    }

    pub fn increment(key: &str, delta: i64) -> Result<i64, String> {
        with(|m| {
            let now = match m.get(key) {
                None => 0,
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| format!("state key {key:?} does not hold an integer"))?,
            };
            let next = now.checked_add(delta).ok_or_else(|| format!("state key {key:?}: the increment overflows"))?;
            m.insert(key.to_string(), next.to_string().into_bytes());
            Ok(next)
        })
    }
}

/// The HTTP client's double.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod http {
    use super::STATE;
    use crate::http::{HttpError, Request, Response};

    pub fn send(request: Request) -> Result<Response, HttpError> {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let method = request.method.as_str();
            let reply = s.replies.iter().rev().find(|(m, u, _)| m.eq_ignore_ascii_case(method) && *u == request.url);
            let reply = reply.map(|(_, _, r)| r.clone());
            s.requests.push(request);
            reply.unwrap_or_else(|| Err(HttpError("HttpRequestDenied (no reply set with testing::respond)".into())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Request, Response};
    use crate::{Error, Event, Handler, Subscription, state};

    /// Reserves stock in state and tells a mail API, failing when the stock runs out.
    struct Reserve;

    impl Handler for Reserve {
        fn subscriptions() -> Vec<Subscription> {
            vec![Subscription::to("OrderCreated")]
        }
        fn handle(event: Event) -> crate::Result {
            let order: serde_json::Value = event.json()?;
            let quantity = order["quantity"].as_i64().unwrap_or(0);
            let left = state::increment("stock:A", -quantity)?;
            state::set_json("last", &order)?;
            let reply = Request::post("https://mail.example/m").json(&order)?.send()?;
            if left < 0 {
                return Err(Error::reject(format!("only {} left", left + quantity)));
            }
            assert_eq!(reply.status(), 202);
            crate::publish::send(crate::publish::Outgoing::bytes("Reserved", b"{}".to_vec()))?;
            Ok(())
        }
    }

    fn order(quantity: u32) -> Event {
        Event::builder("OrderCreated").data(format!(r#"{{"quantity":{quantity}}}"#)).build()
    }

    #[test]
    fn state_reads_see_writes_and_a_failed_call_leaves_none_behind() {
        reset();
        set_state("stock:A", "3");
        respond("POST", "https://mail.example/m", Response::new(202, "{}"));
        handle::<Reserve>(order(2)).expect("served");
        assert_eq!(state_value("stock:A"), Some(b"1".to_vec()));
        assert_eq!(
            state::get_json::<serde_json::Value>("last").expect("read"),
            Some(serde_json::json!({"quantity": 2}))
        );
        let error = handle::<Reserve>(order(5)).expect_err("not enough");
        assert!(error.is_reject(), "{error}");
        assert_eq!(state_value("stock:A"), Some(b"1".to_vec()), "the failed call's decrement is dropped");
        assert_eq!(published().len(), 1, "and so is its follow-up");
        assert_eq!(requests().len(), 2, "both calls sent their request: HTTP is at least once");
        assert_eq!(requests()[1].headers, vec![("content-type".to_string(), "application/json".to_string())]);
        assert!(state::exists("last").expect("exists"));
        state::delete("last").expect("delete");
        assert_eq!(state::get_many(&["last", "stock:A"]).expect("many"), vec![None, Some(b"1".to_vec())]);
    }

    #[test]
    fn a_request_without_a_reply_is_refused_and_retries_the_event() {
        reset();
        set_state("stock:A", "3");
        let error = handle::<Reserve>(order(1)).expect_err("no reply set");
        assert!(error.is_retry() && error.to_string().contains("HttpRequestDenied"), "{error}");
        assert_eq!(state_value("stock:A"), Some(b"3".to_vec()));
        fail_request("POST", "https://mail.example/m", "ConnectionTimeout");
        assert!(handle::<Reserve>(order(1)).expect_err("timeout").to_string().contains("ConnectionTimeout"));
    }

    #[test]
    fn state_without_the_grant_fails_every_call_as_a_retry() {
        reset();
        refuse_state("state is not granted to this plugin");
        let error = state::increment("n", 1).expect_err("refused");
        assert!(error.is_retry() && error.to_string().contains("not granted"), "{error}");
        reset();
        set_state("word", "seven");
        assert!(state::increment("word", 1).is_err(), "not an integer");
    }
}
