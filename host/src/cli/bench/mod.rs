//! `ferry bench`: the benchmark, on a throwaway `redis-server` it starts itself.
//!
//! It measures, in one run: throughput of preloaded events for a plain redis-rs consumer
//! ([`plain`]: read and ack, nothing else; the honest ceiling every throughput row is a ratio
//! to), ferry's real consumer loop with a native handler (same loop, no WebAssembly), the Rust
//! plugin and, when given, the Python and JavaScript plugins, each with its cost per event
//! ([`cost`]: Redis CPU, per Redis command, host CPU), and the Rust plugin with one state
//! `get` + `set` or one HTTP call per event ([`capabilities`]); publish→handled latency at a steady
//! rate; fan-out to 4 subscribers; per-event cost of a fresh versus a reused instance; cold
//! versus cached plugin start; the hot-reload swap time; host memory with 1 and 20 plugins,
//! idle and under load; and how cost scales with payload size, subscribers and plugins
//! loaded. It prints a table and writes the same figures as JSON.
//!
//! One file per section (`startup`, `throughput`, `contracts`, `latency`, `relay`, `fanout`,
//! `retention`, `invocation`, `memory`, `reload`, `scaling`; `cluster` on its own), on the
//! [`harness`] (server, context, preloaded events, draining) and the [`report`] (rows, table,
//! JSON); [`plain`] is the ceiling and [`cost`] what each run cost.

mod capabilities;
mod cluster;
mod contracts;
mod cost;
mod fanout;
mod harness;
mod invocation;
mod latency;
mod memory;
mod plain;
mod relay;
mod reload;
mod report;
mod retention;
mod scaling;
mod startup;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use ferry::plugin::Engine;
use ferry::plugin::cache::Cache;
use ferry_test_kit::redis_server::RedisServer;

use harness::{Bench, Shape, context};
use report::Report;

/// `ferry bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A small, fast run (CI): proves the benchmark works; figures are not meaningful.
    #[arg(long)]
    pub quick: bool,
    /// Directory of the built guest fixtures (`fixture_noop.wasm`, `fixture_recorder*.wasm`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    pub guests: PathBuf,
    /// The Python example plugin, if built.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The JavaScript example plugin, if built.
    #[arg(long)]
    pub javascript: Option<PathBuf>,
    /// Measure only the PostgreSQL outbox relay (needs PostgreSQL installed).
    #[arg(long)]
    pub relay_only: bool,
    /// Measure only scale-out: 1, 2 and 3 `ferry run` processes on a local 3-primary Redis
    /// Cluster beside one host on a single node (needs redis-server and redis-cli).
    #[arg(long)]
    pub cluster: bool,
    /// Measure only retention: one trimming pass over a large backlog, then passes under a
    /// steady inflow consumed at full speed.
    #[arg(long)]
    pub retention_only: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// Run only these throughput rows (and their cost), nothing else: for profiling one
    /// consumer, e.g. `perf record -- ferry bench --only rust`. Repeat or comma-separate.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Only>,
}

/// A throughput row `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The plain redis-rs consumer.
    Plain,
    /// ferry's loop with a native no-op handler.
    Native,
    /// The Rust plugin.
    Rust,
    /// The Python plugin (needs --python).
    Python,
    /// The JavaScript plugin (needs --javascript).
    Javascript,
    /// The contract rows: validation off and on, an upcast step per event.
    Contracts,
    /// The capability rows: one state get + set, one HTTP call per event.
    Capabilities,
}

/// How much each section measures: `--quick` (CI: proves the benchmark works) or full.
struct Sizes {
    events: usize,
    /// Events per payload size: 100 B, 10 KB, 1 MB.
    payload_events: [usize; 3],
    /// Events for each of the 1/4/16-subscriber runs.
    scaling_fanout_events: usize,
    /// Backlogs drained for the backlog-size rows.
    backlog_events: [usize; 2],
    /// Rows relayed from a preloaded PostgreSQL outbox table.
    relay_rows: usize,
    /// Events per scale-out scenario (`--cluster`).
    cluster_events: usize,
    latency_secs: u64,
    fanout_events: usize,
    calls: usize,
    polyglot_events: usize,
    many_plugins: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                events: 5_000,
                payload_events: [1_000, 200, 10],
                scaling_fanout_events: 1_000,
                backlog_events: [1_000, 10_000],
                relay_rows: 2_000,
                cluster_events: 2_000,
                latency_secs: 1,
                fanout_events: 2_000,
                calls: 2_000,
                polyglot_events: 1_000,
                many_plugins: 5,
            }
        } else {
            Sizes {
                events: 200_000,
                payload_events: [50_000, 10_000, 100],
                scaling_fanout_events: 20_000,
                backlog_events: [10_000, 1_000_000],
                relay_rows: 50_000,
                cluster_events: 100_000,
                latency_secs: 10,
                fanout_events: 100_000,
                calls: 20_000,
                polyglot_events: 50_000,
                many_plugins: 20,
            }
        }
    }
}

/// Run the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sizes = Sizes::new(args.quick);
    let server = RedisServer::start().context("starting redis-server for the benchmark")?;
    let (redis, shared) = ferry::connection::connect(&ferry::connection::Target::node(server.url())).await?;
    let ctx = Arc::new(context(redis, shared, None, None));
    let engine = Engine::new(&Default::default())?;
    let bench = Bench { url: server.url(), ctx, engine };
    let mut report = Report::default();
    let cache_dir = tempfile::tempdir()?;
    let cache = Cache::open(cache_dir.path().join("cache"), &cache_dir.path().join("cache.key"))?;
    eprintln!("ferry bench{} on redis {}", if args.quick { " --quick" } else { "" }, bench.url);

    // 5. Start-up (first, so the cold compile is really cold).
    let noop_path = args.guests.join("fixture_noop.wasm");
    let noop = startup::rust(&bench, &noop_path, &cache, &mut report).await?;
    if args.relay_only {
        relay::figures(&bench, &noop, &sizes, &mut report).await?;
        return finish(&args, &report);
    }
    if args.retention_only {
        retention::figures(&bench, args.quick, &mut report).await?;
        return finish(&args, &report);
    }
    if args.cluster {
        cluster::figures(&noop_path, sizes.cluster_events, &mut report).await?;
        return finish(&args, &report);
    }
    let wants = |which: Only| args.only.is_empty() || args.only.contains(&which);
    let polyglot = [
        ("Python", args.python.as_deref().filter(|_| wants(Only::Python)), Shape::Order),
        ("JavaScript", args.javascript.as_deref().filter(|_| wants(Only::Javascript)), Shape::User),
    ];
    let polyglot = startup::polyglot(&bench, polyglot, &cache, &mut report).await?;

    // 1. Throughput.
    let events = (sizes.events, sizes.polyglot_events);
    let plain = throughput::figures(&bench, &noop, &polyglot, events, wants, &mut report).await?;
    // 1b. Contracts: validation on and off, and an upcast step per event.
    if wants(Only::Contracts) {
        contracts::figures(&bench, &noop, &args.guests, sizes.polyglot_events, &mut report).await?;
    }
    // 1c. Capabilities: state with the ack, outbound HTTP.
    if wants(Only::Capabilities) {
        capabilities::figures(&bench, &args.guests, sizes.polyglot_events, plain, &mut report).await?;
    }
    if !args.only.is_empty() {
        return finish(&args, &report);
    }

    // 2. Latency at a steady 5,000 events/s.
    latency::figures(&bench, &noop, sizes.latency_secs, &mut report).await?;
    // 2b. The PostgreSQL outbox relay (skipped when PostgreSQL is not installed).
    if let Err(e) = relay::figures(&bench, &noop, &sizes, &mut report).await {
        eprintln!("  relay figures skipped: {e:#}");
    }
    // 3. Fan-out: 4 subscribers on one stream.
    fanout::figures(&bench, &noop, sizes.fanout_events, plain, &mut report).await?;
    // 3b. Retention: trimming passes under a steady inflow.
    retention::figures(&bench, args.quick, &mut report).await?;
    // 4. Invocation cost.
    invocation::figures(&bench, &noop, &polyglot, sizes.calls, &mut report).await;
    // 6. Memory, 5b. hot-reload swap: a real host on a plugin directory.
    let load = (sizes.many_plugins, sizes.fanout_events / 4);
    memory::figures(&bench, &noop_path, &cache, load, &mut report).await?;
    reload::figures(&bench, &args.guests, &cache, &mut report).await?;
    // 7. Scaling with work.
    scaling::figures(&bench, &noop, &args.guests, &cache, &sizes, plain, &mut report).await?;

    finish(&args, &report)
}

/// Print the table and write the JSON.
fn finish(args: &BenchArgs, report: &Report) -> anyhow::Result<ExitCode> {
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report.rows)?)?;
    println!("{}", report::table(&report.rows));
    println!("results written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
