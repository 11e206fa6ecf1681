//! Load benchmark of the RTP relay: N concurrent recorded G.711 calls on 127.0.0.1.
//!
//! Run: `cargo bench -p tandem-media --bench rtp_relay [-- --steps 100,500,1000 --secs 10 --no-record --dir PATH]`
//!
//! Every call is a real [`MediaSession`]: two port pairs, symmetric-RTP latching,
//! recording to a WAV file (in a temporary directory, deleted after each step). The
//! load generator plays both phones of every call: 20 ms packets (50 packets/s each
//! way, 160-byte µ-law payload, 172-byte RTP), with the calls' send instants spread
//! evenly over the 20 ms period as real phones would be. It shares the machine's cores
//! with the relay, so it is made cheap: one sending thread (wakes every millisecond and
//! sends everything due with one `sendmmsg` per socket) and one receiving thread
//! (epoll + `recvmmsg`, pausing 1 ms between rounds so packets gather), 8 caller-side
//! and 8 callee-side sockets shared by all calls' phones (streams are told apart by
//! SSRC), no allocation per packet.
//!
//! Measured at the receiving phones, per step:
//! * loss: packets sent − received (after a 300 ms drain), over packets sent;
//! * added jitter: RFC 3550 §6.4.1 interarrival jitter computed on the transit time from
//!   the generator's actual send instant (read just before `sendmmsg`) to the kernel's
//!   receive timestamp of the relayed packet at the phone's socket (SO_TIMESTAMPNS), so
//!   neither the generator's send scheduling nor its read delay counts: what remains is
//!   what the relay path adds. The step's figure is the worst stream's mean |D| and the
//!   mean over streams of the final estimate J;
//! * one-way latency through the relay (p50/p99/max), and CPU time of the relay's
//!   worker threads, its recorder thread and the generator (from /proc/self/task).
//!
//! The largest N with loss < 0.1 % and added jitter < 5 ms is printed at the end.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders,
    SockaddrStorage,
};
use tandem_media::g711::linear_to_ulaw;
use tandem_media::relay::{Codec, MediaSession, Relay, RelayConfig};
use tandem_media::rtp::{self, Jitter, SeqStats, RTP_HEADER_LEN};

/// Generator sockets per side.
const SOCKS: usize = 8;
/// Packet period.
const PERIOD: Duration = Duration::from_millis(20);
/// Bytes per RTP packet: header + 160 µ-law samples.
const PKT_LEN: usize = RTP_HEADER_LEN + 160;
/// The sender's wake-up period.
const SEND_TICK: Duration = Duration::from_millis(1);
/// The receiver's pause after each round of reads.
const RECV_PAUSE: Duration = Duration::from_millis(1);
/// Messages per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

/// Send instants kept per stream (ring indexed by sequence number): 5 s of packets.
const RING: usize = 256;

/// One direction of one call, as the sender sees it.
#[derive(Clone)]
struct TxStream {
    /// Socket index (into the generator's sockets) it is sent from.
    from_sock: usize,
    /// Relay address it is sent to.
    to: SockaddrStorage,
    /// Offset of its send instants within the 20 ms period.
    phase: Duration,
    /// Packets sent.
    sent: u64,
}

/// One direction of one call, as the receiving phone sees it.
#[derive(Default)]
struct RxStream {
    /// Packets received.
    received: u64,
    /// Sequence/loss bookkeeping at the receiver (RFC 3550 A.1).
    seq: SeqStats,
    /// RFC 3550 jitter on transit times in µs.
    jitter: Jitter,
    /// Sum of |D| in µs (for the mean).
    sum_abs_d: u64,
    /// Number of D values.
    n_d: u64,
    /// Previous transit in µs.
    last_transit: Option<i64>,
}

struct StepResult {
    calls: usize,
    sent: u64,
    received: u64,
    loss_pct: f64,
    worst_mean_d_ms: f64,
    mean_j_ms: f64,
    lat_p50_ms: f64,
    lat_p99_ms: f64,
    lat_max_ms: f64,
    relay_cpu: f64,
    recorder_cpu: f64,
    gen_cpu: f64,
    relay_lost: u64,
    relay_dropped: u64,
    /// Packets timed by the kernel's receive timestamp.
    stamped: u64,
    rec_ok: usize,
    rec_mean_s: f64,
    setup_ms: f64,
    teardown_ms: f64,
}

fn main() {
    let mut steps = vec![100usize, 250, 500, 1000, 1500, 2000];
    let mut secs = 10u64;
    let mut record = true;
    let mut rec_dir: Option<std::path::PathBuf> = None;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" if i + 1 < args.len() => {
                steps = args[i + 1]
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect();
                i += 1;
            }
            "--no-record" => record = false,
            "--dir" if i + 1 < args.len() => {
                rec_dir = Some(std::path::PathBuf::from(&args[i + 1]));
                i += 1;
            }
            "--secs" if i + 1 < args.len() => {
                secs = args[i + 1].parse().unwrap_or(10);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Recordings go to a temporary directory (inside --dir if given, e.g. another disk).
    let dir = match &rec_dir {
        Some(d) => tempfile::tempdir_in(d).expect("temp dir in --dir"),
        None => tempfile::tempdir().expect("temp dir"),
    };
    let relay = rt
        .block_on(Relay::start(RelayConfig {
            bind_ip: "127.0.0.1".parse().unwrap(),
            advertised_ip: "127.0.0.1".parse().unwrap(),
            port_low: 16000,
            port_high: 27999,
            recordings_dir: dir.path().to_path_buf(),
        }))
        .expect("relay start");
    println!(
        "rtp_relay benchmark: {} relay worker thread(s), {} cores, {secs} s per step, G.711 µ-law 20 ms, {}",
        relay.worker_threads(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if record { "recorded" } else { "not recorded (--no-record)" }
    );
    println!(
        "{:>6} {:>9} {:>8} {:>10} {:>11} {:>10} {:>17} {:>9} {:>8} {:>7} {:>11} {:>13}",
        "calls",
        "pkts/s",
        "loss %",
        "jitter ms",
        "mean J ms",
        "lat p50",
        "p99 / max ms",
        "relay CPU",
        "rec CPU",
        "gen CPU",
        "setup ms",
        "recordings"
    );
    let mut results = Vec::new();
    for &n in &steps {
        let r = rt.block_on(run_step(
            &relay,
            n,
            Duration::from_secs(secs),
            dir.path(),
            record,
        ));
        println!(
            "{:>6} {:>9} {:>8.4} {:>10.3} {:>11.3} {:>10.3} {:>8.3} / {:>6.1} {:>8.1}% {:>7.1}% {:>6.1}% {:>5.0}/{:<5.0} {:>5} x {:>4.1}s",
            r.calls,
            r.calls as u64 * 100,
            r.loss_pct,
            r.worst_mean_d_ms,
            r.mean_j_ms,
            r.lat_p50_ms,
            r.lat_p99_ms,
            r.lat_max_ms,
            r.relay_cpu,
            r.recorder_cpu,
            r.gen_cpu,
            r.setup_ms,
            r.teardown_ms,
            r.rec_ok,
            r.rec_mean_s,
        );
        println!(
            "       sent {} received {} ({} with kernel timestamps); relay counted lost {} dropped {}",
            r.sent, r.received, r.stamped, r.relay_lost, r.relay_dropped
        );
        results.push(r);
    }
    let best = results
        .iter()
        .filter(|r| r.loss_pct < 0.1 && r.worst_mean_d_ms < 5.0)
        .map(|r| r.calls)
        .max();
    println!("columns: jitter = worst stream's mean |D| (RFC 3550 §6.4.1 D on send→receive transit), mean J = mean over streams of the final RFC 3550 estimate; setup = allocate+start recording for all calls / teardown = finish all (ms)");
    match best {
        Some(n) => println!(
            "largest N with < 0.1 % loss and < 5 ms added jitter: {n} concurrent recorded calls"
        ),
        None => println!("no step met < 0.1 % loss and < 5 ms added jitter"),
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn gen_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind generator socket");
    s.set_nonblocking(true).unwrap();
    let _ = setsockopt(&s, sockopt::RcvBuf, &(4 << 20));
    let _ = setsockopt(&s, sockopt::SndBuf, &(4 << 20));
    setsockopt(&s, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    s
}

/// CPU seconds (user + system) of this process's threads, grouped by name prefix.
fn thread_cpu() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let tck = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // fields after ")": state(0) ... utime(11) stime(12)
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        let secs = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / tck;
        let group = if name.starts_with("rtp-relay") {
            "relay"
        } else if name.starts_with("rtp-recorder") {
            "recorder"
        } else {
            "other"
        };
        *out.entry(group.to_string()).or_insert(0.0) += secs;
    }
    out
}

async fn run_step(
    relay: &Relay,
    calls: usize,
    duration: Duration,
    dir: &std::path::Path,
    record: bool,
) -> StepResult {
    let socks: Vec<UdpSocket> = (0..2 * SOCKS).map(|_| gen_socket()).collect();
    let setup_start = Instant::now();
    let mut sessions: Vec<MediaSession> = Vec::with_capacity(calls);
    for i in 0..calls {
        let s = relay
            .allocate(&format!("bench-{calls}-{i}"))
            .expect("allocate");
        s.set_remote_a(socks[i % SOCKS].local_addr().unwrap());
        s.set_remote_b(socks[SOCKS + i % SOCKS].local_addr().unwrap());
        s.set_codec(Codec::Pcmu, 0);
        if record {
            s.start_recording(&format!("bench-{calls}-{i}"))
                .expect("start recording");
        }
        sessions.push(s);
    }
    let setup_ms = setup_start.elapsed().as_secs_f64() * 1000.0;
    // Stream 2i: caller → relay leg A → callee; 2i+1: callee → leg B → caller.
    let mut streams = Vec::with_capacity(2 * calls);
    for (i, s) in sessions.iter().enumerate() {
        let phase = PERIOD * i as u32 / calls as u32;
        for (from_sock, to, ph) in [
            (i % SOCKS, s.local_a(), phase),
            (SOCKS + i % SOCKS, s.local_b(), half_period_later(phase)),
        ] {
            streams.push(TxStream {
                from_sock,
                to: SockaddrStorage::from(to),
                phase: ph,
                sent: 0,
            });
        }
    }
    let stats_before = relay.stats();
    let cpu_before = thread_cpu();
    let wall = Instant::now();
    let run = generate(socks, streams, duration);
    let (streams, rx, latencies, gen_cpu_s) = (run.tx, run.rx, run.latencies, run.cpu_s);
    let stamped = run.stamped;
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_after = thread_cpu();
    let stats_after = relay.stats();
    let cpu = |k: &str| {
        100.0
            * (cpu_after.get(k).copied().unwrap_or(0.0) - cpu_before.get(k).copied().unwrap_or(0.0))
            / wall_s
    };
    let teardown_start = Instant::now();
    let mut handles = Vec::with_capacity(calls);
    for s in sessions {
        handles.push(tokio::spawn(s.finish()));
    }
    let mut rec_ok = 0;
    let mut rec_ms = 0u64;
    for h in handles {
        if let Ok(Ok(Some(f))) = h.await {
            rec_ok += 1;
            rec_ms += f.duration_ms;
            let _ = std::fs::remove_file(&f.path);
        }
    }
    let teardown_ms = teardown_start.elapsed().as_secs_f64() * 1000.0;
    // Leftovers (should be none).
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let sent: u64 = streams.iter().map(|s| s.sent).sum();
    let received: u64 = streams
        .iter()
        .zip(&rx)
        .map(|(t, r)| r.received.min(t.sent))
        .sum();
    let worst_mean_d = rx
        .iter()
        .filter(|s| s.n_d > 0)
        .map(|s| s.sum_abs_d as f64 / s.n_d as f64)
        .fold(0.0, f64::max);
    let mean_j = rx.iter().map(|s| s.jitter.value() as f64).sum::<f64>() / rx.len().max(1) as f64;
    let pct = |p: f64| -> f64 {
        let total: u64 = latencies.iter().sum();
        let target = (total as f64 * p).ceil() as u64;
        let mut acc = 0;
        for (i, c) in latencies.iter().enumerate() {
            acc += c;
            if acc >= target {
                return i as f64 * 0.01;
            }
        }
        latencies.len() as f64 * 0.01
    };
    let lat_max = latencies
        .iter()
        .rposition(|&c| c > 0)
        .map(|i| i as f64 * 0.01)
        .unwrap_or(0.0);
    StepResult {
        calls,
        sent,
        received,
        loss_pct: if sent == 0 {
            100.0
        } else {
            100.0 * (sent - received) as f64 / sent as f64
        },
        worst_mean_d_ms: worst_mean_d / 1000.0,
        mean_j_ms: mean_j / 1000.0,
        lat_p50_ms: pct(0.5),
        lat_p99_ms: pct(0.99),
        lat_max_ms: lat_max,
        relay_cpu: cpu("relay"),
        recorder_cpu: cpu("recorder"),
        gen_cpu: 100.0 * gen_cpu_s / wall_s,
        relay_lost: stats_after.packets_lost - stats_before.packets_lost,
        relay_dropped: stats_after.packets_dropped - stats_before.packets_dropped,
        stamped,
        rec_ok,
        rec_mean_s: if rec_ok == 0 {
            0.0
        } else {
            rec_ms as f64 / rec_ok as f64 / 1000.0
        },
        setup_ms,
        teardown_ms,
    }
}

/// What a generator run measured.
struct GenRun {
    /// Streams with their sent counts.
    tx: Vec<TxStream>,
    /// Receive statistics per stream (same index).
    rx: Vec<RxStream>,
    /// One-way latency histogram, 10 µs buckets.
    latencies: Vec<u64>,
    /// Packets whose arrival time is the kernel's timestamp (else the read time).
    stamped: u64,
    /// CPU seconds of the sending and receiving threads.
    cpu_s: f64,
}

/// Runs the sending and the receiving thread: every stream's packets on schedule for
/// `duration`, then 300 ms to drain.
fn generate(socks: Vec<UdpSocket>, tx: Vec<TxStream>, duration: Duration) -> GenRun {
    let n = tx.len();
    let send_ns: Arc<Vec<AtomicU64>> = Arc::new((0..n * RING).map(|_| AtomicU64::new(0)).collect());
    let socks = Arc::new(socks);
    let start = Instant::now() + Duration::from_millis(5);
    let stop_at_ns = Arc::new(AtomicU64::new(u64::MAX));
    let receiver = {
        let (socks, send_ns, stop) = (socks.clone(), send_ns.clone(), stop_at_ns.clone());
        std::thread::Builder::new()
            .name("rtp-loadgen-rx".into())
            .spawn(move || receive(&socks, &send_ns, n, start, &stop))
            .expect("spawn receiver")
    };
    let sender = {
        let (socks, send_ns) = (socks.clone(), send_ns.clone());
        std::thread::Builder::new()
            .name("rtp-loadgen-tx".into())
            .spawn(move || send(&socks, tx, &send_ns, start, duration))
            .expect("spawn sender")
    };
    let (tx, tx_cpu) = sender.join().expect("sender");
    stop_at_ns.store(start_ns(start) + 300_000_000, Ordering::Relaxed);
    let (rx, latencies, stamped, rx_cpu) = receiver.join().expect("receiver");
    GenRun {
        tx,
        rx,
        latencies,
        stamped,
        cpu_s: tx_cpu + rx_cpu,
    }
}

/// The sending phone side of every call: sleeps until the next send instant, then one
/// `sendmmsg` per socket for all packets due.
fn send(
    socks: &[UdpSocket],
    mut streams: Vec<TxStream>,
    send_ns: &[AtomicU64],
    start: Instant,
    duration: Duration,
) -> (Vec<TxStream>, f64) {
    let cpu_start = thread_cpu_secs();
    let n = streams.len();
    // Schedule: streams ordered by phase; entry k of the schedule is stream
    // order[k % n] in period k / n.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| streams[i].phase);
    let due = |streams: &[TxStream], k: u64| {
        start + PERIOD * (k / n as u64) as u32 + streams[order[(k % n as u64) as usize]].phase
    };
    let payload: [u8; 160] = std::array::from_fn(|i| {
        let v = (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin() * 10000.0;
        linear_to_ulaw(v as i16)
    });
    let total = (duration.as_millis() / PERIOD.as_millis()) as u64 * n as u64;
    let mut cursor = 0u64;
    let mut queues: Vec<Vec<(usize, [u8; PKT_LEN])>> = vec![Vec::new(); socks.len()];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut last_round = start;
    while cursor < total {
        // Wake at most once per millisecond (a few thousand wake-ups per second instead
        // of one per packet); each packet's actual send instant is what latency and
        // jitter are measured from.
        let next = due(&streams, cursor).max(last_round + SEND_TICK);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        last_round = Instant::now();
        let now = Instant::now();
        while cursor < total && due(&streams, cursor) <= now {
            let idx = order[(cursor % n as u64) as usize];
            let s = &mut streams[idx];
            let mut pkt = [0u8; PKT_LEN];
            let mut h = [0u8; RTP_HEADER_LEN];
            let seq = s.sent as u16;
            rtp::write_header(
                &mut h,
                s.sent == 0,
                0,
                seq,
                (s.sent * 160) as u32,
                idx as u32 + 1,
            );
            pkt[..RTP_HEADER_LEN].copy_from_slice(&h);
            pkt[RTP_HEADER_LEN..].copy_from_slice(&payload);
            queues[s.from_sock].push((idx, pkt));
            s.sent += 1;
            cursor += 1;
        }
        for (si, q) in queues.iter_mut().enumerate() {
            for chunk in q.chunks(BATCH) {
                let t_ns = wall_ns();
                for (idx, pkt) in chunk {
                    let seq = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
                    send_ns[idx * RING + seq % RING].store(t_ns, Ordering::Relaxed);
                }
                let iovs: Vec<[std::io::IoSlice<'_>; 1]> = chunk
                    .iter()
                    .map(|(_, p)| [std::io::IoSlice::new(&p[..])])
                    .collect();
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|(idx, _)| Some(streams[*idx].to))
                    .collect();
                // A packet the kernel refuses counts as sent, and so as lost.
                let _ = sendmmsg(
                    socks[si].as_raw_fd(),
                    &mut hdrs,
                    &iovs,
                    &addrs,
                    [],
                    MsgFlags::empty(),
                );
            }
            q.clear();
        }
    }
    (streams, thread_cpu_secs() - cpu_start)
}

/// The receiving phone side of every call: epoll over the generator's sockets and
/// `recvmmsg`; per stream RFC 3550 sequence and jitter statistics.
fn receive(
    socks: &[UdpSocket],
    send_ns: &[AtomicU64],
    n: usize,
    start: Instant,
    stop_at_ns: &AtomicU64,
) -> (Vec<RxStream>, Vec<u64>, u64, f64) {
    let cpu_start = thread_cpu_secs();
    let mut rx: Vec<RxStream> = (0..n).map(|_| RxStream::default()).collect();
    let mut latencies = vec![0u64; 20_000]; // 10 µs buckets up to 200 ms
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    for (i, s) in socks.iter().enumerate() {
        epoll
            .add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .expect("epoll add");
    }
    let mut events = vec![EpollEvent::empty(); socks.len()];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(
        BATCH,
        Some(nix::cmsg_space!(nix::sys::time::TimeSpec)),
    );
    let mut bufs = vec![[0u8; 256]; BATCH];
    let mut arrivals = [0u64; BATCH];
    let mut stamped = 0u64;
    while start_ns(start) < stop_at_ns.load(Ordering::Relaxed) {
        let ready = epoll
            .wait(&mut events, EpollTimeout::from(10u16))
            .unwrap_or(0);
        for ev in &events[..ready] {
            let sock = &socks[ev.data() as usize];
            loop {
                let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
                    .collect();
                let Ok(res) = recvmmsg(
                    sock.as_raw_fd(),
                    &mut hdrs,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) else {
                    break;
                };
                // Arrival = the kernel's receive timestamp (SO_TIMESTAMPNS), so when this
                // thread gets to read does not count.
                let now_ns = wall_ns();
                let lens: Vec<usize> = res
                    .enumerate()
                    .map(|(k, m)| {
                        arrivals[k] = m
                            .cmsgs()
                            .ok()
                            .and_then(|mut c| {
                                c.find_map(|c| match c {
                                    ControlMessageOwned::ScmTimestampns(ts) => Some(
                                        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
                                    ),
                                    _ => None,
                                })
                            })
                            .inspect(|_| stamped += 1)
                            .unwrap_or(now_ns);
                        m.bytes
                    })
                    .collect();
                for (k, len) in lens.iter().enumerate() {
                    let t_ns = arrivals[k];
                    let Ok(h) = rtp::parse(&bufs[k][..*len]) else {
                        continue;
                    };
                    let idx = h.ssrc.wrapping_sub(1) as usize;
                    let Some(s) = rx.get_mut(idx) else {
                        continue;
                    };
                    s.received += 1;
                    s.seq.update(h.ssrc, h.sequence);
                    let sent_ns =
                        send_ns[idx * RING + h.sequence as usize % RING].load(Ordering::Relaxed);
                    let transit_us = (t_ns as i64 - sent_ns as i64) / 1000;
                    s.jitter.update(transit_us);
                    if let Some(last) = s.last_transit {
                        s.sum_abs_d += (transit_us - last).unsigned_abs();
                        s.n_d += 1;
                    }
                    s.last_transit = Some(transit_us);
                    let bucket = ((transit_us.max(0) as usize) / 10).min(latencies.len() - 1);
                    latencies[bucket] += 1;
                }
                if lens.len() < BATCH {
                    break;
                }
            }
        }
        if ready > 0 {
            // Let packets gather (their arrival times are the kernel's): ~1,000 wake-ups
            // a second instead of one per packet.
            std::thread::sleep(RECV_PAUSE);
        }
    }
    (rx, latencies, stamped, thread_cpu_secs() - cpu_start)
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// The phase of the other direction: half a period later, within the period.
fn half_period_later(phase: Duration) -> Duration {
    let p = phase + PERIOD / 2;
    if p >= PERIOD {
        p - PERIOD
    } else {
        p
    }
}

/// Real-time clock in ns: the clock of the kernel's SO_TIMESTAMPNS receive stamps.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn start_ns(start: Instant) -> u64 {
    Instant::now().saturating_duration_since(start).as_nanos() as u64
}
