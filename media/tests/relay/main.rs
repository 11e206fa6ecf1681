//! Relay integration tests on 127.0.0.1: two UDP "phones" talk G.711 through a
//! `MediaSession` (RFC 3550 RTP/RTCP, RFC 4961 symmetric RTP, RFC 3551 PT 0/8).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tandem_media::error::MediaError;
use tandem_media::g711::{linear_to_alaw, linear_to_ulaw, ALAW_TABLE};
use tandem_media::relay::{Codec, Relay, RelayConfig};
use tandem_media::rtp::{write_header, RTP_HEADER_LEN};
use tandem_media::wav::{dominant_frequency, split_channels};

/// A relay on 127.0.0.1 with its own port range and a temporary recordings directory.
async fn relay(low: u16, high: u16) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertised_ip: "127.0.0.1".parse().unwrap(),
        port_low: low,
        port_high: high,
        recordings_dir: dir.path().join("rec"),
    })
    .await
    .unwrap();
    (relay, dir)
}

/// A phone: one UDP socket on 127.0.0.1 with a receive timeout.
fn phone() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; RTP_HEADER_LEN];
    write_header(&mut h, seq == 0, pt, seq, ts, ssrc);
    let mut v = h.to_vec();
    v.extend_from_slice(payload);
    v
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, a)| (buf[..n].to_vec(), a))
}

/// G.711 samples of a sine tone.
fn tone(freq: f64, from: usize, n: usize, alaw: bool) -> Vec<u8> {
    (from..from + n)
        .map(|i| {
            let v =
                ((2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin() * 12000.0) as i16;
            if alaw {
                linear_to_alaw(v)
            } else {
                linear_to_ulaw(v)
            }
        })
        .collect()
}

fn dominant(samples: &[i16]) -> f64 {
    let candidates = [300.0, 440.0, 600.0, 800.0, 1000.0, 1400.0, 2000.0, 3000.0];
    dominant_frequency(samples, &candidates).unwrap()
}

/// Waits until `f` holds (bounded: 2 s).
async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// RTP in both directions arrives byte for byte; the relay sends leg A's media to the
/// address the caller really sends from, not the one in its SDP (RFC 4961 symmetric
/// RTP, the NAT case); a third party sending to a latched port is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_identical_bytes_and_latches_to_source() {
    let (relay, _dir) = relay(32000, 32019).await;
    let s = relay.allocate("call-1").unwrap();
    assert_eq!(s.local_a().ip().to_string(), "127.0.0.1");
    assert_ne!(s.local_a(), s.local_b());
    assert_eq!(s.local_a().port() % 2, 0);

    let a = phone(); // the caller's real socket (behind "NAT")
    let a_signalled = phone(); // what the caller's SDP said: must get nothing once latched
    let b = phone();
    s.set_remote_a(a_signalled.local_addr().unwrap());
    s.set_remote_b(b.local_addr().unwrap());
    s.set_codec(Codec::Pcmu, 0);

    // Caller speaks first: latches leg A to a's real port; B gets the exact bytes.
    let p1 = rtp(0, 1, 160, 0xaaaa, &tone(1000.0, 0, 160, false));
    a.send_to(&p1, s.local_a()).unwrap();
    let (got, from) = recv(&b).expect("B receives A's packet");
    assert_eq!(got, p1);
    assert_eq!(from, s.local_b(), "relayed from leg B's port");

    // Callee answers: goes to the latched source of A, not to the signalled address.
    let p2 = rtp(0, 7, 999, 0xbbbb, &tone(600.0, 0, 160, false));
    b.send_to(&p2, s.local_b()).unwrap();
    let (got, from) = recv(&a).expect("A receives B's packet at its real source");
    assert_eq!(got, p2);
    assert_eq!(from, s.local_a());
    a_signalled
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        recv(&a_signalled).is_none(),
        "signalled address must not get media after latching"
    );

    // A third party sending to leg A's port is dropped.
    let dropped_before = relay.stats().packets_dropped;
    let intruder = phone();
    intruder
        .send_to(&rtp(0, 2, 320, 0xaaaa, &[0xff; 160]), s.local_a())
        .unwrap();
    eventually(|| relay.stats().packets_dropped > dropped_before).await;
    b.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(recv(&b).is_none(), "intruder's packet must not be relayed");

    // Garbage from the latched source is not RTP: dropped too.
    a.send_to(&[1, 2, 3], s.local_a()).unwrap();
    eventually(|| relay.stats().packets_dropped > dropped_before + 1).await;

    // RTCP on the odd port, relayed unchanged to the other leg's RTCP address
    // (signalled RTP port + 1 until latched).
    let b_rtcp = UdpSocket::bind(SocketAddr::new(
        "127.0.0.1".parse().unwrap(),
        b.local_addr().unwrap().port() + 1,
    ));
    if let Ok(b_rtcp) = b_rtcp {
        b_rtcp
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0xaa, 0xaa];
        let a_rtcp_port = SocketAddr::new(s.local_a().ip(), s.local_a().port() + 1);
        a.send_to(&rr, a_rtcp_port).unwrap();
        let (got, from) = recv(&b_rtcp).expect("B's RTCP port receives A's RTCP");
        assert_eq!(got, rr);
        assert_eq!(from.port(), s.local_b().port() + 1);
        eventually(|| relay.stats().rtcp_relayed == 1).await;
    }

    // Re-INVITE: the caller moved to a new address; the leg latches again to it.
    let a2 = phone();
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.set_remote_a(a2.local_addr().unwrap());
    let p3 = rtp(0, 3, 480, 0xaaaa, &[0x55; 160]);
    a2.send_to(&p3, s.local_a()).unwrap();
    assert_eq!(recv(&b).expect("B receives the moved caller").0, p3);
    let p4 = rtp(0, 8, 1159, 0xbbbb, &[0x66; 160]);
    b.send_to(&p4, s.local_b()).unwrap();
    assert_eq!(recv(&a2).expect("moved caller receives B").0, p4);

    // Counters are published after each batch is sent: wait for them.
    eventually(|| relay.stats().packets_relayed == 4).await;
    let st = relay.stats();
    assert_eq!(st.active_sessions, 1);
    assert!(st.bytes_relayed >= 4 * 172);
    assert!(
        s.finish().await.unwrap().is_none(),
        "no recording was started"
    );
    assert_eq!(relay.stats().active_sessions, 0);
}

/// Sequence gaps are counted as lost (RFC 3550 A.3); RTCP multiplexed on the RTP port
/// (RFC 5761) is relayed and does not disturb the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_lost_packets_from_sequence_gaps() {
    let (relay, _dir) = relay(32100, 32119).await;
    let s = relay.allocate("call-loss").unwrap();
    let a = phone();
    let b = phone();
    s.set_remote_b(b.local_addr().unwrap());
    for seq in [10u16, 11, 14, 15, 16, 20] {
        a.send_to(&rtp(0, seq, seq as u32 * 160, 1, &[0xff; 160]), s.local_a())
            .unwrap();
    }
    // RTCP multiplexed on the RTP port (RFC 5761) is relayed but is no RTP sequence.
    let sr = [0x80u8, 200, 0, 2, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    a.send_to(&sr, s.local_a()).unwrap();
    for _ in 0..6 {
        assert!(recv(&b).is_some());
    }
    assert_eq!(recv(&b).expect("muxed RTCP relayed").0, sr);
    eventually(|| relay.stats().packets_lost == 5).await; // 12, 13, 17, 18, 19
    s.finish().await.unwrap();
}

/// A call with recording: both legs send a different tone in the negotiated PCMA
/// (RFC 3551 PT 8); the WAV has caller on
/// channel 1 and callee on channel 2, correct header sizes, SHA-256 of the file, and the
/// duration of the call; the ports are free again after finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_both_channels_and_releases_ports() {
    let (relay, dir) = relay(32200, 32219).await;
    let s = relay.allocate("call-rec").unwrap();
    let (port_a, port_b) = (s.local_a().port(), s.local_b().port());
    let a = phone();
    let b = phone();
    s.set_remote_a(a.local_addr().unwrap());
    s.set_remote_b(b.local_addr().unwrap());
    s.set_codec(Codec::Pcma, 8);
    s.start_recording("rec-0001").unwrap();
    assert!(matches!(
        s.start_recording("rec-0002"),
        Err(MediaError::RecordingAlreadyStarted { .. })
    ));

    // 1.5 s of audio, 20 ms packets; the callee's stream starts 0.5 s later, and one
    // caller packet (index 40) is lost.
    let start = Instant::now();
    for k in 0..75usize {
        let due = start + Duration::from_millis(20 * k as u64);
        tokio::time::sleep_until(due.into()).await;
        if k != 40 {
            let p = rtp(
                8,
                k as u16,
                5000 + (k * 160) as u32,
                0xa,
                &tone(1000.0, k * 160, 160, true),
            );
            a.send_to(&p, s.local_a()).unwrap();
        }
        if k >= 25 {
            let j = k - 25;
            let p = rtp(
                8,
                j as u16,
                70_000 + (j * 160) as u32,
                0xb,
                &tone(440.0, j * 160, 160, true),
            );
            b.send_to(&p, s.local_b()).unwrap();
        }
        // A telephone-event packet (RFC 4733, PT 101) is relayed but not recorded.
        if k == 30 {
            a.send_to(&rtp(101, 1000, 0, 0xa, &[1, 0, 0, 160]), s.local_a())
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let call_ms = start.elapsed().as_millis() as u64;
    let file = s.finish().await.unwrap().expect("recording");

    assert_eq!(file.id, "rec-0001");
    assert_eq!(file.codec, "PCMA");
    assert_eq!(file.path, dir.path().join("rec").join("rec-0001.wav"));
    let bytes = std::fs::read(&file.path).unwrap();
    assert_eq!(bytes.len() as u64, file.size);
    assert_eq!(hex(&Sha256::digest(&bytes)), file.sha256);
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize,
        bytes.len() - 8
    );
    assert_eq!(
        u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize,
        bytes.len() - 44
    );
    assert!(
        file.duration_ms + 100 >= call_ms && file.duration_ms <= call_ms + 100,
        "duration {} ms for a {} ms call",
        file.duration_ms,
        call_ms
    );

    let [ch1, ch2] = split_channels(&bytes[44..]);
    assert_eq!(dominant(&ch1), 1000.0, "caller on channel 1");
    // Callee only from 0.5 s on: silent before (allow scheduling slack of 60 ms).
    assert!(
        ch2[..3500].iter().all(|&x| x == 0),
        "callee silent before it started"
    );
    assert_eq!(dominant(&ch2[4500..]), 440.0, "callee on channel 2");
    // The lost caller packet is a run of 160 silent samples somewhere after 0.7 s.
    let silent_run = ch1[5000..].windows(160).any(|w| w.iter().all(|&x| x == 0));
    assert!(silent_run, "lost packet → 20 ms of silence on channel 1");
    // Decoded samples are exact A-law values.
    assert!(ch1.iter().all(|x| ALAW_TABLE.contains(x) || *x == 0));

    // Ports released: they can be bound again.
    for p in [port_a, port_a + 1, port_b, port_b + 1] {
        UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} still held: {e}"));
    }
    assert_eq!(relay.stats().recordings_started, 1);
}

/// Allocation fails clearly once the range is exhausted and works again after finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_exhaustion_and_reuse() {
    // 32300..=32307: four pairs = two calls.
    let (relay, _dir) = relay(32300, 32307).await;
    let s1 = relay.allocate("c1").unwrap();
    let s2 = relay.allocate("c2").unwrap();
    let mut ports: Vec<u16> = [&s1, &s2]
        .iter()
        .flat_map(|s| [s.local_a().port(), s.local_b().port()])
        .collect();
    ports.sort();
    assert_eq!(ports, vec![32300, 32302, 32304, 32306]);
    assert!(matches!(
        relay.allocate("c3"),
        Err(MediaError::PortsExhausted)
    ));
    s1.finish().await.unwrap();
    let s3 = relay
        .allocate("c3")
        .expect("ports of a finished call are reused");
    // Dropping a session without finish also releases its ports.
    drop(s2);
    eventually(|| relay.stats().active_sessions == 1).await;
    let s4 = relay.allocate("c4").unwrap();
    s3.finish().await.unwrap();
    s4.finish().await.unwrap();
    assert_eq!(relay.stats().active_sessions, 0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A session dropped without `finish` (error path in the signalling) still releases its
/// ports and leaves a valid WAV (header sizes fixed) for what was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_closes_its_recording() {
    let (relay, dir) = relay(32400, 32419).await;
    let s = relay.allocate("call-dropped").unwrap();
    let a = phone();
    let b = phone();
    s.set_remote_b(b.local_addr().unwrap());
    s.start_recording("rec-dropped").unwrap();
    for k in 0..10u16 {
        let p = rtp(
            0,
            k,
            k as u32 * 160,
            9,
            &tone(1000.0, k as usize * 160, 160, false),
        );
        a.send_to(&p, s.local_a()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    let path = dir.path().join("rec").join("rec-dropped.wav");
    eventually(|| {
        let Ok(bytes) = std::fs::read(&path) else {
            return false;
        };
        bytes.len() > 44
            && u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize == bytes.len() - 44
    })
    .await;
    eventually(|| relay.stats().active_sessions == 0).await;
    let bytes = std::fs::read(&path).unwrap();
    let [ch1, _] = split_channels(&bytes[44..]);
    assert_eq!(dominant(&ch1), 1000.0);
}
