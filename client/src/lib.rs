//! The client library of a Standby storage cluster, apart from the server: an application that
//! only talks to a cluster builds this crate (its protocol, the retry policy, the TCP client,
//! TLS) without RocksDB, the HTTP admin endpoint or the server process.
//!
//! Give [`Client`] any list of server addresses: it asks one for the topology (every server's
//! client address, who is primary), sends writes to the primary, follows redirects, and on a
//! failover or swap reconnects and retries with the same idempotency key (client id, request
//! number), so the application sees neither. Reads go to the primary, or to any server whose
//! lag behind the newest transaction it knows of is within the caller's bound ([`ReadFrom`]).
//! [`proto`] is the wire protocol the client port speaks; `framing` (with the `net` feature)
//! the framing of both TCP ports, the client port's and ZEO's.

#[cfg(feature = "net")]
pub mod framing;
#[cfg(feature = "net")]
mod net;
pub mod proto;
pub mod retry;
#[cfg(feature = "net")]
pub mod tls;

#[cfg(feature = "net")]
pub use net::*;

/// A byte stream a client-port connection runs over: plain TCP or TLS.
#[cfg(feature = "net")]
pub trait ClientStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}
#[cfg(feature = "net")]
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> ClientStream for T {}
