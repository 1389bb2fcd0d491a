//! A subscriber's state as it is stored, read and written outside any event: what
//! `ferry state` lists, shows and repairs, and what `ferry status` and the
//! `ferry_state_bytes` gauge report.
//!
//! It uses the encoding of the capability and the settle (`plugin::state`, the prelude's
//! `state_plan`/`state_apply`): field `=KEY` the value, `#KEY` its version, `_bytes` the
//! total of keys and values. A write here goes through the same commit script
//! ([`Txn::commit`]), so it bumps the key's version: an event that read the key before the
//! operator's repair conflicts at its settle and runs again on the repaired value, instead
//! of overwriting it. The operator's writes are bounded by no quota and no size limit (a
//! repair must be possible on a subscriber at its quota) beyond a non-empty key.

use crate::connection::Conn;
use crate::plugin::state::{Committed, StateError, StateLimits, Txn};

/// Why reading or writing stored state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoredError {
    /// Redis refused or could not be reached.
    #[error("reading or writing state in redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The key is empty.
    #[error("{0}")]
    Key(#[from] StateError),
    /// The commit refused the write (cannot happen for a blind write; reported, not hidden).
    #[error("the state commit refused the write: {0:?}")]
    Refused(Committed),
}

/// One stored key and the size of its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The key (the plugin's, as it passed it).
    pub key: String,
    /// Bytes of its value.
    pub bytes: u64,
    /// Its version: how many times it was written or deleted.
    pub version: u64,
}

/// The operator's bounds: none but a non-empty key.
const UNBOUNDED: StateLimits = StateLimits {
    key_bytes: usize::MAX,
    value_bytes: usize::MAX,
    writes_per_event: 1,
    quota_bytes: 0,
    prefetch: false,
};

/// Every key of `subscriber`'s state on `stream`, sorted, with its value's size.
pub async fn list(conn: &mut Conn, stream: &str, subscriber: &str) -> Result<Vec<Entry>, StoredError> {
    let hash = crate::keys::state(stream, subscriber);
    let mut values = std::collections::BTreeMap::<String, u64>::new();
    let mut versions = std::collections::BTreeMap::<String, u64>::new();
    let mut cursor = 0u64;
    loop {
        // HSCAN brings the values too; an operator's listing can afford it, and it needs no
        // HSTRLEN round trip per key.
        let (next, page): (u64, Vec<Vec<u8>>) =
            redis::cmd("HSCAN").arg(&hash).arg(cursor).arg("COUNT").arg(500).query_async(conn).await?;
        for pair in page.chunks(2) {
            let (Some(field), Some(value)) = (pair.first(), pair.get(1)) else { continue };
            let name = String::from_utf8_lossy(field.get(1..).unwrap_or_default()).into_owned();
            let prefix = field.get(..1).unwrap_or_default();
            match prefix {
                p if p == crate::keys::state_field::VALUE.as_bytes() => {
                    values.insert(name, value.len() as u64);
                }
                p if p == crate::keys::state_field::VERSION.as_bytes() => {
                    let version = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                    versions.insert(name, version);
                }
                _ => {}
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(values
        .into_iter()
        .map(|(key, bytes)| {
            let version = versions.get(&key).copied().unwrap_or(0);
            Entry { key, bytes, version }
        })
        .collect())
}

/// The value of `key` (None: not set).
pub async fn get(conn: &mut Conn, stream: &str, subscriber: &str, key: &str) -> Result<Option<Vec<u8>>, StoredError> {
    let value: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(crate::keys::state(stream, subscriber))
        .arg(crate::keys::state_field::value(key))
        .query_async(conn)
        .await?;
    Ok(value)
}

/// Set `key` to `value`, its version bumped (see the module docs).
pub async fn set(
    conn: &mut Conn,
    stream: &str,
    subscriber: &str,
    key: &str,
    value: Vec<u8>,
) -> Result<(), StoredError> {
    let mut txn = Txn::new(crate::keys::state(stream, subscriber), UNBOUNDED);
    txn.set(key, value)?;
    commit(conn, &txn).await
}

/// Delete `key`, its version bumped; whether it had a value.
pub async fn delete(conn: &mut Conn, stream: &str, subscriber: &str, key: &str) -> Result<bool, StoredError> {
    let had = get(conn, stream, subscriber, key).await?.is_some();
    let mut txn = Txn::new(crate::keys::state(stream, subscriber), UNBOUNDED);
    txn.delete(key)?;
    commit(conn, &txn).await?;
    Ok(had)
}

/// Bytes of keys and values `subscriber` stores on `stream`: the total the quota counts,
/// kept by every commit, so one HGET.
pub async fn bytes(conn: &mut Conn, stream: &str, subscriber: &str) -> Result<u64, StoredError> {
    let total: Option<i64> = redis::cmd("HGET")
        .arg(crate::keys::state(stream, subscriber))
        .arg(crate::keys::state_field::BYTES)
        .query_async(conn)
        .await?;
    Ok(total.unwrap_or(0).max(0) as u64)
}

async fn commit(conn: &mut Conn, txn: &Txn) -> Result<(), StoredError> {
    match txn.commit(conn).await? {
        Committed::Done => Ok(()),
        other => Err(StoredError::Refused(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_test_kit::redis_server::RedisServer;

    #[tokio::test]
    async fn an_operators_write_bumps_the_version_so_a_reader_of_the_key_conflicts() {
        let server = RedisServer::start().expect("redis");
        let client = redis::Client::open(server.url()).expect("url");
        let mut c = Conn::Node(client.get_multiplexed_async_connection().await.expect("connect"));
        let hash = crate::keys::state("events#1", "counter");
        let mut event = Txn::new(hash.clone(), StateLimits::default());
        event.increment(&mut c, "count", 1).await.expect("incr");
        set(&mut c, "events#1", "counter", "count", b"41".to_vec()).await.expect("set");
        assert_eq!(event.commit(&mut c).await.expect("commit"), Committed::Conflict("count".into()));
        let mut again = Txn::new(hash, StateLimits::default());
        assert_eq!(again.increment(&mut c, "count", 1).await.expect("incr"), 42, "continues from the repair");
        assert_eq!(again.commit(&mut c).await.expect("commit"), Committed::Done);
        set(&mut c, "events#1", "counter", "other\n", vec![0; 3]).await.expect("set");
        let listed = list(&mut c, "events#1", "counter").await.expect("list");
        assert_eq!(
            listed,
            vec![
                Entry { key: "count".into(), bytes: 2, version: 2 },
                Entry { key: "other\n".into(), bytes: 3, version: 1 },
            ]
        );
        assert_eq!(bytes(&mut c, "events#1", "counter").await.expect("bytes"), 5 + 2 + 6 + 3);
        assert!(delete(&mut c, "events#1", "counter", "other\n").await.expect("delete"));
        assert!(!delete(&mut c, "events#1", "counter", "other\n").await.expect("delete"), "already gone");
        assert_eq!(get(&mut c, "events#1", "counter", "other\n").await.expect("get"), None);
        assert_eq!(bytes(&mut c, "events#1", "counter").await.expect("bytes"), 7);
        assert_eq!(list(&mut c, "events", "counter").await.expect("list"), vec![], "another partition's state");
    }
}
