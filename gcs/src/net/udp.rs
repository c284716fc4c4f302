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

/// Binds a socket receiving the IPv4 multicast `group` on the interface of `local` (the daemon's
/// unicast address), and sets the main socket to send multicast from that interface, TTL 1,
/// without looping our own datagrams back.
pub fn bind_multicast(
    group: std::net::SocketAddrV4,
    local: SocketAddr,
    send_socket: &UdpSocket,
    recv_buffer: usize,
) -> io::Result<UdpSocket> {
    let iface = match local {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IP multicast needs IPv4 daemon addresses",
            ))
        }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.bind(&SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, group.port())).into())?;
    socket.join_multicast_v4(group.ip(), &iface)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_nonblocking(true)?;
    send_socket.set_multicast_loop_v4(false)?;
    send_socket.set_multicast_ttl_v4(1)?;
    socket2::SockRef::from(send_socket).set_multicast_if_v4(&iface)?;
    UdpSocket::from_std(socket.into())
}

/// The multicast receive socket and group address if `cluster` asks for IP multicast.
pub fn multicast_for(
    cluster: &super::ClusterConfig,
    local: SocketAddr,
    send_socket: &UdpSocket,
) -> io::Result<Option<(UdpSocket, SocketAddr)>> {
    match cluster.socket.multicast {
        Some(group) => {
            let s = bind_multicast(group, local, send_socket, cluster.socket.recv_buffer)?;
            Ok(Some((s, SocketAddr::V4(group))))
        }
        None => Ok(None),
    }
}
