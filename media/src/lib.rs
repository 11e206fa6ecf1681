//! Telephony service: SIP registrar and B2BUA, RTP relay and call recording.
//!
//! ```text
//!   phones ──SIP (UDP/TCP)──▶ service (socket driver)
//!                                │ bytes + now
//!                                ▼
//!                 b2bua::Core ── sip::{message, transaction, dialog}
//!                  │  │   └── registrar + digest (auth, bindings), guard (guessing limits)
//!                  │  └────── sdp (rewrite onto the relay) ──▶ relay::Relay ◀──RTP──▶ phones
//!                  ▼                                            └── WAV recording
//!          backend::Backend (node: users, bindings, CDRs through Raft)
//! ```
//!
//! Pure logic (parsing, transactions, registrar decisions, the B2BUA core) takes
//! `now` as an argument; only [`service`] and [`relay`] own sockets.
//! [`testing::MemoryBackend`] is an in-memory backend for tests and benchmarks.
pub mod b2bua;
pub mod backend;
pub mod digest;
pub mod error;
pub mod firewall;
pub mod g711;
pub mod guard;
pub mod registrar;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod service;
pub mod sip;
pub mod testing;
pub mod wav;
