//! `ferry relay`: run the relay, create the table, list and re-queue failed rows. The relay
//! itself is the library's [`ferry::relay`]; this is its command line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use uuid::Uuid;

use ferry::config::RelayConfig;
use ferry::metrics::Metrics;
use ferry::relay::{Relay, Settings, Table, manage};

/// `ferry relay`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    /// Manage the table instead of relaying.
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
    /// PostgreSQL URL.
    #[arg(
        long,
        global = true,
        env = "FERRY_POSTGRES",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// The outbox table (optionally `schema.table`).
    #[arg(long, global = true, env = "FERRY_RELAY_TABLE", default_value = ferry::relay::schema::DEFAULT_TABLE)]
    pub table: String,
    /// Relaying.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags of the relay itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Redis (`--redis`, `--cluster`, `--durability`) and, with `--config`, the host's file:
    /// its `[streams]` partitions route rows to their partitions.
    #[command(flatten)]
    pub redis: super::RedisArgs,
    /// Stream of rows that name none (default: the configuration's `stream`, `events`).
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: Option<String>,
    /// Rows per round.
    #[arg(long, env = "FERRY_RELAY_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// Polling interval when no NOTIFY arrives.
    #[arg(long, env = "FERRY_RELAY_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// How often a standby relay tries to take over.
    #[arg(long, env = "FERRY_RELAY_LOCK_RETRY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub lock_retry: Duration,
    /// Delete rows once published instead of marking them.
    #[arg(long, env = "FERRY_RELAY_DELETE_PUBLISHED")]
    pub delete_published: bool,
    /// Delete published rows older than this; `0s` keeps them forever.
    #[arg(long, env = "FERRY_RELAY_KEEP_PUBLISHED", default_value = "7d", value_parser = humantime::parse_duration)]
    pub keep_published: Duration,
    /// Streams rows may name (repeat); default: any.
    #[arg(long = "allow-stream")]
    pub streams: Vec<String>,
    /// Serve `/metrics` on this address (e.g. 127.0.0.1:9465); off by default.
    #[arg(long, env = "FERRY_RELAY_ADMIN")]
    pub admin: Option<String>,
}

/// `ferry relay ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Create the outbox table, its indexes and its NOTIFY trigger (idempotent).
    Init {
        /// Print the SQL instead of running it (for your own migrations).
        #[arg(long)]
        print: bool,
    },
    /// List rows the relay could not publish, with the reason.
    Failed {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Backlog, oldest waiting row, failed and kept rows, and which relay is active.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue failed rows (after fixing them) so the relay tries them again.
    Retry {
        /// Event ids of the rows.
        ids: Vec<Uuid>,
        /// Every failed row.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

impl RunArgs {
    /// The `[relay]` section these flags describe.
    pub fn config(&self, postgres: &str, table: &str) -> RelayConfig {
        RelayConfig {
            postgres: postgres.to_string(),
            table: table.to_string(),
            batch: self.batch,
            poll: self.poll,
            lock_retry: self.lock_retry,
            delete_published: self.delete_published,
            keep_published: self.keep_published,
            streams: (!self.streams.is_empty()).then(|| self.streams.clone()),
        }
    }
}

/// Run `ferry relay ...`.
pub async fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let table = Table::new(&args.table)?;
    let command = match args.command {
        None => return relay(&args.run, &args.postgres, &args.table).await,
        Some(command) => command,
    };
    if let RelayCommand::Init { print: true } = command {
        print!("{}", table.ddl());
        return Ok(ExitCode::SUCCESS);
    }
    let (client, _) = ferry::relay::connect(&args.postgres, "ferry relay cli")
        .await
        .map_err(|e| anyhow::anyhow!(ferry::redact::redact(&format!("{e:#}"))))
        .with_context(|| format!("connecting to PostgreSQL at {}", ferry::redact::redact(&args.postgres)))?;
    match command {
        RelayCommand::Init { .. } => {
            manage::init(&client, &table).await?;
            println!("outbox table {} ready", table.name());
        }
        RelayCommand::Failed { limit, json } => failed(&client, &table, limit, json).await?,
        RelayCommand::Status { json } => status(&client, &table, json).await?,
        RelayCommand::Retry { ids, all } => {
            if ids.is_empty() && !all {
                anyhow::bail!("name the rows to retry by event id, or pass --all");
            }
            let n = manage::retry(&client, &table, (!all).then_some(ids.as_slice())).await?;
            println!("re-queued {n} row(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferry relay failed`: the failed rows, as a table or JSON.
async fn failed(client: &tokio_postgres::Client, table: &Table, limit: i64, json: bool) -> anyhow::Result<()> {
    let rows = manage::failed(client, table, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut out = vec![vec![
            "ID".to_string(),
            "TYPE".into(),
            "STREAM".into(),
            "FAILED AT".into(),
            "ATTEMPTS".into(),
            "ERROR".into(),
        ]];
        for r in &rows {
            out.push(vec![
                r.id.clone(),
                r.event_type.clone(),
                r.stream.clone().unwrap_or_else(|| "(default)".into()),
                r.failed_at.clone(),
                r.attempts.to_string(),
                r.error.clone(),
            ]);
        }
        print!("{}", super::table::table(&out));
        println!("{} failed row(s)", rows.len());
    }
    Ok(())
}

/// `ferry relay status`: the table's backlog and its active relay, as a table or JSON.
async fn status(client: &tokio_postgres::Client, table: &Table, json: bool) -> anyhow::Result<()> {
    let status = manage::status(client, table).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let rows = vec![
            vec![
                "TABLE".to_string(),
                "BACKLOG".into(),
                "OLDEST".into(),
                "FAILED".into(),
                "KEPT".into(),
                "ACTIVE RELAY".into(),
            ],
            vec![
                status.table.clone(),
                status.backlog.to_string(),
                format!("{:.1}s", status.oldest_unrelayed_age_seconds),
                status.failed.to_string(),
                status.published_kept.to_string(),
                status.active_relay.clone().unwrap_or_else(|| "none".into()),
            ],
        ];
        print!("{}", super::table::table(&rows));
    }
    Ok(())
}

async fn relay(args: &RunArgs, postgres: &str, table: &str) -> anyhow::Result<ExitCode> {
    let mut config = args.redis.config()?;
    if let Some(stream) = &args.stream {
        config.stream = stream.clone();
    }
    let mut settings = Settings::for_host(&config, &args.config(postgres, table))?;
    settings.contracts = ferry::contract::Registry::from_config(&config).context("loading the schema registry")?;
    let metrics = Metrics::new();
    let admin = match &args.admin {
        Some(listen) => Some(serve_metrics(listen, metrics.clone()).await?),
        None => None,
    };
    Relay::new(settings, metrics.relay.clone()).run(super::run::shutdown_signal()).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// Serve `/metrics` (and `/healthz`) of a standalone relay.
async fn serve_metrics(listen: &str, metrics: Metrics) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint to {listen}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tracing::info!("relay metrics on http://{}/metrics", listener.local_addr()?);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint failed: {e}");
        }
    }))
}
