//! The `ferry` command line: argument definitions and the small commands.
//!
//! Every flag has a `FERRY_*` environment variable; flags override the config file.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::event::Event;
use crate::{dlq, host, outbox};

/// ferry: integration events from a Redis Streams outbox, handled by sandboxed WebAssembly
/// plugins.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: load plugins, consume streams, hot-reload on changes.
    Run(RunArgs),
    /// Publish one event to a stream and print its id.
    Publish(PublishArgs),
    /// Inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show streams, groups, lag, pending, retries and dead letters, straight from Redis.
    Status(crate::status::StatusArgs),
    /// Run the end-to-end demo on a local Redis (started if --redis is not given).
    Demo(crate::demo::DemoArgs),
    /// Run the benchmark and print its table (and JSON).
    Bench(crate::bench::BenchArgs),
    /// Relay a PostgreSQL outbox table to the streams; manage the table.
    Relay(crate::relay::command::RelayArgs),
}

/// `ferry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides the file).
    #[arg(long, env = "FERRY_REDIS")]
    pub redis: Option<String>,
    /// Plugin directory (overrides the file).
    #[arg(long, env = "FERRY_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Default stream (overrides the file).
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: Option<String>,
    /// Consumer name of this instance (overrides the file).
    #[arg(long, env = "FERRY_CONSUMER")]
    pub consumer: Option<String>,
    /// Admin endpoint address, "" to turn it off (overrides the file).
    #[arg(long, env = "FERRY_ADMIN")]
    pub admin: Option<String>,
    /// Compiled-artifact cache directory, "" to turn it off (overrides the file).
    #[arg(long, env = "FERRY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not watch the plugin directory.
    #[arg(long, env = "FERRY_NO_WATCH")]
    pub no_watch: bool,
}

impl RunArgs {
    /// The configuration: file (if any), then flags and environment on top.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.redis {
            config.redis = v.clone();
        }
        if let Some(v) = &self.plugins {
            config.plugins = v.clone();
        }
        if let Some(v) = &self.stream {
            config.stream = v.clone();
        }
        if let Some(v) = &self.consumer {
            config.consumer = Some(v.clone());
        }
        if let Some(v) = &self.admin {
            config.admin.listen = v.clone();
        }
        if let Some(v) = &self.cache_dir {
            config.cache_dir = Some(v.clone());
        }
        if self.no_watch {
            config.watch = false;
        }
        Ok(config)
    }
}

/// `ferry publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Event type.
    #[arg(long = "type")]
    pub event_type: String,
    /// Payload (JSON unless --content-type says otherwise).
    #[arg(long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the payload from a file.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// Stream to add the event to.
    #[arg(long, env = "FERRY_STREAM", default_value = "events")]
    pub stream: String,
    /// The emitting module.
    #[arg(long, default_value = "ferry-cli")]
    pub source: String,
    /// Partition key.
    #[arg(long)]
    pub key: Option<String>,
    /// Correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Causation id.
    #[arg(long)]
    pub causation_id: Option<String>,
    /// Subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Payload schema version.
    #[arg(long, default_value_t = 1)]
    pub schema_version: u32,
    /// Media type of the payload.
    #[arg(long, default_value = crate::event::JSON)]
    pub content_type: String,
    /// Redis URL.
    #[arg(long, env = "FERRY_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
}

/// `ferry plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Compile and validate a plugin file and print its subscriptions.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// List the plugins of a running host (through its admin endpoint).
    List {
        /// Admin endpoint of the running host.
        #[arg(long, env = "FERRY_ADMIN", default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `ferry dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        /// Only this subscriber's.
        #[arg(long)]
        subscriber: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Redis URL.
        #[arg(long, env = "FERRY_REDIS", default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// Show one dead letter by its entry id or event id.
    Show {
        /// Entry id or event id.
        id: String,
        /// Only look in this subscriber's dead letters.
        #[arg(long)]
        subscriber: Option<String>,
        /// Redis URL.
        #[arg(long, env = "FERRY_REDIS", default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// Deliver dead letters again to their subscriber only, attempts reset.
    Replay(DlqSelect),
    /// Delete dead letters.
    Purge(DlqSelect),
}

/// Which dead letters of which subscriber.
#[derive(Debug, Args)]
pub struct DlqSelect {
    /// The subscriber.
    #[arg(long)]
    pub subscriber: String,
    /// Entry ids or event ids.
    pub ids: Vec<String>,
    /// Every dead letter of the subscriber.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Redis URL.
    #[arg(long, env = "FERRY_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
}

impl DlqSelect {
    fn selection(&self) -> anyhow::Result<dlq::Selection> {
        match (self.all, self.ids.is_empty()) {
            (true, _) => Ok(dlq::Selection::All),
            (false, false) => Ok(dlq::Selection::Ids(self.ids.clone())),
            (false, true) => anyhow::bail!("name the dead letters to act on, or pass --all"),
        }
    }
}

/// Run a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = args.config()?;
            host::run(config, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => publish(args).await,
        Command::Plugins(PluginsCommand::Check { file }) => check(&file),
        Command::Plugins(PluginsCommand::List { admin, json }) => list_plugins(&admin, json).await,
        Command::Dlq(cmd) => dlq_command(cmd).await,
        Command::Status(args) => crate::status::run(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Relay(args) => crate::relay::command::run(args).await,
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let data = match (&args.data, &args.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => b"{}".to_vec(),
    };
    crate::keys::check_name("stream", &args.stream).map_err(anyhow::Error::msg)?;
    let mut event = Event::new(args.event_type, args.source, data);
    event.partitionkey = args.key;
    event.correlationid = args.correlation_id;
    event.causationid = args.causation_id;
    event.subject = args.subject;
    event.schemaversion = args.schema_version;
    event.datacontenttype = args.content_type;
    if crate::event::is_json(&event.datacontenttype) {
        serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .context("--data is not valid JSON (pass --content-type for other payloads)")?;
    }
    let (_, mut conn) = host::connect(&args.redis).await?;
    outbox::publish(&mut conn, &args.stream, &event).await.context("adding the event to the stream")?;
    println!("{}", event.id);
    Ok(ExitCode::SUCCESS)
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let engine = crate::plugin::Engine::new(&Default::default())?;
    match crate::plugin::Plugin::load(&engine, file, None) {
        Ok(plugin) => {
            println!("{}: ok (version {})", file.display(), plugin.version);
            if plugin.declared.is_empty() {
                println!("  declares no subscriptions (configure them in the host config)");
            }
            for s in &plugin.declared {
                let versions = if s.versions.is_empty() {
                    "all versions".to_string()
                } else {
                    format!("versions {:?}", s.versions)
                };
                let stream = s.stream.as_deref().unwrap_or("(default stream)");
                println!("  subscribes to {} ({versions}) on {stream}", s.event_type);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}

async fn list_plugins(admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    let body = crate::status::http_get(admin, "/api/plugins")
        .await
        .with_context(|| format!("asking the running host at {admin} (is `ferry run` up with its admin endpoint?)"))?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let plugins: Vec<host::PluginStatus> = serde_json::from_str(&body).context("reading the host's answer")?;
    let mut rows = vec![vec!["PLUGIN".into(), "VERSION".into(), "STATE".into(), "SUBSCRIPTIONS".into()]];
    for p in plugins {
        let subs: Vec<String> = p.subscriptions.iter().map(|s| format!("{}:{}", s.stream, s.event_type)).collect();
        let state = match &p.error {
            Some(e) => format!("{} ({e})", p.state),
            None => p.state.clone(),
        };
        rows.push(vec![p.name, p.version.unwrap_or_else(|| "-".into()), state, subs.join(", ")]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

async fn dlq_command(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { subscriber, limit, json, redis } => {
            let (_, mut conn) = host::connect(&redis).await?;
            let letters = dlq::list(&mut conn, subscriber.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                let mut rows = vec![vec![
                    "SUBSCRIBER".into(),
                    "STREAM".into(),
                    "ENTRY".into(),
                    "EVENT".into(),
                    "TYPE".into(),
                    "KIND".into(),
                    "ATTEMPTS".into(),
                    "REASON".into(),
                ]];
                for d in &letters {
                    rows.push(vec![
                        d.subscriber.clone(),
                        d.stream.clone(),
                        d.id.clone(),
                        d.event_id.clone(),
                        d.event_type.clone(),
                        d.kind.clone(),
                        d.attempts.clone(),
                        crate::plugin::sandbox::truncate(&d.reason, 60).to_string(),
                    ]);
                }
                print!("{}", table(&rows));
                println!("{} dead letter(s)", letters.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, subscriber, redis } => {
            let (_, mut conn) = host::connect(&redis).await?;
            match dlq::show(&mut conn, subscriber.as_deref(), &id).await? {
                Some(d) => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no dead letter with id {id}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        DlqCommand::Replay(select) => {
            let selection = select.selection()?;
            let (_, mut conn) = host::connect(&select.redis).await?;
            let n = dlq::replay(&mut conn, &select.subscriber, &selection, |done, total| {
                if total >= 200 {
                    eprint!("\rreplaying {done}/{total}");
                    let _ = std::io::stderr().flush();
                }
            })
            .await?;
            eprintln!();
            println!("replayed {n} dead letter(s) to {}", select.subscriber);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge(select) => {
            let selection = select.selection()?;
            let (_, mut conn) = host::connect(&select.redis).await?;
            let n = dlq::purge(&mut conn, &select.subscriber, &selection).await?;
            println!("purged {n} dead letter(s) of {}", select.subscriber);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Render rows as an aligned text table (first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// How long commands wait for Redis before giving up.
pub const REDIS_WAIT: Duration = Duration::from_secs(5);
