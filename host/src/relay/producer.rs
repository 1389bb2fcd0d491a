//! The Rust producer API: add an event to the outbox table inside the caller's transaction.
//!
//! ```no_run
//! # async fn demo(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::event::Event;
//!
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id, status) VALUES ($1, 'created')", &[&"o-1"]).await?;
//! let mut event = Event::new("OrderCreated", "orders", r#"{"order_id":"o-1"}"#);
//! event.partitionkey = Some("o-1".into());
//! ferry::outbox::postgres::add(&tx, &event).await?;
//! tx.commit().await?; // the order and its event exist together, or neither does
//! # Ok(()) }
//! ```

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{RelayError, Table};
use crate::event::{Event, is_json};

/// Add `event` to the default outbox table (`ferry_outbox`), bound for the relay's default
/// stream. Use it on a [`tokio_postgres::Transaction`] so the event commits (or rolls back)
/// with the caller's own writes.
pub async fn add<C: GenericClient>(client: &C, event: &Event) -> Result<(), RelayError> {
    add_to(client, &Table::default(), None, event).await
}

/// Add `event` to `table`, bound for `stream` (`None`: the relay's default stream).
///
/// The event id must be a UUID (as [`Event::new`] makes). A JSON payload goes to the `jsonb`
/// column `data`; any other to `data_binary`.
pub async fn add_to<C: GenericClient>(
    client: &C,
    table: &Table,
    stream: Option<&str>,
    event: &Event,
) -> Result<(), RelayError> {
    let id = Uuid::parse_str(&event.id).map_err(|_| RelayError::Event(format!("id `{}` is not a UUID", event.id)))?;
    let time = OffsetDateTime::parse(&event.time, &Rfc3339)
        .map_err(|e| RelayError::Event(format!("time `{}` is not RFC 3339: {e}", event.time)))?;
    let schemaversion = i32::try_from(event.schemaversion)
        .map_err(|_| RelayError::Event(format!("schemaversion {} is too large", event.schemaversion)))?;
    let (json, binary): (Option<&str>, Option<&[u8]>) = if is_json(&event.datacontenttype) {
        let text = std::str::from_utf8(&event.data)
            .map_err(|_| RelayError::Event("data is declared JSON but is not UTF-8".into()))?;
        (Some(text), None)
    } else {
        (None, Some(&event.data))
    };
    let sql = format!(
        "INSERT INTO {} (id, type, source, data, data_binary, time, stream, schemaversion, datacontenttype, \
         subject, dataschema, partitionkey, correlationid, causationid, traceparent) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        table.name()
    );
    client
        .execute(
            &sql,
            &[
                &id,
                &event.event_type,
                &event.source,
                &json,
                &binary,
                &time,
                &stream,
                &schemaversion,
                &event.datacontenttype,
                &event.subject,
                &event.dataschema,
                &event.partitionkey,
                &event.correlationid,
                &event.causationid,
                &event.traceparent,
            ],
        )
        .await?;
    Ok(())
}
