//! The UDP socket between daemons (socket2 for the options tokio does not expose).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Binds a non-blocking UDP socket with the requested kernel buffer sizes.
///
/// The kernel may grant less than asked (capped by `net.core.rmem_max`); the sizes actually
/// granted are logged, since a too-small receive buffer shows up as loss under load.
pub fn bind(addr: SocketAddr, recv_buffer: usize, send_buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    // Best effort: a smaller buffer is not fatal.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    let _ = socket.set_send_buffer_size(send_buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    tracing::debug!(
        %addr,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "udp socket bound"
    );
    UdpSocket::from_std(socket.into())
}
