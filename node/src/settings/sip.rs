//! `sip.*` settings: SIP users (extensions) and registrations.
//!
//! | config key | value |
//! |---|---|
//! | `sip.user.<extension>` | `{"password": "...", "display_name": "..."}` (`tandem sip user add`) |
//! | `sip.binding.<extension>/<contact hash>` | a registration (media's `Binding`), with its expiry |

use sha2::{Digest, Sha256};

/// Prefix of SIP user keys.
pub const USER_PREFIX: &str = "sip.user.";
/// Prefix of registration keys.
pub const BINDING_PREFIX: &str = "sip.binding.";

/// Check an extension (it is part of a config key and of SIP URIs).
pub fn check_extension(ext: &str) -> Result<(), String> {
    if ext.is_empty()
        || ext.len() > 32
        || !ext
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "extension {ext:?}: use 1-32 letters, digits, '_', '-' or '.' (e.g. 201)"
        ));
    }
    Ok(())
}

/// Config key of one binding: the AOR plus a short hash of the contact URI.
pub fn binding_key(aor: &str, contact: &str) -> String {
    let h = Sha256::digest(contact.as_bytes());
    format!("{BINDING_PREFIX}{aor}/{}", hex::encode(&h[..8]))
}

/// The stored form of a SIP user (`sip.user.<ext>`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredUser {
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Shortest SIP password accepted.
pub const MIN_PASSWORD: usize = 8;

/// Check a user's password (`ext` names it in the message).
pub fn check_password(ext: &str, password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD || password.chars().any(char::is_control) {
        return Err(format!(
            "password of {ext}: use at least {MIN_PASSWORD} printable characters"
        ));
    }
    Ok(())
}

/// Check one `sip.*` key before it is proposed.
pub fn validate(key: &str, value: &serde_json::Value) -> Result<(), super::SettingError> {
    use super::SettingError;
    if let Some(ext) = key.strip_prefix(USER_PREFIX) {
        check_extension(ext).map_err(|p| {
            SettingError::new(key, p, "use `tandem sip user add <ext> --password …`")
        })?;
        // An object: serde would read an array (`["secret"]`) as a user too.
        let user: Result<StoredUser, serde_json::Error> = if value.is_object() {
            serde_json::from_value(value.clone())
        } else {
            Err(serde::de::Error::custom("expected a JSON object"))
        };
        let user = user.map_err(|e| {
            SettingError::new(
                key,
                format!("not a SIP user: {e}"),
                "set {\"password\": \"…\", \"display_name\": \"…\"} or use `tandem sip user add`",
            )
        })?;
        return check_password(ext, &user.password)
            .map_err(|p| SettingError::new(key, p, "choose a longer password"));
    }
    if key.starts_with(BINDING_PREFIX) {
        return Err(SettingError::new(
            key,
            "registrations are written by the registrar when a phone registers",
            "register the phone instead (see `tandem sip status`)",
        ));
    }
    Err(SettingError::new(
        key,
        "unknown SIP setting",
        format!("SIP users are {USER_PREFIX}<extension> (`tandem sip user add`)"),
    ))
}
