//! The `tandem` node: CLI, config file, HTTP API and the wiring of all parts.
//!
//! ```text
//!  main.rs (clap) ─▶ cli::*  ── HTTP ──▶ api (axum) ─▶ tandem_replication::replica::Replica
//!                └─▶ daemon::run ─────────┘
//!                └─▶ demo (spawns 3 `tandem run` processes on 127.0.0.1)
//! ```

pub mod alarms;
pub mod api;
pub mod bench;
pub mod bench_recordings;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod https;
pub mod metrics;
pub mod recordings;
pub mod role;
pub mod telephony;
