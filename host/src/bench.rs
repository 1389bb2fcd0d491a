//! `ferry bench`: the benchmark (throughput, latency, fan-out, invocation cost, reload,
//! memory) on a throwaway redis-server.

use std::process::ExitCode;

use clap::Args;

/// `ferry bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A small, fast run (CI): proves the benchmark works, figures are not meaningful.
    #[arg(long)]
    pub quick: bool,
}

/// Run the benchmark.
pub async fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the benchmark is being built")
}
