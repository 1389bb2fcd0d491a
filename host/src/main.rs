//! The `ferry` binary: parse the command line, set up logging, run the command.
//!
//! The command line and every command (`run`, `publish`, `plugins`, `dlq`, `status`, `demo`,
//! `bench`) live here, in [`cli`], on the binary side: the `ferry` library is what an
//! embedding application or a test needs, and never imports the CLI.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = cli.command.default_log_filter();
    // Before the runtime: the span exporter (feature `otel`) runs its own thread and blocks.
    let telemetry = match ferry::telemetry::init(cli.log_format.into(), default) {
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
    let code = match runtime.block_on(cli::execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flush spans once nothing runs any more, outside the runtime. Do not wait for blocking
    // tasks still running (a plugin compile started just before a SIGTERM): the command is
    // done, and exiting within the shutdown grace is a promise (docs/security.md).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    telemetry.shutdown();
    code
}
