//! Telephony service: SIP registrar and B2BUA, RTP relay and call recording.
pub mod b2bua;
pub mod backend;
pub mod digest;
pub mod error;
pub mod g711;
pub mod registrar;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod service;
pub mod sip;
pub mod testing;
pub mod wav;
