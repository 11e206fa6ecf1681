//! tandem failover: who holds the service address (VIP), and moving it.
//!
//! ```text
//!   raft metrics ─┐                              ┌─▶ vip::Vip (netlink add/refresh/remove, kernel lifetime)
//!   clock tick  ──┼─▶ controller::Controller ────┼─▶ announce::announce (gratuitous ARP / unsolicited NA)
//!   maintenance ──┘     handle(event, now)       └─▶ hooks::run (on_master / on_standby / on_fenced)
//!                       -> Vec<Action>
//!
//!   replica view ──▶ takeover::Takeover ──▶ Campaign (fast takeover, witness rescue)
//!   (each tick)       handle(view, now)      MemberDown / MemberUp (master's alarms)
//! ```
//!
//! The controller (who holds the VIP) and the takeover logic (when to start an
//! election without waiting for openraft's timer; which members the master reports
//! down) are plain synchronous logic: no I/O, no clock. The node's driver
//! (`node/src/run/role.rs`) feeds them events and plain-data views and performs the
//! actions they return. `tests/sim` runs both on a simulated cluster (fake clock,
//! fake network, a small model of openraft 0.9's elections and leases) to check the
//! failover invariants over thousands of seeded fault schedules. [`state::RoleState`]
//! is what the rest of a node reads of its role (written by the driver only).

pub mod announce;
pub mod controller;
pub mod error;
pub mod guard;
pub mod hooks;
pub mod state;
pub mod takeover;
pub mod vip;
