//! Telling the L2 segment that the VIP moved: gratuitous ARP (IPv4) and unsolicited
//! neighbour advertisements (IPv6), sent on a raw `AF_PACKET` socket; and an ARP prober
//! that lists the MACs answering for an address (the chaos tests' "single answerer"
//! check).
//!
//! Frames are built and parsed with `etherparse`. Sockets are bound to the interface with
//! the `sockaddr_ll` that `getifaddrs(3)` reports for it (safe `nix` APIs only), and are
//! non-blocking, polled between short tokio sleeps (no blocking calls on the runtime). Raw packet sockets need `CAP_NET_RAW`; `EPERM`
//! is reported as [`Error::Permission`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{
    ArpEthIpv4Packet, ArpHardwareId, ArpOperation, EtherType, Icmpv6Type, NetSlice, PacketBuilder,
    SlicedPacket,
};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType};

use crate::error::Error;

/// Ethernet broadcast address.
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// Ethernet multicast address of the IPv6 all-nodes group (33:33 + low 32 bits of ff02::1).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
/// IPv6 all-nodes link-local multicast address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Hop limit every neighbour discovery message must carry (RFC 4861 §7.1.2).
const ND_HOP_LIMIT: u8 = 255;
/// NDP option type "Target Link-Layer Address" (RFC 4861 §4.6.1).
const OPT_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Minimum Ethernet frame length without the FCS; shorter frames are zero-padded.
const MIN_ETHERNET_FRAME: usize = 60;
/// `sll_pkttype` of frames this host sent (linux/if_packet.h `PACKET_OUTGOING`).
const PACKET_OUTGOING: u8 = 4;
/// How often a waiting socket is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// How many times a send is retried while the socket's send queue is full.
const SEND_RETRIES: u32 = 500;

/// Ethernet frame: broadcast gratuitous ARP for `ip` from `mac` — an ARP request with
/// sender IP = target IP = `ip` and target MAC zero (RFC 5227 §3 announcement), padded to
/// the 60-byte Ethernet minimum.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    arp_request(mac, ip, ip)
}

/// Ethernet frame: broadcast ARP request "who has `target`, tell `sender_ip`".
fn arp_request(mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: sender_ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    };
    let builder = PacketBuilder::ethernet2(mac, BROADCAST_MAC).arp(arp.to_arp_packet());
    let mut frame = Vec::with_capacity(MIN_ETHERNET_FRAME);
    builder
        .write_to_vec(&mut frame)
        .expect("an Ethernet/ARP frame always serializes into a Vec");
    if frame.len() < MIN_ETHERNET_FRAME {
        frame.resize(MIN_ETHERNET_FRAME, 0);
    }
    frame
}

/// Ethernet frame: unsolicited neighbour advertisement for `ip` (RFC 4861 §7.2.6) from
/// `mac` to 33:33:00:00:00:01 / ff02::1, hop limit 255, Override set, Solicited and Router
/// clear, target = `ip`, with a target link-layer address option carrying `mac`.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let header = NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    };
    // Payload after the 8-byte ICMPv6 header: target address, then the option
    // (type, length in units of 8 bytes, link-layer address).
    let mut payload = Vec::with_capacity(16 + 8);
    payload.extend_from_slice(&ip.octets());
    payload.extend_from_slice(&[OPT_TARGET_LINK_LAYER_ADDRESS, 1]);
    payload.extend_from_slice(&mac);

    let builder = PacketBuilder::ethernet2(mac, ALL_NODES_MAC)
        .ipv6(ip.octets(), ALL_NODES.octets(), ND_HOP_LIMIT)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(header));
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write_to_vec(&mut frame, &payload)
        .expect("an Ethernet/IPv6/ICMPv6 frame always serializes into a Vec");
    frame
}

/// The announcement frame for `ip`: gratuitous ARP for IPv4, unsolicited NA for IPv6.
fn announcement(mac: [u8; 6], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => gratuitous_arp(mac, ip),
        IpAddr::V6(ip) => unsolicited_na(mac, ip),
    }
}

/// Send `count` announcements for `ip` on `interface`, `interval` apart, on a raw
/// `AF_PACKET` socket. [`Error::Permission`] (CAP_NET_RAW) on EPERM,
/// [`Error::NoInterface`] if the interface does not exist.
pub async fn announce(
    interface: &str,
    mac: [u8; 6],
    ip: IpAddr,
    count: u32,
    interval: Duration,
) -> Result<(), Error> {
    if count == 0 {
        return Ok(());
    }
    let fail = |reason: String| Error::Announce {
        address: ip.to_string(),
        interface: interface.to_string(),
        reason,
    };
    let socket = PacketSocket::open(interface, false)
        .map_err(|e| e.into_error(interface, &format!("announcing {ip} on {interface}"), fail))?;
    let frame = announcement(mac, ip);
    for sent in 0..count {
        if sent > 0 {
            tokio::time::sleep(interval).await;
        }
        socket.send(&frame).await.map_err(|e| {
            SocketError::Io(e).into_error(
                interface,
                &format!("announcing {ip} on {interface}"),
                fail,
            )
        })?;
    }
    tracing::debug!(%ip, interface, count, "announced");
    Ok(())
}

/// Parse an Ethernet frame; if it is an ARP reply, or a gratuitous ARP request (sender IP
/// = target IP), whose sender IP is `ip`, return the sender MAC. Never panics.
pub fn arp_answer_for(frame: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Arp(arp)) = packet.net else {
        return None;
    };
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return None;
    }
    let sender_mac = <[u8; 6]>::try_from(arp.sender_hw_addr()).ok()?;
    let sender_ip = <[u8; 4]>::try_from(arp.sender_protocol_addr()).ok()?;
    if sender_ip != ip.octets() {
        return None;
    }
    let operation = arp.operation();
    let claims = operation == ArpOperation::REPLY
        || (operation == ArpOperation::REQUEST && arp.target_protocol_addr() == ip.octets());
    claims.then_some(sender_mac)
}

/// The MAC of an ARP reply that tells `asker` where `ip` is: a reply to a probe,
/// not a gratuitous announcement. (A new master's announcement arriving within a
/// probe's window, milliseconds after the old master answered and let go, is not
/// two nodes holding the address at once.)
pub fn arp_reply_to(frame: &[u8], ip: Ipv4Addr, asker: Ipv4Addr) -> Option<[u8; 6]> {
    let mac = arp_answer_for(frame, ip)?;
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Arp(arp)) = packet.net else {
        return None;
    };
    (arp.operation() == ArpOperation::REPLY && arp.target_protocol_addr() == asker.octets())
        .then_some(mac)
}

/// Broadcast one ARP request "who has `target`" from (`mac`, `source_ip`) on `interface`
/// and collect, for `window`, the distinct MACs that answer for `target` (in order of
/// first answer). Frames this host sent itself are ignored.
pub async fn arp_probe(
    interface: &str,
    mac: [u8; 6],
    source_ip: Ipv4Addr,
    target: Ipv4Addr,
    window: Duration,
) -> Result<Vec<[u8; 6]>, Error> {
    let what = format!("ARP probe for {target} on {interface}");
    let fail = |reason: String| Error::Announce {
        address: target.to_string(),
        interface: interface.to_string(),
        reason,
    };
    let io_fail = |e: io::Error| SocketError::Io(e).into_error(interface, &what, fail);

    let socket =
        PacketSocket::open(interface, true).map_err(|e| e.into_error(interface, &what, fail))?;
    let deadline = tokio::time::Instant::now() + window;
    socket.drain().map_err(io_fail)?;
    socket
        .send(&arp_request(mac, source_ip, target))
        .await
        .map_err(io_fail)?;

    let mut answerers = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Some((len, pkttype)) = socket
            .recv_until(&mut buf, deadline)
            .await
            .map_err(io_fail)?
        else {
            break;
        };
        if pkttype == Some(PACKET_OUTGOING) {
            continue;
        }
        if let Some(answerer) = arp_reply_to(&buf[..len], target, source_ip) {
            if !answerers.contains(&answerer) {
                answerers.push(answerer);
            }
        }
    }
    tracing::debug!(%target, interface, answerers = answerers.len(), "ARP probe done");
    Ok(answerers)
}

/// MAC address of an interface, for callers that have no [`crate::vip::Vip`]. All zeroes
/// for an interface without a 6-byte hardware address.
///
/// Looked up with `getifaddrs(3)` (netlink), which answers for the network namespace of
/// the calling thread; `/sys/class/net/<if>/address` is only the fallback, because sysfs
/// shows the namespace it was mounted in, which differs after `setns(2)`.
pub fn interface_mac(interface: &str) -> Result<[u8; 6], Error> {
    match link_addr(interface) {
        Ok(Some(link)) => Ok(mac_of(&link)),
        Ok(None) => Err(Error::NoInterface {
            interface: interface.to_string(),
        }),
        Err(errno) => {
            tracing::debug!(interface, %errno, "getifaddrs failed; reading sysfs");
            mac_from_sysfs(interface)
        }
    }
}

fn mac_from_sysfs(interface: &str) -> Result<[u8; 6], Error> {
    if interface.is_empty() || interface.contains(['/', '\0']) || interface.starts_with('.') {
        return Err(Error::NoInterface {
            interface: interface.to_string(),
        });
    }
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).map_err(|_| Error::NoInterface {
        interface: interface.to_string(),
    })?;
    Ok(parse_mac(text.trim()).unwrap_or([0; 6]))
}

/// Parse `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn mac_of(link: &LinkAddr) -> [u8; 6] {
    match link.addr() {
        Some(mac) if link.halen() == 6 => mac,
        _ => [0; 6],
    }
}

/// The `sockaddr_ll` of `interface` in the calling thread's network namespace.
fn link_addr(interface: &str) -> nix::Result<Option<LinkAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?.find_map(|entry| {
        if entry.interface_name != interface {
            return None;
        }
        entry.address.as_ref()?.as_link_addr().copied()
    }))
}

/// Why a packet socket could not be opened or used.
#[derive(Debug)]
enum SocketError {
    NoInterface,
    Io(io::Error),
}

impl SocketError {
    fn into_error(self, interface: &str, what: &str, fail: impl FnOnce(String) -> Error) -> Error {
        match self {
            SocketError::NoInterface => Error::NoInterface {
                interface: interface.to_string(),
            },
            SocketError::Io(e) => match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => Error::Permission {
                    what: what.to_string(),
                    capability: "CAP_NET_RAW",
                },
                Some(libc::ENODEV) | Some(libc::ENXIO) => Error::NoInterface {
                    interface: interface.to_string(),
                },
                _ => fail(e.to_string()),
            },
        }
    }
}

/// A non-blocking `AF_PACKET`/`SOCK_RAW` socket bound to one interface.
///
/// Driven by polling with short tokio sleeps rather than by the reactor: announcements
/// and probes are a handful of frames, and this needs no `unsafe` registration.
#[derive(Debug)]
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Open and bind to `interface`. With `receive`, the socket gets every frame of the
    /// interface (`ETH_P_ALL`); without, it only sends.
    fn open(interface: &str, receive: bool) -> Result<PacketSocket, SocketError> {
        let protocol = receive.then_some(SockProtocol::EthAll);
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            protocol,
        )
        .map_err(|e| SocketError::Io(e.into()))?;
        let link = link_addr(interface)
            .map_err(|e| SocketError::Io(e.into()))?
            .ok_or(SocketError::NoInterface)?;
        // sll_protocol is 0 in getifaddrs' address, so bind keeps the socket's protocol.
        socket::bind(fd.as_raw_fd(), &link).map_err(|e| SocketError::Io(e.into()))?;
        Ok(PacketSocket { fd })
    }

    /// Send one complete Ethernet frame, waiting a little while the send queue is full.
    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut attempts = 0u32;
        loop {
            match socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN | Errno::ENOBUFS) if attempts < SEND_RETRIES => {
                    attempts += 1;
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receive one queued frame into `buf` (truncated to its length):
    /// `Some((length, pkttype))`, or `None` if nothing is queued.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Option<u8>)>> {
        loop {
            match socket::recvfrom::<LinkAddr>(self.fd.as_raw_fd(), buf) {
                Ok((len, from)) => return Ok(Some((len, from.map(|a| a.pkttype())))),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receive one frame, waiting until `deadline` at most (`None` then).
    async fn recv_until(
        &self,
        buf: &mut [u8],
        deadline: tokio::time::Instant,
    ) -> io::Result<Option<(usize, Option<u8>)>> {
        loop {
            if let Some(received) = self.try_recv(buf)? {
                return Ok(Some(received));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Discard frames queued before the socket was bound to its interface.
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        while self.try_recv(&mut buf)?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::netns::{ip, join, run_in, spawn_in, veth, Namespaces};
    use crate::vip::{Vip, VipSpec};
    use etherparse::icmpv6::NdpOptionSlice;
    use etherparse::{Icmpv6Slice, TransportSlice};

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc];
    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

    fn arp_frame(op: ArpOperation, mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpEthIpv4Packet {
            operation: op,
            sender_mac: mac,
            sender_ipv4: sender.octets(),
            target_mac: OTHER_MAC,
            target_ipv4: target.octets(),
        };
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(mac, OTHER_MAC)
            .arp(arp.to_arp_packet())
            .write_to_vec(&mut frame)
            .unwrap();
        frame
    }

    #[test]
    fn gratuitous_arp_parses_back() {
        let frame = gratuitous_arp(MAC, VIP4);
        assert_eq!(frame.len(), MIN_ETHERNET_FRAME);
        let packet = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &packet.link else {
            panic!("no Ethernet II header: {:?}", packet.link);
        };
        assert_eq!(eth.destination(), BROADCAST_MAC);
        assert_eq!(eth.source(), MAC);
        assert_eq!(eth.ether_type(), EtherType::ARP);
        let Some(NetSlice::Arp(arp)) = &packet.net else {
            panic!("no ARP: {:?}", packet.net);
        };
        let arp = arp.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP");
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.sender_ipv4_addr(), VIP4);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.target_ipv4_addr(), VIP4);
        // And it counts as a claim of the address.
        assert_eq!(arp_answer_for(&frame, VIP4), Some(MAC));
        assert_eq!(arp_answer_for(&frame, Ipv4Addr::new(198, 18, 0, 1)), None);
    }

    #[test]
    fn unsolicited_na_is_valid() {
        let ip6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x100);
        let frame = unsolicited_na(MAC, ip6);
        let packet = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &packet.link else {
            panic!("no Ethernet II header");
        };
        assert_eq!(eth.destination(), ALL_NODES_MAC);
        assert_eq!(eth.source(), MAC);
        assert_eq!(eth.ether_type(), EtherType::IPV6);
        let Some(NetSlice::Ipv6(ipv6)) = &packet.net else {
            panic!("no IPv6: {:?}", packet.net);
        };
        let header = ipv6.header();
        assert_eq!(header.source_addr(), ip6);
        assert_eq!(header.destination_addr(), ALL_NODES);
        assert_eq!(header.hop_limit(), 255);
        assert_eq!(header.next_header(), etherparse::IpNumber::IPV6_ICMP);

        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            panic!("no ICMPv6: {:?}", packet.transport);
        };
        assert_eq!(icmp.type_u8(), 136);
        assert_eq!(icmp.code_u8(), 0);
        assert!(icmp.is_checksum_valid(ip6.octets(), ALL_NODES.octets()));
        let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
            panic!("not an NA: {:?}", icmp.icmp_type());
        };
        assert!(flags.r#override);
        assert!(!flags.solicited);
        assert!(!flags.router);

        let Ok(etherparse::icmpv6::Icmpv6PayloadSlice::NeighborAdvertisement(na)) =
            icmp.payload_slice()
        else {
            panic!("no NA payload");
        };
        assert_eq!(na.target_address(), ip6);
        let options: Vec<_> = na.options_iterator().collect();
        assert_eq!(options.len(), 1, "{options:?}");
        let Ok(NdpOptionSlice::TargetLinkLayerAddress(tlla)) = &options[0] else {
            panic!("not a target link-layer address option: {:?}", options[0]);
        };
        assert_eq!(tlla.link_layer_address(), MAC);

        // A flipped bit breaks the checksum (the check above is not vacuous).
        let mut broken = frame.clone();
        let last = broken.len() - 1;
        broken[last] ^= 0x01;
        let icmp_start = 14 + 40;
        let slice = Icmpv6Slice::from_slice(&broken[icmp_start..]).unwrap();
        assert!(!slice.is_checksum_valid(ip6.octets(), ALL_NODES.octets()));
    }

    #[test]
    fn arp_answer_for_replies_and_requests() {
        let other = Ipv4Addr::new(198, 18, 0, 7);
        let reply = arp_frame(ArpOperation::REPLY, MAC, VIP4, other);
        assert_eq!(arp_answer_for(&reply, VIP4), Some(MAC));
        assert_eq!(arp_answer_for(&reply, other), None);

        // A request from the VIP holder asking for someone else is not an answer.
        let request = arp_frame(ArpOperation::REQUEST, MAC, VIP4, other);
        assert_eq!(arp_answer_for(&request, VIP4), None);
        // Nor is a request for the VIP from someone else.
        let request = arp_frame(ArpOperation::REQUEST, OTHER_MAC, other, VIP4);
        assert_eq!(arp_answer_for(&request, VIP4), None);
        assert_eq!(arp_answer_for(&request, other), None);
        // Our own probe request is not an answer either.
        let probe = arp_request(MAC, other, VIP4);
        assert_eq!(arp_answer_for(&probe, VIP4), None);

        // Not ARP at all.
        let na = unsolicited_na(MAC, Ipv6Addr::LOCALHOST);
        assert_eq!(arp_answer_for(&na, VIP4), None);
    }

    #[test]
    fn probe_counts_replies_to_the_asker_not_announcements() {
        let asker = Ipv4Addr::new(198, 18, 0, 9);
        let reply = arp_frame(ArpOperation::REPLY, MAC, VIP4, asker);
        assert_eq!(arp_reply_to(&reply, VIP4, asker), Some(MAC));
        let garp_reply = arp_frame(ArpOperation::REPLY, MAC, VIP4, VIP4);
        assert_eq!(arp_reply_to(&garp_reply, VIP4, asker), None);
        let garp_request = arp_frame(ArpOperation::REQUEST, MAC, VIP4, VIP4);
        assert_eq!(arp_reply_to(&garp_request, VIP4, asker), None);
    }

    #[test]
    fn arp_answer_for_never_panics() {
        let reply = arp_frame(ArpOperation::REPLY, MAC, VIP4, VIP4);
        for len in 0..reply.len() {
            let answer = arp_answer_for(&reply[..len], VIP4);
            assert!(
                len >= 42 || answer.is_none(),
                "truncated at {len}: {answer:?}"
            );
        }
        assert_eq!(arp_answer_for(&[], VIP4), None);
        assert_eq!(arp_answer_for(&[0xff; 3], VIP4), None);
        // ARP with absurd address sizes.
        let mut odd = reply.clone();
        odd[14 + 4] = 255;
        odd[14 + 5] = 255;
        assert_eq!(arp_answer_for(&odd, VIP4), None);
        // Pseudo-random garbage, with and without an ARP EtherType.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 120) as usize;
            let mut frame: Vec<u8> = (0..len)
                .map(|i| (state.rotate_left(i as u32 * 7) & 0xff) as u8)
                .collect();
            if round % 2 == 0 && frame.len() >= 14 {
                frame[12] = 0x08;
                frame[13] = 0x06;
            }
            let _ = arp_answer_for(&frame, VIP4);
        }
    }

    #[test]
    fn socket_errors_map_to_crate_errors() {
        let fail = |reason: String| Error::Announce {
            address: VIP4.to_string(),
            interface: "eth0".into(),
            reason,
        };
        let io = |errno| SocketError::Io(io::Error::from_raw_os_error(errno));
        let err = io(libc::EPERM).into_error("eth0", "announcing", fail);
        assert!(
            matches!(
                &err,
                Error::Permission {
                    capability: "CAP_NET_RAW",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = io(libc::ENODEV).into_error("eth0", "announcing", fail);
        assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
        let err = SocketError::NoInterface.into_error("eth0", "announcing", fail);
        assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
        let err = io(libc::ENETDOWN).into_error("eth0", "announcing", fail);
        assert!(matches!(&err, Error::Announce { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[test]
    fn mac_text_parsing() {
        assert_eq!(parse_mac("02:00:5e:10:20:30"), Some(MAC));
        assert_eq!(parse_mac("02:00:5e:10:20"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:30:40"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:zz"), None);
        assert_eq!(parse_mac(""), None);
    }

    #[test]
    fn interface_mac_of_missing_interface() {
        let err = interface_mac("tdm-nosuch0").unwrap_err();
        assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
        assert_eq!(interface_mac("lo").expect("lo exists"), [0; 6]);
    }

    #[tokio::test]
    async fn announce_zero_times_is_a_no_op() {
        announce("tdm-nosuch0", MAC, IpAddr::V4(VIP4), 0, Duration::ZERO)
            .await
            .expect("nothing to send");
    }

    /// Node namespaces 0 ("a", interface `va`, 198.18.0.1) and 2 ("c", `vc`, 198.18.0.3)
    /// are plugged into a bridge `br0` in client namespace 1 (198.18.0.2).
    fn bridged_namespaces() -> Option<Namespaces> {
        let ns = Namespaces::create("ann", 3)?;
        let (a, client, c) = (ns.name(0), ns.name(1), ns.name(2));
        ip(&["-n", client, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", client, "addr", "add", "198.18.0.2/24", "dev", "br0"]);
        ip(&["-n", client, "link", "set", "br0", "up"]);
        veth(a, "va", "198.18.0.1/24", client, "vb1", "");
        veth(c, "vc", "198.18.0.3/24", client, "vb2", "");
        ip(&["-n", client, "link", "set", "vb1", "master", "br0"]);
        ip(&["-n", client, "link", "set", "vb2", "master", "br0"]);
        Some(ns)
    }

    fn vip_spec(interface: &str) -> VipSpec {
        VipSpec {
            address: IpAddr::V4(VIP4),
            prefix: 32,
            interface: interface.into(),
        }
    }

    /// Add (`Some(lifetime)`) or remove (`None`) the VIP on `interface` in `ns`; the MAC.
    fn set_vip(ns: &str, interface: &'static str, lifetime: Option<Duration>) -> [u8; 6] {
        run_in(ns, move || async move {
            let vip = Vip::open(vip_spec(interface)).await.expect("open");
            match lifetime {
                Some(lifetime) => vip.add_or_refresh(lifetime).await.expect("add"),
                None => {
                    vip.remove().await.expect("remove");
                }
            }
            assert_eq!(interface_mac(interface).unwrap(), vip.mac());
            vip.mac()
        })
    }

    fn probe(client: &str) -> Vec<[u8; 6]> {
        run_in(client, || async {
            let mac = interface_mac("br0").expect("br0 MAC");
            arp_probe(
                "br0",
                mac,
                Ipv4Addr::new(198, 18, 0, 2),
                VIP4,
                Duration::from_millis(500),
            )
            .await
            .expect("probe")
        })
    }

    #[test]
    fn arp_probe_sees_each_answering_node() {
        let Some(ns) = bridged_namespaces() else {
            return;
        };
        let (a, client, c) = (ns.name(0), ns.name(1), ns.name(2));

        assert_eq!(
            probe(client),
            Vec::<[u8; 6]>::new(),
            "nobody holds the VIP yet"
        );

        let mac_a = set_vip(a, "va", Some(Duration::from_secs(30)));
        assert_eq!(probe(client), vec![mac_a], "exactly one answerer");

        let mac_c = set_vip(c, "vc", Some(Duration::from_secs(30)));
        assert_ne!(mac_a, mac_c);
        let mut both = probe(client);
        both.sort();
        let mut expected = vec![mac_a, mac_c];
        expected.sort();
        assert_eq!(both, expected, "two nodes answering for the VIP");

        set_vip(c, "vc", None);
        assert_eq!(probe(client), vec![mac_a]);
        set_vip(a, "va", None);
        assert_eq!(probe(client), Vec::<[u8; 6]>::new(), "none after removal");
    }

    #[test]
    fn announcements_reach_the_peer() {
        let Some(ns) = Namespaces::create("ann", 2) else {
            return;
        };
        let (node, client) = (ns.name(0), ns.name(1));
        veth(node, "va", "198.18.0.1/24", client, "vb", "198.18.0.2/24");
        let vip6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x100);

        // Capture everything arriving on the client end while the node announces.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let capture = spawn_in(client, move || async move {
            let socket = PacketSocket::open("vb", true).expect("capture socket");
            socket.drain().unwrap();
            ready_tx.send(()).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 2048];
            while let Some((len, pkttype)) = socket.recv_until(&mut buf, deadline).await.unwrap() {
                if pkttype != Some(PACKET_OUTGOING) {
                    frames.push(buf[..len].to_vec());
                }
            }
            frames
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("capture ready");

        let mac = run_in(node, move || async move {
            let mac = interface_mac("va").unwrap();
            announce("va", mac, IpAddr::V4(VIP4), 3, Duration::from_millis(50))
                .await
                .expect("announce IPv4");
            announce("va", mac, IpAddr::V6(vip6), 2, Duration::from_millis(20))
                .await
                .expect("announce IPv6");
            let err = announce("nosuch", mac, IpAddr::V4(VIP4), 1, Duration::ZERO)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
            mac
        });
        let frames = join(capture);

        let arp = frames
            .iter()
            .filter(|f| arp_answer_for(f, VIP4) == Some(mac))
            .count();
        let na = frames
            .iter()
            .filter(|f| f.as_slice() == unsolicited_na(mac, vip6).as_slice())
            .count();
        println!(
            "client received {} frames: {arp} gratuitous ARP, {na} unsolicited NA",
            frames.len()
        );
        assert_eq!(arp, 3, "gratuitous ARPs received");
        assert_eq!(na, 2, "unsolicited NAs received");
    }
}
