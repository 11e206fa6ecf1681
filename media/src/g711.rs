//! G.711 (ITU-T Recommendation G.711, 11/1988) µ-law and A-law companding.
//!
//! Written from the recommendation's segment tables: a 16-bit linear sample is
//! split into sign, a 3-bit segment (exponent) and a 4-bit step inside the segment
//! (mantissa). µ-law adds a bias of 33 (×4 in the 16-bit domain: 132) before finding
//! the segment so that every segment has 16 equal steps, and transmits all bits
//! inverted; A-law uses a linear first segment pair and inverts the even bits
//! (XOR 0x55). Decoding is a 256-entry table built at compile time, so the relay's
//! recording path costs one load per sample.

/// µ-law bias in the 16-bit domain (33 in the 14-bit domain of G.711, shifted by 2).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude that still fits the top µ-law segment after adding the bias.
const ULAW_CLIP: i32 = 32635;

/// Decodes one µ-law byte to a 16-bit linear sample (range ±32124).
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0f) as i32;
    // Centre of the step: (2·mantissa + 1 + 32) · 2^exponent · 4 − bias.
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes a 16-bit linear sample to µ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign: u8 = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    if x > ULAW_CLIP {
        x = ULAW_CLIP;
    }
    x += ULAW_BIAS;
    // x is in 132..=32767, so x >> 7 is in 1..=255 and its highest bit is the segment.
    let exponent = 31 - ((x >> 7) as u32).leading_zeros();
    let mantissa = ((x >> (exponent + 3)) & 0x0f) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// Decodes one A-law byte to a 16-bit linear sample (range ±32256).
pub const fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0f) as i32;
    // Segment 0 is linear (steps of 16 from 0); segment n ≥ 1 starts at 128 · 2^n.
    let mut magnitude = (mantissa << 4) + 8;
    if exponent > 0 {
        magnitude = (magnitude + 0x100) << (exponent - 1);
    }
    // In A-law a set sign bit means a positive sample.
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encodes a 16-bit linear sample to A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign: u8 = if x >= 0 {
        0x80
    } else {
        x = -x;
        0
    };
    if x > 32767 {
        x = 32767;
    }
    let (exponent, mantissa) = if x < 256 {
        (0u32, (x >> 4) as u8)
    } else {
        // x in 256..=32767: highest bit 8..=14 gives segment 1..=7.
        let e = 31 - (x as u32).leading_zeros() - 7;
        (e, ((x >> (e + 3)) & 0x0f) as u8)
    };
    (sign | ((exponent as u8) << 4) | mantissa) ^ 0x55
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_to_linear(i as u8)
        } else {
            ulaw_to_linear(i as u8)
        };
        i += 1;
    }
    table
}

/// µ-law byte → linear sample, precomputed.
pub static ULAW_TABLE: [i16; 256] = build_table(false);
/// A-law byte → linear sample, precomputed.
pub static ALAW_TABLE: [i16; 256] = build_table(true);

#[cfg(test)]
mod tests {
    use super::*;

    /// G.711 Table 2a/2b (µ-law): the extreme code words and the zero code words.
    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_to_linear(0xff), 0); // positive zero
        assert_eq!(ulaw_to_linear(0x7f), 0); // negative zero
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xfe), 8); // first step above zero: 2 in 14-bit units
        assert_eq!(ulaw_to_linear(0xef), 132); // first step of segment 1
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
    }

    /// G.711 Table 1a/1b (A-law): the extremes and the smallest steps around zero.
    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    /// Every code word decodes to a value that encodes back to the same code word
    /// (µ-law's negative zero 0x7f is the one exception: it encodes as positive zero).
    #[test]
    fn round_trip_all_code_words() {
        for b in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "A-law {b:#04x}");
            let expected = if b == 0x7f { 0xff } else { b };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(b)),
                expected,
                "µ-law {b:#04x}"
            );
            assert_eq!(ULAW_TABLE[b as usize], ulaw_to_linear(b));
            assert_eq!(ALAW_TABLE[b as usize], alaw_to_linear(b));
        }
    }

    /// Companding error stays within half a step of the segment the sample falls in.
    #[test]
    fn quantisation_error_is_bounded() {
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_to_linear(linear_to_ulaw(x)) as i32;
            let a = alaw_to_linear(linear_to_alaw(x)) as i32;
            let mag = (x as i32).abs().min(32635);
            // Step size is 2^(segment+3) for µ-law and 2^(segment+4)/… for A-law; a
            // simple bound: 1/16 of the magnitude plus the smallest step.
            assert!((u - x as i32).abs() <= mag / 16 + 16, "µ-law {x} -> {u}");
            assert!((a - x as i32).abs() <= mag / 16 + 16, "A-law {x} -> {a}");
        }
    }
}
