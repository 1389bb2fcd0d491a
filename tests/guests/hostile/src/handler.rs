// A plugin that attacks the host's time rather than its authority (issue 12). Its
// `subscriptions()` misbehaves according to `AT_LOAD` (fixed at build time: the export takes
// no input: sleep, loop, or streams, 100,000 of them), and its handler according to the
// payload's `act`:
//
//   ok | sleep (`ms`, in a WASI host call) | loop | recurse (deep recursion through the
//   shadow stack in linear memory) | log_flood (1 MB lines until stopped)
//
// and the attacks of the security review (issue 23):
//
//   huge_reason (a retry with an 8 MiB reason) | huge_follow_ups (100 follow-ups with a
//   1 MiB type, subject and partition key each) | amplify (two copies of the event itself to
//   the stream it came from, so the chain doubles at every hop) | echo (one copy: a loop)

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, log};
use serde_json::Value;

struct Hostile;

#[inline(never)]
fn recurse(n: u64) -> u64 {
    // A frame too big for registers: each call takes 4 KiB of the shadow stack in linear
    // memory, so the shadow stack (not wasmtime's native stack) runs out first.
    let frame = std::hint::black_box([n as u8; 4096]);
    if std::hint::black_box(n) == u64::MAX { 0 } else { recurse(n + 1).wrapping_add(u64::from(frame[7])) }
}

impl Handler for Hostile {
    fn subscriptions() -> Vec<Subscription> {
        match AT_LOAD {
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "loop" => loop {
                std::hint::black_box(0);
            },
            "streams" => return (0..100_000).map(|i| Subscription::to("*").on_stream(format!("s{i}"))).collect(),
            _ => {}
        }
        vec![Subscription::to("Hostile")]
    }

    fn handle(event: Event) -> Result {
        let data: Value = serde_json::from_slice(event.data()).unwrap_or(Value::Null);
        match data.get("act").and_then(Value::as_str).unwrap_or("ok") {
            "sleep" => {
                let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(60_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            "loop" => loop {
                std::hint::black_box(0);
            },
            "recurse" => {
                std::hint::black_box(recurse(0));
            }
            "huge_reason" => return Err(Error::retry("r".repeat(8 << 20))),
            "huge_follow_ups" => {
                let huge = "t".repeat(1 << 20);
                for _ in 0..100 {
                    let _ = publish::send(Outgoing::bytes(&huge, b"{}".to_vec()).key(&huge));
                }
            }
            "amplify" | "echo" => {
                let copies = if data.get("act").and_then(Value::as_str) == Some("echo") { 1 } else { 2 };
                for _ in 0..copies {
                    publish::send(Outgoing::bytes(event.event_type(), event.data().to_vec()).to_stream(event.stream()))?;
                }
            }
            "log_flood" => {
                let line = "x".repeat(1 << 20);
                loop {
                    log::info(&line);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Hostile);
