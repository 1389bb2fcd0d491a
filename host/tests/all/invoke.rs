//! `ferry plugins invoke` as a plugin author runs it (issue 25 §3): one call, no Redis, state
//! seeded from a file and held in memory, real HTTP requests to the origins granted by
//! `--http-allow` (here a local server the test starts), and a report of the disposition,
//! follow-ups, state writes, HTTP calls and log lines, as text and as JSON.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use ferry_test_fixtures as fixtures;
use serde_json::Value;

use crate::support::ferry_bin;

/// A local HTTP/1.1 server answering every request with `status` and a short body, on a
/// thread of its own; the heads it received.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut head = String::new();
                let (mut length, mut chunked) = (0usize, false);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = n.trim().parse().unwrap_or(0);
                    }
                    chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
                    head.push_str(&line);
                }
                // Read the whole body before answering: a reply mid-body would cut the request.
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if chunked {
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "0\r\n" {
                            let _ = reader.read_line(&mut line);
                            break;
                        }
                    }
                }
                heads.lock().expect("lock").push(head);
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Self { port, seen }
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Run `ferry plugins invoke WASM ARGS...`: its success, stdout and stderr.
fn invoke(wasm: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ferry_bin()).args(["plugins", "invoke", wasm]).args(args).output().expect("running ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8").to_string()
}

fn json(out: &str, err: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"))
}

#[test]
fn invoke_runs_a_stateful_handler_on_seeded_state_and_reports_its_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let event =
        file(dir.path(), "event.json", r#"{"type":"Count","id":"e-1","partitionkey":"k1","data":{"act":"count"}}"#);
    let state = file(dir.path(), "state.json", r#"{"count": 41, "other": "kept"}"#);
    let common = ["--event", &event, "--state", &state, "--config", "record_to=records", "--publish-stream", "records"];
    let (ok, out, err) = invoke(fixtures::COUNTER, &[&common[..], &["--json"]].concat());
    assert!(ok, "{out}\n{err}");
    let report = json(&out, &err);
    assert_eq!(report["disposition"], "ack", "{report}");
    assert_eq!(
        report["state_writes"],
        serde_json::json!([{"key": "count", "value": "42"}, {"key": "k1", "value": "1"}]),
        "the seeded count, incremented; the partition's own count from nothing"
    );
    assert_eq!(report["state"], serde_json::json!({"count": "42", "k1": "1", "other": "kept"}));
    let follow_up: Value = serde_json::from_str(report["follow_ups"][0]["data"].as_str().expect("data")).expect("json");
    assert_eq!(follow_up["count"], 42, "the handler read the seeded state: {report}");

    let (ok, text, err) = invoke(fixtures::COUNTER, &common);
    assert!(ok, "{text}\n{err}");
    assert!(text.starts_with("ack\n") && text.contains(r#"state set "count" = 42"#), "{text}");
}

#[test]
fn invoke_reports_no_state_writes_for_a_rejected_event_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("dir");
    let event = file(dir.path(), "event.json", r#"{"type":"Count","data":{"act":"reject"}}"#);
    let (ok, out, err) = invoke(fixtures::COUNTER, &["--event", &event, "--json"]);
    assert!(!ok, "a rejection is not a success: {out}");
    let report = json(&out, &err);
    assert_eq!((report["disposition"].as_str(), report["kind"].as_str()), (Some("reject"), Some("handler-reject")));
    assert_eq!(report["state_writes"], serde_json::json!([]), "it incremented, then rejected: nothing is written");
    assert_eq!(report["state"], serde_json::json!({}));
}

#[test]
fn invoke_sends_real_requests_to_the_granted_origin_and_reports_them() {
    let server = Server::start(201);
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://127.0.0.1:{}/mail", server.port);
    let event = file(
        dir.path(),
        "event.json",
        &format!(r#"{{"type":"Fetch","id":"e-7","data":{{"url":"{url}","method":"POST","body":"hi"}}}}"#),
    );
    let origin = format!("http://127.0.0.1:{}", server.port);
    let (ok, out, err) = invoke(fixtures::FETCHER, &["--event", &event, "--http-allow", &origin, "--json"]);
    assert!(ok, "{out}\n{err}");
    let report = json(&out, &err);
    let calls = report["http_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{report}");
    assert_eq!((calls[0]["method"].as_str(), calls[0]["url"].as_str()), (Some("POST"), Some(url.as_str())));
    assert_eq!(calls[0]["status"], 201);
    assert!(calls[0]["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert_eq!(report["logs"][0]["level"], "INFO");
    assert_eq!(report["logs"][0]["message"], format!("POST {url}: 201, 5 bytes"));
    let heads = server.heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with("POST /mail HTTP/1.1"), "{heads:?}");
    assert!(heads[0].to_ascii_lowercase().contains("idempotency-key: fixture_fetcher:e-7"), "{heads:?}");

    let (ok, text, err) = invoke(fixtures::FETCHER, &["--event", &event, "--http-allow", &origin]);
    assert!(ok, "{text}\n{err}");
    assert!(text.contains(&format!("http POST {url} -> 201")) && text.contains("log INFO POST"), "{text}");
}

#[test]
fn invoke_refuses_what_the_grant_does_not_name() {
    let server = Server::start(200);
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://127.0.0.1:{}/x", server.port);
    let event = file(dir.path(), "event.json", &format!(r#"{{"type":"Fetch","data":{{"url":"{url}"}}}}"#));
    // No grant: refused at load, as a host refuses it, naming the flag.
    let (ok, out, err) = invoke(fixtures::FETCHER, &["--event", &event]);
    assert!(!ok && err.contains("wasi:http") && err.contains("--http-allow"), "{out}\n{err}");
    // Another port: the request is refused before anything is sent.
    let other = format!("http://127.0.0.1:{}", server.port.wrapping_add(1));
    let (ok, out, err) = invoke(fixtures::FETCHER, &["--event", &event, "--http-allow", &other, "--json"]);
    assert!(ok, "the handler records the error and acks: {out}\n{err}");
    let report = json(&out, &err);
    assert_eq!(report["http_calls"][0]["status"], Value::Null, "{report}");
    assert!(report["http_calls"][0]["outcome"].as_str().is_some_and(|o| o.starts_with("refused")), "{report}");
    assert!(report["logs"][0]["message"].as_str().is_some_and(|m| m.contains("HttpRequestDenied")), "{report}");
    assert!(server.heads().is_empty(), "nothing reached the server");
}
