//! `ferry dlq`: list, show, replay and purge dead letters from the command line.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ferry::dlq;

use super::RedisArgs;
use super::table::{header, table};

/// How many dead letters `ferry dlq list` shows unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// `ferry dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (oldest first) and how many there are in all.
    List {
        /// Only this subscriber's.
        #[arg(long)]
        subscriber: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Print JSON (an array of the dead letters shown).
        #[arg(long)]
        json: bool,
        /// One block per dead letter with its whole reason, instead of a table whose reasons
        /// are cut (marked `…`).
        #[arg(long)]
        wide: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show one dead letter by its entry id or event id: its failure, then every field.
    Show {
        /// Entry id or event id.
        id: String,
        /// Only look in this subscriber's dead letters.
        #[arg(long)]
        subscriber: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
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
    #[command(flatten)]
    pub redis: RedisArgs,
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

/// Run `ferry dlq ...`.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { subscriber, limit, json, wide, redis } => {
            let mut conn = redis.connect().await?;
            let letters = dlq::list(&mut conn, subscriber.as_deref(), limit).await?;
            let total = dlq::total(&mut conn, subscriber.as_deref()).await?;
            // Dead letters may arrive between the two reads: never claim fewer than shown.
            let total = total.max(letters.len() as u64);
            let cut = (letters.len() as u64) < total;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                if cut {
                    eprintln!("showing {} of {total} dead letter(s); raise --limit for more", letters.len());
                }
            } else if wide {
                for d in &letters {
                    println!("{}\n", block(d, false));
                }
                println!("{}", summary(letters.len(), total, limit));
            } else {
                let mut rows =
                    vec![header(&["SUBSCRIBER", "STREAM", "ENTRY", "EVENT", "TYPE", "KIND", "ATTEMPTS", "REASON"])];
                for d in &letters {
                    rows.push(vec![
                        d.subscriber.clone(),
                        d.stream.clone(),
                        d.id.clone(),
                        d.event_id.clone(),
                        d.event_type.clone(),
                        d.kind.clone(),
                        d.attempts.clone(),
                        cut_reason(&d.reason, REASON_WIDTH),
                    ]);
                }
                print!("{}", table(&rows));
                println!("{}", summary(letters.len(), total, limit));
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, subscriber, json, redis } => {
            let mut conn = redis.connect().await?;
            match dlq::show(&mut conn, subscriber.as_deref(), &id).await? {
                Some(d) if json => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    Ok(ExitCode::SUCCESS)
                }
                Some(d) => {
                    println!("{}", block(&d, true));
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
            let mut conn = select.redis.connect().await?;
            let replication = select.redis.config()?.replication();
            let n = dlq::replay_with(&mut conn, &select.subscriber, &selection, replication, |done, total| {
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
            let mut conn = select.redis.connect().await?;
            let n = dlq::purge(&mut conn, &select.subscriber, &selection).await?;
            println!("purged {n} dead letter(s) of {}", select.subscriber);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Characters of a reason the table shows.
const REASON_WIDTH: usize = 60;

/// `reason` cut to `width` characters, the cut marked with `…` (`--wide` shows it whole).
fn cut_reason(reason: &str, width: usize) -> String {
    let reason = reason.replace(['\n', '\r'], " ");
    match reason.char_indices().nth(width) {
        Some((at, _)) => format!("{}…", &reason[..at]),
        None => reason,
    }
}

/// One dead letter as a readable block: what failed and why first; with `fields`, every field
/// of the entry after it.
fn block(d: &dlq::DeadLetter, fields: bool) -> String {
    let mut out = vec![
        format!("dead letter {} of {} on {}", d.id, d.subscriber, d.stream),
        format!("  event:    {} ({})", d.event_id, d.event_type),
        format!("  failure:  {} after {} attempt(s), plugin version {}", d.kind, d.attempts, d.plugin_version),
        format!("  first:    {}", d.first_failure),
        format!("  last:     {}", d.last_failure),
        format!("  reason:   {}", d.reason),
    ];
    if fields {
        out.push("  fields:".to_string());
        let width = d.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        out.extend(d.fields.iter().map(|(k, v)| format!("    {k:width$}  {v}")));
    }
    out.join("\n")
}

/// The line under the table: the total, and whether the list was cut.
fn summary(shown: usize, total: u64, limit: usize) -> String {
    if (shown as u64) < total {
        format!("{total} dead letter(s); showing the first {shown} (--limit {limit})")
    } else {
        format!("{total} dead letter(s)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_reason_is_marked_and_a_short_one_is_whole() {
        assert_eq!(cut_reason("short", 60), "short");
        assert_eq!(cut_reason(&"x".repeat(70), 60), format!("{}…", "x".repeat(60)));
        assert_eq!(cut_reason("two\nlines", 60), "two lines");
    }

    #[test]
    fn a_cut_list_says_so_and_gives_the_total() {
        assert_eq!(summary(1, 1, 100), "1 dead letter(s)");
        assert_eq!(summary(100, 46_000, 100), "46000 dead letter(s); showing the first 100 (--limit 100)");
    }
}
