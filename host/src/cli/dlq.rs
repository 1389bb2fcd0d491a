//! `ferry dlq`: list, filter, group, show, replay and purge dead letters from the command
//! line, through the same [`ferry::dlq`] functions the admin endpoint's `/api/dlq` uses.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferry::dlq;

use super::RedisArgs;
use super::table::{header, table};

/// How many dead letters `ferry dlq list` shows unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = dlq::DEFAULT_LIMIT;

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
        #[command(flatten)]
        filter: FilterArgs,
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
    /// Fix one dead letter and replay it as the same event id: a new payload and/or new
    /// attribute values (an empty value removes an optional attribute). The edit is recorded
    /// in the audit trail and marked on the replayed entry.
    Edit {
        /// The dead letter's entry id (from `ferry dlq list`).
        entry_id: String,
        /// Its subscriber.
        #[arg(long)]
        subscriber: String,
        /// The new payload, as text.
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// The new payload, read from this file.
        #[arg(long)]
        data_file: Option<std::path::PathBuf>,
        /// A new attribute value, `name=value` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Group dead letters by cause (failure kind and reason with numbers, UUIDs and hex
    /// replaced), largest group first.
    Groups {
        /// Only this subscriber's.
        #[arg(long)]
        subscriber: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON (an array of the groups).
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
    #[arg(long, conflicts_with_all = ["ids", "group"])]
    pub all: bool,
    /// The dead letters of one cause: a group id from `ferry dlq groups`.
    #[arg(long, conflicts_with = "ids")]
    pub group: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
}

impl DlqSelect {
    fn selection(&self) -> anyhow::Result<dlq::Selection> {
        let filter = self.filter.filter()?;
        if !filter.is_empty() && (self.all || self.group.is_some() || !self.ids.is_empty()) {
            anyhow::bail!("give either filter flags or ids, --group or --all, not both");
        }
        match (&self.group, self.all, self.ids.is_empty()) {
            (Some(g), _, _) => Ok(dlq::Selection::Group(g.clone())),
            (None, true, _) => Ok(dlq::Selection::All),
            (None, false, false) => Ok(dlq::Selection::Ids(self.ids.clone())),
            (None, false, true) if !filter.is_empty() => Ok(dlq::Selection::Filter(filter)),
            (None, false, true) => {
                anyhow::bail!("name the dead letters to act on (ids, --group or a filter), or pass --all")
            }
        }
    }
}

/// Which dead letters: every flag given must match.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only events of this type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only this failure kind (trap, handler-reject, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead-lettered since: a duration ago (`90m`), RFC 3339 or Unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Only dead-lettered until (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only events with this correlation id.
    #[arg(long)]
    pub correlation: Option<String>,
    /// Only the dead letter with this entry id or event id.
    #[arg(long)]
    pub id: Option<String>,
}

impl FilterArgs {
    /// The filter these flags give.
    pub fn filter(&self) -> anyhow::Result<dlq::Filter> {
        let now = ferry::consume::now_ms();
        let instant = |t: &Option<String>| t.as_deref().map(|t| dlq::parse_instant(t, now)).transpose();
        Ok(dlq::Filter {
            event_type: self.event_type.clone(),
            kind: self.kind.clone(),
            reason: self.reason.clone(),
            since: instant(&self.since)?,
            until: instant(&self.until)?,
            correlation: self.correlation.clone(),
            id: self.id.clone(),
        })
    }
}

/// Record an action in the audit trail; a failure to is said, and does not undo it.
async fn audit(
    conn: &mut ferry::connection::Conn,
    action: &str,
    subscriber: &str,
    selection: &dlq::Selection,
    n: usize,
) {
    if let Err(e) = ferry::audit::record(conn, &cli_actor(), action, subscriber, selection, n).await {
        eprintln!("warning: the {action} ran but could not be recorded in the audit trail: {e}");
    }
}

/// Who the audit trail names for an action from the command line.
fn cli_actor() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("cli:{user}"),
        _ => "cli".to_string(),
    }
}

/// Run `ferry dlq ...`.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { subscriber, limit, filter, json, wide, redis } => {
            let filter = filter.filter()?;
            let mut conn = redis.connect().await?;
            // Dead letters may arrive between reads: `find` never claims fewer than shown.
            let (letters, total) = dlq::find(&mut conn, subscriber.as_deref(), &filter, limit).await?;
            print_letters(&letters, total, limit, json, wide)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Groups { subscriber, filter, json, redis } => {
            let filter = filter.filter()?;
            let mut conn = redis.connect().await?;
            let groups = dlq::groups(&mut conn, subscriber.as_deref(), &filter).await?;
            print_groups(&groups, json)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, subscriber, json, redis } => show(&id, subscriber.as_deref(), json, redis).await,
        DlqCommand::Edit { entry_id, subscriber, data, data_file, set, redis } => {
            let data = match (data, data_file) {
                (Some(data), _) => Some(data),
                (None, Some(path)) => {
                    Some(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
                }
                (None, None) => None,
            };
            let mut attributes = std::collections::BTreeMap::new();
            for pair in set {
                let Some((name, value)) = pair.split_once('=') else {
                    anyhow::bail!("--set {pair:?}: expected NAME=VALUE");
                };
                attributes.insert(name.to_string(), value.to_string());
            }
            let edit = dlq::Edit { data, attributes };
            let mut conn = redis.connect().await?;
            let replication = redis.config()?.replication();
            let changed = dlq::edit(&mut conn, &subscriber, &entry_id, &edit, &cli_actor(), replication).await?;
            println!(
                "replayed dead letter {entry_id} to {subscriber} as the same event; changed: {}",
                changed.join(", ")
            );
            Ok(ExitCode::SUCCESS)
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
            audit(&mut conn, "replay", &select.subscriber, &selection, n).await;
            println!("replayed {n} dead letter(s) to {}", select.subscriber);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge(select) => {
            let selection = select.selection()?;
            let mut conn = select.redis.connect().await?;
            let n = dlq::purge(&mut conn, &select.subscriber, &selection).await?;
            audit(&mut conn, "purge", &select.subscriber, &selection, n).await;
            println!("purged {n} dead letter(s) of {}", select.subscriber);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ferry dlq list`'s output: JSON, blocks (`--wide`) or a table, then how many in all.
fn print_letters(letters: &[dlq::DeadLetter], total: u64, limit: usize, json: bool, wide: bool) -> anyhow::Result<()> {
    let cut = (letters.len() as u64) < total;
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
        if cut {
            eprintln!("showing {} of {total} dead letter(s); raise --limit for more", letters.len());
        }
    } else if wide {
        for d in letters {
            println!("{}\n", block(d, false));
        }
        println!("{}", summary(letters.len(), total, limit));
    } else {
        let mut rows = vec![header(&["SUBSCRIBER", "STREAM", "ENTRY", "EVENT", "TYPE", "KIND", "ATTEMPTS", "REASON"])];
        for d in letters {
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
    Ok(())
}

/// `ferry dlq groups`'s output: JSON or a table.
fn print_groups(groups: &[dlq::Group], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(groups)?);
    } else {
        let mut rows = vec![header(&["GROUP", "SUBSCRIBER", "KIND", "COUNT", "OLDEST", "NEWEST", "REASON"])];
        for g in groups {
            rows.push(vec![
                g.group.clone(),
                g.subscriber.clone(),
                g.kind.clone(),
                g.count.to_string(),
                g.oldest.clone(),
                g.newest.clone(),
                cut_reason(&g.reason, REASON_WIDTH),
            ]);
        }
        print!("{}", table(&rows));
        println!("{} group(s)", groups.len());
    }
    Ok(())
}

/// `ferry dlq show`: the dead letter's block, then (as the console's letter view shows them)
/// its payload made readable and its past edits.
async fn show(id: &str, subscriber: Option<&str>, json: bool, redis: RedisArgs) -> anyhow::Result<ExitCode> {
    let mut conn = redis.connect().await?;
    let Some(d) = dlq::show(&mut conn, subscriber, id).await? else {
        eprintln!("no dead letter with id {id}");
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", block(&d, true));
    if let Some(detail) = dlq::detail(&mut conn, &d.subscriber, &d.id).await? {
        let p = &detail.payload;
        let cut = if p.truncated { ", cut" } else { "" };
        println!("  payload ({}, {} bytes{cut}):", p.kind, p.bytes);
        for line in p.text.lines() {
            println!("    {line}");
        }
        for e in &detail.edits {
            let at =
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms));
            println!("  edited:   {at} by {}: {}", e.by, e.fields.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
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
