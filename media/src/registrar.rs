//! Registrar logic (RFC 3261 §10.3) and authentication decisions, without I/O.
//!
//! [`authenticate`] checks a Digest response (REGISTER: Authorization/401,
//! INVITE: Proxy-Authorization/407). [`process_register`] turns an authenticated
//! REGISTER into the binding writes the driver commits through the backend, or an
//! error answer (423 with Min-Expires, 400). Failure limits are [`crate::guard`]'s.

use crate::backend::{Binding, SipUser};
use crate::digest::{Credentials, NonceKeeper, Verdict};
use crate::sip::{message, Transport};
use rsip::Request;
use std::net::{IpAddr, SocketAddr};

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
    /// No (usable) credentials yet, or a stale or replayed nonce: send a challenge.
    Challenge {
        /// The password was right but the nonce unusable (RFC 7616 §3.3 `stale=true`).
        stale: bool,
        /// The nonce count was used before: a replay (logged, not a failure).
        replayed: bool,
    },
    /// Wrong password, unknown user or a user name that does not match: 403 and a failure.
    Forbidden {
        /// The user name tried (for the log).
        tried: String,
        /// The account, when the user exists (it counts towards its lock).
        account: Option<String>,
    },
}

impl AuthOutcome {
    fn challenge() -> AuthOutcome {
        AuthOutcome::Challenge {
            stale: false,
            replayed: false,
        }
    }
}

/// Check the Digest credentials in `auth_header` (the value of Authorization or
/// Proxy-Authorization), sent from `source`, for `expected_user`, looking the user
/// up with `lookup`. A correct response records its nonce count in `nonces`.
#[allow(clippy::too_many_arguments)]
pub fn authenticate(
    auth_header: Option<&str>,
    method: &str,
    expected_user: Option<&str>,
    realm: &str,
    nonces: &mut NonceKeeper,
    lookup: impl Fn(&str) -> Option<SipUser>,
    source: IpAddr,
    now_unix: i64,
) -> AuthOutcome {
    let Some(value) = auth_header else {
        return AuthOutcome::challenge();
    };
    let Some(creds) = Credentials::parse(value) else {
        return AuthOutcome::challenge();
    };
    if creds.realm != realm {
        // Credentials for another realm: challenge for ours (RFC 3261 §22.3).
        return AuthOutcome::challenge();
    }
    let forbidden = |account: Option<String>| AuthOutcome::Forbidden {
        tried: creds.username.clone(),
        account,
    };
    if expected_user.is_some_and(|u| u != creds.username) {
        return forbidden(None);
    }
    let Some(user) = lookup(&creds.username) else {
        return forbidden(None);
    };
    match nonces.verify(&creds, method, realm, &user.password, source, now_unix) {
        Verdict::Ok => AuthOutcome::Ok(user),
        Verdict::Stale => AuthOutcome::Challenge {
            stale: true,
            replayed: false,
        },
        Verdict::Replayed => AuthOutcome::Challenge {
            stale: true,
            replayed: true,
        },
        Verdict::Malformed => AuthOutcome::challenge(),
        Verdict::Wrong => forbidden(Some(user.extension)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{client_authorization, Algorithm};
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

    const FROM: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// `authenticate` for a REGISTER from 127.0.0.1, with one user 1001/pw.
    fn check(
        nonces: &mut NonceKeeper,
        value: Option<&str>,
        expected: Option<&str>,
        now: i64,
    ) -> AuthOutcome {
        let user = SipUser {
            extension: "1001".into(),
            password: "pw".into(),
            display_name: None,
        };
        let lookup = |e: &str| (e == "1001").then(|| user.clone());
        authenticate(
            value, "REGISTER", expected, "tandem", nonces, lookup, FROM, now,
        )
    }

    fn challenge(nonces: &NonceKeeper, user: &str, password: &str) -> String {
        let ch = nonces.challenges("tandem", &[Algorithm::Md5], FROM, 100, false);
        client_authorization(&ch[0], user, password, "REGISTER", "sip:127.0.0.1").unwrap()
    }

    #[test]
    fn authentication_outcomes() {
        // RFC 3261 §22.2/§22.3 challenge-response; RFC 7616 §3.3 stale.
        let mut nonces = NonceKeeper::new(300);
        let forbidden = |tried: &str, account: Option<&str>| AuthOutcome::Forbidden {
            tried: tried.into(),
            account: account.map(str::to_string),
        };
        assert_eq!(
            check(&mut nonces, None, Some("1001"), 0),
            AuthOutcome::challenge()
        );
        // Another keeper's nonce (e.g. the previous master's): right password, stale.
        let other = NonceKeeper::new(300);
        let good = challenge(&other, "1001", "pw");
        let stale = AuthOutcome::Challenge {
            stale: true,
            replayed: false,
        };
        assert_eq!(check(&mut nonces, Some(&good), Some("1001"), 110), stale);
        let bad = challenge(&other, "1001", "nope");
        assert_eq!(
            check(&mut nonces, Some(&bad), Some("1001"), 110),
            forbidden("1001", Some("1001"))
        );
        // registering someone else's AOR with own credentials
        assert_eq!(
            check(&mut nonces, Some(&good), Some("1002"), 110),
            forbidden("1001", None)
        );
        let unknown = challenge(&other, "9999", "pw");
        assert_eq!(
            check(&mut nonces, Some(&unknown), None, 110),
            forbidden("9999", None)
        );
    }

    #[test]
    fn own_nonce_works_once_per_count_and_expires() {
        let mut nonces = NonceKeeper::new(300);
        let good = challenge(&nonces, "1001", "pw");
        let mut auth = |now: i64| check(&mut nonces, Some(&good), Some("1001"), now);
        // RFC 7616 §3.3: expired first (nothing recorded), then used, then replayed.
        assert!(matches!(
            auth(1000),
            AuthOutcome::Challenge {
                stale: true,
                replayed: false
            }
        ));
        assert!(matches!(auth(110), AuthOutcome::Ok(_)));
        assert!(matches!(
            auth(111),
            AuthOutcome::Challenge {
                stale: true,
                replayed: true
            }
        ));
    }
}
