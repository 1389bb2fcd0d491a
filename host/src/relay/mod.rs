//! The PostgreSQL outbox: a table in the application's own database whose committed rows are
//! relayed to their Redis stream.
//!
//! Redis is ferry's outbox, but it is atomic with the application's writes only when the
//! application keeps its state in Redis. Most keep it in PostgreSQL: they insert the event into
//! an outbox table in the same transaction as the business change, and this relay publishes the
//! committed rows. It owns:
//!
//! - [`schema`]: the table, its index and its NOTIFY trigger (`ferry relay init [--print]`).
//! - [`producer`]: adding an event inside the caller's transaction (`ferry::outbox::postgres`).
//! - [`row`]: turning a row into an [`Event`](crate::event::Event), or into the reason it is not
//!   one.
//! - [`worker`]: the relay loop: one active relay per table (advisory lock), read committed
//!   rows below the oldest running transaction, `XADD` each with its own event id, then mark
//!   them; LISTEN/NOTIFY wakes it, polling backs it up.
//! - [`manage`]: list failed rows and re-queue them (`ferry relay failed|retry`).
//! - [`tls`]: `sslmode` and `sslrootcert` on rustls (the session is encrypted unless the
//!   connection string says `sslmode=disable`).
//! - [`command`]: the `ferry relay` command line.
//!
//! Why snapshot xmin rather than a sequence watermark, and what order is kept: docs/relay.md.

pub mod manage;
pub mod producer;
pub mod row;
pub mod schema;
pub mod tls;
pub mod worker;

pub use producer::{add, add_to};
pub use schema::Table;
pub use worker::{Relay, Retention, Settings};

/// Errors of the relay's library functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The table name is not a plain (optionally schema-qualified) lowercase identifier.
    #[error("invalid outbox table name `{0}`: use lowercase letters, digits and `_`, optionally `schema.table`")]
    Table(String),
    /// PostgreSQL refused or failed.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL URL does not parse.
    #[error("invalid postgres URL: {0}")]
    Url(String),
    /// The TLS settings of the PostgreSQL URL cannot be used (`sslrootcert` unreadable).
    #[error("postgres TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The session holding the relay lock closed: this relay is no longer the active one.
    #[error("postgres: the session holding the relay lock closed")]
    LockLost,
    /// PostgreSQL did not answer in time.
    #[error("postgres: {0}")]
    Timeout(String),
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The event cannot be stored in the outbox table.
    #[error("invalid event: {0}")]
    Event(String),
}

/// The message of a PostgreSQL error (the server's own text when there is one; the client's
/// `Display` alone says only "db error"), with its sources and, for a refused certificate, a
/// hint.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => crate::tls::explain(e, "sslrootcert"),
    }
}

/// Connect to PostgreSQL at `url` as `application_name`, driving the connection on its own
/// task; the returned receiver yields every notification (LISTEN) and closes with the session.
pub async fn connect(
    url: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>), RelayError> {
    use futures_util::StreamExt as _;

    let (url, tls) = tls::split(url).map_err(RelayError::Url)?;
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| RelayError::Url(crate::redact::redact(&e.to_string())))?;
    config.application_name(application_name);
    config.ssl_mode(tls.ssl_mode());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    let (client, mut connection) = config.connect(tls.connector()?).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    // The receiver may be gone (a session that never listens): keep driving.
                    let _ = tx.send(n.channel().to_string());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("postgres session ended: {}", describe(&e));
                    break;
                }
            }
        }
    });
    // A Unix socket is local and never offers TLS: nothing to warn about there.
    let local = config.get_hosts().iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    if tls.mode == tls::Mode::Prefer && !local {
        // `prefer` falls back to plaintext when the server offers no TLS: say so, once per
        // session, rather than send the rows (and the password exchange) unannounced.
        let encrypted: Option<bool> = client
            .query_opt("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await?
            .map(|row| row.get(0));
        if encrypted != Some(true) {
            tracing::warn!(
                "the PostgreSQL session is not encrypted: the server offers no TLS and sslmode is \
                 prefer (the default); set sslmode=require or verify-full to refuse plaintext"
            );
        }
    }
    Ok((client, rx))
}
