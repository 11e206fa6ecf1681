//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//! MD5 and SHA-256, `qop=auth`, nonces that carry their creation time and a hash
//! keyed with a per-service secret over that time and the client's address (they
//! expire, and are worthless from another address), and the nonce counts seen so
//! far (a replayed `nc` is refused). A new master has another secret: phones
//! answer its fresh challenge (`stale=true`).

use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;

/// Hash algorithm of a challenge/response (RFC 8760 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// `MD5`, what most phones speak.
    Md5,
    /// `SHA-256` (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// Token used in the `algorithm=` parameter.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// The algorithm an `algorithm=` token (or a config value) names, ignoring case.
    pub fn from_token(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// Makes and checks nonces: `<unix seconds hex>.<random>.<keyed SHA-256 prefix>`,
/// the hash over the time, the random part and the address the challenge was sent to, so a nonce is
/// worthless from any other address; and remembers the highest nonce count
/// accepted for each nonce in use, so a captured response cannot be replayed
/// (RFC 7616 §3.4 `nc`, §5.10 replay attacks).
///
/// Memory is bounded: a nonce is remembered only once a correct response used it,
/// until it expires, and at most `cap` of them. A nonce forgotten early (over the
/// cap) is refused as stale: the phone answers the fresh challenge, never a replay.
#[derive(Clone)]
pub struct NonceKeeper {
    /// Random per-service secret mixed into every nonce.
    secret: [u8; 32],
    /// How long a nonce is accepted (seconds).
    ttl_secs: i64,
    /// Highest nonce count accepted, per nonce (with its issue time).
    seen: HashMap<String, Seen>,
    /// Nonces issued at or before this time and not in `seen` were evicted over
    /// the cap: refused as stale.
    floor: i64,
    /// Most nonces remembered.
    cap: usize,
    /// Last time expired nonces were dropped from `seen`.
    pruned_at: i64,
}

/// A nonce in use.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Issue time (Unix seconds, from the nonce).
    issued: i64,
    /// Highest nonce count accepted.
    nc: u64,
}

impl std::fmt::Debug for NonceKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKeeper")
            .field("ttl_secs", &self.ttl_secs)
            .field("in_use", &self.seen.len())
            .finish()
    }
}

/// Result of checking credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The response matches the password.
    Ok,
    /// Right password but a nonce that cannot be used (expired, issued to another
    /// address, by another node or forgotten): challenge again with `stale=true`
    /// (RFC 7616 §3.3).
    Stale,
    /// Right password, but this nonce count was used already: a replay. Challenge
    /// again (`stale=true`: a genuine phone just answers the new nonce).
    Replayed,
    /// Wrong password.
    Wrong,
    /// The header is not a usable Digest response.
    Malformed,
}

/// What the nonce itself says (before any count is looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Ours, for this address, within its lifetime; issued at this Unix time.
    Fresh(i64),
    /// Ours and for this address, but older than the lifetime.
    Expired,
    /// Not made by this keeper for this address.
    Foreign,
}

/// Nonces remembered at most, by default (about 100 bytes each).
pub const DEFAULT_NONCE_CAP: usize = 65_536;

impl NonceKeeper {
    /// A keeper with a random secret.
    pub fn new(ttl_secs: i64) -> NonceKeeper {
        NonceKeeper::with_cap(ttl_secs, DEFAULT_NONCE_CAP)
    }

    /// A keeper that remembers at most `cap` nonces in use.
    pub fn with_cap(ttl_secs: i64, cap: usize) -> NonceKeeper {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        NonceKeeper {
            secret,
            ttl_secs,
            seen: HashMap::new(),
            floor: i64::MIN,
            cap: cap.max(1),
            pruned_at: i64::MIN,
        }
    }

    fn mac(&self, ts: &str, salt: &str, source: IpAddr) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(ts.as_bytes());
        h.update(b"|");
        h.update(salt.as_bytes());
        h.update(b"|");
        match source {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        hex::encode(&h.finalize()[..12])
    }

    /// A fresh nonce for a challenge sent to `source`.
    pub fn nonce(&self, source: IpAddr, now_unix: i64) -> String {
        let ts = format!("{now_unix:x}");
        // Two challenges to one address in the same second differ: each phone's
        // nonce counts are its own.
        let salt = format!("{:016x}", rand::random::<u64>());
        format!("{ts}.{salt}.{}", self.mac(&ts, &salt, source))
    }

    /// What `nonce`, presented by `source`, is.
    pub fn check(&self, nonce: &str, source: IpAddr, now_unix: i64) -> NonceState {
        let mut parts = nonce.splitn(3, '.');
        let (Some(ts), Some(salt), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return NonceState::Foreign;
        };
        if !constant_time_eq(self.mac(ts, salt, source).as_bytes(), mac.as_bytes()) {
            return NonceState::Foreign;
        }
        match i64::from_str_radix(ts, 16) {
            Ok(t) if now_unix >= t && now_unix - t <= self.ttl_secs => NonceState::Fresh(t),
            Ok(_) => NonceState::Expired,
            Err(_) => NonceState::Foreign,
        }
    }

    /// Nonces remembered now (for tests and status).
    pub fn in_use(&self) -> usize {
        self.seen.len()
    }

    /// Challenge header values (WWW-Authenticate or Proxy-Authenticate) for a
    /// request from `source`, one per algorithm in `algorithms`, in that order of
    /// preference (RFC 8760 §2.4).
    pub fn challenges(
        &self,
        realm: &str,
        algorithms: &[Algorithm],
        source: IpAddr,
        now_unix: i64,
        stale: bool,
    ) -> Vec<String> {
        let nonce = self.nonce(source, now_unix);
        algorithms
            .iter()
            .copied()
            .map(|alg| {
                let mut v = format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    alg.token()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Check an Authorization / Proxy-Authorization value from `source` against a
    /// password (RFC 7616 §3.4.1), and on success record its nonce count.
    pub fn verify(
        &mut self,
        creds: &Credentials,
        method: &str,
        realm: &str,
        password: &str,
        source: IpAddr,
        now_unix: i64,
    ) -> Verdict {
        if creds.realm != realm {
            return Verdict::Wrong;
        }
        let Some(expected) = response(creds, method, password) else {
            return Verdict::Malformed;
        };
        if !constant_time_eq(
            expected.as_bytes(),
            creds.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Verdict::Wrong;
        }
        // Without qop (RFC 2069) there is no count: such a nonce is good once.
        let nc = match creds.nc.as_deref() {
            Some(nc) => match u64::from_str_radix(nc, 16) {
                Ok(n) if n > 0 => n,
                _ => return Verdict::Malformed,
            },
            None => 1,
        };
        let issued = match self.check(&creds.nonce, source, now_unix) {
            NonceState::Fresh(t) => t,
            NonceState::Expired | NonceState::Foreign => return Verdict::Stale,
        };
        self.prune(now_unix);
        match self.seen.get_mut(&creds.nonce) {
            Some(s) if nc <= s.nc => Verdict::Replayed,
            Some(s) => {
                s.nc = nc;
                Verdict::Ok
            }
            None if issued <= self.floor => Verdict::Stale,
            None => {
                self.seen.insert(creds.nonce.clone(), Seen { issued, nc });
                self.evict_over_cap();
                Verdict::Ok
            }
        }
    }

    /// Forget expired nonces (at most once per lifetime: they are refused by
    /// their time anyway).
    fn prune(&mut self, now_unix: i64) {
        if now_unix.saturating_sub(self.pruned_at) < self.ttl_secs.max(1) {
            return;
        }
        self.pruned_at = now_unix;
        let oldest = now_unix - self.ttl_secs;
        self.seen.retain(|_, s| s.issued >= oldest);
    }

    /// Over the cap: forget the oldest eighth, and refuse what is older from now on.
    fn evict_over_cap(&mut self) {
        if self.seen.len() <= self.cap {
            return;
        }
        let mut times: Vec<i64> = self.seen.values().map(|s| s.issued).collect();
        let k = (self.seen.len() / 8).max(1) - 1;
        let (_, cutoff, _) = times.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.seen.retain(|_, s| s.issued > cutoff);
        self.floor = self.floor.max(cutoff);
        tracing::info!(
            cap = self.cap,
            cutoff,
            "sip: digest nonce table full; older nonces get a fresh challenge"
        );
    }
}

/// Compare secrets in time that does not depend on where they differ (digest
/// responses here, the API's bearer tokens in `tandem`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parameters of a Digest Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (the extension).
    pub username: String,
    /// Realm the client answered.
    pub realm: String,
    /// Nonce from our challenge.
    pub nonce: String,
    /// digest-uri.
    pub uri: String,
    /// The hex response.
    pub response: String,
    /// MD5 when absent (RFC 7616 §3.4).
    pub algorithm: Algorithm,
    /// `auth` or absent (RFC 2069 compatibility).
    pub qop: Option<String>,
    /// Nonce count, with qop.
    pub nc: Option<String>,
    /// Client nonce, with qop.
    pub cnonce: Option<String>,
}

impl Credentials {
    /// Parse `Digest username="..", realm="..", ...`; `None` when not Digest or incomplete.
    pub fn parse(value: &str) -> Option<Credentials> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| params.get(k).cloned();
        let algorithm = match get("algorithm") {
            Some(a) => Algorithm::from_token(&a)?,
            None => Algorithm::Md5,
        };
        Some(Credentials {
            username: get("username")?,
            realm: get("realm")?,
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?,
            algorithm,
            qop: get("qop"),
            nc: get("nc"),
            cnonce: get("cnonce"),
        })
    }
}

/// Parse `k=v, k="v, with comma"` pairs (keys lower-cased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    for _ in 0..64 {
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in r.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let Some(end) = end else { break };
            value = r[..end].replace('\\', "");
            rest = r[end + 1..]
                .trim_start()
                .trim_start_matches(',')
                .trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = rest[end..].trim_start_matches(',').trim_start();
        }
        out.insert(key, value);
    }
    out
}

/// The response a client knowing `password` computes (RFC 7616 §3.4.1), or `None`
/// for an unsupported qop.
pub fn response(c: &Credentials, method: &str, password: &str) -> Option<String> {
    let alg = c.algorithm;
    let ha1 = alg.hash(&format!("{}:{}:{}", c.username, c.realm, password));
    let ha2 = alg.hash(&format!("{method}:{}", c.uri));
    match c.qop.as_deref() {
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc = c.nc.as_deref()?;
            let cnonce = c.cnonce.as_deref()?;
            Some(alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce)))
        }
        Some(_) => None,
        None => Some(alg.hash(&format!("{ha1}:{}:{ha2}", c.nonce))),
    }
}

/// Build an Authorization value as a client would (tests and the load generator):
/// the first request with the challenge's nonce (`nc=00000001`).
pub fn client_authorization(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Option<String> {
    client_authorization_nc(challenge, username, password, method, uri, 1)
}

/// [`client_authorization`] for the `nc`-th request sent with the challenge's nonce
/// (RFC 7616 §3.4: a client re-using a nonce counts up).
pub fn client_authorization_nc(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> Option<String> {
    let (_, rest) = challenge.trim().split_once(char::is_whitespace)?;
    let p = parse_params(rest);
    let algorithm = match p.get("algorithm") {
        Some(a) => Algorithm::from_token(a)?,
        None => Algorithm::Md5,
    };
    let nc = format!("{nc:08x}");
    let creds = Credentials {
        username: username.into(),
        realm: p.get("realm")?.clone(),
        nonce: p.get("nonce")?.clone(),
        uri: uri.into(),
        response: String::new(),
        algorithm,
        qop: p.get("qop").map(|_| "auth".to_string()),
        nc: Some(nc.clone()),
        cnonce: Some("0a4f113b".into()),
    };
    let resp = response(&creds, method, password)?;
    let mut v = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}",
        creds.realm,
        creds.nonce,
        algorithm.token()
    );
    if creds.qop.is_some() {
        v.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"0a4f113b\""));
    }
    Some(v)
}

#[cfg(test)]
mod tests;
