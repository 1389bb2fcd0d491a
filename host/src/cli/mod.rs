//! The `ferry` command line: argument definitions, the configuration every command reads,
//! and dispatch to one module per command.
//!
//! Every command reads the same configuration with the same precedence as `ferry run`:
//! flags, then `FERRY_*` environment variables, then the `--config` file, then the built-in
//! defaults. So `ferry status --config ferry.toml` talks to the Redis the host uses.

mod audit;
mod bench;
mod demo;
mod dlq;
mod find;
mod invoke;
mod new;
mod plugins;
mod publish;
mod relay;
mod run;
mod schemas;
mod state;
mod status;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry::config::Config;

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

impl From<LogFormat> for ferry::telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: load plugins, consume streams, hot-reload on changes.
    Run(run::RunArgs),
    /// Publish one event to a stream and print its id.
    Publish(publish::PublishArgs),
    /// Inspect plugins, or run one on an event.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Start a plugin project (Rust, Python or JavaScript) that builds and passes its tests
    /// as generated, with everything it needs written into it (no ferry checkout needed).
    New(new::NewArgs),
    /// Inspect, replay, purge and edit dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Show the audit trail: who replayed, purged or edited which dead letters, and when.
    Audit(audit::AuditArgs),
    /// Find an event by id or correlation id: where it is for each subscriber, and the
    /// follow-ups it caused.
    Find(find::FindArgs),
    /// Show streams, groups, lag, pending, retries and dead letters, straight from Redis.
    Status(status::StatusArgs),
    /// Run the end-to-end demo on a local Redis (started if --redis is not given).
    Demo(demo::DemoArgs),
    /// Run the benchmark and print its table (and JSON).
    Bench(bench::BenchArgs),
    /// Relay a PostgreSQL outbox table to the streams; manage the table.
    Relay(relay::RelayArgs),
    /// Check the event schemas (compatibility, for CI) and generate their documents.
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// List, show and repair a subscriber's handler state (`state = true`).
    #[command(subcommand)]
    State(state::StateCommand),
}

impl Command {
    /// The log filter when `FERRY_LOG` is unset. The benchmark's handlers log per event;
    /// keep its output to the figures.
    pub fn default_log_filter(&self) -> &'static str {
        // `plugins invoke` prints the plugin's log lines in its report: warnings only on stderr.
        let quiet = matches!(self, Command::Bench(_) | Command::Plugins(plugins::PluginsCommand::Invoke(_)));
        if quiet { "warn" } else { "info" }
    }
}

/// `--config FILE`: the host's configuration file, read by every command.
#[derive(Debug, Clone, Args)]
pub struct ConfigFile {
    /// TOML configuration file (the one `ferry run` reads); flags and `FERRY_*` variables
    /// override it.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigFile {
    /// The file's configuration, or the defaults without one.
    pub fn load(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(path) => Ok(Config::load(path)?),
            None => Ok(Config::default()),
        }
    }
}

/// `--config` and `--redis`: what a command that talks to Redis reads.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// Redis URL (overrides the file; default redis://127.0.0.1:6379). With --cluster, a
    /// comma-separated list of seed nodes.
    #[arg(long, env = "FERRY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Talk to a Redis Cluster (overrides the file).
    #[arg(long, env = "FERRY_CLUSTER")]
    pub cluster: bool,
    /// PEM file of the CA certificates rediss:// trusts instead of the system's roots
    /// (overrides the file's tls_ca).
    #[arg(long, env = "FERRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// What writes must reach before they count as done: primary or replicated (overrides
    /// the file; replicated waits for one replica with WAIT).
    #[arg(long, env = "FERRY_DURABILITY")]
    pub durability: Option<ferry::connection::Durability>,
    /// Under replicated durability, when no replica confirms a write: wait (no progress,
    /// nothing unconfirmed) or continue (progress, unconfirmed writes counted). Overrides the
    /// file; default wait.
    #[arg(long, env = "FERRY_DURABILITY_ON_MISSING_REPLICA")]
    pub durability_on_missing_replica: Option<ferry::connection::OnMissingReplica>,
}

impl RedisArgs {
    /// The configuration with `--redis` applied.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = self.file.load()?;
        if let Some(v) = &self.redis {
            config.redis = v.clone();
        }
        config.cluster |= self.cluster;
        if let Some(v) = &self.tls_ca {
            config.tls_ca = Some(v.clone());
        }
        if let Some(v) = self.durability {
            config.durability = v;
        }
        if let Some(v) = self.durability_on_missing_replica {
            config.durability_on_missing_replica = v;
        }
        Ok(config)
    }

    /// A connection to that Redis (a node or a cluster).
    pub async fn connect(&self) -> anyhow::Result<ferry::connection::Conn> {
        let (_, conn) = ferry::connection::connect(&self.config()?.target()).await?;
        Ok(conn)
    }
}

/// A path flag where `""` is a value (it turns the feature off), which clap's default
/// path parser refuses as empty.
pub fn path_or_empty(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// Run a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Plugins(cmd) => plugins::run(cmd).await,
        Command::New(args) => new::run(args),
        Command::Dlq(cmd) => dlq::run(cmd).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Find(args) => find::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Schemas(cmd) => schemas::run(cmd).await,
        Command::State(cmd) => state::run(cmd).await,
    }
}
