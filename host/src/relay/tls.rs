//! TLS for the relay's PostgreSQL sessions: libpq's `sslmode` and `sslrootcert` on rustls.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and with `NoTls` it never
//! encrypts: `prefer` silently sent plaintext and `require` failed. This module takes the
//! TLS parameters out of the connection string (so `verify-ca`, `verify-full` and
//! `sslrootcert` are accepted), chooses what to verify from them the way libpq does, and
//! hands tokio-postgres a rustls connector ([`MakeRustls`]). The roots and verifiers are
//! [`crate::tls`]'s, shared with Redis and outbound HTTP.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers TLS (a warning is logged when it does not) | like `require` |
//! | `require` | always, else the connection fails | no; with `sslrootcert`, the chain (as `verify-ca`, as libpq does) |
//! | `verify-ca` | always | chain to `sslrootcert` (else the system's roots) |
//! | `verify-full` | always | chain and host name (or IP address) |
//!
//! `sslrootcert=system` names the system's roots explicitly (as libpq 16 does).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls;

use crate::tls::Verify;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS or fail; the certificate is checked only with a root certificate.
    Require,
    /// TLS, chain checked.
    VerifyCa,
    /// TLS, chain and name checked.
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// The TLS parameters of a connection string, taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `sslmode`; `prefer` when absent (libpq's default).
    pub mode: Mode,
    /// `sslrootcert`: a PEM file, or `None` (also for `system`) for the system's roots.
    pub root_cert: Option<PathBuf>,
    /// Whether `sslrootcert` was given (also as `system`).
    pub root_cert_given: bool,
}

impl Params {
    /// What tokio-postgres is told: it only negotiates; checking is the connector's.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// What the certificate must pass.
    pub fn verify(&self) -> Verify {
        match self.mode {
            Mode::VerifyFull => Verify::Full,
            Mode::VerifyCa => Verify::Chain,
            Mode::Require if self.root_cert_given => Verify::Chain,
            Mode::Disable | Mode::Prefer | Mode::Require => Verify::Encrypt,
        }
    }

    /// The connector these parameters call for.
    pub fn connector(&self) -> Result<MakeRustls, crate::tls::TlsError> {
        let roots = crate::tls::roots(self.root_cert.as_deref())?;
        let config = crate::tls::client_config(roots, self.verify())?;
        Ok(MakeRustls { config: Arc::new(config) })
    }
}

/// Split `url` (a `postgres://` URL or a `key=value` string) into the string without its
/// `sslmode` and `sslrootcert`, and those parameters. The error never quotes the string (it
/// may hold a password).
pub fn split(url: &str) -> Result<(String, Params), String> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(Mode::parse(&value)?),
            "sslrootcert" => root_cert = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, percent_decode(value))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) }
            }
        }
    } else {
        let mut out = String::with_capacity(url.len());
        let mut i = 0;
        for (start, end, key, value) in keywords(url) {
            if take(&key, value)? {
                out.push_str(&url[i..start]);
                i = end;
            }
        }
        out.push_str(&url[i..]);
        out
    };
    let root_cert_given = root_cert.is_some();
    let root_cert = root_cert.filter(|r| r != "system").map(PathBuf::from);
    Ok((rest, Params { mode: mode.unwrap_or(Mode::Prefer), root_cert, root_cert_given }))
}

/// The `key=value` pairs of a libpq keyword string: (start, end, key, value), a value quoted
/// with `'` unquoted (`\'` and `\\` escapes).
fn keywords(text: &str) -> Vec<(usize, usize, String, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = text[start..i].to_string();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = text[i..].chars().next().expect("in bounds");
                value.push(c);
                i += c.len_utf8();
            }
            i = (i + 1).min(bytes.len());
        } else {
            let v = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            value.push_str(&text[v..i]);
        }
        out.push((start, i, key, value));
    }
    out
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = value.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A rustls connector for tokio-postgres.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        // No host name: a Unix socket (PostgreSQL answers "no TLS" there, and `prefer` goes
        // on in plaintext) or a bare `hostaddr` (tokio-postgres refuses the handshake without
        // a name). Neither reaches a handshake with this placeholder.
        let domain = if domain.is_empty() { "localhost" } else { domain };
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnect { name, connector: tokio_rustls::TlsConnector::from(self.config.clone()) })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    name: rustls::pki_types::ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { self.connector.connect(self.name, stream).await.map(RustlsStream) })
    }
}

/// An encrypted PostgreSQL session's stream.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // No `tls-server-end-point` binding: SCRAM then runs without channel binding, as
        // tokio-postgres's default `channel_binding=prefer` allows.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_urls_and_keyword_strings() {
        let (rest, p) =
            split("postgres://u:pw@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(rest, "postgres://u:pw@h:5/db?application_name=x");
        assert_eq!(p.mode, Mode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(p.verify(), Verify::Full);

        let (rest, p) = split("host=h user=u sslmode=require sslrootcert='/a b/ca.pem' dbname=d").unwrap();
        assert_eq!(rest, "host=h user=u   dbname=d");
        assert_eq!((p.mode, p.verify()), (Mode::Require, Verify::Chain));
        assert_eq!(p.root_cert, Some(PathBuf::from("/a b/ca.pem")));

        let (rest, p) = split("postgres://h/db").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!((p.mode, p.verify(), p.ssl_mode()), (Mode::Prefer, Verify::Encrypt, SslMode::Prefer));

        let (_, p) = split("postgres://h/db?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!((p.verify(), p.ssl_mode(), p.root_cert), (Verify::Chain, SslMode::Require, None));
    }

    #[test]
    fn an_unknown_sslmode_is_refused_without_quoting_the_url() {
        let err = split("postgres://u:hunter2@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("unknown sslmode \"verify\"") && !err.contains("hunter2"), "{err}");
    }
}
