//! Managing the outbox table: create it, list failed rows, re-queue them.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{RelayError, Table};

/// Create the table, its indexes and its trigger (idempotent).
pub async fn init(client: &tokio_postgres::Client, table: &Table) -> Result<(), RelayError> {
    client.batch_execute(&format!("BEGIN;\n{}COMMIT;", table.ddl())).await?;
    Ok(())
}

/// A row the relay could not publish.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedRow {
    /// Event id.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Source.
    pub source: String,
    /// Stream named by the row (`None`: the default stream).
    pub stream: Option<String>,
    /// When it was marked failed (RFC 3339).
    pub failed_at: String,
    /// Why.
    pub error: String,
    /// Relay attempts so far.
    pub attempts: i32,
}

/// Up to `limit` failed rows, oldest first.
pub async fn failed(client: &tokio_postgres::Client, table: &Table, limit: i64) -> Result<Vec<FailedRow>, RelayError> {
    let sql = format!(
        "SELECT id, type, source, stream, failed_at, COALESCE(error, ''), attempts FROM {} \
         WHERE failed_at IS NOT NULL ORDER BY seq LIMIT $1",
        table.name()
    );
    let mut out = Vec::new();
    for row in client.query(&sql, &[&limit]).await? {
        let id: Uuid = row.try_get(0)?;
        let failed_at: OffsetDateTime = row.try_get(4)?;
        out.push(FailedRow {
            id: id.to_string(),
            event_type: row.try_get(1)?,
            source: row.try_get(2)?,
            stream: row.try_get(3)?,
            failed_at: failed_at.format(&Rfc3339).unwrap_or_default(),
            error: row.try_get(5)?,
            attempts: row.try_get(6)?,
        });
    }
    Ok(out)
}

/// Re-queue failed rows (`ids`, or every failed row when `None`) and wake the relay; returns
/// how many. The rows keep their place: they are relayed next, before newer rows.
pub async fn retry(client: &tokio_postgres::Client, table: &Table, ids: Option<&[Uuid]>) -> Result<u64, RelayError> {
    let base = format!("UPDATE {} SET failed_at = NULL, error = NULL WHERE failed_at IS NOT NULL", table.name());
    let n = match ids {
        Some(ids) => client.execute(&format!("{base} AND id = ANY($1)"), &[&ids]).await?,
        None => client.execute(&base, &[]).await?,
    };
    client.execute("SELECT pg_notify($1, '')", &[&table.channel()]).await?;
    Ok(n)
}

/// The state of an outbox table, for `ferry relay status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableStatus {
    /// The table.
    pub table: String,
    /// Rows waiting to be relayed (neither published nor failed).
    pub backlog: i64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub oldest_unrelayed_age_seconds: f64,
    /// Rows marked failed.
    pub failed: i64,
    /// Published rows still kept (retention).
    pub published_kept: i64,
    /// The active relay's session (`application_name` and address), if one holds the lock.
    pub active_relay: Option<String>,
}

/// Count the table's rows by state and find the active relay.
pub async fn status(client: &tokio_postgres::Client, table: &Table) -> Result<TableStatus, RelayError> {
    let counts = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE published_at IS NULL AND failed_at IS NULL), \
                 COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at) \
                 FILTER (WHERE published_at IS NULL AND failed_at IS NULL))::float8, 0), \
                 count(*) FILTER (WHERE failed_at IS NOT NULL), count(*) FILTER (WHERE published_at IS NOT NULL) \
                 FROM {}",
                table.name()
            ),
            &[],
        )
        .await?;
    // An advisory lock's bigint key is split into classid (high half) and objid (low half).
    let active = client
        .query_opt(
            &format!(
                "SELECT a.application_name || COALESCE(' at ' || host(a.client_addr), '') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = {}",
                table.lock_key_sql()
            ),
            &[],
        )
        .await?;
    Ok(TableStatus {
        table: table.name().to_string(),
        backlog: counts.try_get(0)?,
        oldest_unrelayed_age_seconds: counts.try_get(1)?,
        failed: counts.try_get(2)?,
        published_kept: counts.try_get(3)?,
        active_relay: active.map(|r| r.try_get(0)).transpose()?,
    })
}
