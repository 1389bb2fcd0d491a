//! `ferry find`: an event by id or correlation id across streams, where it is for each
//! subscriber and what it caused, through the same [`ferry::find`] the admin endpoint's
//! `GET /api/find` runs, straight from Redis.

use std::process::ExitCode;

use clap::Args;
use ferry::find::{Found, Query};

use super::RedisArgs;

/// `ferry find`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["id", "correlation"]))]
pub struct FindArgs {
    /// The event with this id, and its follow-ups.
    #[arg(long)]
    pub id: Option<String>,
    /// Every event with this correlation id.
    #[arg(long)]
    pub correlation: Option<String>,
    /// Look in this stream too (streams with ferry groups are found by themselves; name the
    /// streams follow-ups go to). Repeatable.
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// Print JSON (what `GET /api/find` returns).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Run `ferry find`.
pub async fn run(args: FindArgs) -> anyhow::Result<ExitCode> {
    let query = match (args.id, args.correlation) {
        (Some(id), _) => Query::Id(id),
        (None, Some(c)) => Query::Correlation(c),
        (None, None) => anyhow::bail!("give --id or --correlation"),
    };
    let mut conn = args.redis.connect().await?;
    let streams = ferry::status::discover(&mut conn, &args.streams).await?;
    let found = ferry::find::find(&mut conn, &streams, &query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for event in &found.events {
            print_tree(event, 0);
        }
        let cut = if found.truncated {
            format!("; streams longer than {} entries were cut", ferry::find::MAX_SCAN)
        } else {
            String::new()
        };
        println!("{} event(s) found, {} entries read{cut}", count(&found.events), found.scanned);
    }
    Ok(if found.events.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn count(events: &[Found]) -> usize {
    events.iter().map(|e| 1 + count(&e.children)).sum()
}

/// One event and, indented under it, where it is and what it caused. Producers' text is
/// escaped: a type or id could carry terminal control sequences.
fn print_tree(event: &Found, depth: usize) {
    let pad = "  ".repeat(depth);
    let e = ferry::redact::escape;
    println!("{pad}{} {} on {} ({})", e(&event.event_type), e(&event.event_id), e(&event.stream), event.entry_id);
    for place in &event.places {
        println!("{pad}  {}: {} ({})", e(&place.subscriber), place.status, e(&place.detail));
    }
    for child in &event.children {
        print_tree(child, depth + 1);
    }
}
