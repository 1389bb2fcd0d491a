//! Dead letters: list, filter, group by cause, show, replay and purge: the one
//! implementation `ferry dlq` and the admin endpoint's `/api/dlq` share, so they never
//! disagree.
//!
//! Each subscriber has one dead-letter stream per source stream it reads,
//! `ferry:dlq:{STREAM}:SUBSCRIBER`, in the source stream's hash slot (a dead-lettering moves
//! the event atomically with its ack). An entry keeps the event's fields untouched plus
//! `_reason`, `_kind`, `_attempts`, `_subscriber`, `_plugin_version`, `_origin`,
//! `_first_failure` and `_last_failure`. Replay moves an entry into the subscriber's own retry
//! stream with its attempts reset, so it reaches that subscriber only. An action reads its
//! dead letters once ([`plan`]) and moves them in batches, so a long one can report progress
//! between batches. [`letter`] is one dead letter in full and its edit-and-replay.

use redis::aio::ConnectionLike;
use serde::{Deserialize as _, Serialize};

use crate::connection::{Replication, Scan};
use crate::consume::letters::{meta, original_fields};
use crate::consume::read::{self, Entry};
use crate::consume::scripts;
use crate::consume::scripts::netstrings;
use crate::keys::{self, SubscriberKeys};

pub mod letter;
pub use letter::{Detail, Edit, EditError, detail, edit};

/// How many dead letters a listing shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// One dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Source stream.
    pub stream: String,
    /// Subscriber.
    pub subscriber: String,
    /// Entry id in the dead-letter stream.
    pub id: String,
    /// The event's id (empty for an invalid entry without one).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Failure kind.
    pub kind: String,
    /// Failure reason.
    pub reason: String,
    /// Attempts made.
    pub attempts: String,
    /// Plugin version that failed it.
    pub plugin_version: String,
    /// First failure time.
    pub first_failure: String,
    /// Last failure time.
    pub last_failure: String,
    /// Every field of the entry, as text (binary data lossily).
    pub fields: Vec<(String, String)>,
}

impl DeadLetter {
    fn from_entry(stream: &str, subscriber: &str, entry: &Entry) -> Self {
        let text = |name: &str| entry.field(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        Self {
            stream: stream.to_string(),
            subscriber: subscriber.to_string(),
            id: entry.id.clone(),
            event_id: text("id"),
            event_type: text("type"),
            kind: text(meta::KIND),
            reason: text(meta::REASON),
            attempts: text(meta::ATTEMPTS),
            plugin_version: text(meta::VERSION),
            first_failure: text(meta::FIRST_FAILURE),
            last_failure: text(meta::LAST_FAILURE),
            fields: entry
                .fields
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }
}

/// Every dead-letter stream key, optionally of one subscriber, as (key, stream, subscriber).
pub async fn streams<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
) -> redis::RedisResult<Vec<(String, String, String)>> {
    let pattern = match subscriber {
        Some(s) => keys::dlq_pattern(s),
        None => keys::ALL_DLQ_PATTERN.to_string(),
    };
    let mut out = Vec::new();
    for key in crate::connection::scan(conn, &pattern, Some("stream")).await? {
        if let Some((stream, sub)) = keys::parse_dlq(&key)
            && subscriber.is_none_or(|s| s == sub)
        {
            out.push((key.clone(), stream.to_string(), sub.to_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Up to `limit` dead letters (oldest first), of one subscriber or all.
pub async fn list<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
    limit: usize,
) -> redis::RedisResult<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for (key, stream, sub) in streams(conn, subscriber).await? {
        if out.len() >= limit {
            break;
        }
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit - out.len())
            .query_async(conn)
            .await?;
        out.extend(read::parse_entries(&key, value).iter().map(|e| DeadLetter::from_entry(&stream, &sub, e)));
    }
    Ok(out)
}

/// How many dead letters there are, of one subscriber or all (what [`list`] would return
/// without a limit).
pub async fn total<C: Scan>(conn: &mut C, subscriber: Option<&str>) -> redis::RedisResult<u64> {
    let mut total = 0;
    for (key, _, _) in streams(conn, subscriber).await? {
        let n: u64 = redis::cmd("XLEN").arg(&key).query_async(conn).await?;
        total += n;
    }
    Ok(total)
}

/// Count of dead letters per (stream, subscriber).
pub async fn counts<C: Scan>(conn: &mut C) -> redis::RedisResult<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for (key, stream, sub) in streams(conn, None).await? {
        let n: u64 = redis::cmd("XLEN").arg(&key).query_async(conn).await?;
        out.push((stream, sub, n));
    }
    Ok(out)
}

/// The dead letter whose entry id or event id is `id`.
pub async fn show<C: Scan>(conn: &mut C, subscriber: Option<&str>, id: &str) -> redis::RedisResult<Option<DeadLetter>> {
    for (key, stream, sub) in streams(conn, subscriber).await? {
        let value: redis::Value = redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(conn).await?;
        if let Some(e) =
            read::parse_entries(&key, value).iter().find(|e| e.id == id || e.field("id") == Some(id.as_bytes()))
        {
            return Ok(Some(DeadLetter::from_entry(&stream, &sub, e)));
        }
    }
    Ok(None)
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Selection {
    /// Every dead letter of the subscriber.
    All,
    /// These entry ids or event ids.
    Ids(Vec<String>),
    /// Those of one cause (a [`Group::group`] id).
    Group(String),
    /// Those a filter matches.
    Filter(Filter),
}

impl Selection {
    /// Whether it selects `d`.
    pub fn selects(&self, d: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => ids.iter().any(|id| *id == d.id || *id == d.event_id),
            Selection::Group(g) => {
                let (kind, reason) = d.cause();
                group_id(&kind, &reason) == *g
            }
            Selection::Filter(f) => f.matches(d),
        }
    }
}

/// Replay the selected dead letters of `subscriber`: each moves atomically (`XDEL` from the
/// dead-letter stream, `XADD` to the subscriber's retry stream with attempts reset, in one
/// script). `progress(done, total)` is called after each batch. Returns how many were replayed.
pub async fn replay<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    selection: &Selection,
    progress: impl FnMut(usize, usize),
) -> redis::RedisResult<usize> {
    replay_with(conn, subscriber, selection, Replication::PRIMARY, progress).await
}

/// [`replay`], as durably as `replication` asks: under `durability = "replicated"` each batch
/// of moves ends with `WAIT 1` in its pipeline, and a batch no replica confirmed is an error
/// (the moves stand on the primary; a failover may undo them, putting the dead letters back,
/// and replaying again is safe: each dead letter is moved once).
pub async fn replay_with<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    selection: &Selection,
    replication: Replication,
    mut progress: impl FnMut(usize, usize),
) -> redis::RedisResult<usize> {
    let plan = plan(conn, subscriber, selection).await?;
    let mut done = 0;
    for (seen, batch) in plan.batches() {
        done += match replay_batch(conn, batch, replication).await {
            Ok(n) => n,
            Err(ReplayError::Redis(e)) => return Err(e),
            Err(e) => {
                let what = format!("replayed {done} dead letter(s) so far; {e}");
                return Err(redis::RedisError::from((redis::ErrorKind::Io, "replay", what)));
            }
        };
        progress(seen, plan.len());
    }
    Ok(done)
}

/// Delete the selected dead letters of `subscriber`. Returns how many were removed.
pub async fn purge<C: Scan>(conn: &mut C, subscriber: &str, selection: &Selection) -> redis::RedisResult<usize> {
    let plan = plan(conn, subscriber, selection).await?;
    let mut done = 0;
    for (_, batch) in plan.batches() {
        done += purge_batch(conn, batch).await?;
    }
    Ok(done)
}

/// The dead letters an action will act on, read once: what [`replay`] and [`purge`] run
/// through in batches, and what the admin endpoint's jobs run through with their progress
/// recorded between batches.
#[derive(Debug, Default)]
pub struct Plan {
    letters: Vec<Planned>,
}

/// One dead letter of a [`Plan`].
#[derive(Debug, Clone)]
pub struct Planned {
    key: String,
    keys: SubscriberKeys,
    entry: Entry,
}

/// Dead letters per batch of a [`Plan`]: one pipeline (and one `WAIT`) each.
pub const BATCH: usize = 200;

impl Plan {
    /// How many dead letters it holds.
    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    /// Its dead letters in batches of [`BATCH`], each with how many are covered once it is done.
    pub fn batches(&self) -> impl Iterator<Item = (usize, &[Planned])> {
        let mut seen = 0;
        self.letters.chunks(BATCH).map(move |batch| {
            seen += batch.len();
            (seen, batch)
        })
    }
}

/// Read the dead letters of `subscriber` that `selection` names, on every stream it reads,
/// and make sure the retry streams they would be replayed to have their group.
pub async fn plan<C: Scan>(conn: &mut C, subscriber: &str, selection: &Selection) -> redis::RedisResult<Plan> {
    let mut letters = Vec::new();
    for (key, stream, _) in streams(conn, Some(subscriber)).await? {
        let keys = SubscriberKeys::new(&stream, subscriber);
        let chosen = select(conn, &key, &stream, subscriber, selection).await?;
        if !chosen.is_empty() {
            crate::consume::ensure_groups(conn, &keys, subscriber, crate::config::Start::New).await?;
        }
        letters.extend(chosen.into_iter().map(|entry| Planned { key: key.clone(), keys: keys.clone(), entry }));
    }
    Ok(Plan { letters })
}

/// The fields a replayed dead letter is delivered with: the event's own, attempts reset, the
/// replay marker (so the dead set does not take it for a duplicate) and its origin.
fn replay_fields(entry: &Entry, event: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = event;
    fields.push((meta::ATTEMPT.into(), b"1".to_vec()));
    fields.push((meta::REPLAY.into(), crate::consume::now_ms().to_string().into_bytes()));
    if let Some(origin) = entry.field(meta::ORIGIN) {
        fields.push((meta::ORIGIN.into(), origin.to_vec()));
    }
    fields
}

/// Why a batch of replays did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// No replica confirmed the batch (`durability = "replicated"`).
    #[error("the last batch of moves {0}")]
    NotReplicated(String),
}

/// Stream-entry fields, as pairs of bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Move each dead letter of `batch` (with these fields) to its retry stream, one script each in
/// one pipeline; returns how many this call moved (one replayed or purged meanwhile is not).
async fn move_letters<C: ConnectionLike>(
    conn: &mut C,
    moves: &[(&Planned, Fields)],
    replication: Replication,
) -> Result<usize, ReplayError> {
    let mut pipe = redis::pipe();
    for (letter, fields) in moves {
        let args = [letter.entry.id.as_bytes().to_vec(), netstrings(fields)];
        pipe.add_command(scripts::evalsha(&scripts::REPLAY, &[&letter.key, &letter.keys.retry], &args));
    }
    replication.append_wait(&mut pipe);
    let mut replies: Vec<redis::Value> = match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            scripts::load(conn).await?;
            pipe.query_async(conn).await?
        }
        other => other?,
    };
    replication.take_wait(&mut replies).map_err(|e| ReplayError::NotReplicated(e.to_string()))?;
    let mut moved = 0;
    for reply in &replies {
        moved += usize::from(scripts::Replay::parse(reply)? == scripts::Replay::Moved);
    }
    Ok(moved)
}

/// Replay one batch of a [`Plan`]; returns how many this call moved.
pub async fn replay_batch<C: ConnectionLike>(
    conn: &mut C,
    batch: &[Planned],
    replication: Replication,
) -> Result<usize, ReplayError> {
    let moves: Vec<_> =
        batch.iter().map(|letter| (letter, replay_fields(&letter.entry, original_fields(&letter.entry)))).collect();
    move_letters(conn, &moves, replication).await
}

/// Delete one batch of a [`Plan`]; returns how many this call removed.
pub async fn purge_batch<C: ConnectionLike>(conn: &mut C, batch: &[Planned]) -> redis::RedisResult<usize> {
    let mut pipe = redis::pipe();
    for letter in batch {
        pipe.cmd("XDEL").arg(&letter.key).arg(&letter.entry.id);
    }
    let removed: Vec<usize> = pipe.query_async(conn).await?;
    Ok(removed.iter().sum())
}

async fn select<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    stream: &str,
    subscriber: &str,
    selection: &Selection,
) -> redis::RedisResult<Vec<Entry>> {
    let entries = all_entries(conn, key).await?;
    Ok(match selection {
        Selection::All => entries,
        _ => {
            entries.into_iter().filter(|e| selection.selects(&DeadLetter::from_entry(stream, subscriber, e))).collect()
        }
    })
}

/// Which dead letters a listing or an action covers: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// The event's type, exactly.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The failure kind, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Text the reason contains (case-insensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Dead-lettered at or after this instant (Unix ms). Deserialized from Unix ms, RFC 3339
    /// or a duration before now (`"1h"`).
    #[serde(deserialize_with = "instant", skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Dead-lettered at or before this instant (same forms as `since`).
    #[serde(deserialize_with = "instant", skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// The event's correlation id, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
    /// The entry id or the event id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A time a filter names that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a time: give Unix milliseconds, RFC 3339 (2026-12-06T23:00:00Z) or a duration ago (90m)")]
pub struct TimeError(pub String);

/// `text` as Unix ms: Unix ms, RFC 3339, or a duration (`"90m"`) before `now_ms`.
pub fn parse_instant(text: &str, now_ms: u64) -> Result<u64, TimeError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(ago.as_millis() as u64));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .map_err(|_| TimeError(text.to_string()))
}

fn instant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given {
        Ms(u64),
        Text(String),
    }
    match Option::<Given>::deserialize(d)? {
        None => Ok(None),
        Some(Given::Ms(ms)) => Ok(Some(ms)),
        Some(Given::Text(t)) if t.is_empty() => Ok(None),
        Some(Given::Text(t)) => parse_instant(&t, crate::consume::now_ms()).map(Some).map_err(serde::de::Error::custom),
    }
}

impl Filter {
    /// Whether no field is given (the filter matches every dead letter).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `d` matches every field given.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let at = d.dead_lettered_ms();
        let given = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w.is_empty() || w == have);
        given(&self.event_type, &d.event_type)
            && given(&self.kind, &d.kind)
            && given(&self.correlation, d.field("correlationid").unwrap_or(""))
            && self.reason.as_deref().is_none_or(|r| d.reason.to_lowercase().contains(&r.to_lowercase()))
            && self.since.is_none_or(|s| at >= s)
            && self.until.is_none_or(|u| at <= u)
            && self.id.as_deref().is_none_or(|id| id.is_empty() || id == d.id || id == d.event_id)
    }
}

impl DeadLetter {
    /// When it was dead-lettered (Unix ms), from its entry id.
    pub fn dead_lettered_ms(&self) -> u64 {
        self.id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
    }

    /// The value of field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Its cause: the failure kind with the reason normalised (see [`normalise`]).
    pub fn cause(&self) -> (String, String) {
        (self.kind.clone(), normalise(&self.reason))
    }
}

/// Dead letters that failed for one cause: the same failure kind and normalised reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    /// Short stable id of the cause (what `--group` and `{"group": ...}` take).
    pub group: String,
    /// The subscriber.
    pub subscriber: String,
    /// Failure kind.
    pub kind: String,
    /// The normalised reason.
    pub reason: String,
    /// How many dead letters.
    pub count: u64,
    /// When the oldest was dead-lettered (RFC 3339).
    pub oldest: String,
    /// When the newest was dead-lettered (RFC 3339).
    pub newest: String,
}

/// A reason with what varies between events of one cause replaced: UUIDs by `<uuid>`, long
/// hex strings (`0x...`, or 8+ hex digits with a digit among them) by `<hex>`, every other
/// run of digits by `<n>`.
pub fn normalise(reason: &str) -> String {
    let chars: Vec<char> = reason.chars().collect();
    let boundary = |i: usize| chars.get(i).is_none_or(|c| !c.is_ascii_alphanumeric());
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if (i == 0 || boundary(i - 1)) && is_uuid(&chars[i..]) && boundary(i + 36) {
            out.push_str("<uuid>");
            i += 36;
        } else if chars[i].is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(&normalise_word(&word));
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn is_uuid(chars: &[char]) -> bool {
    chars.len() >= 36
        && chars[..36]
            .iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == '-' } else { c.is_ascii_hexdigit() })
}

fn normalise_word(word: &str) -> String {
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")).is_some_and(hex)
        || (word.len() >= 8 && hex(word) && word.chars().any(|c| c.is_ascii_digit()))
    {
        return "<hex>".into();
    }
    let mut out = String::new();
    let mut in_digits = false;
    for c in word.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<n>");
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// The id of a cause: the first 12 hex digits of SHA-256 over kind and normalised reason.
pub fn group_id(kind: &str, normalised: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new().chain_update(kind).chain_update([0u8]).chain_update(normalised).finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Every dead letter of one subscriber or all that `filter` matches (oldest first per
/// dead-letter stream), and how many there are in all; at most `limit` returned.
pub async fn find<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
    filter: &Filter,
    limit: usize,
) -> redis::RedisResult<(Vec<DeadLetter>, u64)> {
    if filter.is_empty() {
        // The total first: a dead letter written between the two reads is then in the list
        // and counted by the `max`, never counted but missing from the list.
        let total = total(conn, subscriber).await?;
        let letters = list(conn, subscriber, limit).await?;
        let total = total.max(letters.len() as u64);
        return Ok((letters, total));
    }
    let mut out = Vec::new();
    let mut total = 0;
    for (key, stream, sub) in streams(conn, subscriber).await? {
        for d in all_entries(conn, &key).await?.iter().map(|e| DeadLetter::from_entry(&stream, &sub, e)) {
            if filter.matches(&d) {
                total += 1;
                if out.len() < limit {
                    out.push(d);
                }
            }
        }
    }
    Ok((out, total))
}

/// The dead letters `filter` matches grouped by cause, largest group first.
pub async fn groups<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
    filter: &Filter,
) -> redis::RedisResult<Vec<Group>> {
    let mut by_cause: std::collections::BTreeMap<(String, String, String), (u64, u64, u64)> = Default::default();
    for (key, stream, sub) in streams(conn, subscriber).await? {
        for d in all_entries(conn, &key).await?.iter().map(|e| DeadLetter::from_entry(&stream, &sub, e)) {
            if !filter.matches(&d) {
                continue;
            }
            let (kind, reason) = d.cause();
            let at = d.dead_lettered_ms();
            let slot = by_cause.entry((sub.clone(), kind, reason)).or_insert((0, u64::MAX, 0));
            slot.0 += 1;
            slot.1 = slot.1.min(at);
            slot.2 = slot.2.max(at);
        }
    }
    let mut out: Vec<Group> = by_cause
        .into_iter()
        .map(|((subscriber, kind, reason), (count, oldest, newest))| Group {
            group: group_id(&kind, &reason),
            subscriber,
            kind,
            reason,
            count,
            oldest: crate::consume::letters::rfc3339_ms(oldest),
            newest: crate::consume::letters::rfc3339_ms(newest),
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| b.newest.cmp(&a.newest)));
    Ok(out)
}

/// Every entry of the stream at `key`, read in pages.
async fn all_entries<C: ConnectionLike>(conn: &mut C, key: &str) -> redis::RedisResult<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut start = "-".to_string();
    loop {
        let value: redis::Value =
            redis::cmd("XRANGE").arg(key).arg(&start).arg("+").arg("COUNT").arg(PAGE).query_async(conn).await?;
        let page = read::parse_entries(key, value);
        let done = page.len() < PAGE;
        if let Some(last) = page.last() {
            start = format!("({}", last.id);
        }
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Entries read per `XRANGE` when a whole dead-letter stream is scanned.
const PAGE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_a_reason_replaces_what_varies_between_events() {
        assert_eq!(
            normalise("order 12345 not found (id 3f2504e0-4f89-11d3-9a0c-0305e82c3301, hash deadbeef01)"),
            "order <n> not found (id <uuid>, hash <hex>)"
        );
        assert_eq!(normalise("timeout after 250ms at 0x7ffd"), "timeout after <n>ms at <hex>");
        assert_eq!(normalise("bad request"), "bad request");
        assert_eq!(group_id("trap", "a <n>"), group_id("trap", "a <n>"));
        assert_ne!(group_id("trap", "a <n>"), group_id("handler-reject", "a <n>"));
    }

    #[test]
    fn a_filter_matches_every_field_it_gives() {
        let d = DeadLetter {
            stream: "events".into(),
            subscriber: "rec".into(),
            id: "1700000000000-0".into(),
            event_id: "e1".into(),
            event_type: "OrderPlaced".into(),
            kind: "handler-reject".into(),
            reason: "Stock Missing for 12".into(),
            attempts: "1".into(),
            plugin_version: String::new(),
            first_failure: String::new(),
            last_failure: String::new(),
            fields: vec![("correlationid".into(), "c-1".into())],
        };
        let f = |json: &str| serde_json::from_str::<Filter>(json).expect("filter");
        assert!(f("{}").matches(&d));
        assert!(f(r#"{"type":"OrderPlaced","kind":"handler-reject","reason":"stock missing"}"#).matches(&d));
        assert!(
            f(r#"{"correlation":"c-1","id":"e1","since":1699999999999,"until":"2023-11-14T22:13:21Z"}"#).matches(&d)
        );
        assert!(!f(r#"{"type":"Other"}"#).matches(&d));
        assert!(!f(r#"{"since":"2023-11-14T22:13:21Z"}"#).matches(&d));
        assert!(!f(r#"{"correlation":"c-2"}"#).matches(&d));
        assert!(serde_json::from_str::<Filter>(r#"{"since":"yesterday-ish"}"#).is_err());
        assert!(parse_instant("1h", 10_000_000).is_ok_and(|t| t == 10_000_000 - 3_600_000));
    }
}
