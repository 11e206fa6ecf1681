//! Registrar logic (RFC 3261 §10.3) and authentication decisions, without I/O.
//!
//! [`authenticate`] checks a Digest response (REGISTER: Authorization/401,
//! INVITE: Proxy-Authorization/407). [`process_register`] turns an authenticated
//! REGISTER into the binding writes the driver commits through the backend, or an
//! error answer (423 with Min-Expires, 400). [`AuthGuard`] counts failures per
//! source address, blocks a source that keeps failing and says when to raise the
//! security alarm.

use crate::backend::{Binding, SipUser};
use crate::digest::{Credentials, NonceKeeper, Verdict};
use crate::sip::{message, Transport};
use rsip::Request;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Registration limits.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Digest realm.
    pub realm: String,
    /// Shortest registration accepted; shorter gets 423 (RFC 3261 §10.3 step 7).
    pub min_expires: u32,
    /// Longest registration granted; longer requests are shortened.
    pub max_expires: u32,
    /// Used when the REGISTER names no expiry.
    pub default_expires: u32,
}

/// Outcome of checking a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated as this user.
    Ok(SipUser),
    /// No (usable) credentials yet, or a stale nonce: send a challenge.
    Challenge {
        /// The nonce was ours but expired (RFC 7616 §3.3 `stale=true`).
        stale: bool,
    },
    /// Wrong password, unknown user or a user name that does not match: 403 and a failure.
    Forbidden,
}

/// Check the Digest credentials in `auth_header` (the value of Authorization or
/// Proxy-Authorization) for `expected_user`, looking the user up with `lookup`.
pub fn authenticate(
    auth_header: Option<&str>,
    method: &str,
    expected_user: Option<&str>,
    realm: &str,
    nonces: &NonceKeeper,
    lookup: impl Fn(&str) -> Option<SipUser>,
    now_unix: i64,
) -> AuthOutcome {
    let Some(value) = auth_header else {
        return AuthOutcome::Challenge { stale: false };
    };
    let Some(creds) = Credentials::parse(value) else {
        return AuthOutcome::Challenge { stale: false };
    };
    if creds.realm != realm {
        // Credentials for another realm: challenge for ours (RFC 3261 §22.3).
        return AuthOutcome::Challenge { stale: false };
    }
    if expected_user.is_some_and(|u| u != creds.username) {
        return AuthOutcome::Forbidden;
    }
    let Some(user) = lookup(&creds.username) else {
        return AuthOutcome::Forbidden;
    };
    match nonces.verify(&creds, method, realm, &user.password, now_unix) {
        Verdict::Ok => AuthOutcome::Ok(user),
        Verdict::Stale => AuthOutcome::Challenge { stale: true },
        Verdict::Malformed => AuthOutcome::Challenge { stale: false },
        Verdict::Wrong => AuthOutcome::Forbidden,
    }
}

/// What an authenticated REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Commit these writes, then answer 200 listing `current` (RFC 3261 §10.3 step 8).
    Update {
        /// Bindings to add or refresh.
        save: Vec<Binding>,
        /// Contacts to remove (`Expires: 0`).
        remove: Vec<String>,
        /// The bindings after the writes, for the 200's Contact list.
        current: Vec<Binding>,
    },
    /// 423 Interval Too Brief with this Min-Expires (RFC 3261 §10.3 step 7).
    IntervalTooBrief(u32),
    /// 400 with a reason.
    BadRequest(&'static str),
}

/// Apply RFC 3261 §10.3 steps 6-8 to an authenticated REGISTER for `aor`.
pub fn process_register(
    req: &Request,
    aor: &str,
    source: SocketAddr,
    transport: Transport,
    existing: &[Binding],
    cfg: &RegistrarConfig,
    now_unix: i64,
) -> RegisterOutcome {
    let h = &req.headers;
    let call_id = message::call_id(h).unwrap_or_default().to_string();
    let cseq = message::cseq(h).map(|c| c.0).unwrap_or_default();
    let header_expires = message::expires(h);
    let contacts = message::contacts(h);
    let live: Vec<Binding> = existing
        .iter()
        .filter(|b| b.aor == aor && b.expires_at_unix > now_unix)
        .cloned()
        .collect();
    if contacts.iter().any(|c| c.trim() == "*") {
        // Step 6: "*" only alone and with Expires: 0.
        if contacts.len() != 1 || header_expires != Some(0) {
            return RegisterOutcome::BadRequest("Contact * needs Expires: 0 and no other contact");
        }
        return RegisterOutcome::Update {
            save: Vec::new(),
            remove: live.iter().map(|b| b.contact.clone()).collect(),
            current: Vec::new(),
        };
    }
    let mut save = Vec::new();
    let mut remove = Vec::new();
    for c in &contacts {
        let uri = message::uri_of(c).to_string();
        if !(uri.starts_with("sip:") || uri.starts_with("sips:")) {
            return RegisterOutcome::BadRequest("Contact is not a SIP URI");
        }
        let expires = message::param(c, "expires")
            .and_then(|e| e.parse::<u32>().ok())
            .or(header_expires)
            .unwrap_or(cfg.default_expires);
        if expires == 0 {
            remove.push(uri);
            continue;
        }
        if expires < cfg.min_expires {
            return RegisterOutcome::IntervalTooBrief(cfg.min_expires);
        }
        let expires = expires.min(cfg.max_expires);
        save.push(Binding {
            aor: aor.to_string(),
            contact: uri,
            source,
            transport,
            expires_at_unix: now_unix + i64::from(expires),
            call_id: call_id.clone(),
            cseq,
        });
    }
    let mut current: Vec<Binding> = live
        .into_iter()
        .filter(|b| !remove.contains(&b.contact) && !save.iter().any(|s| s.contact == b.contact))
        .collect();
    current.extend(save.iter().cloned());
    RegisterOutcome::Update {
        save,
        remove,
        current,
    }
}

/// Contact header values for a 200 to REGISTER (each with its remaining expiry).
pub fn contact_values(current: &[Binding], now_unix: i64) -> Vec<String> {
    current
        .iter()
        .map(|b| {
            format!(
                "<{}>;expires={}",
                b.contact,
                (b.expires_at_unix - now_unix).max(0)
            )
        })
        .collect()
}

/// Failure bookkeeping of one source address.
#[derive(Debug, Clone)]
struct Source {
    /// Failures in the current window.
    failures: u32,
    /// Start of the window.
    since: Instant,
    /// Requests needing authentication are dropped until then.
    blocked_until: Option<Instant>,
}

/// Slows down sources that keep failing authentication: after `threshold`
/// failures within `window`, every request from the source that needs
/// authentication is dropped for `block` (doubling while it goes on), and the
/// security alarm is raised.
#[derive(Debug, Clone)]
pub struct AuthGuard {
    /// Failures that trigger a block.
    threshold: u32,
    /// Window in which failures are counted.
    window: Duration,
    /// First block duration.
    block: Duration,
    /// Per source address.
    sources: HashMap<IpAddr, Source>,
}

impl AuthGuard {
    /// A guard with these limits.
    pub fn new(threshold: u32, window: Duration, block: Duration) -> AuthGuard {
        AuthGuard {
            threshold: threshold.max(1),
            window,
            block,
            sources: HashMap::new(),
        }
    }

    /// Whether requests from `ip` are being dropped.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&ip)
            .and_then(|s| s.blocked_until)
            .is_some_and(|t| t > now)
    }

    /// Record a failure; returns the failure count when the source just got blocked
    /// (raise the security alarm then).
    pub fn failure(&mut self, ip: IpAddr, now: Instant) -> Option<u32> {
        if self.sources.len() > 100_000 {
            let window = self.window;
            self.sources
                .retain(|_, s| s.blocked_until.is_some_and(|t| t > now) || now - s.since < window);
        }
        let s = self.sources.entry(ip).or_insert(Source {
            failures: 0,
            since: now,
            blocked_until: None,
        });
        if now - s.since > self.window && s.blocked_until.map_or(true, |t| t <= now) {
            s.failures = 0;
            s.since = now;
        }
        s.failures += 1;
        if s.failures >= self.threshold && s.failures % self.threshold == 0 {
            let rounds = (s.failures / self.threshold).min(8);
            s.blocked_until = Some(now + self.block * (1 << (rounds - 1)));
            return Some(s.failures);
        }
        None
    }

    /// A successful authentication clears the source's record.
    pub fn success(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::client_authorization;
    use rsip::SipMessage;

    fn cfg() -> RegistrarConfig {
        RegistrarConfig {
            realm: "tandem".into(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
        }
    }

    fn register(contact: &str, expires: Option<u32>) -> Request {
        let mut m = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa\r\n\
From: <sip:1001@127.0.0.1>;tag=1\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: reg1\r\nCSeq: 7 REGISTER\r\n\
Contact: {contact}\r\n"
        );
        if let Some(e) = expires {
            m.push_str(&format!("Expires: {e}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        match crate::sip::parse(m.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5062".parse().unwrap()
    }

    #[test]
    fn new_binding_with_default_and_capped_expiry() {
        // RFC 3261 §10.3 step 7: expiry from the contact param, then Expires, then default.
        let r = register("<sip:1001@127.0.0.1:5062>", None);
        let RegisterOutcome::Update { save, current, .. } =
            process_register(&r, "1001", src(), Transport::Udp, &[], &cfg(), 1000)
        else {
            panic!()
        };
        assert_eq!(save[0].expires_at_unix, 4600);
        assert_eq!(save[0].contact, "sip:1001@127.0.0.1:5062");
        assert_eq!((save[0].call_id.as_str(), save[0].cseq), ("reg1", 7));
        assert_eq!(
            contact_values(&current, 1000),
            vec!["<sip:1001@127.0.0.1:5062>;expires=3600"]
        );
        let r = register("<sip:1001@127.0.0.1:5062>;expires=99999", Some(120));
        let RegisterOutcome::Update { save, .. } =
            process_register(&r, "1001", src(), Transport::Udp, &[], &cfg(), 1000)
        else {
            panic!()
        };
        assert_eq!(save[0].expires_at_unix, 1000 + 3600);
    }

    #[test]
    fn too_brief_is_423_and_zero_unregisters() {
        // RFC 3261 §10.3 step 7: 423 Interval Too Brief; Expires 0 removes.
        let r = register("<sip:1001@127.0.0.1:5062>", Some(30));
        assert_eq!(
            process_register(&r, "1001", src(), Transport::Udp, &[], &cfg(), 1000),
            RegisterOutcome::IntervalTooBrief(60)
        );
        let existing = Binding {
            aor: "1001".into(),
            contact: "sip:1001@127.0.0.1:5062".into(),
            source: src(),
            transport: Transport::Udp,
            expires_at_unix: 2000,
            call_id: "reg1".into(),
            cseq: 6,
        };
        let r = register("<sip:1001@127.0.0.1:5062>", Some(0));
        let out = process_register(
            &r,
            "1001",
            src(),
            Transport::Udp,
            std::slice::from_ref(&existing),
            &cfg(),
            1000,
        );
        assert_eq!(
            out,
            RegisterOutcome::Update {
                save: vec![],
                remove: vec!["sip:1001@127.0.0.1:5062".into()],
                current: vec![]
            }
        );
        // "*" with Expires: 0 removes all (§10.3 step 6), without it is a 400.
        let r = register("*", Some(0));
        let RegisterOutcome::Update { remove, .. } =
            process_register(&r, "1001", src(), Transport::Udp, &[existing], &cfg(), 1000)
        else {
            panic!()
        };
        assert_eq!(remove.len(), 1);
        let r = register("*", None);
        assert!(matches!(
            process_register(&r, "1001", src(), Transport::Udp, &[], &cfg(), 1000),
            RegisterOutcome::BadRequest(_)
        ));
    }

    #[test]
    fn authentication_outcomes() {
        // RFC 3261 §22.2/§22.3 challenge-response; RFC 7616 §3.3 stale.
        let nonces = NonceKeeper::new(300);
        let user = SipUser {
            extension: "1001".into(),
            password: "pw".into(),
            display_name: None,
        };
        let lookup = |e: &str| (e == "1001").then(|| user.clone());
        assert_eq!(
            authenticate(None, "REGISTER", Some("1001"), "tandem", &nonces, lookup, 0),
            AuthOutcome::Challenge { stale: false }
        );
        let ch = &nonces.challenges("tandem", &[crate::digest::Algorithm::Md5], 100, false)[0];
        let good = client_authorization(ch, "1001", "pw", "REGISTER", "sip:127.0.0.1").unwrap();
        assert_eq!(
            authenticate(
                Some(&good),
                "REGISTER",
                Some("1001"),
                "tandem",
                &nonces,
                lookup,
                110
            ),
            AuthOutcome::Ok(user.clone())
        );
        assert_eq!(
            authenticate(
                Some(&good),
                "REGISTER",
                Some("1001"),
                "tandem",
                &nonces,
                lookup,
                1000
            ),
            AuthOutcome::Challenge { stale: true }
        );
        let bad = client_authorization(ch, "1001", "nope", "REGISTER", "sip:127.0.0.1").unwrap();
        assert_eq!(
            authenticate(
                Some(&bad),
                "REGISTER",
                Some("1001"),
                "tandem",
                &nonces,
                lookup,
                110
            ),
            AuthOutcome::Forbidden
        );
        // registering someone else's AOR with own credentials
        assert_eq!(
            authenticate(
                Some(&good),
                "REGISTER",
                Some("1002"),
                "tandem",
                &nonces,
                lookup,
                110
            ),
            AuthOutcome::Forbidden
        );
        let unknown = client_authorization(ch, "9999", "pw", "REGISTER", "sip:x").unwrap();
        assert_eq!(
            authenticate(
                Some(&unknown),
                "REGISTER",
                None,
                "tandem",
                &nonces,
                lookup,
                110
            ),
            AuthOutcome::Forbidden
        );
    }

    #[test]
    fn guard_blocks_after_threshold_and_doubles() {
        let now = Instant::now();
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let mut g = AuthGuard::new(3, Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(g.failure(ip, now), None);
        assert_eq!(g.failure(ip, now), None);
        assert_eq!(g.failure(ip, now), Some(3));
        assert!(g.is_blocked(ip, now + Duration::from_secs(9)));
        assert!(!g.is_blocked(ip, now + Duration::from_secs(11)));
        assert!(!g.is_blocked("127.0.0.6".parse().unwrap(), now));
        let later = now + Duration::from_secs(11);
        g.failure(ip, later);
        g.failure(ip, later);
        assert_eq!(g.failure(ip, later), Some(6));
        assert!(
            g.is_blocked(ip, later + Duration::from_secs(19)),
            "second block is longer"
        );
        g.success(ip);
        assert!(!g.is_blocked(ip, later));
    }
}
