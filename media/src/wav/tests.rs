//! Tests of the WAV header and of packet placement (RFC 3550 §5.1 timestamps,
//! RFC 3551 §4.5.14 G.711 at 8 kHz, 20 ms = 160 samples per packet).

use super::*;
use crate::g711::{linear_to_alaw, linear_to_ulaw};
use std::time::Duration;

const PKT: usize = 160;
const MS20: Duration = Duration::from_millis(20);

/// µ-law samples of a sine of `freq` Hz starting at sample `from`.
fn tone_ulaw(freq: f64, from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| {
            let v = (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin() * 16000.0;
            linear_to_ulaw(v as i16)
        })
        .collect()
}

/// Samples of one channel (0 = A, 1 = B) from interleaved little-endian bytes.
fn channel(bytes: &[u8], ch: usize) -> Vec<i16> {
    let [a, b] = split_channels(bytes);
    if ch == 0 {
        a
    } else {
        b
    }
}

const CANDIDATES: [f64; 8] = [300.0, 500.0, 800.0, 1000.0, 1200.0, 1500.0, 2000.0, 3000.0];

/// Sends `count` packets of a 1 kHz tone on `leg`, one every 20 ms of the fake clock,
/// skipping the indexes in `skip`, and returns the whole recording.
fn record(
    leg: Leg,
    first_ts: u32,
    count: usize,
    skip: &[usize],
    order: Option<&[usize]>,
) -> Vec<u8> {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let mut out = Vec::new();
    let idx: Vec<usize> = match order {
        Some(o) => o.to_vec(),
        None => (0..count).collect(),
    };
    for (k, &i) in idx.iter().enumerate() {
        let now = t0 + MS20 * k as u32;
        if !skip.contains(&i) {
            let ts = first_ts.wrapping_add((i * PKT) as u32);
            r.push(
                leg,
                42,
                ts,
                Some(Decode::Ulaw),
                &tone_ulaw(1000.0, i * PKT, PKT),
                now,
            );
        }
        out.extend(r.drain(now));
    }
    out.extend(r.finish(t0 + MS20 * count as u32));
    out
}

/// The canonical 44-byte header: RIFF size = 36 + data, PCM, 2 ch, 8 kHz, 16 bit.
#[test]
fn wav_header_fields() {
    let h = wav_header(32000);
    assert_eq!(&h[0..4], b"RIFF");
    assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 36 + 32000);
    assert_eq!(&h[8..16], b"WAVEfmt ");
    assert_eq!(u32::from_le_bytes(h[16..20].try_into().unwrap()), 16);
    assert_eq!(u16::from_le_bytes(h[20..22].try_into().unwrap()), 1);
    assert_eq!(u16::from_le_bytes(h[22..24].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(h[24..28].try_into().unwrap()), 8000);
    assert_eq!(u32::from_le_bytes(h[28..32].try_into().unwrap()), 32000);
    assert_eq!(u16::from_le_bytes(h[32..34].try_into().unwrap()), 4);
    assert_eq!(u16::from_le_bytes(h[34..36].try_into().unwrap()), 16);
    assert_eq!(&h[36..40], b"data");
    assert_eq!(u32::from_le_bytes(h[40..44].try_into().unwrap()), 32000);
}

/// A lost packet (sequence/timestamp gap, RFC 3550 §5.1) leaves exactly its 160
/// samples silent on its own channel; the rest is in place and the other channel silent.
#[test]
fn loss_becomes_silence_in_place() {
    let out = record(Leg::A, 1000, 50, &[10], None);
    assert_eq!(out.len(), 50 * PKT * FRAME_BYTES);
    let a = channel(&out, 0);
    let b = channel(&out, 1);
    assert!(b.iter().all(|&s| s == 0), "channel B must be silent");
    assert!(a[10 * PKT..11 * PKT].iter().all(|&s| s == 0), "lost packet");
    let expected = tone_ulaw(1000.0, 0, 50 * PKT);
    for i in (0..50 * PKT).filter(|i| !(10 * PKT..11 * PKT).contains(i)) {
        assert_eq!(a[i], crate::g711::ulaw_to_linear(expected[i]), "sample {i}");
    }
}

/// Packets reordered within the jitter window land where their timestamps say.
#[test]
fn reordering_within_window() {
    let in_order = record(Leg::B, 5, 20, &[], None);
    let order = [
        0, 1, 2, 4, 3, 5, 6, 9, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 19, 18,
    ];
    let shuffled = record(Leg::B, 5, 20, &[], Some(&order));
    assert_eq!(in_order, shuffled);
}

/// The 32-bit RTP timestamp wraps (RFC 3550 §5.1): the recording continues without a gap.
#[test]
fn timestamp_wrap_is_continuous() {
    let straight = record(Leg::A, 1_000_000, 30, &[], None);
    let wrapping = record(Leg::A, u32::MAX - 10 * PKT as u32 + 1, 30, &[], None);
    assert_eq!(straight, wrapping);
}

/// A 1 kHz tone in (µ-law and A-law) gives a recording whose dominant frequency is 1 kHz.
#[test]
fn tone_dominant_frequency() {
    let out = record(Leg::A, 0, 100, &[], None);
    let a = channel(&out, 0);
    assert_eq!(dominant_frequency(&a, &CANDIDATES), Some(1000.0));

    // A-law on leg B.
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let mut out = Vec::new();
    for i in 0..50 {
        let pcm: Vec<u8> = (0..PKT)
            .map(|k| {
                let n = (i * PKT + k) as f64;
                linear_to_alaw(
                    ((2.0 * std::f64::consts::PI * 1000.0 * n / 8000.0).sin() * 8000.0) as i16,
                )
            })
            .collect();
        r.push(
            Leg::B,
            1,
            (i * PKT) as u32,
            Some(Decode::Alaw),
            &pcm,
            t0 + MS20 * i as u32,
        );
    }
    out.extend(r.finish(t0 + MS20 * 50));
    let b = channel(&out, 1);
    assert_eq!(dominant_frequency(&b, &CANDIDATES), Some(1000.0));
}

/// Each leg is anchored at its own first packet's arrival: B starting 1 s later is
/// silent for that second on channel 2, and both channels are on one timeline.
#[test]
fn legs_are_aligned_by_arrival() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let mut out = Vec::new();
    for k in 0..100u32 {
        let now = t0 + MS20 * k;
        let p = tone_ulaw(1000.0, 0, PKT);
        r.push(Leg::A, 1, 7 + k * 160, Some(Decode::Ulaw), &p, now);
        if k >= 50 {
            // Callee's timestamps start at an unrelated random value.
            r.push(
                Leg::B,
                2,
                99_999 + (k - 50) * 160,
                Some(Decode::Ulaw),
                &p,
                now,
            );
        }
        out.extend(r.drain(now));
    }
    out.extend(r.finish(t0 + MS20 * 100));
    let b = channel(&out, 1);
    assert_eq!(b.len(), 100 * PKT);
    assert!(b[..50 * PKT].iter().all(|&s| s == 0));
    assert!(b[50 * PKT..].iter().filter(|&&s| s != 0).count() > 50 * PKT * 7 / 10);
}

/// Telephone-event (RFC 4733, dynamic PT) and unknown payload types are not recorded.
#[test]
fn unknown_payload_types_are_ignored() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    r.push(Leg::A, 1, 0, None, &[1, 2, 3, 4], t0);
    assert_eq!(r.stats().ignored, 1);
    let out = r.finish(t0 + MS20);
    assert!(out.iter().all(|&b| b == 0));
}

/// A packet later than the jitter window is dropped from the recording (the frames are
/// already written) and counted; the frames written so far do not change.
#[test]
fn too_late_packets_are_dropped() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let p = tone_ulaw(1000.0, 0, PKT);
    r.push(Leg::A, 1, 0, Some(Decode::Ulaw), &p, t0);
    let first = r.drain(t0 + Duration::from_millis(400));
    assert_eq!(
        first.len(),
        (3200 - JITTER_WINDOW_FRAMES as usize) * FRAME_BYTES
    );
    // Packet for frames 160..320 arrives 400 ms late, after they were written.
    r.push(
        Leg::A,
        1,
        160,
        Some(Decode::Ulaw),
        &p,
        t0 + Duration::from_millis(400),
    );
    assert_eq!(r.stats().too_late, 1);
    // A big timestamp jump re-anchors at the arrival time instead of leaving a gap.
    r.push(
        Leg::A,
        1,
        10_000_000,
        Some(Decode::Ulaw),
        &p,
        t0 + Duration::from_millis(420),
    );
    assert_eq!(r.stats().reanchored, 1);
    let rest = r.finish(t0 + Duration::from_millis(440));
    let a = channel(&rest, 0);
    let start = 3360 - (3200 - JITTER_WINDOW_FRAMES as usize);
    assert!(a[start..start + PKT].iter().any(|&s| s != 0));
}

/// Arbitrary packets (random legs, SSRCs, timestamps, lengths, arrival times, including
/// wrap-around and huge jumps) never panic, and the buffer stays bounded by the jitter
/// window plus the maximum jump.
#[test]
fn random_packets_never_panic_and_stay_bounded() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let mut now = t0;
    let mut written = 0usize;
    for _ in 0..20_000 {
        let v = next();
        now += Duration::from_micros(v % 40_000);
        let leg = if v & 1 == 0 { Leg::A } else { Leg::B };
        let ssrc = (v >> 8) as u32 % 3;
        let ts = match (v >> 16) % 4 {
            0 => (v >> 20) as u32,
            1 => u32::MAX - ((v >> 24) % 500) as u32,
            _ => ((now - t0).as_millis() as u32) * 8,
        };
        let len = ((v >> 32) % 400) as usize;
        let payload = vec![(v >> 40) as u8; len];
        let decode = match (v >> 48) % 3 {
            0 => None,
            1 => Some(Decode::Ulaw),
            _ => Some(Decode::Alaw),
        };
        r.push(leg, ssrc, ts, decode, &payload, now);
        assert!(
            r.buf.len() / 2
                <= (MAX_JUMP_FRAMES as usize + 2 * JITTER_WINDOW_FRAMES as usize + 8000 + 400)
        );
        written += r.drain(now).len();
    }
    written += r.finish(now).len();
    assert_eq!(written % FRAME_BYTES, 0);
    assert_eq!(written as u64 / FRAME_BYTES as u64, r.frames_written());
}
