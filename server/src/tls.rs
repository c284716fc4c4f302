//! TLS on the client port (rustls with the ring provider).
//!
//! The server's certificate chain and key come from PEM files and are read again when their
//! modification times change (`standby-server` checks every 2 s), so a renewed certificate is
//! served to new connections without a restart; connections already open keep theirs. With a
//! client CA file, clients must show a certificate it signed (mutual TLS) on top of their
//! token. The client side verifies the server against a CA file and may show a certificate.

use standby_client::tls::{certs, key, provider, roots};
pub use standby_client::tls::{client_config, server_name, TlsError};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio_rustls::rustls;

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
