//! `ferry audit`: the audit trail of operator actions (replays and purges, from the console
//! or the command line), newest first, straight from Redis.

use std::process::ExitCode;

use clap::Args;

use super::RedisArgs;
use super::table::{header, table};

/// `ferry audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Show at most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON (an array of the entries, as `GET /api/audit` returns them).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Run `ferry audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut conn = args.redis.connect().await?;
    let entries = ferry::audit::list(&mut conn, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    // `table` escapes control characters: token names and selections come from operators'
    // requests, and a filter's text from whoever typed it.
    let mut rows = vec![header(&["TIME", "TOKEN", "ACTION", "SUBSCRIBER", "COUNT", "SELECTION"])];
    for e in &entries {
        rows.push(vec![
            e.time.clone(),
            e.token.clone(),
            e.action.clone(),
            e.subscriber.clone(),
            e.count.to_string(),
            e.selection.clone(),
        ]);
    }
    print!("{}", table(&rows));
    println!("{} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}
