//! The `tandem` node: CLI, config file, HTTP API and the wiring of all parts.
//!
//! ```text
//!  main.rs (clap) ─▶ cli::dispatch ─▶ cli::<noun> ── typed client (tandem-api) ──▶ http (axum)
//!                │                                                                  │
//!                └─▶ run::run ── the only wiring: replica, role driver, alarm mailer, │
//!                │               telephony, retention, HTTP server ◀────────────────┘
//!                └─▶ demo / bench (real `tandem run` processes on 127.0.0.1)
//! ```
//!
//! Modules depend one way (checked by `layout_tests`): `demo`, `bench` → `cli`
//! (renderers); `cli` → `run::identity`, `settings`, `config`; `run` → `http`,
//! `settings`, `config`; `http` → `settings`, `config`, never `run` (it reads roles
//! through `tandem_failover::state::RoleState` and telephony through
//! `http::state::TelephonyStatus`). See docs/architecture.md.

pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod run;
pub mod settings;

#[cfg(test)]
mod layout_tests;
