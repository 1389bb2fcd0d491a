//! Redis key names, in one place.
//!
//! Every key that one transition touches together with a stream shares that stream's hash
//! slot: the stream is named plainly (`events`) and ferry's own keys carry the stream name as
//! their hash tag (`ferry:retry:{events}:inventory`). Redis Cluster hashes a key without
//! braces on its whole name and a key with braces on the tag, so both land in one slot and a
//! Lua script or MULTI over them is legal on a cluster. Stream names therefore must not
//! contain `{` or `}`.

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between
/// the first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}').map(|close| &bytes[open + 1..open + 1 + close]))
        .filter(|tag| !tag.is_empty());
    crc16(tagged.unwrap_or(bytes)) % 16384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The key of partition `p` of `stream`: `STREAM#P`. Its own hash slot (the whole name is
/// hashed), with its own ferry keys in that slot (`ferry:retry:{STREAM#P}:SUB`).
pub fn partition(stream: &str, p: u32) -> String {
    format!("{stream}#{p}")
}

/// The logical stream of a stream key: `orders` for `orders#3` and for `orders`.
pub fn logical(stream_key: &str) -> &str {
    match stream_key.rsplit_once('#') {
        Some((stream, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => stream,
        _ => stream_key,
    }
}

/// The partition of `stream` (of `partitions`) an event goes to: CRC16-XMODEM of its
/// `partitionkey`, or of its id when it has none (so copies of one event land together and
/// are deduplicated), modulo `partitions`. The function and its test vectors are in
/// docs/scale-out.md so producers in any language can compute it.
pub fn partition_of(partitionkey: Option<&str>, event_id: &str, partitions: u32) -> u32 {
    u32::from(crc16(partitionkey.unwrap_or(event_id).as_bytes())) % partitions.max(1)
}

/// The stream key an event for `stream` is added to: `stream` itself, or its partition.
pub fn route(stream: &str, partitions: u32, partitionkey: Option<&str>, event_id: &str) -> String {
    if partitions <= 1 {
        stream.to_string()
    } else {
        partition(stream, partition_of(partitionkey, event_id, partitions))
    }
}

/// Whether `name` can be used as a stream or subscriber name.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.contains(['{', '}', ' ', '#']) || name.chars().any(char::is_control) {
        return Err(format!("{kind} name `{name}` must not contain braces, `#`, spaces or control characters"));
    }
    Ok(())
}

/// The keys one subscriber uses for one stream it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberKeys {
    /// The source stream.
    pub stream: String,
    /// The subscriber's own retry stream: due retries and replays are delivered here, so they
    /// reach this subscriber only.
    pub retry: String,
    /// Sorted set of retries waiting for their due time (score: due time in ms).
    pub schedule: String,
    /// The subscriber's dead-letter stream for this source stream.
    pub dlq: String,
    /// Sorted set of handled event ids (score: time handled in ms), for deduplication.
    pub seen: String,
    /// Sorted set of dead-lettered event ids (score: time in ms): a later copy of a
    /// dead-lettered event is acked as a duplicate; an operator's replay is not.
    pub dead: String,
    /// Hash of events being handled: event id → `lease-expiry-ms:starts:owner`. Makes
    /// check-and-record of dedupe atomic with handling, and counts runs that ended without a
    /// verdict (the crash budget).
    pub inflight: String,
    /// Hash of partition keys currently held by an event (per-key order): key → owner.
    pub holds: String,
    /// The reverse of `holds`: owner → partition key, so a hold is released by its owner
    /// even when the owner's entry was deleted and its key is unknown.
    pub holders: String,
    /// Sorted set of held partition keys by the time their hold began (ms).
    pub hold_since: String,
    /// Counter of events parked behind held keys.
    pub parked_count: String,
    /// Prefix of the lists of events parked behind a held partition key.
    pub parked_prefix: String,
    /// On a cluster: follow-ups bound for streams in other slots, written here with the ack
    /// (same slot) and forwarded with their ids (`_to` names the target stream).
    pub forward: String,
    /// Follow-ups that could not be forwarded (their target key holds another type, or
    /// refuses them): set aside here with `_reason`, so the rest of the stream's follow-ups
    /// flow. Shared by the stream's subscribers, like the forward key.
    pub forward_dead: String,
    /// The subscriber's handler state on this stream ([`state`]), committed by the settle.
    pub state: String,
}

impl SubscriberKeys {
    /// The keys of `subscriber` on `stream`.
    pub fn new(stream: &str, subscriber: &str) -> Self {
        Self {
            stream: stream.to_string(),
            retry: format!("ferry:retry:{{{stream}}}:{subscriber}"),
            schedule: format!("ferry:schedule:{{{stream}}}:{subscriber}"),
            dlq: format!("ferry:dlq:{{{stream}}}:{subscriber}"),
            seen: format!("ferry:seen:{{{stream}}}:{subscriber}"),
            dead: format!("ferry:dead:{{{stream}}}:{subscriber}"),
            inflight: format!("ferry:inflight:{{{stream}}}:{subscriber}"),
            holds: format!("ferry:holds:{{{stream}}}:{subscriber}"),
            holders: format!("ferry:holders:{{{stream}}}:{subscriber}"),
            hold_since: format!("ferry:holdsince:{{{stream}}}:{subscriber}"),
            parked_count: format!("ferry:parkedn:{{{stream}}}:{subscriber}"),
            parked_prefix: format!("ferry:parked:{{{stream}}}:{subscriber}:"),
            forward: format!("ferry:forward:{{{stream}}}"),
            forward_dead: format!("ferry:unforwarded:{{{stream}}}"),
            state: state(stream, subscriber),
        }
    }

    /// The list of events parked behind partition key `key`.
    pub fn parked(&self, key: &str) -> String {
        format!("{}{key}", self.parked_prefix)
    }
}

/// Pattern matching every dead-letter stream of `subscriber` (on every source stream).
pub fn dlq_pattern(subscriber: &str) -> String {
    format!("ferry:dlq:{{*}}:{subscriber}")
}

/// The hash holding the handler state of `subscriber` on `stream`, in the stream's slot so
/// the settle can commit it with the ack (`plugin::state`).
pub fn state(stream: &str, subscriber: &str) -> String {
    format!("ferry:state:{{{stream}}}:{subscriber}")
}

/// The fields of a state hash ([`state`]), for the Rust side and, generated into their head
/// ([`state_field::lua`]), for the scripts that commit state (`consume/state.lua`).
pub mod state_field {
    /// Prefix of a key's value: `=KEY`.
    pub const VALUE: &str = "=";
    /// Prefix of a key's version: `#KEY` (bumped by every write, deletes too, never reset).
    pub const VERSION: &str = "#";
    /// The total bytes of keys and values stored (what the quota counts).
    pub const BYTES: &str = "_bytes";

    /// The field of `key`'s value.
    pub fn value(key: &str) -> String {
        format!("{VALUE}{key}")
    }

    /// The field of `key`'s version.
    pub fn version(key: &str) -> String {
        format!("{VERSION}{key}")
    }

    /// These names as the Lua table `S` the state rules read.
    pub fn lua() -> String {
        format!("local S = {{VALUE = '{VALUE}', VERSION = '{VERSION}', BYTES = '{BYTES}'}}\n")
    }
}

/// Pattern matching every dead-letter stream.
pub const ALL_DLQ_PATTERN: &str = "ferry:dlq:*";

/// Pattern matching every retry stream (one per subscriber and source stream).
pub const ALL_RETRY_PATTERN: &str = "ferry:retry:{*}:*";

/// Split a retry-stream key back into (stream, subscriber).
pub fn parse_retry(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("ferry:retry:{")?.split_once("}:")
}

/// The partition count recorded for `stream` (`host::check_partitions`), in its slot.
pub fn partitions(stream: &str) -> String {
    format!("ferry:partitions:{{{stream}}}")
}

/// Stream of the audit trail: every operator action on dead letters (see `audit`).
pub const AUDIT: &str = "ferry:audit";

/// Sorted set of the admin endpoint's jobs (member: job id, score: started in ms).
pub const JOBS: &str = "ferry:jobs";

/// Hash of one admin-endpoint job (its progress), expiring a day after its last change.
pub fn job(id: &str) -> String {
    format!("ferry:job:{id}")
}

/// The id of the job running one action on one selection (`digest` names the pair), while
/// it runs: what stops a second identical job.
pub fn job_running(digest: &str) -> String {
    format!("ferry:jobrun:{digest}")
}

/// Sorted set where running hosts register (member: consumer name, score: last seen in ms).
pub const HOSTS: &str = "ferry:hosts";

/// Split a dead-letter key back into (stream, subscriber).
pub fn parse_dlq(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("ferry:dlq:{")?;
    let (stream, rest) = rest.split_once("}:")?;
    Some((stream, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_stream_hash_tag() {
        let keys = SubscriberKeys::new("orders", "inventory");
        for key in
            [&keys.retry, &keys.schedule, &keys.dlq, &keys.seen, &keys.dead, &keys.inflight, &keys.holds, &keys.holders]
        {
            assert!(key.contains("{orders}"), "{key}");
        }
        assert_eq!(parse_dlq(&keys.dlq), Some(("orders", "inventory")));
        assert_eq!(parse_retry(&keys.retry), Some(("orders", "inventory")));
        assert_eq!(slot(&partitions("orders")), slot("orders"));
        assert!(check_name("stream", "a{b}").is_err());
    }

    #[test]
    fn slots_follow_redis_cluster() {
        // Test vectors from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"), "an empty tag hashes the whole key");
        let keys = SubscriberKeys::new("orders", "inventory");
        assert_eq!(slot(&keys.retry), slot("orders"));
        assert_eq!(slot(&keys.forward), slot("orders"));
    }

    #[test]
    fn partitions_are_chosen_by_key_or_else_by_id() {
        // The vectors of docs/scale-out.md.
        assert_eq!(partition_of(Some("customer-42"), "ignored", 6), u32::from(crc16(b"customer-42")) % 6);
        assert_eq!(partition_of(Some("123456789"), "x", 16), 0x31C3 % 16);
        assert_eq!(partition_of(None, "123456789", 6), 0x31C3 % 6);
        assert_eq!(route("orders", 1, Some("k"), "id"), "orders");
        assert_eq!(route("orders", 6, Some("123456789"), "id"), format!("orders#{}", 0x31C3 % 6));
        assert_eq!(logical("orders#3"), "orders");
        assert_eq!(logical("orders"), "orders");
        assert!(check_name("stream", "a#1").is_err());
        let slots: std::collections::HashSet<u16> = (0..6).map(|p| slot(&partition("orders", p))).collect();
        assert_eq!(slots.len(), 6, "each partition in its own slot");
        let keys = SubscriberKeys::new(&partition("orders", 2), "inventory");
        assert_eq!(slot(&keys.retry), slot("orders#2"));
    }

    /// Issue 23, "checked and sound": `check_name` guards every place a stream is named (the
    /// host's `stream`, a plugin's subscriptions, `publish.send`, the relay's rows, `ferry
    /// publish`). A brace would set another key's hash tag (its slot, or one of ferry's own
    /// keys), `#` would name a partition, a space or control character would forge log lines
    /// or reach a terminal: each is refused, and ordinary names pass.
    #[test]
    fn stream_names_with_braces_hash_spaces_or_control_characters_are_refused() {
        for bad in [
            "",
            "a{b",
            "a}b",
            "{orders}",
            "ferry:retry:{orders}",
            "orders#0",
            "#",
            "a b",
            "a\nb",
            "a\rb",
            "a\tb",
            "a\u{0}",
            "a\u{1b}[31m",
            "a\u{7f}",
            "a\u{85}",
            "a\u{9b}2J",
        ] {
            assert!(check_name("stream", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["orders", "orders.v2", "team-a/orders_2", "billing:invoices", "événements"] {
            assert_eq!(check_name("stream", good), Ok(()), "{good:?}");
        }
    }
}
