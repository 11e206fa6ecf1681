//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//! MD5 and SHA-256, `qop=auth`, stateless nonces that carry their creation time
//! and a keyed hash, so any node can check them and they expire.

use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

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

/// Makes and checks nonces: `<unix seconds hex>.<keyed SHA-256 prefix>`.
#[derive(Clone)]
pub struct NonceKeeper {
    /// Random per-service secret mixed into every nonce.
    secret: [u8; 32],
    /// How long a nonce is accepted (seconds).
    ttl_secs: i64,
}

impl std::fmt::Debug for NonceKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKeeper")
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// Result of checking credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The response matches the password.
    Ok,
    /// Right password but an expired nonce: challenge again with `stale=true` (RFC 7616 §3.3).
    Stale,
    /// Wrong password (or a nonce we never issued).
    Wrong,
    /// The header is not a usable Digest response.
    Malformed,
}

impl NonceKeeper {
    /// A keeper with a random secret.
    pub fn new(ttl_secs: i64) -> NonceKeeper {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        NonceKeeper { secret, ttl_secs }
    }

    fn mac(&self, ts: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(ts.as_bytes());
        hex::encode(&h.finalize()[..12])
    }

    /// A fresh nonce for a challenge.
    pub fn nonce(&self, now_unix: i64) -> String {
        let ts = format!("{now_unix:x}");
        format!("{ts}.{}", self.mac(&ts))
    }

    /// `Some(true)` when we issued it and it is fresh, `Some(false)` when ours but
    /// expired, `None` when not ours.
    pub fn check(&self, nonce: &str, now_unix: i64) -> Option<bool> {
        let (ts, mac) = nonce.split_once('.')?;
        if self.mac(ts) != mac {
            return None;
        }
        let t = i64::from_str_radix(ts, 16).ok()?;
        Some(now_unix >= t && now_unix - t <= self.ttl_secs)
    }

    /// Challenge header values (WWW-Authenticate or Proxy-Authenticate), one per
    /// algorithm in `algorithms`, in that order of preference (RFC 8760 §2.4).
    pub fn challenges(
        &self,
        realm: &str,
        algorithms: &[Algorithm],
        now_unix: i64,
        stale: bool,
    ) -> Vec<String> {
        let nonce = self.nonce(now_unix);
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

    /// Check an Authorization / Proxy-Authorization value against a password (RFC 7616 §3.4.1).
    pub fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        realm: &str,
        password: &str,
        now_unix: i64,
    ) -> Verdict {
        if creds.realm != realm {
            return Verdict::Wrong;
        }
        let expected = response(creds, method, password);
        let Some(expected) = expected else {
            return Verdict::Malformed;
        };
        if !constant_time_eq(
            expected.as_bytes(),
            creds.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Verdict::Wrong;
        }
        match self.check(&creds.nonce, now_unix) {
            Some(true) => Verdict::Ok,
            Some(false) => Verdict::Stale,
            None => Verdict::Wrong,
        }
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

/// Build an Authorization value as a client would (tests and the load generator).
pub fn client_authorization(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Option<String> {
    let (_, rest) = challenge.trim().split_once(char::is_whitespace)?;
    let p = parse_params(rest);
    let algorithm = match p.get("algorithm") {
        Some(a) => Algorithm::from_token(a)?,
        None => Algorithm::Md5,
    };
    let creds = Credentials {
        username: username.into(),
        realm: p.get("realm")?.clone(),
        nonce: p.get("nonce")?.clone(),
        uri: uri.into(),
        response: String::new(),
        algorithm,
        qop: p.get("qop").map(|_| "auth".to_string()),
        nc: Some("00000001".into()),
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
        v.push_str(", qop=auth, nc=00000001, cnonce=\"0a4f113b\"");
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7616_section_3_9_1_md5_and_sha256_examples() {
        // RFC 7616 §3.9.1 worked example (HTTP, but the computation is the same).
        let mut c = Credentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            response: String::new(),
            algorithm: Algorithm::Md5,
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into()),
        };
        assert_eq!(
            response(&c, "GET", "Circle of Life").unwrap(),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        c.algorithm = Algorithm::Sha256;
        assert_eq!(
            response(&c, "GET", "Circle of Life").unwrap(),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn round_trip_both_algorithms_and_wrong_password() {
        // RFC 8760 §2.4: both challenges offered; each one verifies.
        let k = NonceKeeper::new(300);
        for ch in k.challenges("tandem", &[Algorithm::Sha256, Algorithm::Md5], 1000, false) {
            let v =
                client_authorization(&ch, "1001", "secret", "REGISTER", "sip:127.0.0.1").unwrap();
            let c = Credentials::parse(&v).unwrap();
            assert_eq!(
                k.verify(&c, "REGISTER", "tandem", "secret", 1010),
                Verdict::Ok
            );
            assert_eq!(
                k.verify(&c, "REGISTER", "tandem", "wrong", 1010),
                Verdict::Wrong
            );
            assert_eq!(
                k.verify(&c, "INVITE", "tandem", "secret", 1010),
                Verdict::Wrong
            );
            // RFC 7616 §3.3 stale nonce
            assert_eq!(
                k.verify(&c, "REGISTER", "tandem", "secret", 1400),
                Verdict::Stale
            );
        }
    }

    #[test]
    fn foreign_nonce_and_garbage_are_rejected() {
        let k = NonceKeeper::new(300);
        let other = NonceKeeper::new(300);
        let ch = &other.challenges("tandem", &[Algorithm::Md5], 1000, false)[0];
        let v = client_authorization(ch, "1001", "secret", "REGISTER", "sip:x").unwrap();
        let c = Credentials::parse(&v).unwrap();
        assert_eq!(
            k.verify(&c, "REGISTER", "tandem", "secret", 1000),
            Verdict::Wrong
        );
        assert!(Credentials::parse("Basic abc").is_none());
        assert!(Credentials::parse("Digest username=\"x").is_none());
        assert!(Credentials::parse("Digest algorithm=FOO, username=a").is_none());
    }
}
