//! Encoding of every value tandem stores in sled or in a snapshot.
//!
//! Each value is one format-version byte followed by bincode. A reader that meets a
//! version it does not know fails with a clear error instead of misreading; a later
//! version adds its migration here (decode old, convert, re-encode).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current on-disk format version.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value (expected a format-version byte)")]
    Empty,
    #[error("stored format version {found} is newer than this binary understands ({FORMAT_VERSION}); upgrade tandem")]
    UnknownVersion { found: u8 },
    #[error("corrupt value: {0}")]
    Bincode(#[from] bincode::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serialize_into(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_borrowed(bytes)
}

/// Like [`decode`], for types that borrow from `bytes` (e.g. `cdr::CdrRef`).
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(bincode::deserialize(rest)?),
        Some((&found, _)) => Err(CodecError::UnknownVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode(&(1u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String) = decode(&bytes).unwrap();
        assert_eq!(back, (1, "x".to_string()));
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(
            decode::<(u64, String)>(&newer),
            Err(CodecError::UnknownVersion { found: 9 })
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
