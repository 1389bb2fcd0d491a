//! TLS client settings shared by every connection ferry opens: Redis (`rediss://`), the
//! PostgreSQL relay (`sslmode`) and plugins' outbound HTTP (`https`).
//!
//! It exists so that the three agree on what is trusted and how: one crypto provider (ring:
//! no C toolchain, unlike aws-lc-rs), one reading of the system's roots, one reading of an
//! operator's CA bundle (`tls_ca`, `sslrootcert`), which *replaces* the system's roots rather
//! than adding to them (a private CA should not make every public CA trusted too, and a
//! self-signed CA works without touching the system's store), and one place where a
//! verification weaker than the default is built (PostgreSQL's `sslmode=require` and
//! `verify-ca`), so its reasons are written once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Errors building a TLS client configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA bundle could not be read.
    #[error("cannot read the TLS CA bundle {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA bundle holds no usable certificate.
    #[error("the TLS CA bundle {path} holds no usable PEM certificate{}", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What was wrong with it, when known.
        reason: Option<String>,
    },
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// ring's primitives, for every TLS client of the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring rather than aws-lc-rs: no C toolchain or cmake in the build.
    #[expect(deprecated, reason = "ring's provider lacks the post-quantum key exchange; aws-lc-rs needs a C toolchain")]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots (rustls-native-certs: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the
/// platform's store). A file that does not parse is logged and skipped.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the system's TLS roots: {e}");
    }
    roots.add_parsable_certificates(found.certs);
    roots
}

/// A CA bundle read from a PEM file: its bytes (for clients that parse it themselves, such
/// as redis-rs) and its certificates.
#[derive(Clone)]
pub struct CaBundle {
    /// The file's contents.
    pub pem: Vec<u8>,
    /// The certificates it holds, as trust anchors.
    pub roots: RootCertStore,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("certificates", &self.roots.len()).finish()
    }
}

/// Read the PEM CA bundle at `path`; every certificate in it becomes a trust anchor. Fails
/// when it holds none: an empty trust store would refuse every server with a less clear
/// message.
pub fn read_ca(path: &Path) -> Result<CaBundle, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
    let mut roots = RootCertStore::empty();
    let mut reason = None;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        match cert {
            Ok(cert) => {
                if let Err(e) = roots.add(cert) {
                    reason = Some(e.to_string());
                }
            }
            Err(e) => reason = Some(e.to_string()),
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf(), reason });
    }
    Ok(CaBundle { pem, roots })
}

/// The trust anchors: the bundle at `ca` when given (instead of the system's), else the
/// system's roots.
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    match ca {
        Some(path) => Ok(read_ca(path)?.roots),
        None => Ok(system_roots()),
    }
}

/// How much of the server's certificate a client checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain to a trusted root and the name (or IP address) dialled: the default, and
    /// PostgreSQL's `verify-full`.
    Full,
    /// Chain to a trusted root, whatever name it is for: PostgreSQL's `verify-ca`.
    Chain,
    /// Nothing but the handshake's own signatures: encryption against a passive eavesdropper,
    /// no protection from an active one. PostgreSQL's `require` (and `prefer`) without a
    /// root certificate, as libpq does.
    Encrypt,
}

/// A client configuration trusting `roots`, checking as much as `verify` says.
pub fn client_config(roots: RootCertStore, verify: Verify) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(inner))).with_no_client_auth()
        }
        Verify::Encrypt => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth()
        }
    };
    Ok(config)
}

/// `verify-ca`: webpki's verdict, except that a certificate for another name is accepted.
/// webpki checks the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a root certificate: any certificate, but the handshake must still be
/// signed by its key (so the session is encrypted to whoever holds it).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `error` and its sources for a message, each source left out when its text is already
/// there (rustls errors reach us wrapped in an I/O error that repeats them), with a hint
/// when the server's certificate was refused: `setting` names the key that sets the
/// trusted CA (`tls_ca`, `sslrootcert`).
pub fn explain(error: &(dyn std::error::Error + 'static), setting: &str) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    if text.contains("UnknownIssuer") {
        text.push_str(&format!(
            " (the server's certificate is not signed by a trusted CA: set {setting} to the PEM file of the CA that signed it)"
        ));
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        text.push_str(" (the server's certificate is not for the host name or address dialled)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_without_a_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = read_ca(&path).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("no usable PEM certificate"), "{err}");
        let missing = read_ca(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
    }
}
