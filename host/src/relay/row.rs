//! One outbox row: read from PostgreSQL, checked, turned into the event and stream it is
//! published as, or into the reason it cannot be.
//!
//! The row goes through the same stream-entry validation as an event a consumer reads
//! ([`Event::from_fields`]), so a row the relay publishes is one every subscriber accepts, and
//! a row it refuses would have been dead-lettered anyway: refusing it here keeps the reason next
//! to the row, where the producer can fix it.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::event::{Event, SPEC_VERSION, field};

/// An outbox row as the relay reads it (see [`super::Table::select_ready`]).
#[derive(Debug, Clone)]
pub struct Row {
    /// The row's sequence number (its place within its transaction).
    pub seq: i64,
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Source.
    pub source: String,
    /// JSON payload, as text.
    pub data: Option<String>,
    /// Any other payload.
    pub data_binary: Option<Vec<u8>>,
    /// When the fact occurred.
    pub time: OffsetDateTime,
    /// Stream; `None`: the default stream.
    pub stream: Option<String>,
    /// Payload schema version.
    pub schemaversion: i32,
    /// Media type of the payload.
    pub datacontenttype: String,
    /// CloudEvents subject.
    pub subject: Option<String>,
    /// CloudEvents dataschema.
    pub dataschema: Option<String>,
    /// Partition key.
    pub partitionkey: Option<String>,
    /// Correlation id.
    pub correlationid: Option<String>,
    /// Causation id.
    pub causationid: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// When the row was inserted (for the insert → stream latency).
    pub created_at: OffsetDateTime,
}

impl Row {
    /// Read a row of [`super::Table::select_ready`].
    pub fn from_pg(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            seq: row.try_get(0)?,
            id: row.try_get(1)?,
            event_type: row.try_get(2)?,
            source: row.try_get(3)?,
            data: row.try_get(4)?,
            data_binary: row.try_get(5)?,
            time: row.try_get(6)?,
            stream: row.try_get(7)?,
            schemaversion: row.try_get(8)?,
            datacontenttype: row.try_get(9)?,
            subject: row.try_get(10)?,
            dataschema: row.try_get(11)?,
            partitionkey: row.try_get(12)?,
            correlationid: row.try_get(13)?,
            causationid: row.try_get(14)?,
            traceparent: row.try_get(15)?,
            created_at: row.try_get(16)?,
        })
    }

    /// The event and its stream, or why the row cannot be published.
    pub fn to_event(&self, rules: &StreamRules) -> Result<(String, Event), String> {
        let data: &[u8] = match (&self.data, &self.data_binary) {
            (Some(_), Some(_)) => return Err("both data and data_binary are set; set at most one".into()),
            (Some(json), None) => json.as_bytes(),
            (None, Some(bytes)) => bytes,
            (None, None) => b"",
        };
        let time = self
            .time
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(|e| format!("time cannot be written as RFC 3339: {e}"))?;
        let id = self.id.to_string();
        let schemaversion = self.schemaversion.to_string();
        let mut fields: Vec<(&str, &[u8])> = vec![
            (field::ID, id.as_bytes()),
            (field::SOURCE, self.source.as_bytes()),
            (field::TYPE, self.event_type.as_bytes()),
            (field::SPECVERSION, SPEC_VERSION.as_bytes()),
            (field::TIME, time.as_bytes()),
            (field::DATACONTENTTYPE, self.datacontenttype.as_bytes()),
            (field::SCHEMAVERSION, schemaversion.as_bytes()),
            (field::DATA, data),
        ];
        let optional = [
            (field::SUBJECT, &self.subject),
            (field::DATASCHEMA, &self.dataschema),
            (field::CORRELATIONID, &self.correlationid),
            (field::CAUSATIONID, &self.causationid),
            (field::PARTITIONKEY, &self.partitionkey),
            (field::TRACEPARENT, &self.traceparent),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                fields.push((name, v.as_bytes()));
            }
        }
        let owned: Vec<(Vec<u8>, Vec<u8>)> =
            fields.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect();
        let event = Event::from_fields(&owned).map_err(|e| e.to_string())?;
        let stream = rules.stream_of(self.stream.as_deref())?;
        Ok((stream, event))
    }
}

/// Which streams rows may name.
#[derive(Debug, Clone)]
pub struct StreamRules {
    /// The stream of rows that name none.
    pub default_stream: String,
    /// If set, the only streams rows may name.
    pub allowed: Option<Vec<String>>,
}

impl StreamRules {
    /// The stream a row with `stream` goes to, or why it cannot.
    pub fn stream_of(&self, stream: Option<&str>) -> Result<String, String> {
        let Some(stream) = stream else { return Ok(self.default_stream.clone()) };
        crate::keys::check_name("stream", stream)?;
        if stream.starts_with("ferry:") {
            return Err(format!("stream `{stream}` is one of ferry's own keys"));
        }
        if let Some(allowed) = &self.allowed
            && !allowed.iter().any(|s| s == stream)
        {
            return Err(format!("stream `{stream}` is not among the streams the relay may publish to"));
        }
        Ok(stream.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            seq: 1,
            id: Uuid::now_v7(),
            event_type: "OrderCreated".into(),
            source: "orders".into(),
            data: Some(r#"{"order": "o-1"}"#.into()),
            data_binary: None,
            time: OffsetDateTime::now_utc(),
            stream: None,
            schemaversion: 2,
            datacontenttype: "application/json".into(),
            subject: None,
            dataschema: None,
            partitionkey: Some("o-1".into()),
            correlationid: Some("c".into()),
            causationid: None,
            traceparent: None,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn rules() -> StreamRules {
        StreamRules { default_stream: "events".into(), allowed: None }
    }

    #[test]
    fn a_valid_row_keeps_its_id_and_attributes() {
        let r = row();
        let (stream, event) = r.to_event(&rules()).expect("valid");
        assert_eq!(stream, "events");
        assert_eq!(event.id, r.id.to_string());
        assert_eq!(event.schemaversion, 2);
        assert_eq!(event.partitionkey.as_deref(), Some("o-1"));
        assert!(event.time.ends_with('Z'));
    }

    #[test]
    fn invalid_rows_name_their_fault() {
        let mut r = row();
        r.event_type = " ".into();
        assert!(r.to_event(&rules()).unwrap_err().contains("type"));
        let mut r = row();
        r.schemaversion = -1;
        assert!(r.to_event(&rules()).unwrap_err().contains("schemaversion"));
        let mut r = row();
        r.data = None;
        r.data_binary = Some(b"not json".to_vec());
        assert!(r.to_event(&rules()).unwrap_err().contains("JSON"));
        r.datacontenttype = "text/plain".into();
        assert!(r.to_event(&rules()).is_ok());
        let mut r = row();
        r.stream = Some("a{b}".into());
        assert!(r.to_event(&rules()).unwrap_err().contains("braces"));
        r.stream = Some("ferry:dlq:x".into());
        assert!(r.to_event(&rules()).is_err());
        let strict = StreamRules { default_stream: "events".into(), allowed: Some(vec!["orders".into()]) };
        r.stream = Some("billing".into());
        assert!(r.to_event(&strict).unwrap_err().contains("not among"));
    }
}
