//! Test fixture: a handler that makes one outbound HTTP request through the standard
//! `wasi:http/outgoing-handler` (the `wasi` crate's raw bindings), built against
//! `ferry:plugin@0.2.0` (issue 25). The event's data says what to do:
//! `{"url": "http://127.0.0.1:PORT/path", "method": "GET" | "POST", "body": "...",
//! "times": N, "retry_below": N}`. It publishes a `Fetched` follow-up to config `record_to` with the
//! response's status and body length (`{"of", "attempt", "status", "bytes"}`), or the error
//! the host gave (`{"of", "attempt", "error"}`), then, when the delivery's attempt is below
//! `retry_below`, asks for a retry.
wit_bindgen::generate!({ world: "subscriber", path: "../../../plugin-sdk/wit-0.2.0" });

use exports::ferry::plugin::handler::{Delivery, Event, Guest, HandlerError, Subscription};
use ferry::plugin::types::{OutgoingEvent, RetryRequest};
use ferry::plugin::{config, log, publish};
use serde_json::{Value, json};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

struct Fetcher;

impl Guest for Fetcher {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription { event_type: "Fetch".into(), versions: Vec::new(), stream: None }]
    }

    fn handle(event: Event, delivery: Delivery) -> Result<(), HandlerError> {
        let data: Value = serde_json::from_slice(&event.data).map_err(|e| HandlerError::Reject(e.to_string()))?;
        let url = data["url"].as_str().unwrap_or_default();
        let method = data["method"].as_str().unwrap_or("GET");
        let body = data["body"].as_str().map(|b| b.as_bytes().to_vec());
        // `"times": N` makes the same request N times (the last one's outcome is recorded).
        let times = data["times"].as_u64().unwrap_or(1).max(1);
        let mut outcome = fetch(method, url, body.clone());
        for _ in 1..times {
            outcome = fetch(method, url, body.clone());
        }
        let record = match outcome {
            Ok((status, bytes)) => {
                log::write(log::Level::Info, &format!("{method} {url}: {status}, {bytes} bytes"));
                json!({"of": event.id, "attempt": delivery.attempt, "status": status, "bytes": bytes})
            }
            Err(error) => {
                log::write(log::Level::Warn, &format!("{method} {url}: {error}"));
                json!({"of": event.id, "attempt": delivery.attempt, "error": error})
            }
        };
        if let Some(stream) = config::get("record_to") {
            let out = OutgoingEvent {
                event_type: "Fetched".into(),
                stream: Some(stream),
                data: record.to_string().into_bytes(),
                datacontenttype: None,
                schemaversion: None,
                subject: None,
                partitionkey: None,
            };
            publish::send(&out).map_err(|e| HandlerError::Retry(RetryRequest { reason: e, delay_ms: None }))?;
        }
        if data["retry_below"].as_u64().is_some_and(|n| u64::from(delivery.attempt) < n) {
            let reason = format!("asked to retry attempt {}", delivery.attempt);
            return Err(HandlerError::Retry(RetryRequest { reason, delay_ms: Some(5) }));
        }
        Ok(())
    }
}

/// Send one request; the response's status and body length, or the error as text.
fn fetch(method: &str, url: &str, body: Option<Vec<u8>>) -> Result<(u16, usize), String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme in the url")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let request = OutgoingRequest::new(Fields::new());
    let method = if method == "POST" { Method::Post } else { Method::Get };
    request.set_method(&method).map_err(|()| "method")?;
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let outgoing = request.body().map_err(|()| "body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    // A write the host stopped (a body over its cap) is reported by the response's code,
    // when it has one; the write's own error otherwise.
    let mut unwritten = None;
    if let Some(bytes) = body {
        let stream = outgoing.write().map_err(|()| "body stream")?;
        for chunk in bytes.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                unwritten = Some(format!("writing the body: {e:?}"));
                break;
            }
        }
        drop(stream);
    }
    let finished = OutgoingBody::finish(outgoing, None).map_err(|e| code(&e));
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(code(&e)),
        Some(Err(())) | None => return Err("no response".into()),
    };
    if let Some(error) = unwritten {
        return Err(error);
    }
    finished?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "response body")?;
    let stream = incoming.stream().map_err(|()| "response stream")?;
    let mut bytes = 0;
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes += chunk.len(),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                // The host's reason (a cap, a timeout) is the stream's error; name it.
                let code = wasi::http::types::http_error_code(&e);
                return Err(code.map_or_else(|| e.to_debug_string(), |c| self::code(&c)));
            }
        }
    }
    Ok((status, bytes))
}

/// The `wasi:http` error code's name (`HttpRequestDenied`, `HttpResponseBodySize(Some(64))`).
fn code(e: &wasi::http::types::ErrorCode) -> String {
    let debug = format!("{e:?}");
    debug.strip_prefix("ErrorCode::").unwrap_or(&debug).to_string()
}

export!(Fetcher);
