//! Versioned encodings: every record tandem stores and every message it sends to a
//! peer is one version byte followed by the bincode of the value, and is read by
//! one decode function per type that knows the versions before it.
//!
//! ```text
//!  encode:  [VERSION] ++ bincode(value)
//!  decode:  tag == VERSION          → bincode
//!           tag <  VERSION          → Previous::decode(tag) then migrate(prev) (recursively)
//!           tag >  VERSION          → CodecError::Newer { type, found, newest }
//!           tag older than them all → CodecError::TooOld { type, found, oldest }
//! ```
//!
//! Today's format of every type is version 1: the byte `1` that tandem has written in
//! front of every stored value since its first release (the old global
//! `FORMAT_VERSION`) and of every peer frame (`PROTOCOL_VERSION`). So an existing data
//! directory opens as it is; the tests decode bytes written by the code before this
//! module existed (`golden-v1.txt`).
//!
//! A type's version covers its whole layout, nested types included: when `Cdr`
//! changes, so does the layout of `Request::AddCdrs`, hence of a log `Entry` and of
//! the peer messages that carry entries. Each of those then gets a new version whose
//! `Previous` is a copy of the old layout (see the example in the tests).
//!
//! The model is garage's `src/util/migrate.rs`; here the marker is a single byte,
//! the previous version is found by its tag rather than by trying to parse, and an
//! unknown version is a typed error instead of `None`.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a stored value or a message could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("empty {type_name} (expected a format-version byte)")]
    Empty { type_name: &'static str },
    #[error("{type_name} has format version {found}, newer than this tandem understands (up to {newest}); upgrade this node to the version that wrote it")]
    Newer {
        type_name: &'static str,
        found: u8,
        newest: u8,
    },
    #[error("{type_name} has format version {found}, older than this tandem can migrate (from {oldest}); upgrade through an intermediate tandem version, or restore a newer backup")]
    TooOld {
        type_name: &'static str,
        found: u8,
        oldest: u8,
    },
    #[error("{type_name} (format version {version}) is corrupt: {source}")]
    Corrupt {
        type_name: &'static str,
        version: u8,
        #[source]
        source: Arc<bincode::Error>,
    },
    #[error("{type_name} cannot be encoded: {source}")]
    Encode {
        type_name: &'static str,
        #[source]
        source: Arc<bincode::Error>,
    },
    /// A borrowed view (e.g. `cdr::CdrRef`) reads the current layout only.
    #[error("{type_name} has format version {found}, not the current {current}: decode it as the owned type, which migrates it")]
    NotCurrent {
        type_name: &'static str,
        found: u8,
        current: u8,
    },
}

/// Why a version's decode did not give a value (before the type is named).
#[doc(hidden)]
#[derive(Debug)]
pub enum Miss {
    /// No version in the chain has this tag.
    Unknown,
    /// The version with this tag did not parse.
    Corrupt { version: u8, source: bincode::Error },
}

/// A type with a versioned encoding and a migration from its previous version.
pub trait Versioned: Serialize + DeserializeOwned {
    /// What the value is, for errors ("CDR", "Raft log entry").
    const NAME: &'static str;
    /// The tag written before the body; greater than `Previous::VERSION`.
    const VERSION: u8;
    /// The version before this one ([`NoPrevious`] for the first).
    type Previous: Versioned;
    /// Turn a value of the previous version into this one.
    fn migrate(previous: Self::Previous) -> Self;

    /// `[VERSION] ++ bincode(self)`.
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// [`Versioned::encode`], appended to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.push(Self::VERSION);
        bincode::serialize_into(out, self).map_err(|e| CodecError::Encode {
            type_name: Self::NAME,
            source: Arc::new(e),
        })
    }

    /// Read a value of this version or of any version before it (migrated up).
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let Some((&tag, body)) = bytes.split_first() else {
            return Err(CodecError::Empty {
                type_name: Self::NAME,
            });
        };
        Self::decode_version(tag, body).map_err(|miss| match miss {
            Miss::Unknown if tag > Self::VERSION => CodecError::Newer {
                type_name: Self::NAME,
                found: tag,
                newest: Self::VERSION,
            },
            Miss::Unknown => CodecError::TooOld {
                type_name: Self::NAME,
                found: tag,
                oldest: Self::oldest_version(),
            },
            Miss::Corrupt { version, source } => CodecError::Corrupt {
                type_name: Self::NAME,
                version,
                source: Arc::new(source),
            },
        })
    }

    /// Decode a body tagged `tag` (this version or an older one).
    #[doc(hidden)]
    fn decode_version(tag: u8, body: &[u8]) -> Result<Self, Miss> {
        if tag == Self::VERSION {
            bincode::deserialize(body).map_err(|source| Miss::Corrupt {
                version: tag,
                source,
            })
        } else if tag > Self::VERSION {
            Err(Miss::Unknown)
        } else {
            Self::Previous::decode_version(tag, body).map(Self::migrate)
        }
    }

    /// The oldest version this type can still read.
    fn oldest_version() -> u8 {
        match Self::Previous::oldest_version() {
            0 => Self::VERSION,
            v => v,
        }
    }
}

/// The "previous version" of a first version: nothing decodes as it.
#[derive(Debug, Serialize, Deserialize)]
pub enum NoPrevious {}

impl Versioned for NoPrevious {
    const NAME: &'static str = "no previous version";
    const VERSION: u8 = 0;
    type Previous = NoPrevious;

    fn migrate(previous: NoPrevious) -> NoPrevious {
        match previous {}
    }

    fn decode_version(_tag: u8, _body: &[u8]) -> Result<Self, Miss> {
        Err(Miss::Unknown)
    }

    fn oldest_version() -> u8 {
        0
    }
}

/// A first version (no migration): `initial_version!(Type, "name", 1)`.
macro_rules! initial_version {
    ($t:ty, $name:expr, $version:expr) => {
        impl $crate::versioned::Versioned for $t {
            const NAME: &'static str = $name;
            const VERSION: u8 = $version;
            type Previous = $crate::versioned::NoPrevious;
            fn migrate(previous: $crate::versioned::NoPrevious) -> Self {
                match previous {}
            }
        }
    };
}
pub(crate) use initial_version;

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1 of an example record.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ThingV1 {
        name: String,
        size: u32,
    }
    initial_version!(ThingV1, "thing", 1);

    /// Version 2: the size grows to 64 bits and a list of tags is added.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        name: String,
        size: u64,
        tags: Vec<String>,
    }

    impl Versioned for Thing {
        const NAME: &'static str = "thing";
        const VERSION: u8 = 2;
        type Previous = ThingV1;
        fn migrate(p: ThingV1) -> Thing {
            Thing {
                name: p.name,
                size: u64::from(p.size),
                tags: Vec::new(),
            }
        }
    }

    /// Version 3, to check that migrations chain (1 → 2 → 3).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ThingV3 {
        name: String,
        size: u64,
        tags: Vec<String>,
        flagged: bool,
    }

    impl Versioned for ThingV3 {
        const NAME: &'static str = "thing";
        const VERSION: u8 = 3;
        type Previous = Thing;
        fn migrate(p: Thing) -> ThingV3 {
            ThingV3 {
                name: p.name,
                size: p.size,
                tags: p.tags,
                flagged: false,
            }
        }
    }

    fn v1() -> ThingV1 {
        ThingV1 {
            name: "a".into(),
            size: 7,
        }
    }

    #[test]
    fn round_trip_writes_the_version_first() {
        let t = Thing {
            name: "a".into(),
            size: 1 << 40,
            tags: vec!["x".into()],
        };
        let bytes = t.encode().unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(&bytes[1..], bincode::serialize(&t).unwrap());
        assert_eq!(Thing::decode(&bytes).unwrap(), t);
    }

    #[test]
    fn the_previous_version_is_migrated_up() {
        let old = v1().encode().unwrap();
        assert_eq!(old[0], 1);
        assert_eq!(
            Thing::decode(&old).unwrap(),
            Thing {
                name: "a".into(),
                size: 7,
                tags: vec![]
            }
        );
        // Two steps.
        let three = ThingV3::decode(&old).unwrap();
        assert_eq!((three.size, three.flagged), (7, false));
        assert_eq!(ThingV3::oldest_version(), 1);
    }

    #[test]
    fn a_newer_version_is_a_typed_error_naming_type_and_version() {
        let newer = ThingV3 {
            name: "a".into(),
            size: 1,
            tags: vec![],
            flagged: true,
        }
        .encode()
        .unwrap();
        let e = Thing::decode(&newer).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Newer {
                    type_name: "thing",
                    found: 3,
                    newest: 2
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("thing has format version 3"), "{e}");
        assert!(e.to_string().contains("upgrade"), "{e}");
        // A version 1 reader refuses version 2 the same way.
        assert!(matches!(
            ThingV1::decode(&[2, 0]),
            Err(CodecError::Newer { found: 2, .. })
        ));
    }

    #[test]
    fn a_version_below_the_chain_and_garbage_are_typed_errors() {
        let mut old = v1().encode().unwrap();
        old[0] = 0;
        assert!(matches!(
            Thing::decode(&old),
            Err(CodecError::TooOld {
                type_name: "thing",
                found: 0,
                oldest: 1
            })
        ));
        assert!(matches!(
            Thing::decode(&[]),
            Err(CodecError::Empty { type_name: "thing" })
        ));
        assert!(matches!(
            Thing::decode(&[2, 1, 2]),
            Err(CodecError::Corrupt {
                type_name: "thing",
                version: 2,
                ..
            })
        ));
        // Corrupt bytes of the old version are reported as that version.
        assert!(matches!(
            Thing::decode(&[1, 9]),
            Err(CodecError::Corrupt { version: 1, .. })
        ));
    }
}
