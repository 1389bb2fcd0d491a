//! `ferry plugins invoke`: run one handler call on one event with no Redis and no host, and
//! print its outcome (the plugin author's inner loop, the same sandbox and limits as a host):
//! the disposition, the follow-ups, the state writes (state held in memory, seeded by
//! `--state`), the outbound HTTP requests (real ones, to the origins `--http-allow` grants,
//! through the host's own grant code) and the log lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use ferry::event::Event;
use ferry::handler::{Invoke as _, Job, Outcome};
use ferry::plugin::capability::Grants;
use ferry::plugin::capability::seam::{Seen, Services, Watch};
use ferry::plugin::invoke::Runner;
use ferry::plugin::state::Memory;
use serde::Serialize;
use serde_json::Value;

/// `ferry plugins invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The `.wasm` file.
    pub file: PathBuf,
    /// The event, as JSON: `{"type": "OrderCreated", "data": {...}}` plus any CloudEvents
    /// attribute (`id`, `source`, `subject`, `partitionkey`, `correlationid`, `schemaversion`,
    /// `datacontenttype`); `data` is a JSON value, or a string for other content types.
    #[arg(long)]
    pub event: PathBuf,
    /// A config value granted to the plugin (`KEY=VALUE`, repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// A stream the plugin may publish to (repeatable; default: the config value of
    /// `record_to`/`publish` when given, else none).
    #[arg(long = "publish-stream")]
    pub publish_streams: Vec<String>,
    /// The attempt to deliver the event with.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// A schema directory (`schemas/<type>/<version>.json`): the event is checked against its
    /// type's contract before the handler runs (an invalid one is reported as the
    /// `invalid-event` dead letter a host would make of it), and so is every follow-up.
    #[arg(long, value_name = "DIR")]
    pub schemas: Option<PathBuf>,
    /// The handler's state before the call, a JSON object of key → value: a string value is
    /// stored as its UTF-8 bytes, any other value as its JSON text (`{"stock:sku-1": 5}`
    /// stores `5`). Default: empty. State is always granted here, held in memory.
    #[arg(long, value_name = "STATE.json")]
    pub state: Option<PathBuf>,
    /// An origin the plugin may send HTTP requests to (`scheme://host[:port]`, the grammar of
    /// `[subscribers.NAME.http] allow`; repeatable). Requests are real; without one, a plugin
    /// that imports `wasi:http` is refused as a host would refuse it.
    #[arg(long = "http-allow", value_name = "URL", num_args = 1..)]
    pub http_allow: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `invoke` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// `ack`, `retry`, `reject` (dead-lettered at once) or `fail` (a trap or a limit).
    disposition: &'static str,
    /// The failure kind, if it failed.
    kind: Option<String>,
    /// Why, if it failed.
    reason: Option<String>,
    /// Follow-ups: stream, type and payload (text).
    follow_ups: Vec<Value>,
    /// The state writes of a handled call: `{"key", "value"}`, `value` null for a delete
    /// (text when UTF-8, else `value_hex`). A failed call writes nothing.
    state_writes: Vec<Value>,
    /// The state after the call, in the `--state` file's form (for the next call); a value
    /// that is not UTF-8 as `{"hex": ...}`.
    state: BTreeMap<String, Value>,
    /// Outbound HTTP requests: method, url, status, outcome, duration_ms.
    http_calls: Vec<Value>,
    /// Log lines: level and message.
    logs: Vec<Value>,
}

/// The event described by `text` (see [`InvokeArgs::event`]).
fn event_from_json(text: &str) -> anyhow::Result<Event> {
    let v: Value = serde_json::from_str(text).context("the event file is not JSON")?;
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    let event_type = field("type").context("the event has no `type`")?;
    let content_type = field("datacontenttype").unwrap_or_else(|| ferry::event::JSON.to_string());
    let data = match v.get("data") {
        None => b"{}".to_vec(),
        Some(Value::String(s)) if !ferry::event::is_json(&content_type) => s.clone().into_bytes(),
        Some(value) => serde_json::to_vec(value)?,
    };
    let mut event = Event::new(event_type, field("source").unwrap_or_else(|| "ferry-invoke".into()), data);
    if let Some(id) = field("id") {
        event.id = id;
    }
    event.datacontenttype = content_type;
    event.subject = field("subject");
    event.partitionkey = field("partitionkey");
    event.correlationid = field("correlationid");
    event.causationid = field("causationid");
    if let Some(n) = v.get("schemaversion").and_then(Value::as_u64) {
        event.schemaversion = u32::try_from(n).context("schemaversion is too large")?;
    }
    Ok(event)
}

/// The state in the `--state` file (see [`InvokeArgs::state`]).
fn state_from_json(text: &str) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let v: Value = serde_json::from_str(text).context("the state file is not JSON")?;
    let Value::Object(map) = v else { anyhow::bail!("the state file is not a JSON object of key → value") };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A state write as JSON: the value as text when it is UTF-8, else its hex; null: deleted.
fn shown(key: &str, value: Option<&[u8]>) -> Value {
    match value.map(|v| (v, std::str::from_utf8(v))) {
        None => serde_json::json!({ "key": key, "value": null }),
        Some((_, Ok(text))) => serde_json::json!({ "key": key, "value": text }),
        Some((bytes, Err(_))) => serde_json::json!({ "key": key, "value_hex": hex(bytes) }),
    }
}

/// The subscriber settings `args` grant.
fn settings(args: &InvokeArgs) -> anyhow::Result<ferry::config::Effective> {
    let mut config = BTreeMap::new();
    for pair in &args.config {
        let (k, v) = pair.split_once('=').with_context(|| format!("--config {pair}: expected KEY=VALUE"))?;
        config.insert(k.to_string(), v.to_string());
    }
    let http = (!args.http_allow.is_empty())
        .then(|| ferry::config::HttpConfig { allow: args.http_allow.clone(), ..Default::default() });
    Ok(ferry::config::SubscriberConfig {
        config: Some(config),
        publish_streams: Some(args.publish_streams.clone()),
        limits: Some(ferry::config::LimitsConfig::default()),
        state: Some(ferry::config::StateSetting::On(true)),
        http,
        ..Default::default()
    }
    .fill())
}

/// Run `ferry plugins invoke`.
pub async fn run(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.event).with_context(|| format!("reading {}", args.event.display()))?;
    let event = event_from_json(&text)?;
    let seed = match &args.state {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            state_from_json(&text).with_context(|| format!("reading {}", path.display()))?
        }
        None => BTreeMap::new(),
    };
    let settings = settings(&args)?;
    let engine = ferry::plugin::Engine::new(&ferry::config::Config::default().engine)?;
    let plugin = ferry::plugin::Plugin::load(&engine, &args.file, None, &settings.limits).await?;
    if let Err(e) =
        ferry::plugin::capability::http::check(&engine.engine, plugin.pre.component(), &plugin.name, &settings)
    {
        anyhow::bail!("{e}{}", if args.http_allow.is_empty() { " (here: --http-allow URL)" } else { "" });
    }
    let contracts = match &args.schemas {
        Some(dir) => Some(Arc::new(
            ferry::contract::Registry::open(dir, ferry::config::ValidationConfig::default())
                .with_context(|| format!("loading the schemas in {}", dir.display()))?,
        )),
        None => None,
    };
    let (memory, watch) = (Memory::with(seed), Watch::default());
    let services = Services {
        contracts: contracts.clone(),
        memory: Some(memory.clone()),
        watch: Some(watch.clone()),
        ..Default::default()
    };
    let grants = Arc::new(Grants::with(&plugin.name, &plugin.version, &settings, &services));
    let runner = Runner::with_concurrency(engine, plugin, grants, 1);
    let invalid = contracts.as_ref().and_then(|c| c.validate(&event).err());
    let job = Arc::new(Job {
        stream: "events".into(),
        entry_id: "0-1".into(),
        attempt: args.attempt,
        event,
        prefetched: None,
    });
    let mut report = match invalid {
        Some(invalid) => Report::failed("reject", "invalid-event".into(), invalid.to_string()),
        None => report(runner.handle(job).await)?,
    };
    report.watched(&watch.seen(), &memory);
    print(&report, args.json)?;
    Ok(if report.disposition == "ack" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

impl Report {
    fn failed(disposition: &'static str, kind: String, reason: String) -> Self {
        Self {
            disposition,
            kind: Some(kind),
            reason: Some(reason),
            follow_ups: Vec::new(),
            state_writes: Vec::new(),
            state: BTreeMap::new(),
            http_calls: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Add what the capabilities saw, and the state after the call.
    fn watched(&mut self, seen: &Seen, memory: &Memory) {
        self.state_writes = seen.writes.iter().map(|(k, v)| shown(k, v.as_deref())).collect();
        self.state = memory
            .values()
            .into_iter()
            .map(|(k, v)| {
                let value = String::from_utf8(v)
                    .map_or_else(|e| serde_json::json!({ "hex": hex(e.as_bytes()) }), Value::String);
                (k, value)
            })
            .collect();
        self.http_calls = seen
            .requests
            .iter()
            .map(|r| {
                serde_json::json!({
                    "method": r.method,
                    "url": r.url,
                    "status": r.status,
                    "outcome": r.outcome,
                    "duration_ms": r.took.as_secs_f64() * 1000.0,
                })
            })
            .collect();
        self.logs = seen.lines.iter().map(|l| serde_json::json!({ "level": l.level, "message": l.message })).collect();
    }
}

/// What the handler's `outcome` says, as `invoke` prints it.
fn report(outcome: Outcome) -> anyhow::Result<Report> {
    Ok(match outcome {
        Outcome::Handled { effects } => Report {
            disposition: "ack",
            kind: None,
            reason: None,
            state_writes: Vec::new(),
            state: BTreeMap::new(),
            http_calls: Vec::new(),
            logs: Vec::new(),
            follow_ups: effects
                .follow_ups
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "stream": f.stream,
                        "type": f.event.event_type,
                        "id": f.event.id,
                        "partitionkey": f.event.partitionkey,
                        "data": String::from_utf8_lossy(&f.event.data),
                    })
                })
                .collect(),
        },
        Outcome::Failed { kind, reason, .. } => {
            let disposition = match kind.as_str() {
                "handler-retry" => "retry",
                "handler-reject" => "reject",
                _ => "fail",
            };
            Report::failed(disposition, kind.as_str().to_string(), reason)
        }
        Outcome::HostError(e) => anyhow::bail!("the handler could not be run: {e}"),
    })
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match (&report.kind, &report.reason) {
            (Some(kind), Some(reason)) => println!("{} ({kind}): {reason}", report.disposition),
            _ => println!("{}", report.disposition),
        }
        for f in &report.follow_ups {
            println!("  follow-up {} to {}: {}", f["type"], f["stream"], f["data"]);
        }
        for w in &report.state_writes {
            match (&w["value"], &w["value_hex"]) {
                (Value::String(v), _) => println!("  state set {} = {v}", w["key"]),
                (_, Value::String(hex)) => println!("  state set {} = 0x{hex}", w["key"]),
                _ => println!("  state delete {}", w["key"]),
            }
        }
        for c in &report.http_calls {
            let ms = c["duration_ms"].as_f64().unwrap_or(0.0);
            let result =
                c["status"].as_u64().map_or_else(|| c["outcome"].as_str().unwrap_or("").to_string(), |s| s.to_string());
            println!(
                "  http {} {} -> {result} ({ms:.1} ms)",
                c["method"].as_str().unwrap_or(""),
                c["url"].as_str().unwrap_or("")
            );
        }
        for l in &report.logs {
            println!("  log {} {}", l["level"].as_str().unwrap_or(""), l["message"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_file_names_its_type_and_holds_json_data() {
        let e = event_from_json(r#"{"type":"OrderCreated","data":{"n":1},"partitionkey":"k"}"#).expect("event");
        assert_eq!((e.event_type.as_str(), e.data.as_slice()), ("OrderCreated", br#"{"n":1}"#.as_slice()));
        assert_eq!(e.partitionkey.as_deref(), Some("k"));
        let text = event_from_json(r#"{"type":"T","datacontenttype":"text/plain","data":"hi"}"#).expect("event");
        assert_eq!(text.data, b"hi");
        assert!(event_from_json(r#"{"data":{}}"#).is_err(), "no type");
    }

    #[test]
    fn the_state_file_stores_strings_as_utf8_and_other_values_as_json_text() {
        let state = state_from_json(r#"{"name":"Ada","n":5,"doc":{"a":[1]}}"#).expect("state");
        assert_eq!(state["name"], b"Ada");
        assert_eq!(state["n"], b"5", "increment reads it as an integer");
        assert_eq!(state["doc"], br#"{"a":[1]}"#);
        assert!(state_from_json("[1]").is_err(), "an object of key -> value");
        assert_eq!(shown("k", Some(&[0xff, 0x00])), serde_json::json!({"key": "k", "value_hex": "ff00"}));
        assert_eq!(shown("k", None), serde_json::json!({"key": "k", "value": null}), "a delete");
    }
}
