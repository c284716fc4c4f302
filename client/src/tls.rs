//! TLS for the client port, client side (rustls with the ring provider): the client verifies
//! the servers against a CA file and may show a certificate of its own (mutual TLS). The
//! helpers that read PEM files serve the server side too (`server::tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate...).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A file error naming the file.
fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// rustls with *ring*: classical key exchange (X25519, P-256, P-384), no post-quantum hybrid.
/// rustls marks it deprecated for that reason; the aws-lc-rs provider has the hybrid but
/// builds a large C library, a second heavy native build beside RocksDB.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if v.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(v)
}

/// The private key of a PEM file.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// A root store of the certificates of a PEM file.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(path)? {
        r.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(r)
}

/// A client's TLS: the CA that signs the servers' certificates, and the certificate to show
/// when the servers ask for one.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let c = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(c))
}

/// The name a client checks the server's certificate against: the host part of `addr`
/// (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{addr}: {e}"))
}
