// The recorder: for every event it handles, it publishes a `Recorded` follow-up (to the
// stream granted as config `record_to`) describing what it saw, so tests can check exactly
// what reached the handler and how often. The payload's `act` field makes it misbehave:
//
//   ok | retry (until attempt `until`, optional `delay_ms`) | reject | panic (until `until`)
//   | loop | alloc | recurse | slow (`ms`, busy) | sleep (`ms`, in a WASI call, after `spin_ms` busy) | log_flood | stdout_flood | open_file | env
//   | socket (`port`) | publish_forbidden | publish_huge | follow (publish to `follow_to`,
//   then retry until `until`) | ambient (everything a process could find without a grant:
//   arguments, environment, stdin, files under any likely preopen, a UDP socket, a name
//   lookup, a TCP connection to `port`; the note is a JSON object of what it found)
//   | config (the values of `keys`, as a JSON object of the granted ones)

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, log};
use serde_json::{Value, json};

struct Recorder;

/// Calls this instance has handled: shows whether instances are reused.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn record(event: &Event, note: String) -> Result {
    let Some(stream) = config::get("record_to") else { return Ok(()) };
    let record = json!({
        "mark": MARK,
        "subscriber": event.subscriber(),
        "id": event.id(),
        "type": event.event_type(),
        "source": event.source(),
        "time": event.time(),
        "schemaversion": event.schema_version(),
        "datacontenttype": event.content_type(),
        "subject": event.subject(),
        "dataschema": event.data_schema(),
        "correlationid": event.correlation_id(),
        "causationid": event.causation_id(),
        "partitionkey": event.partition_key(),
        "data": String::from_utf8_lossy(event.data()),
        "attempt": event.attempt(),
        "stream": event.stream(),
        "entry_id": event.entry_id(),
        "note": note,
        "calls": CALLS.load(std::sync::atomic::Ordering::Relaxed),
        // When the handler ran (the host's wall clock): orders runs across host processes.
        "ran_at_ns": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    });
    publish::send(Outgoing::json("Recorded", &record)?.to_stream(&stream))?;
    Ok(())
}

/// What the guest can reach without a grant (the `ambient` act): each probe says what it got,
/// or `denied: <error>`.
fn ambient(port: u16) -> String {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let outcome = |r: std::io::Result<String>| r.unwrap_or_else(|e| format!("denied: {e}"));
    let mut stdin = [0u8; 64];
    // Paths a preopen would most likely be mounted at (the guest cannot list preopens
    // through std): any of them readable means the host granted a directory.
    let paths: Vec<&str> = ["/", ".", "/etc/hostname", "/tmp", "/proc/self/environ", "data"]
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok())
        .collect();
    json!({
        "args": std::env::args().collect::<Vec<_>>(),
        "env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>(),
        "cwd": outcome(std::env::current_dir().map(|d| d.display().to_string())),
        "stdin": outcome(std::io::stdin().read(&mut stdin).map(|n| format!("{n} bytes"))),
        "paths": paths,
        "udp": outcome(std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| {
            s.send_to(b"ping", ("127.0.0.1", port)).map(|n| format!("sent {n} bytes"))
        })),
        "dns": outcome(("localhost", port).to_socket_addrs().map(|a| format!("{} addresses", a.count()))),
        "tcp": outcome(std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| "connected".to_string())),
    })
    .to_string()
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    if std::hint::black_box(n) == u64::MAX { 0 } else { recurse(n + 1).wrapping_add(1) }
}

impl Handler for Recorder {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("*")]
    }

    fn handle(event: Event) -> Result {
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data: Value = serde_json::from_slice(event.data()).unwrap_or(Value::Null);
        // An operator "fixes" the plugin by granting `ignore_acts`: every event then succeeds.
        let act = match config::get("ignore_acts") {
            Some(_) => "ok",
            None => data.get("act").and_then(Value::as_str).unwrap_or("ok"),
        };
        let until = data.get("until").and_then(Value::as_u64).unwrap_or(u64::MAX) as u32;
        let attempt = event.attempt();
        let note = match act {
            "retry" if attempt < until => {
                return Err(match data.get("delay_ms").and_then(Value::as_u64) {
                    Some(ms) => Error::retry_after("asked to retry", std::time::Duration::from_millis(ms)),
                    None => Error::retry(format!("asked to retry at attempt {attempt}")),
                });
            }
            "reject" => return Err(Error::reject("rejected on purpose")),
            "panic" if attempt < until => panic!("boom on purpose at attempt {attempt}"),
            "loop" => loop {
                std::hint::black_box(0);
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => format!("recursed {}", recurse(0)),
            "slow" => {
                let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(100);
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < u128::from(ms) {
                    std::hint::black_box(0);
                }
                format!("slow {ms}ms")
            }
            "sleep" => {
                let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(100);
                // Optionally run guest code first (`spin_ms`, busy), past the first epoch tick.
                let spin = data.get("spin_ms").and_then(Value::as_u64).unwrap_or(0);
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < u128::from(spin) {
                    std::hint::black_box(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(ms));
                format!("slept {ms}ms")
            }
            "log_flood" => {
                for i in 0..100_000 {
                    log::info(&format!("flood line {i} {}", "x".repeat(1_000)));
                }
                "flooded the log".into()
            }
            "stdout_flood" => {
                let line = "y".repeat(1 << 16);
                for _ in 0..160 {
                    println!("{line}");
                }
                "flooded stdout".into()
            }
            "open_file" => match std::fs::read_to_string("/etc/hostname") {
                Ok(text) => format!("file: read {} bytes", text.len()),
                Err(e) => format!("file: denied: {e}"),
            },
            "env" => format!("env: {} variables", std::env::vars().count()),
            "socket" => {
                let port = data.get("port").and_then(Value::as_u64).unwrap_or(6379) as u16;
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => "socket: connected".into(),
                    Err(e) => format!("socket: denied: {e}"),
                }
            }
            "publish_forbidden" => match publish::send(Outgoing::bytes("Sneaky", b"{}".to_vec()).to_stream("forbidden")) {
                Ok(_) => "publish: allowed".into(),
                Err(e) => format!("publish: denied: {e}"),
            },
            "publish_huge" => {
                let huge = format!("\"{}\"", "z".repeat(2 << 20));
                let stream = config::get("record_to").unwrap_or_default();
                match publish::send(Outgoing::bytes("Huge", huge.into_bytes()).to_stream(&stream)) {
                    Ok(_) => "publish: allowed".into(),
                    Err(e) => format!("publish: denied: {e}"),
                }
            }
            "follow" => {
                if let Some(stream) = config::get("follow_to") {
                    publish::send(Outgoing::json("FollowUp", &json!({"cause": event.id()}))?.to_stream(&stream))?;
                }
                if attempt < until {
                    return Err(Error::retry("follow-up published, then failed"));
                }
                "followed".into()
            }
            "ambient" => ambient(data.get("port").and_then(Value::as_u64).unwrap_or(6379) as u16),
            "config" => {
                let keys = data.get("keys").and_then(Value::as_array).cloned().unwrap_or_default();
                let found: serde_json::Map<String, Value> = keys
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(|k| config::get(k).map(|v| (k.to_string(), Value::from(v))))
                    .collect();
                Value::Object(found).to_string()
            }
            _ => String::new(),
        };
        log::debug(&format!("recorded {} at attempt {attempt}", event.id()));
        record(&event, note)
    }
}

ferry_plugin_sdk::plugin!(Recorder);
