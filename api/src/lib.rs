//! tandem's HTTP wire contract, shared by the server (`tandem run`), the CLI, the demo,
//! the benchmarks and the tests.
//!
//! ```text
//!  types.rs  ── one struct per request and response body (serde), the field names
//!               of docs/api.md; the server serializes them, clients deserialize them
//!  client.rs ── Client: one typed method per endpoint (reqwest), errors that name the
//!               request, the node and the server's message (ClientError)
//! ```
//!
//! A renamed or missing field is a decode error naming the endpoint, never a silent
//! `null`: no code outside this crate indexes untyped JSON of the API.

pub mod client;
pub mod types;

pub use client::{connectable, Client, ClientError, RawAnswer};
pub use types::*;
