//! TLS on the client port (rustls with the ring provider).
//!
//! The server's certificate chain and key come from PEM files and are read again when their
//! modification times change (`standby-server` checks every 2 s), so a renewed certificate is
//! served to new connections without a restart; connections already open keep theirs. With a
//! client CA file, clients must show a certificate it signed (mutual TLS) on top of their
//! token. The client side verifies the server against a CA file and may show a certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
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
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if v.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(path)? {
        r.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(r)
}

/// The server side's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// Certificate chain (PEM), this host's certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// If set, clients must show a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let c = builder
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(c))
    }
}

/// The client port's TLS: the current configuration, replaced when the files change.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<(Arc<rustls::ServerConfig>, Vec<Option<SystemTime>>)>,
}

impl ServerTls {
    /// Reads the files.
    pub fn load(files: ServerFiles) -> Result<ServerTls, TlsError> {
        let mtimes = files.mtimes();
        let config = files.config()?;
        Ok(ServerTls {
            files,
            current: RwLock::new((config, mtimes)),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let g = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokio_rustls::TlsAcceptor::from(g.0.clone())
    }

    /// Reads the files again if any changed since the last read; `Ok(true)` if the new
    /// configuration is in use. A file that does not parse (caught mid-write, say) leaves the
    /// current configuration in place and is retried at the next call.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mtimes = self.files.mtimes();
        {
            let g = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.1 == mtimes {
                return Ok(false);
            }
        }
        let config = self.files.config()?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (config, mtimes);
        Ok(true)
    }
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
