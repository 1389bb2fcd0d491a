//! `ferry plugins invoke`: run one handler call on one event with no Redis and no host, and
//! print its outcome (the plugin author's inner loop, the same sandbox and limits as a host).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use ferry::event::Event;
use ferry::handler::{Invoke as _, Job, Outcome};
use ferry::plugin::capability::Grants;
use ferry::plugin::invoke::Runner;
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

/// Run `ferry plugins invoke`.
pub async fn run(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.event).with_context(|| format!("reading {}", args.event.display()))?;
    let event = event_from_json(&text)?;
    let mut config = BTreeMap::new();
    for pair in &args.config {
        let (k, v) = pair.split_once('=').with_context(|| format!("--config {pair}: expected KEY=VALUE"))?;
        config.insert(k.to_string(), v.to_string());
    }
    let engine_config = ferry::config::Config::default();
    let engine = ferry::plugin::Engine::new(&engine_config.engine)?;
    let limits = ferry::config::LimitsConfig::default();
    let plugin = ferry::plugin::Plugin::load(&engine, &args.file, None, &limits).await?;
    let settings = ferry::config::SubscriberConfig {
        config: Some(config),
        publish_streams: Some(args.publish_streams.clone()),
        limits: Some(limits),
        ..Default::default()
    }
    .fill();
    let contracts = match &args.schemas {
        Some(dir) => Some(Arc::new(
            ferry::contract::Registry::open(dir, ferry::config::ValidationConfig::default())
                .with_context(|| format!("loading the schemas in {}", dir.display()))?,
        )),
        None => None,
    };
    let services =
        ferry::plugin::capability::seam::Services { contracts: contracts.clone(), redis: None, http_metrics: None };
    let grants = Arc::new(Grants::with(&plugin.name, &plugin.version, &settings, &services));
    let runner = Runner::with_concurrency(engine, plugin, grants, 1);
    let invalid = contracts.as_ref().and_then(|c| c.validate(&event).err());
    let job = Arc::new(Job { stream: "events".into(), entry_id: "0-1".into(), attempt: args.attempt, event });
    let report = match invalid {
        Some(invalid) => Report {
            disposition: "reject",
            kind: Some("invalid-event".into()),
            reason: Some(invalid.to_string()),
            follow_ups: Vec::new(),
        },
        None => report(runner.handle(job).await)?,
    };
    print(&report, args.json)?;
    Ok(if report.disposition == "ack" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What the handler's `outcome` says, as `invoke` prints it.
fn report(outcome: Outcome) -> anyhow::Result<Report> {
    Ok(match outcome {
        Outcome::Handled { effects } => Report {
            disposition: "ack",
            kind: None,
            reason: None,
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
        Outcome::Failed { kind, reason, .. } => Report {
            disposition: match kind.as_str() {
                "handler-retry" => "retry",
                "handler-reject" => "reject",
                _ => "fail",
            },
            kind: Some(kind.as_str().to_string()),
            reason: Some(reason),
            follow_ups: Vec::new(),
        },
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
}
