//! Telephony service: SIP registrar and B2BUA, RTP relay and call recording.
pub mod error;
pub mod g711;
pub mod relay;
pub mod rtp;
pub mod wav;
