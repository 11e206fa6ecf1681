//! Userspace packet impairer: `tc netem loss L% delay D J` for kernels
//! without `sch_netem`, built on NFQUEUE.
//!
//! ```text
//!  node namespace
//!   tandem ──▶ OUTPUT (iptables-legacy: -o eth0 -j NFQUEUE --queue-num N --queue-bypass)
//!                 │ nfnetlink_queue (kernel holds the packet, at most `capacity`)
//!                 ▼
//!   chaos-tests impair ── recv ──▶ Impairer::on_packet(now)  ── drop (p = L) ──▶ DROP verdict
//!                 ▲                       │ hold until now + U[D-J, D+J]
//!                 └──── ACCEPT verdict ◀── Impairer::due(now)
//! ```
//!
//! [`Impairer`] is the decision and release schedule, with no I/O and no
//! clock of its own (the driver passes `now`), so it is tested with a fake
//! clock. [`run`] is the thin driver around an `nfq` queue.
//!
//! Delay distribution: uniform on `[D-J, D+J]` (clamped at 0), which is what
//! netem does for `delay D J` without a distribution table. Verdicts leave in
//! release order, not arrival order, so packets are reordered as with netem's
//! jitter. Only IP packets pass netfilter: ARP is not delayed (netem on the
//! interface would delay it too).
//!
//! Queue full: the kernel holds every packet until its verdict, so the queue
//! length (`--capacity`, set as the kernel's queue maxlen) bounds the packets
//! held. When it is full the kernel drops the new packet (fail-closed; no
//! fail-open flag): such drops are counted by the kernel
//! (`/proc/net/netfilter/nfnetlink_queue`, `queue_dropped` and
//! `user_dropped`) and reported as `overflow_drops`, and the chaos scenario
//! fails on any, since the loss would then be more than the L asked for.
//! `--queue-bypass` on the rule covers the other case: with no impairer bound
//! to the queue, packets pass untouched (a dead impairer cannot fake a
//! partition; the scenario's checks of the figures catch an inactive one).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What to do to each packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Probability of dropping a packet, in percent (0..=100).
    pub loss_percent: f64,
    /// Mean delay of the packets not dropped.
    pub delay: Duration,
    /// Half-width of the uniform jitter around `delay`.
    pub jitter: Duration,
}

impl Params {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=100.0).contains(&self.loss_percent) {
            bail!(
                "--loss must be a percentage in 0..=100 (got {})",
                self.loss_percent
            );
        }
        if self.delay > Duration::from_secs(10) || self.jitter > Duration::from_secs(10) {
            bail!("--delay-ms and --jitter-ms must be at most 10000");
        }
        Ok(())
    }
}

/// Histogram of delays in 1 ms buckets up to [`Histogram::MAX_MS`] (bounded
/// memory whatever the run length; larger values land in the last bucket).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; Self::MAX_MS + 1],
            count: 0,
            max: Duration::ZERO,
        }
    }
}

impl Histogram {
    pub const MAX_MS: usize = 10_000;

    pub fn record(&mut self, d: Duration) {
        let i = (d.as_millis() as usize).min(Self::MAX_MS);
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(d);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q`-quantile (0..=1) in whole milliseconds; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(Self::MAX_MS as u64)
    }
}

/// One packet held until its release time; ordered by (time, arrival).
struct Held<T> {
    release: Instant,
    seq: u64,
    received: Instant,
    pkt: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

/// Drop / delay decisions and the release schedule, generic over the packet
/// handle `T` (an `nfq::Message` in the driver, a number in tests).
pub struct Impairer<T> {
    params: Params,
    rng: StdRng,
    held: BinaryHeap<Reverse<Held<T>>>,
    seq: u64,
    seen: u64,
    dropped: u64,
    max_held: usize,
    /// Measured delay: release instant − arrival instant.
    delays: Histogram,
    /// How late packets were released compared to their planned instant.
    lateness: Histogram,
}

impl<T> Impairer<T> {
    pub fn new(params: Params, seed: u64) -> Self {
        Impairer {
            params,
            rng: StdRng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            seq: 0,
            seen: 0,
            dropped: 0,
            max_held: 0,
            delays: Histogram::default(),
            lateness: Histogram::default(),
        }
    }

    /// A packet arrived at `now`: `Some(pkt)` back if it is to be dropped
    /// now, `None` if it is held for a later [`due`](Self::due).
    pub fn on_packet(&mut self, now: Instant, pkt: T) -> Option<T> {
        self.seen += 1;
        if self.rng.gen::<f64>() * 100.0 < self.params.loss_percent {
            self.dropped += 1;
            return Some(pkt);
        }
        let (d, j) = (self.params.delay, self.params.jitter);
        let delay = if j.is_zero() {
            d
        } else {
            let lo = d.saturating_sub(j);
            let hi = d + j;
            Duration::from_nanos(
                self.rng
                    .gen_range(lo.as_nanos() as u64..hi.as_nanos() as u64),
            )
        };
        self.seq += 1;
        self.held.push(Reverse(Held {
            release: now + delay,
            seq: self.seq,
            received: now,
            pkt,
        }));
        self.max_held = self.max_held.max(self.held.len());
        None
    }

    /// Packets whose release time is `<= now`, earliest first.
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while self.held.peek().is_some_and(|Reverse(h)| h.release <= now) {
            let Some(Reverse(h)) = self.held.pop() else {
                break;
            };
            self.delays.record(now - h.received);
            self.lateness.record(now - h.release);
            out.push(h.pkt);
        }
        out
    }

    /// Everything still held, released now (on stop), earliest first.
    pub fn release_all(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(Reverse(h)) = self.held.pop() {
            self.delays
                .record(now.saturating_duration_since(h.received));
            out.push(h.pkt);
        }
        out
    }

    /// When the next held packet is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(h)| h.release)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Figures so far (kernel overflow counts are filled in by the driver).
    pub fn stats(&self) -> Stats {
        let q = |h: &Histogram, p| h.quantile_ms(p).unwrap_or(0);
        Stats {
            seen: self.seen,
            dropped: self.dropped,
            released: self.delays.count(),
            drop_percent: if self.seen == 0 {
                0.0
            } else {
                100.0 * self.dropped as f64 / self.seen as f64
            },
            delay_ms_p50: q(&self.delays, 0.5),
            delay_ms_p90: q(&self.delays, 0.9),
            delay_ms_p99: q(&self.delays, 0.99),
            delay_ms_max: self.delays.max.as_millis() as u64,
            late_ms_p99: q(&self.lateness, 0.99),
            max_held: self.max_held,
            overflow_drops: 0,
        }
    }
}

/// Figures of one impairer run, printed as `impair-stats {json}` on exit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets received from the queue.
    pub seen: u64,
    /// Packets dropped by the loss decision.
    pub dropped: u64,
    /// Packets accepted after their delay.
    pub released: u64,
    pub drop_percent: f64,
    /// Measured delay (arrival in the impairer → ACCEPT verdict), ms.
    pub delay_ms_p50: u64,
    pub delay_ms_p90: u64,
    pub delay_ms_p99: u64,
    pub delay_ms_max: u64,
    /// 99th percentile of how late verdicts left compared to plan, ms.
    pub late_ms_p99: u64,
    /// Most packets held at once.
    pub max_held: usize,
    /// Packets the kernel dropped because the queue (or the socket) was full.
    pub overflow_drops: u64,
}

impl Stats {
    /// The line the driver prints; [`Stats::parse_line`] reads it back.
    pub fn line(&self) -> String {
        format!(
            "impair-stats {}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The stats in a line printed by [`Stats::line`], if it is one.
    pub fn parse_line(line: &str) -> Option<Stats> {
        serde_json::from_str(line.strip_prefix("impair-stats ")?).ok()
    }
}

/// Kernel drops of queue `queue` from `/proc/net/netfilter/nfnetlink_queue`
/// (of the current network namespace): `queue_dropped + user_dropped`.
/// Columns: queue, portid, queue_total, copy_mode, copy_range,
/// queue_dropped, user_dropped, id_sequence, 1.
pub fn parse_kernel_drops(proc_text: &str, queue: u16) -> Option<u64> {
    proc_text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 7 && f[0].parse::<u16>().ok()? == queue {
            Some(f[5].parse::<u64>().ok()? + f[6].parse::<u64>().ok()?)
        } else {
            None
        }
    })
}

/// Options of the `impair` driver.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub queue: u16,
    pub params: Params,
    pub seed: u64,
    /// Kernel queue maxlen: most packets held at once.
    pub capacity: u32,
    /// Exit by itself after this long (a bound, in case nobody stops it).
    pub max_run: Duration,
}

/// Longest sleep between two receive attempts: `nfq` offers no pollable
/// descriptor, so the driver polls the non-blocking socket at this period
/// (and sooner when a release is due). It bounds the extra delay a packet can
/// get on top of its drawn delay.
const TICK: Duration = Duration::from_millis(1);
/// Packets taken from the socket before releases are looked at again.
const RECV_BATCH: usize = 256;
/// Bytes of each packet copied to userspace (only the verdict is needed).
const COPY_RANGE: u16 = 64;

/// Bind queue `opts.queue` in the current network namespace and impair every
/// packet it gets until SIGTERM/SIGINT or `max_run`; then accept what is
/// still held and return the figures. Prints `impair: ready …` once bound.
pub fn run(opts: &RunOptions) -> anyhow::Result<Stats> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    opts.params.validate()?;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(stop.clone())?;

    let q = opts.queue;
    let mut nfq = nfq::Queue::open().context(
        "opening a netfilter queue socket (needs root and CONFIG_NETFILTER_NETLINK_QUEUE)",
    )?;
    nfq.bind(q).with_context(|| {
        format!("binding NFQUEUE {q} (is another impairer bound to it in this namespace?)")
    })?;
    nfq.set_copy_range(q, COPY_RANGE)
        .with_context(|| format!("setting the copy range of NFQUEUE {q}"))?;
    nfq.set_queue_max_len(q, opts.capacity)
        .with_context(|| format!("setting the length of NFQUEUE {q}"))?;
    nfq.set_fail_open(q, false)
        .with_context(|| format!("setting NFQUEUE {q} fail-closed"))?;
    nfq.set_nonblocking(true);

    let p = opts.params;
    println!(
        "impair: ready: queue {q}, loss {}%, delay {} ms ± {} ms (uniform), capacity {}, seed {}",
        p.loss_percent,
        p.delay.as_millis(),
        p.jitter.as_millis(),
        opts.capacity,
        opts.seed
    );
    let _ = std::io::stdout().flush();

    let mut imp: Impairer<nfq::Message> = Impairer::new(p, opts.seed);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < opts.max_run {
        let mut got = 0;
        while got < RECV_BATCH {
            match nfq.recv() {
                Ok(msg) => {
                    got += 1;
                    if let Some(mut m) = imp.on_packet(Instant::now(), msg) {
                        m.set_verdict(nfq::Verdict::Drop);
                        nfq.verdict(m).context("sending a DROP verdict")?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e).context(format!("receiving from NFQUEUE {q}")),
            }
        }
        for mut m in imp.due(Instant::now()) {
            m.set_verdict(nfq::Verdict::Accept);
            nfq.verdict(m).context("sending an ACCEPT verdict")?;
        }
        if got < RECV_BATCH {
            let now = Instant::now();
            let wait = imp
                .next_release()
                .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            std::thread::sleep(wait);
        }
    }
    for mut m in imp.release_all(Instant::now()) {
        m.set_verdict(nfq::Verdict::Accept);
        let _ = nfq.verdict(m);
    }
    let mut stats = imp.stats();
    stats.overflow_drops = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
        .ok()
        .and_then(|t| parse_kernel_drops(&t, q))
        .unwrap_or(0);
    let _ = nfq.unbind(q);
    Ok(stats)
}

/// A thread that sets `stop` on SIGTERM or SIGINT.
fn spawn_signal_watch(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    // Register in this thread, so no signal sent after `ready` is missed.
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("impair-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
        .context("spawning the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(loss: f64, delay: u64, jitter: u64) -> Params {
        Params {
            loss_percent: loss,
            delay: Duration::from_millis(delay),
            jitter: Duration::from_millis(jitter),
        }
    }

    /// Drive `n` packets, one every `gap`, releasing on a fake clock ticking
    /// by 1 ms; returns the impairer and the release order.
    fn drive(p: Params, seed: u64, n: u64, gap: Duration) -> (Impairer<u64>, Vec<u64>) {
        let mut imp = Impairer::new(p, seed);
        let t0 = Instant::now();
        let mut order = Vec::new();
        let mut next_pkt = 0;
        let mut now = t0;
        let end = t0 + gap * n as u32 + Duration::from_secs(1);
        while now <= end {
            while next_pkt < n && t0 + gap * next_pkt as u32 <= now {
                let _ = imp.on_packet(now, next_pkt);
                next_pkt += 1;
            }
            order.extend(imp.due(now));
            now += Duration::from_millis(1);
        }
        (imp, order)
    }

    #[test]
    fn drop_rate_is_near_the_loss_asked() {
        let (imp, released) = drive(params(5.0, 100, 50), 7, 20_000, Duration::from_micros(500));
        let s = imp.stats();
        assert_eq!(s.seen, 20_000);
        assert_eq!(s.dropped + s.released, 20_000);
        assert_eq!(released.len() as u64, s.released);
        // Binomial(20000, 0.05): sd 0.15 %.
        assert!((4.4..5.6).contains(&s.drop_percent), "{s:?}");
        assert_eq!(imp.held(), 0);
    }

    #[test]
    fn delays_are_uniform_around_the_mean() {
        let (imp, _) = drive(params(0.0, 100, 50), 1, 10_000, Duration::from_millis(1));
        let s = imp.stats();
        assert_eq!(s.dropped, 0);
        // U[50, 150) on a 1 ms clock: p50 ≈ 100, p90 ≈ 140, nothing beyond 151.
        assert!((95..=105).contains(&s.delay_ms_p50), "{s:?}");
        assert!((135..=145).contains(&s.delay_ms_p90), "{s:?}");
        assert!(s.delay_ms_max <= 151, "{s:?}");
        assert!(s.late_ms_p99 <= 1, "{s:?}");
        let h = &imp.delays;
        assert!(
            h.quantile_ms(0.0).unwrap() >= 50,
            "{:?}",
            h.quantile_ms(0.0)
        );
    }

    #[test]
    fn no_jitter_keeps_order_and_exact_delay() {
        let (imp, order) = drive(params(0.0, 30, 0), 3, 100, Duration::from_millis(2));
        assert_eq!(order, (0..100).collect::<Vec<_>>());
        let s = imp.stats();
        assert_eq!((s.delay_ms_p50, s.delay_ms_max), (30, 30));
    }

    #[test]
    fn jitter_reorders_like_netem() {
        let (_, order) = drive(params(0.0, 100, 50), 5, 200, Duration::from_millis(1));
        assert_eq!(order.len(), 200);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "no reordering");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..200).collect::<Vec<_>>(),
            "a packet lost or duplicated"
        );
    }

    #[test]
    fn same_seed_same_decisions() {
        let a = drive(params(5.0, 100, 50), 42, 2000, Duration::from_millis(1)).1;
        let b = drive(params(5.0, 100, 50), 42, 2000, Duration::from_millis(1)).1;
        let c = drive(params(5.0, 100, 50), 43, 2000, Duration::from_millis(1)).1;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn nothing_released_early_and_release_all_empties() {
        let mut imp = Impairer::new(params(0.0, 100, 0), 1);
        let t0 = Instant::now();
        assert!(imp.on_packet(t0, 1u64).is_none());
        assert!(imp.due(t0 + Duration::from_millis(99)).is_empty());
        assert_eq!(imp.next_release(), Some(t0 + Duration::from_millis(100)));
        assert!(imp.on_packet(t0, 2).is_none());
        assert_eq!(imp.release_all(t0 + Duration::from_millis(10)), vec![1, 2]);
        assert_eq!(imp.held(), 0);
        assert_eq!(imp.next_release(), None);
    }

    #[test]
    fn full_loss_drops_everything() {
        let mut imp = Impairer::new(params(100.0, 100, 50), 1);
        let t0 = Instant::now();
        assert!((0..100u64).all(|i| imp.on_packet(t0, i) == Some(i)));
        assert_eq!(imp.stats().drop_percent, 100.0);
    }

    #[test]
    fn stats_line_round_trips() {
        let s = Stats {
            seen: 10,
            dropped: 1,
            released: 9,
            drop_percent: 10.0,
            delay_ms_p50: 100,
            ..Default::default()
        };
        assert_eq!(Stats::parse_line(&s.line()), Some(s));
        assert_eq!(Stats::parse_line("impair: ready"), None);
    }

    #[test]
    fn kernel_drops_from_proc() {
        let text = "    0  12345     3 2 64     7     2  1000  1\n    5  999  0 2 64 0 0 1 1\n";
        assert_eq!(parse_kernel_drops(text, 0), Some(9));
        assert_eq!(parse_kernel_drops(text, 5), Some(0));
        assert_eq!(parse_kernel_drops(text, 1), None);
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(params(101.0, 1, 1).validate().is_err());
        assert!(params(-1.0, 1, 1).validate().is_err());
        assert!(params(5.0, 100, 50).validate().is_ok());
    }
}
