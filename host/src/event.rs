//! The integration-event envelope and its stream-entry encoding.
//!
//! An event is stored as one Redis stream entry with one field per CloudEvents attribute plus
//! `data`, so `redis-cli XRANGE` is readable and any language can produce events with a plain
//! `XADD`. This module owns that mapping in both directions and the validation that keeps a
//! malformed entry away from plugins.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// The CloudEvents spec version ferry speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The default media type of `data`.
pub const JSON: &str = "application/json";

/// Field names of a stream entry. Attribute names follow CloudEvents 1.0 and its Correlation
/// and Partitioning extensions; `schemaversion` is ferry's extension for the payload version.
pub mod field {
    /// Unique id of the event.
    pub const ID: &str = "id";
    /// Module that emitted the event.
    pub const SOURCE: &str = "source";
    /// Event type.
    pub const TYPE: &str = "type";
    /// CloudEvents spec version.
    pub const SPECVERSION: &str = "specversion";
    /// When the fact occurred (RFC 3339, UTC).
    pub const TIME: &str = "time";
    /// Media type of `data`.
    pub const DATACONTENTTYPE: &str = "datacontenttype";
    /// Payload schema version (integer).
    pub const SCHEMAVERSION: &str = "schemaversion";
    /// CloudEvents subject.
    pub const SUBJECT: &str = "subject";
    /// CloudEvents dataschema.
    pub const DATASCHEMA: &str = "dataschema";
    /// Correlation extension: flow id.
    pub const CORRELATIONID: &str = "correlationid";
    /// Correlation extension: cause id.
    pub const CAUSATIONID: &str = "causationid";
    /// Partitioning extension: ordering key.
    pub const PARTITIONKEY: &str = "partitionkey";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// ferry's extension: hops of follow-ups from an event a producer wrote (absent: 0), set
    /// by the host on every follow-up and bounded by [`super::MAX_CAUSATION_DEPTH`].
    pub const CAUSATIONDEPTH: &str = "causationdepth";
    /// ferry's extension: how many more descendants the event may have (absent: the whole
    /// [`super::CAUSATION_BUDGET`]), set by the host on every follow-up.
    pub const CAUSATIONBUDGET: &str = "causationbudget";
    /// The payload.
    pub const DATA: &str = "data";
}

/// Why a stream entry is not a valid event. The entry is dead-lettered with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// A required attribute is absent.
    #[error("missing required attribute `{0}`")]
    Missing(&'static str),
    /// An attribute is present but not acceptable.
    #[error("malformed attribute `{name}`: {reason}")]
    Malformed {
        /// The attribute.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `datacontenttype` declares JSON but `data` does not parse.
    #[error("data is not valid JSON although datacontenttype is {content_type}: {reason}")]
    BadJson {
        /// The declared media type.
        content_type: String,
        /// The parser's message.
        reason: String,
    },
    /// The entry's fields were deleted or trimmed while it was pending.
    #[error("entry has no fields (deleted or trimmed while pending)")]
    Empty,
    /// A field appears more than once. One rule everywhere (the scripts that read a
    /// partition key and this parser would otherwise disagree on which occurrence counts).
    #[error("attribute `{0}` appears more than once")]
    Duplicated(String),
}

/// An integration event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (UUID v7 when produced by ferry).
    pub id: String,
    /// The module that emitted the event.
    pub source: String,
    /// Event type, e.g. `OrderCreated`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the fact occurred, RFC 3339 in UTC.
    pub time: String,
    /// Media type of `data`.
    pub datacontenttype: String,
    /// Payload schema version.
    pub schemaversion: u32,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// Flow id shared by related events.
    pub correlationid: Option<String>,
    /// Id of the event that caused this one.
    pub causationid: Option<String>,
    /// Key for per-key ordering.
    pub partitionkey: Option<String>,
    /// W3C trace context of the producer.
    pub traceparent: Option<String>,
    /// Hops of follow-ups from an event a producer wrote; `None` for a producer's own event.
    /// Set by the host on follow-ups; see [`MAX_CAUSATION_DEPTH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationdepth: Option<u32>,
    /// How many more descendants this event may have; `None`: [`CAUSATION_BUDGET`]. Set by
    /// the host on follow-ups: an event with budget `b` publishing `n` follow-ups (at most
    /// `b`) gives each `(b - n) / n`, so all descendants of a producer's event together stay
    /// within its budget however the tree branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationbudget: Option<u32>,
    /// Serialized payload.
    #[serde(with = "data_as_text")]
    pub data: Vec<u8>,
}

/// Serialize `data` as a UTF-8 string when it is one (the common JSON case), else as bytes.
mod data_as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(data) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(data),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// Most fields a stream entry may have (Lua's `unpack`, which every script write goes through,
/// stops near 8,000 values). One rule for both sides: the consumer refuses a longer entry it
/// reads, and ferry never writes one (follow-ups).
pub const MAX_FIELDS: usize = 1_000;
/// Most bytes (field names and values together) a stream entry may have; the same rule on
/// both sides as [`MAX_FIELDS`].
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of one attribute other than `data` (type, subject, partition key, content type,
/// stream name) of an event a plugin publishes. Each follow-up is held until its event is
/// settled and copied into the settle, so every field needs a bound, not only `data`.
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// Most hops of follow-ups from an event a producer wrote: an event whose `causationdepth` is
/// above it is refused as invalid (and dead-lettered), so a plugin that re-emits what it reads
/// cannot amplify without bound.
pub const MAX_CAUSATION_DEPTH: u32 = 32;

/// How many descendants (follow-ups, their follow-ups, ...) one event a producer wrote may
/// have in all: see `causationbudget`.
pub const CAUSATION_BUDGET: u32 = 10_000;

impl Event {
    /// The bytes of the stream entry this event is written as (field names and values, the
    /// schema version included): what [`MAX_ENTRY_BYTES`] bounds.
    pub fn entry_bytes(&self) -> usize {
        let version = field::SCHEMAVERSION.len() + self.schemaversion.to_string().len();
        self.to_fields().iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + version
    }

    /// A new event of `event_type` from `source` with a JSON payload, a fresh UUID v7 id and
    /// the current UTC time. Set the optional attributes on the returned value.
    pub fn new(event_type: impl Into<String>, source: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            source: source.into(),
            event_type: event_type.into(),
            time: now_rfc3339(),
            datacontenttype: JSON.to_string(),
            schemaversion: 1,
            subject: None,
            dataschema: None,
            correlationid: None,
            causationid: None,
            partitionkey: None,
            traceparent: None,
            causationdepth: None,
            causationbudget: None,
            data: data.into(),
        }
    }

    /// The stream-entry fields of this event, in a stable order; absent optionals are omitted.
    pub fn to_fields(&self) -> Vec<(&'static str, Cow<'_, [u8]>)> {
        let mut out: Vec<(&'static str, Cow<'_, [u8]>)> = vec![
            (field::ID, self.id.as_bytes().into()),
            (field::SOURCE, self.source.as_bytes().into()),
            (field::TYPE, self.event_type.as_bytes().into()),
            (field::SPECVERSION, SPEC_VERSION.as_bytes().into()),
            (field::TIME, self.time.as_bytes().into()),
            (field::DATACONTENTTYPE, self.datacontenttype.as_bytes().into()),
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
                out.push((name, v.as_bytes().into()));
            }
        }
        if let Some(depth) = self.causationdepth {
            out.push((field::CAUSATIONDEPTH, depth.to_string().into_bytes().into()));
        }
        if let Some(budget) = self.causationbudget {
            out.push((field::CAUSATIONBUDGET, budget.to_string().into_bytes().into()));
        }
        out.push((field::DATA, self.data.as_slice().into()));
        out
    }

    /// Append this event's fields, with the schema version, to a Redis command (an `XADD`).
    pub fn write_fields(&self, cmd: &mut redis::Cmd) {
        for (name, value) in self.to_fields() {
            cmd.arg(name).arg(value.as_ref());
        }
        cmd.arg(field::SCHEMAVERSION).arg(self.schemaversion);
    }

    /// Parse and validate an event from stream-entry fields. Field names starting with `_` are
    /// ferry's delivery metadata and are ignored here; unknown attributes are ignored too.
    pub fn from_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Self, InvalidEvent> {
        let entry = Entry::new(fields)?;
        let id = entry.required(field::ID)?;
        if id.len() > 256 {
            return Err(InvalidEvent::Malformed { name: field::ID, reason: "longer than 256 bytes".into() });
        }
        let source = entry.required(field::SOURCE)?;
        let event_type = entry.required(field::TYPE)?;
        let specversion = entry.required(field::SPECVERSION)?;
        if specversion != SPEC_VERSION {
            return Err(InvalidEvent::Malformed {
                name: field::SPECVERSION,
                reason: format!("`{specversion}` is not supported (expected {SPEC_VERSION})"),
            });
        }
        let time = entry.time()?;
        let datacontenttype = entry.get(field::DATACONTENTTYPE)?.unwrap_or_else(|| JSON.to_string());
        let schemaversion = entry.schemaversion()?;
        let data = entry.data(&datacontenttype)?;
        Ok(Self {
            id,
            source,
            event_type,
            time,
            datacontenttype,
            schemaversion,
            subject: entry.get(field::SUBJECT)?,
            dataschema: entry.get(field::DATASCHEMA)?,
            correlationid: entry.get(field::CORRELATIONID)?,
            causationid: entry.get(field::CAUSATIONID)?,
            partitionkey: entry.get(field::PARTITIONKEY)?,
            traceparent: entry.get(field::TRACEPARENT)?,
            causationdepth: entry.counter(field::CAUSATIONDEPTH)?,
            causationbudget: entry.counter(field::CAUSATIONBUDGET)?,
            data,
        })
    }
}

/// A stream entry's fields being read into an [`Event`]: each attribute found once, as UTF-8.
struct Entry<'a>(&'a [(Vec<u8>, Vec<u8>)]);

impl<'a> Entry<'a> {
    /// An entry with at least one field and no field twice.
    fn new(fields: &'a [(Vec<u8>, Vec<u8>)]) -> Result<Self, InvalidEvent> {
        if fields.is_empty() {
            return Err(InvalidEvent::Empty);
        }
        let mut names: Vec<&[u8]> = fields.iter().map(|(k, _)| k.as_slice()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(InvalidEvent::Duplicated(String::from_utf8_lossy(pair[0]).into_owned()));
        }
        Ok(Self(fields))
    }

    fn get(&self, name: &'static str) -> Result<Option<String>, InvalidEvent> {
        match self.0.iter().find(|(k, _)| k == name.as_bytes()) {
            None => Ok(None),
            Some((_, v)) => String::from_utf8(v.clone())
                .map(Some)
                .map_err(|_| InvalidEvent::Malformed { name, reason: "not UTF-8".into() }),
        }
    }

    fn counter(&self, name: &'static str) -> Result<Option<u32>, InvalidEvent> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) => v.parse::<u32>().map(Some).map_err(|_| InvalidEvent::Malformed {
                name,
                reason: format!("`{}` is not a non-negative integer", crate::redact::escape(&v)),
            }),
        }
    }

    fn required(&self, name: &'static str) -> Result<String, InvalidEvent> {
        match self.get(name)? {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(InvalidEvent::Malformed { name, reason: "empty".into() }),
            None => Err(InvalidEvent::Missing(name)),
        }
    }

    /// `time`: required, RFC 3339, in UTC.
    fn time(&self) -> Result<String, InvalidEvent> {
        let time = self.required(field::TIME)?;
        let parsed = OffsetDateTime::parse(&time, &Rfc3339)
            .map_err(|e| InvalidEvent::Malformed { name: field::TIME, reason: format!("not RFC 3339: {e}") })?;
        if !parsed.offset().is_utc() {
            return Err(InvalidEvent::Malformed { name: field::TIME, reason: "not in UTC".into() });
        }
        Ok(time)
    }

    /// The schema version, 1 when absent.
    fn schemaversion(&self) -> Result<u32, InvalidEvent> {
        match self.get(field::SCHEMAVERSION)? {
            None => Ok(1),
            Some(v) => v.parse::<u32>().map_err(|_| InvalidEvent::Malformed {
                name: field::SCHEMAVERSION,
                reason: format!("`{v}` is not a non-negative integer"),
            }),
        }
    }

    /// The payload (empty when absent), checked to parse when its content type is JSON.
    fn data(&self, datacontenttype: &str) -> Result<Vec<u8>, InvalidEvent> {
        let data = self.0.iter().find(|(k, _)| k == field::DATA.as_bytes()).map(|(_, v)| v.clone()).unwrap_or_default();
        if is_json(datacontenttype) {
            serde_json::from_slice::<serde::de::IgnoredAny>(&data).map_err(|e| InvalidEvent::BadJson {
                content_type: datacontenttype.to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(data)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} v{} from {}", self.event_type, self.id, self.schemaversion, self.source)
    }
}

/// Whether a media type is JSON (`application/json`, `application/*+json`, with parameters).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The current UTC time as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> =
            event.to_fields().into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect();
        out.push((b"schemaversion".to_vec(), event.schemaversion.to_string().into_bytes()));
        out
    }

    #[test]
    fn the_causation_depth_survives_a_stream_entry_and_a_bad_one_is_invalid() {
        let mut event = Event::new("T", "s", "{}");
        assert_eq!(Event::from_fields(&fields(&event)).expect("valid").causationdepth, None);
        event.causationdepth = Some(3);
        event.causationbudget = Some(42);
        assert_eq!(Event::from_fields(&fields(&event)).expect("valid"), event);
        let mut bad = fields(&event);
        for (k, v) in &mut bad {
            if k == b"causationdepth" {
                *v = b"-1".to_vec();
            }
        }
        assert!(Event::from_fields(&bad).is_err());
    }

    #[test]
    fn round_trips_through_stream_fields() {
        let mut event = Event::new("OrderCreated", "orders", r#"{"order":"é✓"}"#);
        event.correlationid = Some("c-1".into());
        event.partitionkey = Some("order-1".into());
        event.schemaversion = 3;
        assert_eq!(Event::from_fields(&fields(&event)), Ok(event));
    }

    #[test]
    fn new_ids_are_uuid_v7() {
        let event = Event::new("T", "s", "{}");
        assert_eq!(Uuid::parse_str(&event.id).map(|u| u.get_version_num()), Ok(7));
    }

    #[test]
    fn missing_and_malformed_attributes_are_named() {
        let event = Event::new("T", "s", "{}");
        let without_type: Vec<_> = fields(&event).into_iter().filter(|(k, _)| k != b"type").collect();
        assert_eq!(Event::from_fields(&without_type), Err(InvalidEvent::Missing("type")));

        let mut bad_time = fields(&event);
        if let Some((_, v)) = bad_time.iter_mut().find(|(k, _)| k == b"time") {
            *v = b"yesterday".to_vec();
        }
        assert!(matches!(Event::from_fields(&bad_time), Err(InvalidEvent::Malformed { name: "time", .. })));

        let mut bad_version = fields(&event);
        if let Some((_, v)) = bad_version.iter_mut().find(|(k, _)| k == b"schemaversion") {
            *v = b"-1".to_vec();
        }
        assert!(matches!(Event::from_fields(&bad_version), Err(InvalidEvent::Malformed { name: "schemaversion", .. })));

        let mut local_time = fields(&event);
        if let Some((_, v)) = local_time.iter_mut().find(|(k, _)| k == b"time") {
            *v = b"2026-01-01T10:00:00+02:00".to_vec();
        }
        assert!(matches!(Event::from_fields(&local_time), Err(InvalidEvent::Malformed { name: "time", .. })));

        assert_eq!(Event::from_fields(&[]), Err(InvalidEvent::Empty));
    }

    #[test]
    fn json_payload_is_checked_only_when_declared() {
        let mut event = Event::new("T", "s", "not json");
        assert!(matches!(Event::from_fields(&fields(&event)), Err(InvalidEvent::BadJson { .. })));
        event.datacontenttype = "text/plain".into();
        assert!(Event::from_fields(&fields(&event)).is_ok());
        assert!(is_json("application/cloudevents+json; charset=utf-8"));
    }
}
