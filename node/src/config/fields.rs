//! Typed configuration values: a key is parsed into its real type (an address,
//! a port range, an algorithm) as the file is read, so that no reader parses a
//! string again later and a bad value is reported, with its fix, by the parse
//! step itself.
//!
//! A value that does not parse yields a [`FieldError`]; its text carries the
//! problem and the fix separated by [`FIX_MARK`], which [`super::Config::from_toml_str`]
//! turns back into a [`super::ConfigError::Invalid`] naming the dotted key.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tandem_media::digest::Algorithm;

/// Separates the problem from the fix in a [`FieldError`]'s text.
pub(super) const FIX_MARK: &str = " — fix: ";

/// Lowest port allowed in `sip.rtp_ports` (ports below are privileged).
pub const RTP_PORT_MIN: u16 = 1024;

/// What is wrong with one value and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// What is wrong with the value.
    pub problem: String,
    /// What the operator should write instead.
    pub fix: String,
}

impl FieldError {
    fn new(problem: impl Into<String>, fix: impl Into<String>) -> FieldError {
        FieldError {
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Splits a deserializer message made from a [`FieldError`] back into its
    /// parts; `None` for any other message.
    pub(super) fn from_message(message: &str) -> Option<FieldError> {
        let (problem, fix) = message.trim_end().split_once(FIX_MARK)?;
        Some(FieldError::new(problem, fix))
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{FIX_MARK}{}", self.problem, self.fix)
    }
}

/// Parses `text` as an `ip:port` address; `example` is shown in the fix.
pub fn socket_addr(text: &str, example: &str) -> Result<SocketAddr, FieldError> {
    text.parse::<SocketAddr>().map_err(|_| {
        FieldError::new(
            format!("{text:?} is not a valid address"),
            format!(
                "expected host:port like {example} (IPv6 in brackets, like [fd00::2]:7000; \
                 host names are not supported yet)"
            ),
        )
    })
}

fn deserialize_addr<'de, D: Deserializer<'de>>(
    d: D,
    example: &str,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    socket_addr(&text, example).map_err(serde::de::Error::custom)
}

/// `cluster.listen`: the peer port's bind address.
pub(super) fn peer_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    deserialize_addr(d, "10.0.0.1:7000")
}

/// `api.listen`: the admin API's bind address.
pub(super) fn api_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    deserialize_addr(d, "10.0.0.1:8080")
}

/// `sip.listen`: the SIP listener's bind address.
pub(super) fn sip_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    deserialize_addr(d, "0.0.0.0:5060")
}

/// `sip.rtp_ports`: an inclusive UDP port range for RTP, written `"LOW-HIGH"`;
/// LOW is even (RTP on the even port of each pair, RTCP on the odd one above),
/// LOW < HIGH, both within [`RTP_PORT_MIN`]-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RtpPorts {
    /// Lowest port (even, inclusive).
    pub low: u16,
    /// Highest port (inclusive).
    pub high: u16,
}

impl Default for RtpPorts {
    fn default() -> Self {
        RtpPorts {
            low: 10_000,
            high: 20_000,
        }
    }
}

impl fmt::Display for RtpPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl From<RtpPorts> for String {
    fn from(p: RtpPorts) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for RtpPorts {
    type Error = FieldError;

    fn try_from(text: String) -> Result<RtpPorts, FieldError> {
        text.parse()
    }
}

impl std::str::FromStr for RtpPorts {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<RtpPorts, FieldError> {
        let example = "write it as \"LOW-HIGH\", like rtp_ports = \"10000-20000\"";
        let Some((low, high)) = text.split_once('-') else {
            return Err(FieldError::new(
                format!("{text:?} is not a port range"),
                example,
            ));
        };
        let (Ok(low), Ok(high)) = (low.trim().parse::<u32>(), high.trim().parse::<u32>()) else {
            return Err(FieldError::new(
                format!("{text:?} is not a port range of two numbers"),
                example,
            ));
        };
        let in_range = |p: u32| (u32::from(RTP_PORT_MIN)..=u32::from(u16::MAX)).contains(&p);
        if !in_range(low) || !in_range(high) {
            return Err(FieldError::new(
                format!("ports in {text:?} must be within {RTP_PORT_MIN}-65535"),
                format!(
                    "choose ports between {RTP_PORT_MIN} and 65535, like rtp_ports = \"10000-20000\""
                ),
            ));
        }
        if low >= high {
            let fix = if low > high {
                format!("swap them: rtp_ports = \"{high}-{low}\"")
            } else {
                format!(
                    "widen the range, like rtp_ports = \"{low}-{}\"",
                    low + 10_000
                )
            };
            return Err(FieldError::new(
                format!("LOW ({low}) must be less than HIGH ({high})"),
                fix,
            ));
        }
        if low % 2 != 0 {
            let even = if low > u32::from(RTP_PORT_MIN) {
                low - 1
            } else {
                low + 1
            };
            return Err(FieldError::new(
                format!(
                    "LOW ({low}) must be even: RTP uses the even port of each pair \
                     and RTCP the odd one above it"
                ),
                format!("start the range on an even port, like rtp_ports = \"{even}-{high}\""),
            ));
        }
        // Both fit in u16: checked against u16::MAX above.
        Ok(RtpPorts {
            low: low as u16,
            high: high as u16,
        })
    }
}

/// `sip.digest_algorithms`: the digest algorithms offered to phones, in order
/// of preference, written with their RFC 8760 names (`"SHA-256"`, `"MD5"`); the
/// list may not be empty.
pub(super) mod digest_algorithms {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[Algorithm], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|a| a.token()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Algorithm>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        parse(&names).map_err(serde::de::Error::custom)
    }

    /// The algorithms named in `names`, in order.
    pub fn parse(names: &[String]) -> Result<Vec<Algorithm>, FieldError> {
        if names.is_empty() {
            return Err(FieldError::new(
                "the list is empty: phones could not authenticate",
                "write digest_algorithms = [\"SHA-256\", \"MD5\"]",
            ));
        }
        names
            .iter()
            .map(|name| {
                Algorithm::from_token(name).ok_or_else(|| {
                    FieldError::new(
                        format!("unknown algorithm {name:?}"),
                        "use \"SHA-256\" and/or \"MD5\"",
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_survives_the_trip_through_a_deserializer_message() {
        let e = FieldError::new("bad", "write good");
        assert_eq!(FieldError::from_message(&e.to_string()), Some(e));
        assert_eq!(FieldError::from_message("invalid type: integer"), None);
    }

    #[test]
    fn rtp_ports_round_trip_through_text() {
        let p: RtpPorts = "16384-32767".parse().unwrap();
        assert_eq!((p.low, p.high), (16384, 32767));
        assert_eq!(String::from(p), "16384-32767");
        assert_eq!(RtpPorts::default().to_string(), "10000-20000");
    }

    #[test]
    fn digest_algorithm_names_are_the_rfc_tokens() {
        let names = ["MD5".to_string(), "SHA-256".to_string()];
        assert_eq!(
            digest_algorithms::parse(&names).unwrap(),
            vec![Algorithm::Md5, Algorithm::Sha256]
        );
        assert!(digest_algorithms::parse(&["sha1".to_string()])
            .unwrap_err()
            .problem
            .contains("\"sha1\""));
    }
}
