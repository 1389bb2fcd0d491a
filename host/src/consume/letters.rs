//! The fields of retry and dead-letter entries: the event's own fields plus ferry's `_`
//! metadata (attempt, origin, failure kind and reason, first and last failure, subscriber
//! and plugin version), so an operator sees why and a replay keeps the original headers.

use super::Active;
use super::dispatch::Failure;
use super::read::Entry;
use super::settle::{self, meta};
use crate::plugin::invoke::FailureKind;

/// RFC 3339 of a Unix-ms instant.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Where the event was first read (`stream/entry-id`): the owner of its runs and holds,
/// stable across its retries.
pub fn origin(entry: &Entry, stream: &str) -> Vec<u8> {
    entry.field(meta::ORIGIN).map(<[u8]>::to_vec).unwrap_or_else(|| format!("{stream}/{}", entry.id).into_bytes())
}

fn first_failure(entry: &Entry, now: u64) -> Vec<u8> {
    entry.field(meta::FIRST_FAILURE).map(<[u8]>::to_vec).unwrap_or_else(|| rfc3339_ms(now).into_bytes())
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
    let mut fields = settle::original_fields(entry);
    fields.push((meta::ATTEMPT.into(), next_attempt.to_string().into_bytes()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
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
    let mut fields = settle::original_fields(entry);
    let runner = &active.runner;
    fields.push((meta::REASON.into(), failure.reason.as_bytes().to_vec()));
    fields.push((meta::KIND.into(), failure.kind.as_str().into()));
    fields.push((meta::ATTEMPTS.into(), failure.attempts.to_string().into_bytes()));
    fields.push((meta::SUBSCRIBER.into(), runner.name().as_bytes().to_vec()));
    fields.push((meta::VERSION.into(), runner.version().as_bytes().to_vec()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields
}
