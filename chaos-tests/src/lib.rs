//! Fault tests of real `tandem` processes in Linux network namespaces.
//!
//! ```text
//!   test / soak ──▶ Scenario ──▶ Cluster ──▶ Topology (namespaces, bridge, veths)
//!                     │            │  └──▶ tandem init / join / run  (ip netns exec)
//!                     │            └──▶ faults: kill -9, SIGSTOP, link, nftables, netem
//!                     └──▶ NsExecutor (thread in the client namespace)
//!                             ├── writer  ── POST /api/v1/cdrs to the VIP ──▶ no_lost_write, failover_time
//!                             └── prober  ── ARP for the VIP every 50 ms  ──▶ single_answerer
//! ```
//!
//! * [`preflight`]: root, `ip netns`, nftables, netem; scenarios skip when missing.
//! * [`registry`]: run prefixes, owner files, removal of leftovers of dead runs.
//! * [`topology`]: switch namespace with a bridge, node and client namespaces.
//! * [`netns`]: a thread inside a namespace running a current-thread runtime.
//! * [`cluster`]: configs, bootstrap, node processes, health; the cleanup guard.
//! * [`faults`]: injectors and their heals.
//! * [`impair`]: the NFQUEUE packet impairer (netem's loss + delay in userspace).
//! * [`invariants`]: single answerer, no lost write, failover time.
//! * [`phones`]: baresip phones in the client namespace, tones and recordings.
//! * [`scenario`]: the run of one scenario and its report.

pub mod api;
pub mod cluster;
pub mod cmd;
pub mod faults;
pub mod impair;
pub mod invariants;
pub mod netns;
pub mod phones;
pub mod preflight;
pub mod registry;
pub mod scenario;
pub mod topology;
