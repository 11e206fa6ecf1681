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
//! Modules depend one way: `cli`, `demo`, `bench` → `run`, `http`, `config`;
//! `run` → `http`, `config`; `http` → `run::role::RoleState` and `run::telephony`
//! types only through `AppState`.

pub mod alarms;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod http;
pub mod run;
pub mod settings;
