//! The outbox table: its name, its DDL and the queries the relay runs on it.
//!
//! One column per envelope attribute, so a plain
//! `INSERT INTO ferry_outbox (id, type, source, data) VALUES (…)` is a valid event, plus the
//! relay's bookkeeping. `data` is `jsonb` because nearly every payload is JSON: a plain INSERT
//! takes a JSON literal as it is, PostgreSQL refuses malformed JSON inside the producer's own
//! transaction (the earliest point a mistake can be reported), and payloads can be queried
//! with SQL. Payloads that are not JSON (or whose exact bytes matter: jsonb normalizes
//! whitespace and key order) go into `data_binary` instead; a row sets at most one of them.

use super::RelayError;

/// A validated outbox table name, optionally schema-qualified (`ferry_outbox`,
/// `app.ferry_outbox`). Only lowercase identifiers are accepted, so the name is used unquoted
/// and means what it says in SQL written by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
}

impl Default for Table {
    fn default() -> Self {
        Self { name: DEFAULT_TABLE.to_string() }
    }
}

/// The default outbox table.
pub const DEFAULT_TABLE: &str = "ferry_outbox";

impl Table {
    /// Validate `name`.
    pub fn new(name: &str) -> Result<Self, RelayError> {
        let parts: Vec<&str> = name.split('.').collect();
        let ok = parts.len() <= 2
            && parts.iter().all(|p| {
                // 63 bytes is PostgreSQL's identifier limit; leave room for the `_notify` suffix.
                !p.is_empty()
                    && p.len() <= 48
                    && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if ok { Ok(Self { name: name.to_string() }) } else { Err(RelayError::Table(name.to_string())) }
    }

    /// The name as written in SQL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's own name, without its schema.
    fn base(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// `schema.` when the name is qualified.
    fn schema_prefix(&self) -> &str {
        match self.name.rfind('.') {
            Some(i) => &self.name[..=i],
            None => "",
        }
    }

    /// The NOTIFY channel the trigger signals: the table name.
    pub fn channel(&self) -> &str {
        &self.name
    }

    /// `LISTEN` on the table's channel.
    pub fn listen(&self) -> String {
        format!("LISTEN \"{}\"", self.name)
    }

    /// An expression for the advisory-lock key of this table's active relay.
    pub fn lock_key_sql(&self) -> String {
        format!("hashtextextended('ferry relay {}', 0)", self.name)
    }

    /// The DDL: table, indexes, NOTIFY trigger. Idempotent (safe to run again).
    pub fn ddl(&self) -> String {
        let t = &self.name;
        let base = self.base();
        let function = format!("{}{base}_notify", self.schema_prefix());
        let channel = self.channel();
        format!(
            r#"-- ferry outbox table `{t}`: insert an event in the same transaction as the business change;
-- `ferry relay` publishes it to its Redis stream once committed. See docs/relay.md.
CREATE TABLE IF NOT EXISTS {t} (
    -- the envelope (CloudEvents 1.0 attribute names, as in the stream entry)
    id              uuid PRIMARY KEY,
    type            text NOT NULL,
    source          text NOT NULL,
    data            jsonb,              -- JSON payloads
    data_binary     bytea,              -- any other payload (at most one of data, data_binary)
    time            timestamptz NOT NULL DEFAULT now(),
    stream          text,               -- NULL: the relay's default stream (`events`)
    schemaversion   integer NOT NULL DEFAULT 1,
    datacontenttype text NOT NULL DEFAULT 'application/json',
    subject         text,
    dataschema      text,
    partitionkey    text,
    correlationid   text,
    causationid     text,
    traceparent     text,
    -- relay bookkeeping: rows are relayed in (xid, seq) order once xid is below the oldest
    -- running transaction, so a transaction that commits late is never skipped
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq             bigserial NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at    timestamptz,
    failed_at       timestamptz,
    error           text,
    attempts        integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {base}_unrelayed ON {t} (xid, seq) WHERE published_at IS NULL AND failed_at IS NULL;
CREATE INDEX IF NOT EXISTS {base}_failed ON {t} (seq) WHERE failed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS {base}_published ON {t} (published_at) WHERE published_at IS NOT NULL;
-- Wake the relay at commit (NOTIFY is delivered after commit; one per transaction).
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {base}_notify ON {t};
CREATE TRIGGER {base}_notify AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"#
        )
    }

    /// Rows ready to relay: neither published nor failed, written by a transaction older than
    /// every transaction still running (so committed, and nothing can commit before them any
    /// more), in (xid, seq) order, at most `batch`. The limit is written into the statement
    /// rather than passed: a prepared statement's generic plan cannot see a parameter's value
    /// and may then prefer a full scan and sort over the `(xid, seq)` index.
    pub fn select_ready(&self, batch: usize) -> String {
        format!(
            "SELECT seq, id, type, source, data::text, data_binary, time, stream, schemaversion, datacontenttype, \
             subject, dataschema, partitionkey, correlationid, causationid, traceparent, created_at \
             FROM {} WHERE published_at IS NULL AND failed_at IS NULL \
             AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, seq LIMIT {batch}",
            self.name
        )
    }

    /// Mark rows published. `$1`: their ids (the primary key: an index lookup per row).
    pub fn mark_published(&self) -> String {
        format!("UPDATE {} SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)", self.name)
    }

    /// Delete published rows. `$1`: their ids.
    pub fn delete_published(&self) -> String {
        format!("DELETE FROM {} WHERE id = ANY($1)", self.name)
    }

    /// Mark one row failed. `$1`: id, `$2`: the error.
    pub fn mark_failed(&self) -> String {
        format!("UPDATE {} SET failed_at = now(), error = $2, attempts = attempts + 1 WHERE id = $1", self.name)
    }

    /// Backlog and the age of its oldest row, in seconds.
    pub fn backlog(&self) -> String {
        format!(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8, 0) \
             FROM {} WHERE published_at IS NULL AND failed_at IS NULL",
            self.name
        )
    }

    /// Delete published rows older than `$1` seconds.
    pub fn purge_published(&self) -> String {
        format!(
            "DELETE FROM {} WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(Table::new("ferry_outbox").is_ok());
        assert!(Table::new("app.outbox_2").is_ok());
        for bad in ["", "Outbox", "a-b", "x; DROP TABLE y", "a.b.c", "1abc", "a.", "\"q\""] {
            assert!(Table::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ddl_names_follow_the_table() {
        let ddl = Table::new("app.orders_outbox").expect("valid").ddl();
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS app.orders_outbox"));
        assert!(ddl.contains("FUNCTION app.orders_outbox_notify()"));
        assert!(ddl.contains("pg_notify('app.orders_outbox'"));
        assert!(ddl.contains("ON app.orders_outbox (xid, seq)"));
    }

    /// Issue 23, "checked and sound": the table name is the only text the relay writes into
    /// its SQL, and only once validated; everything else it sends (ids, errors, ages) goes as
    /// a parameter (`$n`), so no statement it runs on the table carries a literal at all. A
    /// hostile name is refused before any SQL is built, from the config as from the CLI.
    #[test]
    fn the_table_name_is_validated_and_every_value_is_a_parameter() {
        let t = Table::new("app.orders_outbox").expect("valid");
        let statements = [
            t.select_ready(500),
            t.mark_published(),
            t.delete_published(),
            t.mark_failed(),
            t.backlog(),
            t.purge_published(),
        ];
        for sql in &statements {
            assert!(sql.contains(" app.orders_outbox "), "names the table: {sql}");
            assert!(!sql.contains(['\'', '"', ';']) && !sql.contains("--"), "no literal, no second statement: {sql}");
        }
        assert_eq!(
            t.mark_failed(),
            "UPDATE app.orders_outbox SET failed_at = now(), error = $2, attempts = attempts + 1 WHERE id = $1"
        );
        assert_eq!(
            t.mark_published(),
            "UPDATE app.orders_outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)"
        );
        assert!(t.purge_published().ends_with("make_interval(secs => $1)"));
        for hostile in [
            "ferry_outbox; DROP TABLE users",
            "ferry_outbox --",
            "ferry_outbox/*",
            "ferry_outbox WHERE true",
            "ferry_outbox'",
            "ferry_outbox\"",
            "\"ferry_outbox\"",
            "ferry_outbox\n",
            "ferry_outbox\u{0}",
            "pg_catalog.pg_authid(",
            "ferry_outbox.",
            "ｆｅｒｒｙ",
            "ferry_outbox_notify_and_then_some_more_characters_past_48_bytes",
        ] {
            assert!(matches!(Table::new(hostile), Err(RelayError::Table(_))), "{hostile:?} accepted");
            let config = crate::config::RelayConfig {
                postgres: "postgres://127.0.0.1/db".into(),
                table: hostile.to_string(),
                ..Default::default()
            };
            assert!(
                matches!(
                    super::super::Settings::from_config(&config, "redis://127.0.0.1/", "events"),
                    Err(RelayError::Table(_))
                ),
                "{hostile:?} accepted from the config"
            );
        }
    }
}
