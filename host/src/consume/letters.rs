//! The fields of retry and dead-letter entries: the event's own fields plus ferry's `_`
//! metadata (attempt, origin, failure kind and reason, first and last failure, subscriber
//! and plugin version), so an operator sees why and a replay keeps the original headers.

use super::Active;
use super::read::Entry;
use crate::handler::FailureKind;

/// Delivery metadata fields ferry adds to retry and dead-letter entries. Event attributes
/// are lowercase letters and digits (CloudEvents), so the `_` prefix cannot collide.
pub mod meta {
    /// What every metadata name starts with.
    pub const PREFIX: &str = "_";
    /// The attempt number the entry will be delivered with (retry stream).
    pub const ATTEMPT: &str = "_attempt";
    /// `stream/entry-id` where the event was first read.
    pub const ORIGIN: &str = "_origin";
    /// Set on events parked behind their key as they were read (read.lua): the dispatcher
    /// has not yet asked whether the subscriber wants them.
    pub const PARKED: &str = "_parked";
    /// Set on entries an operator replayed from the dead-letter stream.
    pub const REPLAY: &str = "_replay";
    /// Failure reason.
    pub const REASON: &str = "_reason";
    /// Failure kind.
    pub const KIND: &str = "_kind";
    /// Attempts made.
    pub const ATTEMPTS: &str = "_attempts";
    /// Subscriber that failed it.
    pub const SUBSCRIBER: &str = "_subscriber";
    /// Plugin version that failed it.
    pub const VERSION: &str = "_plugin_version";
    /// The host (its consumer name) that dead-lettered it.
    pub const HOST: &str = "_host";
    /// First failure time (RFC 3339).
    pub const FIRST_FAILURE: &str = "_first_failure";
    /// Last failure time (RFC 3339).
    pub const LAST_FAILURE: &str = "_last_failure";
}

/// Why an event failed, as its dead letter records it.
pub struct Failure<'a> {
    /// Kind recorded in the dead letter.
    pub kind: FailureKind,
    /// Reason recorded in the dead letter.
    pub reason: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// The host (its consumer name) that gave up on the event.
    pub host: &'a str,
}

/// The entry's own event fields, without ferry's `_` metadata.
pub fn original_fields(entry: &Entry) -> Vec<(Vec<u8>, Vec<u8>)> {
    entry.fields.iter().filter(|(k, _)| !k.starts_with(meta::PREFIX.as_bytes())).cloned().collect()
}

/// RFC 3339 of a Unix-ms instant.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// ferry's `_` metadata of `entry`, only where ferry wrote it: on the subscriber's retry
/// stream. On a source stream (`entry.key == stream`) producers write the entries, so a `_`
/// field there means nothing (a forged `_origin` would run beside a key's real holder, a
/// forged `_replay` would skip the dead set).
pub fn meta_field<'a>(entry: &'a Entry, stream: &str, name: &str) -> Option<&'a [u8]> {
    if entry.key == stream { None } else { entry.field(name) }
}

/// Where the event was first read (`stream/entry-id`): the owner of its runs and holds,
/// stable across its retries.
pub fn origin(entry: &Entry, stream: &str) -> Vec<u8> {
    meta_field(entry, stream, meta::ORIGIN)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| format!("{stream}/{}", entry.id).into_bytes())
}

fn first_failure(entry: &Entry, stream: &str, now: u64) -> Vec<u8> {
    meta_field(entry, stream, meta::FIRST_FAILURE).map(<[u8]>::to_vec).unwrap_or_else(|| rfc3339_ms(now).into_bytes())
}

/// The markers that decide a rebuilt entry's fate and are not rebuilt by whoever rebuilds it:
/// today `_replay` (a replayed dead letter must stay a replay through a retry or a park, or
/// the dead set acks it as a duplicate and it is lost). Every place that rebuilds an entry
/// (park, retry) carries these over; attempt and origin are set by the rebuilder.
pub fn carried(entry: &Entry, stream: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    meta_field(entry, stream, meta::REPLAY).map(|v| vec![(meta::REPLAY.into(), v.to_vec())]).unwrap_or_default()
}

/// The fields of the retry entry scheduled after attempt `next_attempt - 1` failed.
pub fn retry_fields(
    entry: &Entry,
    stream: &str,
    kind: FailureKind,
    reason: &str,
    next_attempt: u32,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = original_fields(entry);
    fields.extend(carried(entry, stream));
    fields.push((meta::ATTEMPT.into(), next_attempt.to_string().into_bytes()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, stream, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields.push((meta::KIND.into(), kind.as_str().into()));
    fields.push((meta::REASON.into(), reason.as_bytes().to_vec()));
    fields
}

/// The fields of the dead letter of `entry`.
pub fn dead_letter_fields(
    entry: &Entry,
    active: &Active,
    stream: &str,
    failure: &Failure<'_>,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = original_fields(entry);
    let runner = &active.runner;
    fields.push((meta::REASON.into(), failure.reason.as_bytes().to_vec()));
    fields.push((meta::KIND.into(), failure.kind.as_str().into()));
    fields.push((meta::ATTEMPTS.into(), failure.attempts.to_string().into_bytes()));
    fields.push((meta::SUBSCRIBER.into(), runner.name().as_bytes().to_vec()));
    fields.push((meta::VERSION.into(), runner.version().as_bytes().to_vec()));
    fields.push((meta::HOST.into(), failure.host.as_bytes().to_vec()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, stream, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields
}

/// The fields of `entry` parked behind its partition key at dispatch (`dispatch.lua`): the
/// event, its carried markers, its attempt and its owner, so it comes back in its turn as the
/// same delivery it was.
pub fn parked_fields(entry: &Entry, stream: &str, attempt: u32, owner: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = original_fields(entry);
    fields.extend(carried(entry, stream));
    fields.push((meta::ATTEMPT.into(), attempt.to_string().into_bytes()));
    fields.push((meta::ORIGIN.into(), owner.as_bytes().to_vec()));
    fields
}
