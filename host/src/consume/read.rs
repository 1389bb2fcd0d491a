//! Reading entries: `XREADGROUP`, `XAUTOCLAIM`, and reply parsing (theirs and `read.lua`'s).
//!
//! Replies are parsed by hand from [`redis::Value`] rather than through redis-rs's typed
//! stream replies: it avoids a hash map per entry on the hot path, and it keeps entries whose
//! fields were deleted or trimmed while pending (they come back with no field map) so they can
//! be set aside instead of being lost.

use redis::Value;
use redis::aio::ConnectionLike;

/// A raw stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream key it was read from.
    pub key: String,
    /// Entry id.
    pub id: String,
    /// Field/value pairs in stream order; empty if the entry was deleted while pending.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

/// `XREADGROUP GROUP group consumer COUNT count [BLOCK ms] STREAMS keys... ids...`.
pub async fn read_group<C: ConnectionLike>(
    conn: &mut C,
    group: &str,
    consumer: &str,
    count: usize,
    block_ms: Option<u64>,
    keys: &[&str],
    id: &str,
) -> redis::RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS");
    for key in keys {
        cmd.arg(*key);
    }
    for _ in keys {
        cmd.arg(id);
    }
    let value: Value = cmd.query_async(conn).await?;
    Ok(parse_read_reply(value))
}

/// What a read of new entries under per-key order found.
#[derive(Debug)]
pub enum Fresh {
    /// Entries for this consumer (some may have been parked behind their key instead).
    Read(Vec<Entry>),
    /// Nothing new: the last ids of the source and the retry stream, to wait from.
    Nothing([String; 2]),
}

/// `read.lua`'s reply: `{entries, last source id, last retry id}`; the reply itself when it
/// is not of that form.
pub fn parse_fresh(reply: Value) -> Result<Fresh, Value> {
    let Value::Array(parts) = reply else { return Err(reply) };
    let [entries @ (Value::Array(_) | Value::Map(_)), source, retry] = &parts[..] else {
        return Err(Value::Array(parts));
    };
    let (Some(source), Some(retry)) = (text(source), text(retry)) else { return Err(Value::Array(parts)) };
    let entries = parse_read_reply(entries.clone());
    // Last ids come back only when nothing was delivered (not when all of it was parked).
    if !entries.is_empty() || (source.is_empty() && retry.is_empty()) {
        return Ok(Fresh::Read(entries));
    }
    Ok(Fresh::Nothing([source, retry].map(|id| if id.is_empty() { "0-0".to_string() } else { id })))
}

/// `XAUTOCLAIM key group consumer min-idle 0-0 COUNT count`: entries idle for longer than
/// `min_idle_ms` on any consumer become this consumer's. Returns the claimed entries (with the
/// ones deleted while pending, as empty entries: Redis 7 already dropped those from the PEL).
pub async fn auto_claim<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    count: usize,
) -> redis::RedisResult<Vec<Entry>> {
    let value: Value = redis::cmd("XAUTOCLAIM")
        .arg(key)
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let Value::Array(parts) = value else { return Ok(Vec::new()) };
    let mut parts = parts.into_iter();
    let _cursor = parts.next();
    let mut out = parts.next().map(|v| parse_entries(key, v)).unwrap_or_default();
    // Ids of entries deleted while pending (Redis 7 lists them apart and has already dropped
    // them from the pending list): returned as entries without fields, so whatever they held
    // (a partition key) is handed on.
    if let Some(Value::Array(deleted)) = parts.next() {
        out.extend(deleted.iter().filter_map(text).map(|id| Entry { key: key.to_string(), id, fields: Vec::new() }));
    }
    Ok(out)
}

/// Compare two stream ids numerically (`ms-seq`).
pub fn cmp_ids(a: &str, b: &str) -> std::cmp::Ordering {
    parse_id(a).cmp(&parse_id(b))
}

/// Split a stream id into its two numbers (unparsable parts count as zero).
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The field/value pairs of a reply like `XINFO GROUPS`'s items (RESP2 flat array or RESP3
/// map), with text keys.
pub fn pairs(value: Value) -> Vec<(String, Value)> {
    let flat = match value {
        Value::Array(items) => items,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = text(&k) {
            out.push((k, v));
        }
    }
    out
}

/// The value of `name` in `pairs` as text or integer.
pub fn pair_str(pairs: &[(String, Value)], name: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == name).and_then(|(_, v)| text(v))
}

/// The value of `name` in `pairs` as an integer.
pub fn pair_int(pairs: &[(String, Value)], name: &str) -> Option<i64> {
    match pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)? {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// A bulk or simple string reply as text.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Parse an `XREADGROUP`/`XREAD` reply (RESP2 array or RESP3 map).
pub fn parse_read_reply(value: Value) -> Vec<Entry> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Some((pair.next()?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (key, entries) in streams {
        let Some(key) = text(&key) else { continue };
        out.extend(parse_entries(&key, entries));
    }
    out
}

/// Parse a list of `[id, [field, value, ...]]` entries (the field list may be nil).
pub fn parse_entries(key: &str, value: Value) -> Vec<Entry> {
    let Value::Array(entries) = value else { return Vec::new() };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next().as_ref().and_then(text) else { continue };
        let fields = match parts.next() {
            Some(Value::Array(flat)) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
                        fields.push((k, v));
                    }
                }
                fields
            }
            Some(Value::Map(pairs)) => {
                pairs.into_iter().filter_map(|(k, v)| Some((into_bytes(k)?, into_bytes(v)?))).collect()
            }
            _ => Vec::new(),
        };
        out.push(Entry { key: key.to_string(), id, fields });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_including_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("type"), bulk("A")])]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].field("type"), Some(&b"A"[..]));
        assert!(entries[1].fields.is_empty());
        assert_eq!(parse_read_reply(Value::Nil), vec![]);
    }

    #[test]
    fn ids_compare_numerically() {
        assert_eq!(cmp_ids("10-0", "9-5"), std::cmp::Ordering::Greater);
        assert_eq!(cmp_ids("5-10", "5-9"), std::cmp::Ordering::Greater);
    }
}
