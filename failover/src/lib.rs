//! tandem failover: who holds the service address (VIP), and moving it.
//!
//! ```text
//!   raft metrics ─┐                              ┌─▶ vip::Vip (netlink add/refresh/remove, kernel lifetime)
//!   clock tick  ──┼─▶ controller::Controller ────┼─▶ announce::announce (gratuitous ARP / unsolicited NA)
//!   maintenance ──┘     handle(event, now)       └─▶ hooks::run (on_master / on_standby / on_fenced)
//!                       -> Vec<Action>
//! ```
//!
//! The controller is plain synchronous logic (no I/O, no clock): the node's driver
//! feeds it events and performs the actions it returns.

pub mod announce;
pub mod controller;
pub mod error;
pub mod guard;
pub mod hooks;
pub mod state;
pub mod vip;
