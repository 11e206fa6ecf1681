//! The service address (VIP) on an interface, held with a kernel lifetime.
//!
//! The master adds the VIP with a finite `valid_lft`/`preferred_lft` (IFA_CACHEINFO) and
//! keeps pushing the lifetime forward while it is master (an `RTM_NEWADDR` with
//! `NLM_F_CREATE | NLM_F_REPLACE` on an existing address only updates its lifetime). If the
//! process crashes, is frozen (SIGSTOP, a stuck disk) or loses the ability to refresh, the
//! kernel deletes the address by itself when the lifetime runs out, so a stale master can
//! not keep answering for the VIP for longer than one lifetime.
//!
//! IPv6 addresses are added with `IFA_F_NODAD` so they are usable at once (duplicate
//! address detection would otherwise keep a just-moved VIP tentative for about a second).
//!
//! All requests need `CAP_NET_ADMIN` in the network namespace of the process; `EPERM` is
//! reported as [`Error::Permission`].

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::AddressFamily;

use crate::error::Error;

/// The kernel's "infinite" address lifetime (`INFINITY_LIFE_TIME`).
const INFINITE_LIFETIME: u32 = u32::MAX;

/// Linux interface names are at most `IFNAMSIZ - 1` bytes.
const MAX_INTERFACE_NAME: usize = 15;

/// Which address, with which prefix length, on which interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipSpec {
    /// The service address clients talk to.
    pub address: IpAddr,
    /// Prefix length of the address (32 / 128 for a host address).
    pub prefix: u8,
    /// Interface name, e.g. `eth0`.
    pub interface: String,
}

impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix, self.interface)
    }
}

/// A VIP bound to one interface, managed over an rtnetlink connection.
///
/// The netlink connection is bound to the network namespace of the thread that called
/// [`Vip::open`], and its I/O task runs on the tokio runtime `open` was called on; it ends
/// when the `Vip` is dropped.
pub struct Vip {
    handle: rtnetlink::Handle,
    spec: VipSpec,
    ifindex: u32,
    mac: [u8; 6],
}

impl fmt::Debug for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vip")
            .field("spec", &self.spec)
            .field("ifindex", &self.ifindex)
            .field("mac", &format_mac(&self.mac))
            .finish_non_exhaustive()
    }
}

impl Vip {
    /// Open a netlink connection (its task is spawned on the current tokio runtime),
    /// resolve the interface index and hardware address.
    ///
    /// [`Error::NoInterface`] if the interface does not exist; a prefix length that does
    /// not fit the address family is refused here rather than on the first add.
    pub async fn open(spec: VipSpec) -> Result<Vip, Error> {
        let max_prefix = if spec.address.is_ipv4() { 32 } else { 128 };
        if spec.prefix > max_prefix {
            return Err(Error::Netlink {
                op: "open",
                address: cidr(&spec),
                interface: spec.interface.clone(),
                reason: format!(
                    "prefix length /{} is out of range for this address (at most /{max_prefix})",
                    spec.prefix
                ),
            });
        }
        if spec.interface.is_empty()
            || spec.interface.len() > MAX_INTERFACE_NAME
            || spec.interface.contains(['/', '\0'])
            || spec.interface.chars().any(char::is_whitespace)
        {
            return Err(Error::NoInterface {
                interface: spec.interface.clone(),
            });
        }

        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|e| Error::Netlink {
                op: "open",
                address: cidr(&spec),
                interface: spec.interface.clone(),
                reason: format!("cannot open a netlink socket: {e}"),
            })?;
        tokio::spawn(connection);

        let link = {
            let links = handle
                .link()
                .get()
                .match_name(spec.interface.clone())
                .execute();
            futures::pin_mut!(links);
            let mut first = None;
            loop {
                match links.try_next().await {
                    Ok(Some(msg)) => {
                        if first.is_none() {
                            first = Some(msg);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(match netlink_errno(&e) {
                            Some(libc::ENODEV) | Some(libc::EINVAL) | Some(libc::ENOENT) => {
                                Error::NoInterface {
                                    interface: spec.interface.clone(),
                                }
                            }
                            _ => map_error("open", &spec, e),
                        })
                    }
                }
            }
            first.ok_or_else(|| Error::NoInterface {
                interface: spec.interface.clone(),
            })?
        };

        let ifindex = link.header.index;
        let mac = link
            .attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .unwrap_or([0; 6]);

        tracing::debug!(vip = %spec, ifindex, mac = %format_mac(&mac), "opened VIP");
        Ok(Vip {
            handle,
            spec,
            ifindex,
            mac,
        })
    }

    /// What this VIP is.
    pub fn spec(&self) -> &VipSpec {
        &self.spec
    }

    /// Interface hardware address (for announcements); all zeroes if the interface has no
    /// 6-byte hardware address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Interface index the VIP is managed on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Add the address with `valid_lft = preferred_lft = lifetime`, or, if it is already
    /// present, replace it to push the lifetime forward. Idempotent.
    ///
    /// The lifetime is truncated to whole seconds (at least 1, below the kernel's
    /// "forever"); truncating rather than rounding up keeps the kernel's removal no later
    /// than the caller asked for (the kernel itself may take up to about a second more).
    pub async fn add_or_refresh(&self, lifetime: Duration) -> Result<(), Error> {
        let secs = lifetime_secs(lifetime);
        let mut request = self
            .handle
            .address()
            .add(self.ifindex, self.spec.address, self.spec.prefix)
            .replace();
        let message = request.message_mut();
        let mut cache_info = CacheInfo::default();
        cache_info.ifa_valid = secs;
        cache_info.ifa_preferred = secs;
        message
            .attributes
            .push(AddressAttribute::CacheInfo(cache_info));
        if self.spec.address.is_ipv6() {
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .map_err(|e| map_error("add", &self.spec, e))?;
        tracing::trace!(vip = %self.spec, lifetime_s = secs, "VIP added or refreshed");
        Ok(())
    }

    /// Remove the address if present; returns whether it was present. Idempotent.
    ///
    /// Every instance of the address on the interface goes, whatever its prefix length
    /// (e.g. a copy added by hand with another prefix would keep answering ARP).
    pub async fn remove(&self) -> Result<bool, Error> {
        let mut removed = false;
        for mut message in self.find_all().await? {
            // Delete exactly the address the kernel reported; only the header and the
            // address attributes matter for matching.
            message.attributes.retain(|attr| {
                matches!(
                    attr,
                    AddressAttribute::Address(_) | AddressAttribute::Local(_)
                )
            });
            match self.handle.address().del(message).execute().await {
                Ok(()) => removed = true,
                // Gone in between (expired, or removed by someone else).
                Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(map_error("remove", &self.spec, e)),
            }
        }
        if removed {
            tracing::debug!(vip = %self.spec, "VIP removed");
        }
        Ok(removed)
    }

    /// Whether the address is currently on the interface (with any prefix length).
    pub async fn is_present(&self) -> Result<bool, Error> {
        Ok(self.find().await?.is_some())
    }

    /// Remaining valid lifetime reported by the kernel, if the address is present
    /// (`Duration::MAX` for an address without a lifetime, e.g. one added by hand).
    pub async fn remaining_lifetime(&self) -> Result<Option<Duration>, Error> {
        let Some(message) = self.find().await? else {
            return Ok(None);
        };
        let remaining = message
            .attributes
            .iter()
            .find_map(|attr| match attr {
                AddressAttribute::CacheInfo(info) => Some(info.ifa_valid),
                _ => None,
            })
            .map_or(Duration::MAX, |valid| {
                if valid == INFINITE_LIFETIME {
                    Duration::MAX
                } else {
                    Duration::from_secs(u64::from(valid))
                }
            });
        Ok(Some(remaining))
    }

    /// The kernel's view of the address on the interface, if present (the instance with
    /// the spec's prefix length if there are several).
    async fn find(&self) -> Result<Option<AddressMessage>, Error> {
        let mut all = self.find_all().await?;
        let preferred = all
            .iter()
            .position(|m| m.header.prefix_len == self.spec.prefix)
            .unwrap_or(0);
        Ok((!all.is_empty()).then(|| all.swap_remove(preferred)))
    }

    /// Every instance of the address on the interface.
    async fn find_all(&self) -> Result<Vec<AddressMessage>, Error> {
        let mut request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .set_address_filter(self.spec.address);
        request.message_mut().header.family = if self.spec.address.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let addresses = request.execute();
        futures::pin_mut!(addresses);
        addresses
            .try_collect()
            .await
            .map_err(|e| map_error("query", &self.spec, e))
    }
}

/// Whole seconds, at least 1, below the kernel's "infinite".
fn lifetime_secs(lifetime: Duration) -> u32 {
    let secs = lifetime
        .as_secs()
        .clamp(1, u64::from(INFINITE_LIFETIME - 1));
    u32::try_from(secs).unwrap_or(INFINITE_LIFETIME - 1)
}

fn cidr(spec: &VipSpec) -> String {
    format!("{}/{}", spec.address, spec.prefix)
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The positive errno of a netlink error answer, if that is what the error is.
fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => {
            let code = message.raw_code();
            (code != 0).then(|| code.abs())
        }
        _ => None,
    }
}

fn map_error(op: &'static str, spec: &VipSpec, err: rtnetlink::Error) -> Error {
    match netlink_errno(&err) {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Permission {
            what: format!("netlink {op} of {} on {}", cidr(spec), spec.interface),
            capability: "CAP_NET_ADMIN",
        },
        Some(libc::ENODEV) => Error::NoInterface {
            interface: spec.interface.clone(),
        },
        Some(errno) => Error::Netlink {
            op,
            address: cidr(spec),
            interface: spec.interface.clone(),
            reason: std::io::Error::from_raw_os_error(errno).to_string(),
        },
        None => Error::Netlink {
            op,
            address: cidr(spec),
            interface: spec.interface.clone(),
            reason: err.to_string(),
        },
    }
}

/// Test harness shared with `announce`: private network namespaces joined by veth pairs.
#[cfg(test)]
pub(crate) mod netns {
    use std::future::Future;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// Run `ip` with `args`; panics with its stderr on failure.
    pub(crate) fn ip(args: &[&str]) {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
        assert!(
            out.status.success(),
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Network namespaces owned by one test; deleted on drop, also when the test panics.
    pub(crate) struct Namespaces {
        names: Vec<String>,
    }

    impl Namespaces {
        /// Create `count` namespaces named `tdm-<tag>-<pid>-<n>`, each with `lo` up.
        /// `None` (after printing why) when not root or `ip netns` is unavailable.
        pub(crate) fn create(tag: &str, count: usize) -> Option<Namespaces> {
            if !nix::unistd::geteuid().is_root() {
                println!("skipped: needs root and network namespaces (not running as root)");
                return None;
            }
            match Command::new("ip").args(["netns", "list"]).output() {
                Ok(out) if out.status.success() => {}
                _ => {
                    println!("skipped: needs root and network namespaces (`ip netns` unavailable)");
                    return None;
                }
            }
            let mut namespaces = Namespaces { names: Vec::new() };
            for _ in 0..count {
                let name = format!(
                    "tdm-{tag}-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let out = Command::new("ip").args(["netns", "add", &name]).output();
                match out {
                    Ok(out) if out.status.success() => namespaces.names.push(name),
                    Ok(out) => {
                        println!(
                            "skipped: needs root and network namespaces (ip netns add: {})",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                        return None;
                    }
                    Err(e) => {
                        println!("skipped: needs root and network namespaces (ip: {e})");
                        return None;
                    }
                }
                ip(&[
                    "-n",
                    namespaces.names.last().unwrap(),
                    "link",
                    "set",
                    "lo",
                    "up",
                ]);
            }
            Some(namespaces)
        }

        pub(crate) fn name(&self, i: usize) -> &str {
            &self.names[i]
        }
    }

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for name in &self.names {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// A veth pair: `a_if` in namespace `a` with `a_addr`, `b_if` in `b` with `b_addr`
    /// (CIDR strings), both up.
    pub(crate) fn veth(a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        ip(&[
            "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            if !addr.is_empty() {
                ip(&["-n", ns, "addr", "add", addr, "dev", ifname]);
            }
            ip(&["-n", ns, "link", "set", ifname, "up"]);
        }
    }

    /// Run `f` on a new thread inside network namespace `ns`, on a current-thread tokio
    /// runtime; panics in `f` propagate on join.
    pub(crate) fn spawn_in<T, F, Fut>(ns: &str, f: F) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }

    /// [`spawn_in`] and wait for the result.
    pub(crate) fn run_in<T, F, Fut>(ns: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        join(spawn_in(ns, f))
    }

    /// Join, re-raising a panic of the thread.
    pub(crate) fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
        match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::netns::{run_in, veth, Namespaces};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;

    #[test]
    fn lifetime_is_whole_seconds_at_least_one() {
        assert_eq!(lifetime_secs(Duration::ZERO), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(999)), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(2500)), 2);
        assert_eq!(lifetime_secs(Duration::from_secs(30)), 30);
        assert_eq!(lifetime_secs(Duration::MAX), u32::MAX - 1);
    }

    #[test]
    fn spec_display_and_mac_format() {
        let spec = VipSpec {
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)),
            prefix: 32,
            interface: "eth0".into(),
        };
        assert_eq!(spec.to_string(), "198.18.0.100/32 on eth0");
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
    }

    #[test]
    fn netlink_errors_map_to_crate_errors() {
        let spec = VipSpec {
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)),
            prefix: 32,
            interface: "eth0".into(),
        };
        let nack = |errno: i32| {
            let mut message = rtnetlink::packet_core::ErrorMessage::default();
            message.code = std::num::NonZeroI32::new(-errno);
            rtnetlink::Error::NetlinkError(message)
        };
        let err = map_error("add", &spec, nack(libc::EPERM));
        assert!(
            matches!(
                &err,
                Error::Permission {
                    capability: "CAP_NET_ADMIN",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        let err = map_error("add", &spec, nack(libc::ENODEV));
        assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
        let err = map_error("add", &spec, nack(libc::EINVAL));
        match &err {
            Error::Netlink {
                op,
                address,
                interface,
                reason,
            } => {
                assert_eq!(*op, "add");
                assert_eq!(address, "198.18.0.100/32");
                assert_eq!(interface, "eth0");
                assert!(reason.contains("Invalid argument"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_retryable());
        let err = map_error("query", &spec, rtnetlink::Error::RequestFailed);
        assert!(matches!(err, Error::Netlink { op: "query", .. }), "{err:?}");
    }

    #[tokio::test]
    async fn missing_interface_is_no_interface() {
        for name in ["tdm-nosuch0", "", "much-too-long-interface-name", "a/b"] {
            let err = Vip::open(VipSpec {
                address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)),
                prefix: 32,
                interface: name.into(),
            })
            .await
            .unwrap_err();
            assert!(
                matches!(&err, Error::NoInterface { interface } if interface == name),
                "{name:?}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn prefix_out_of_range_is_refused() {
        let err = Vip::open(VipSpec {
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)),
            prefix: 33,
            interface: "lo".into(),
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Netlink { op: "open", .. }), "{err:?}");
    }

    /// One namespace with a veth pair end `va` (the other end in a second namespace).
    fn node_namespace() -> Option<Namespaces> {
        let ns = Namespaces::create("vip", 2)?;
        veth(
            ns.name(0),
            "va",
            "198.18.0.1/24",
            ns.name(1),
            "vb",
            "198.18.0.2/24",
        );
        Some(ns)
    }

    fn v4(last: u8) -> VipSpec {
        VipSpec {
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            prefix: 32,
            interface: "va".into(),
        }
    }

    fn v6(last: u16) -> VipSpec {
        VipSpec {
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last)),
            prefix: 64,
            interface: "va".into(),
        }
    }

    async fn lifecycle(spec: VipSpec) {
        let vip = Vip::open(spec.clone()).await.expect("open");
        assert_eq!(vip.spec(), &spec);
        assert_ne!(vip.mac(), [0; 6], "veth has a MAC");
        assert!(!vip.is_present().await.unwrap());
        assert_eq!(vip.remaining_lifetime().await.unwrap(), None);

        vip.add_or_refresh(Duration::from_secs(2))
            .await
            .expect("add");
        assert!(vip.is_present().await.unwrap());
        let left = vip.remaining_lifetime().await.unwrap().expect("present");
        assert!(left <= Duration::from_secs(2), "{left:?}");
        assert!(left >= Duration::from_secs(1), "{left:?}");
        // Idempotent: adding again is a refresh, not EEXIST.
        vip.add_or_refresh(Duration::from_secs(2))
            .await
            .expect("second add");

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let left = vip.remaining_lifetime().await.unwrap().expect("present");
        assert!(left <= Duration::from_secs(1), "{left:?}");

        vip.add_or_refresh(Duration::from_secs(10))
            .await
            .expect("refresh");
        let left = vip.remaining_lifetime().await.unwrap().expect("present");
        assert!(
            left >= Duration::from_secs(9),
            "refresh pushed forward: {left:?}"
        );
        assert!(left <= Duration::from_secs(10), "{left:?}");

        assert!(vip.remove().await.expect("remove"));
        assert!(!vip.is_present().await.unwrap());
        assert!(!vip.remove().await.expect("second remove"));
        assert_eq!(vip.remaining_lifetime().await.unwrap(), None);
    }

    async fn expires_by_itself(spec: VipSpec) -> Duration {
        let vip = Vip::open(spec).await.expect("open");
        vip.add_or_refresh(Duration::from_secs(1))
            .await
            .expect("add");
        let added = Instant::now();
        assert!(vip.is_present().await.unwrap());
        let deadline = added + Duration::from_secs(5);
        while vip.is_present().await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "address with a 1 s lifetime still present after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        added.elapsed()
    }

    fn ipv6_available() -> bool {
        std::path::Path::new("/proc/sys/net/ipv6").exists()
    }

    #[test]
    fn ipv4_add_refresh_remove() {
        let Some(ns) = node_namespace() else { return };
        run_in(ns.name(0), || lifecycle(v4(100)));
    }

    #[test]
    fn ipv6_add_refresh_remove() {
        if !ipv6_available() {
            println!("skipped: IPv6 is disabled on this host");
            return;
        }
        let Some(ns) = node_namespace() else { return };
        run_in(ns.name(0), || async {
            lifecycle(v6(0x100)).await;
            // NODAD: usable at once, never tentative.
            let vip = Vip::open(v6(0x101)).await.unwrap();
            vip.add_or_refresh(Duration::from_secs(5)).await.unwrap();
            let message = vip.find().await.unwrap().expect("present");
            let flags = message
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    AddressAttribute::Flags(flags) => Some(*flags),
                    _ => None,
                })
                .expect("IFA_FLAGS");
            assert!(flags.contains(AddressFlags::Nodad), "{flags:?}");
            assert!(!flags.contains(AddressFlags::Tentative), "{flags:?}");
            assert!(!flags.contains(AddressFlags::Permanent), "{flags:?}");
        });
    }

    #[test]
    fn ipv4_kernel_lifetime_removes_unrefreshed_address() {
        let Some(ns) = node_namespace() else { return };
        let took = run_in(ns.name(0), || expires_by_itself(v4(101)));
        println!("IPv4 address with a 1 s lifetime vanished after {took:?}");
        assert!(took <= Duration::from_millis(3500), "{took:?}");
    }

    #[test]
    fn ipv6_kernel_lifetime_removes_unrefreshed_address() {
        if !ipv6_available() {
            println!("skipped: IPv6 is disabled on this host");
            return;
        }
        let Some(ns) = node_namespace() else { return };
        let took = run_in(ns.name(0), || expires_by_itself(v6(0x102)));
        println!("IPv6 address with a 1 s lifetime vanished after {took:?}");
        assert!(took <= Duration::from_millis(3500), "{took:?}");
    }

    #[test]
    fn remove_deletes_every_instance_and_open_in_namespace() {
        let Some(ns) = node_namespace() else { return };
        // Someone added the VIP by hand with other prefixes and no lifetime.
        for cidr in ["198.18.0.102/24", "198.18.0.102/28"] {
            super::netns::ip(&["-n", ns.name(0), "addr", "add", cidr, "dev", "va"]);
        }
        run_in(ns.name(0), || async {
            let vip = Vip::open(v4(102)).await.unwrap();
            assert!(vip.is_present().await.unwrap());
            assert_eq!(vip.remaining_lifetime().await.unwrap(), Some(Duration::MAX));
            // Our own instance (the spec's /32) is the one reported.
            vip.add_or_refresh(Duration::from_secs(5)).await.unwrap();
            assert_eq!(vip.find_all().await.unwrap().len(), 3);
            let left = vip.remaining_lifetime().await.unwrap().unwrap();
            assert!(left <= Duration::from_secs(5), "{left:?}");
            assert!(vip.remove().await.unwrap());
            assert!(!vip.is_present().await.unwrap());
            assert!(vip.find_all().await.unwrap().is_empty());
            assert!(!vip.remove().await.unwrap());
            let err = Vip::open(VipSpec {
                interface: "nosuch".into(),
                ..v4(102)
            })
            .await
            .unwrap_err();
            assert!(matches!(err, Error::NoInterface { .. }), "{err:?}");
        });
    }
}
