//! The `ferry` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser as _;
use ferry::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark's handlers log per event; keep its output to the figures by default.
    let default = if matches!(cli.command, ferry::cli::Command::Bench(_)) { "warn" } else { "info" };
    // Before the runtime: the span exporter (feature `otel`) runs its own thread and blocks.
    let telemetry = match ferry::telemetry::init(cli.log_format, default) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot set up logging: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(ferry::cli::execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flush spans once nothing runs any more, outside the runtime.
    drop(runtime);
    telemetry.shutdown();
    code
}
