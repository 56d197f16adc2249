//! Which local address reaches the supervisor: the interface WebRTC host
//! candidates should bind to on a LAN host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::client::SupervisorUrl;

/// The local IP the OS routes to the supervisor through (a connected UDP
/// socket sends nothing; it only asks the routing table).
pub async fn local_ip_towards(url: &SupervisorUrl) -> std::io::Result<IpAddr> {
    let target = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{} does not resolve", url.host)))?;
    let any: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = tokio::net::UdpSocket::bind((any, 0)).await?;
    socket.connect(target).await?;
    Ok(socket.local_addr()?.ip())
}
