//! `user.*` settings: API users, their roles, password hashes and tokens; `audit.*`:
//! the audit log. Both are reserved: written only by the users and audit code of the
//! API (`http::users`, `http::audit`), never through `PUT /api/v1/config/{key}`.
//!
//! | config key | value |
//! |---|---|
//! | `user.<name>` | [`StoredUser`]: role, Argon2id password hash (PHC string) |
//! | `user.<name>/token/<id>` | [`StoredToken`]: SHA-256 of the token's secret, expiry |
//! | `audit.<µs since epoch, 16 digits>.<node>.<nonce>` | one [`tandem_api::AuditEntry`] |
//!
//! A bearer token reads `tandem.<name>.<id>.<secret>`: the name and id say which
//! record to read (two local lookups per request, no scan), the 32-byte random secret
//! is checked against the stored SHA-256 in constant time. The node never stores a
//! token or a password in clear.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_api::Role;

/// Prefix of user and token keys.
pub const USER_PREFIX: &str = "user.";
/// Prefix of audit log keys.
pub const AUDIT_PREFIX: &str = "audit.";
/// Name shown in the audit log for `<data_dir>/admin.token`.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";
/// First word of every user token.
const TOKEN_SCHEME: &str = "tandem";
/// Shortest password accepted for a user.
pub const MIN_PASSWORD: usize = 12;
/// Lifetime of a session from `POST /api/v1/login`.
pub const SESSION_SECS: i64 = 12 * 3600;
/// Longest token lifetime accepted: ten years, in seconds.
pub const MAX_EXPIRY_S: u64 = 3650 * 86_400;
/// Version of the stored user and token records.
const RECORD_VERSION: u32 = 1;

/// Why `key` may not be written through the config API, if it is reserved.
pub fn reserved(key: &str) -> Option<&'static str> {
    if key.starts_with(USER_PREFIX) {
        Some("users and tokens are managed with `tandem user …` (/api/v1/users)")
    } else if key.starts_with(AUDIT_PREFIX) {
        Some("the audit log is written by the node; read it with `tandem audit` (/api/v1/audit)")
    } else {
        None
    }
}

/// The stored form of a user (`user.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredUser {
    /// Record version (1).
    pub v: u32,
    pub role: Role,
    /// Argon2id hash as a PHC string; none for a user without password login.
    #[serde(default)]
    pub password: Option<String>,
    /// Unix seconds.
    pub created: i64,
    pub created_by: String,
}

/// `api`: issued by an admin (`tandem user token`); `session`: from a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Api,
    Session,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Session => "session",
        }
    }
}

/// The stored form of a token (`user.<name>/token/<id>`): never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    /// Record version (1).
    pub v: u32,
    pub kind: TokenKind,
    /// Hex SHA-256 of the token's secret part.
    pub sha256: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds after which the token is refused; none: until revoked.
    #[serde(default)]
    pub expires: Option<i64>,
    pub created_by: String,
}

impl StoredUser {
    pub fn new(role: Role, password: Option<String>, now: i64, by: &str) -> StoredUser {
        StoredUser {
            v: RECORD_VERSION,
            role,
            password,
            created: now,
            created_by: by.to_string(),
        }
    }
}

/// Config key of a user.
pub fn user_key(name: &str) -> String {
    format!("{USER_PREFIX}{name}")
}

/// Prefix of the keys of a user's tokens.
pub fn tokens_prefix(name: &str) -> String {
    format!("{USER_PREFIX}{name}/token/")
}

/// Config key of one token.
pub fn token_key(name: &str, id: &str) -> String {
    format!("{}{id}", tokens_prefix(name))
}

/// The user name of a `user.<name>` key (none for token keys and other keys).
pub fn user_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(USER_PREFIX).filter(|n| !n.contains('/'))
}

/// Check a user name (part of config keys and of tokens).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if !ok {
        return Err(format!(
            "user name {name:?}: use 1-32 of a-z 0-9 _ -, starting with a letter (e.g. alice)"
        ));
    }
    if name == BOOTSTRAP_ADMIN {
        return Err(format!(
            "user name `{BOOTSTRAP_ADMIN}` is reserved for <data_dir>/admin.token; choose another"
        ));
    }
    Ok(())
}

/// Check a user's password (`name` names it in the message).
pub fn check_password(name: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD || password.chars().any(char::is_control) {
        return Err(format!(
            "password of {name}: use at least {MIN_PASSWORD} printable characters"
        ));
    }
    Ok(())
}

/// Argon2id hash (PHC string, random salt) of a password.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` matches the stored PHC hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of no one's password: verified for unknown users so that a wrong user name
/// takes as long to refuse as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no user has this password"))
}

/// Hex SHA-256 of a token's secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token for `name`: (id, the bearer token, the SHA-256 to store).
pub fn new_token(name: &str) -> (String, String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let token = format!("{TOKEN_SCHEME}.{name}.{id}.{secret}");
    let hash = secret_hash(&secret);
    (id, token, hash)
}

/// A presented user token split into (name, id, secret); none if it does not have
/// the shape of one.
pub fn parse_token(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.split('.');
    let (scheme, name, id, secret) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if scheme != TOKEN_SCHEME || parts.next().is_some() || check_name(name).is_err() {
        return None;
    }
    let hex16 = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex16(id, 16) && hex16(secret, 64)).then_some((name, id, secret))
}

/// Check a token id from a URL (`DELETE …/tokens/{id}`).
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "token id {id:?}: 16 hex digits, as `tandem user list` shows them"
        ))
    }
}

/// Unix second at which a token living `secs` expires (none: never); checks the bound.
pub fn expiry(now: i64, secs: Option<u64>) -> Result<Option<i64>, String> {
    match secs {
        None => Ok(None),
        Some(s) if s == 0 || s > MAX_EXPIRY_S => Err(format!(
            "expires_s {s}: use 1..={MAX_EXPIRY_S} seconds (ten years), or none for a token that lasts until revoked"
        )),
        Some(s) => Ok(Some(now + s as i64)),
    }
}

/// Config key of an audit entry: sorted by time, unique per node and request.
pub fn audit_key(at_micros: i64, node: u64) -> String {
    let nonce = rand::rngs::OsRng.next_u32();
    format!("{AUDIT_PREFIX}{at_micros:016}.{node}.{nonce:08x}")
}

/// The time (µs since the epoch) in an audit key.
pub fn audit_micros(key: &str) -> Option<i64> {
    key.strip_prefix(AUDIT_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_parses_back_and_its_stored_hash_does_not_contain_it() {
        let (id, token, hash) = new_token("alice");
        let (name, pid, secret) = parse_token(&token).expect("parses");
        assert_eq!((name, pid), ("alice", id.as_str()));
        assert_eq!(secret_hash(secret), hash);
        assert!(!hash.contains(secret) && !token.contains(&hash));
        assert_ne!(new_token("alice").1, token, "tokens are random");
    }

    #[test]
    fn malformed_tokens_are_not_user_tokens() {
        let (_, token, _) = new_token("bob");
        for bad in [
            "",
            "tandem",
            "tandem.bob",
            &token.replacen("tandem", "tandom", 1),
            &format!("{token}.x"),
            &token[..token.len() - 1],
            "tandem.Bob.0123456789abcdef.0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_passwords_and_expiry_are_checked() {
        assert!(check_name("alice-2").is_ok());
        for bad in ["", "2alice", "Alice", "a.b", "a/b", BOOTSTRAP_ADMIN] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_password("a", "short")
            .unwrap_err()
            .contains("at least 12"));
        assert!(check_password("a", "long enough pw").is_ok());
        assert_eq!(expiry(100, Some(86_400)), Ok(Some(100 + 86_400)));
        assert!(expiry(100, Some(0)).is_err());
        assert_eq!(expiry(100, None), Ok(None));
    }

    #[test]
    fn passwords_are_hashed_with_a_salt_and_verified() {
        let a = hash_password("correct horse battery");
        let b = hash_password("correct horse battery");
        assert_ne!(a, b, "random salt");
        assert!(a.starts_with("$argon2id$") && !a.contains("correct horse"));
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("wrong horse battery", &a));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn reserved_prefixes_and_audit_keys() {
        assert!(reserved("user.alice").is_some() && reserved("audit.1").is_some());
        assert!(reserved("users.x").is_none() && reserved("alarm.x").is_none());
        let k = audit_key(1_700_000_000_000_000, 2);
        assert_eq!(audit_micros(&k), Some(1_700_000_000_000_000));
        assert!(audit_key(9, 1) < audit_key(10, 1), "sorted by time");
        assert_eq!(user_of_key("user.alice"), Some("alice"));
        assert_eq!(user_of_key(&token_key("alice", "00")), None);
    }
}
