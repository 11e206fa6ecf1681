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
