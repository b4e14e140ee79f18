//! Inline checks of the NEON tiers against a reference written here from ggml's block definitions
//! (independent of `scalar.rs`; `kernels/tests/tiers.rs` additionally compares every tier with the
//! scalar tier). Quantizers must match ggml's reference quantizers byte for byte; dot products must
//! match an f64 evaluation of ggml's formulas within f32 rounding.

extern crate std;
use super::{kernels, kernels_dotprod};
use crate::*;
use std::vec::Vec;
use std::{println, vec};

/// The tiers under test on this CPU (printed, so a run shows what it covered).
fn tiers() -> Vec<&'static Kernels> {
    let t: Vec<_> = [kernels(), kernels_dotprod()]
        .into_iter()
        .flatten()
        .collect();
    let names: Vec<_> = t.iter().map(|k| k.tier.name()).collect();
    println!("neon inline tests: tiers run on this CPU: {names:?}");
    assert!(!t.is_empty(), "no NEON tier available on an aarch64 CPU");
    t
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    /// A small positive or negative f16 scale.
    fn scale(&mut self) -> [u8; 2] {
        F16Bits::from_f32(self.f() * 0.05).0
    }
}

fn h(b: &[u8]) -> f64 {
    F16Bits([b[0], b[1]]).to_f32() as f64
}

/// Copies `v` into a fresh buffer at byte offset 1, so the kernels see unaligned data.
fn unaligned(v: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; v.len() + 1];
    b[1..].copy_from_slice(v);
    b
}

// ------------------------------------------------------------ reference quantizers (ggml semantics)

fn ref_q8_0(x: &[f32], with_sum: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: Vec<i8> = b.iter().map(|v| (v * id).round() as i8).collect();
        out.extend_from_slice(&F16Bits::from_f32(d).0);
        if with_sum {
            let s: i32 = q.iter().map(|&v| v as i32).sum();
            out.extend_from_slice(&F16Bits::from_f32(s as f32 * d).0);
        }
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

fn ref_q8_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(256) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.extend(core::iter::repeat_n(0u8, 292));
            continue;
        }
        let iscale = -127.0 / max;
        let q: Vec<i8> = b
            .iter()
            .map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8)
            .collect();
        out.extend_from_slice(&(1.0 / iscale).to_le_bytes());
        out.extend(q.iter().map(|&v| v as u8));
        for g in q.chunks(16) {
            let s: i16 = g.iter().map(|&v| v as i16).sum();
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

#[test]
fn detection_is_consistent() {
    let t = tiers();
    assert_eq!(t[0].tier, Tier::Neon);
    let dp = std::arch::is_aarch64_feature_detected!("dotprod");
    assert_eq!(
        kernels_dotprod().is_some(),
        dp,
        "dotprod tier offered iff the CPU has dotprod"
    );
    if dp {
        assert_eq!(kernels_dotprod().unwrap().tier, Tier::NeonDotprod);
    }
    // Kernels::available() must list exactly what this module offers, after scalar.
    let avail: Vec<_> = Kernels::available().map(|k| k.tier).collect();
    let mut want = vec![Tier::Scalar];
    want.extend(t.iter().map(|k| k.tier));
    assert_eq!(avail, want);
}

/// Test inputs for the quantizers: random blocks at several magnitudes plus the edge cases.
fn quant_inputs() -> Vec<Vec<f32>> {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut v = vec![
        r.vec(256 * 3, 1.0),
        r.vec(256, 1e-3),
        r.vec(512, 300.0),
        vec![0.0; 256],
    ];
    // Exact ties: with amax = 127 the Q8_0 scale is 1 and the Q8_K scale is ±1, so x.5 values
    // are ties (roundf goes away from zero, nearest_int to even).
    let mut t = vec![0.0f32; 256];
    t[0] = 127.0;
    for (i, x) in t.iter_mut().enumerate().skip(1) {
        *x = (i as f32 % 100.0) - 50.5;
    }
    v.push(t.clone());
    // Largest magnitude reached by both signs: the first one decides the Q8_K sign.
    t[0] = -127.0;
    t[200] = 127.0;
    v.push(t.clone());
    t[0] = 127.0;
    t[200] = -127.0;
    v.push(t);
    // A negative maximum only.
    let mut u = r.vec(256, 1.0);
    u[77] = -3.0;
    v.push(u);
    v
}

#[test]
fn quantizers_match_ggml_reference() {
    for k in tiers() {
        for (i, x) in quant_inputs().iter().enumerate() {
            let mut o = vec![0xAAu8; x.len() / 32 * 34];
            (k.quantize_q8_0)(x, &mut o);
            assert_eq!(o, ref_q8_0(x, false), "{} q8_0 input {i}", k.tier.name());
            let mut o = vec![0xAAu8; x.len() / 32 * 36];
            (k.quantize_q8_1)(x, &mut o);
            assert_eq!(o, ref_q8_0(x, true), "{} q8_1 input {i}", k.tier.name());
            let mut o = vec![0xAAu8; x.len() / 256 * 292];
            (k.quantize_q8_k)(x, &mut o);
            assert_eq!(o, ref_q8_k(x), "{} q8_K input {i}", k.tier.name());
        }
    }
}

#[test]
fn quantizer_tie_rounding_differs_as_in_ggml() {
    // Independent of the reference above: 2.5 with scale 1 must become 3 in Q8_0 (roundf) and
    // -2 in Q8_K (iscale = -1, nearest even of -2.5).
    let mut x = vec![0.0f32; 256];
    x[0] = 127.0;
    x[1] = 2.5;
    for k in tiers() {
        let mut o = vec![0u8; 34 * 8];
        (k.quantize_q8_0)(&x, &mut o);
        assert_eq!(o[2 + 1] as i8, 3, "{}", k.tier.name());
        let mut o = vec![0u8; 292];
        (k.quantize_q8_k)(&x, &mut o);
        assert_eq!(f32::from_le_bytes([o[0], o[1], o[2], o[3]]), -1.0);
        assert_eq!(o[4] as i8, -127);
        assert_eq!(o[5] as i8, -2, "{}", k.tier.name());
    }
}

// ------------------------------------------------------------ matvec

/// Random weight rows of type `ty` with sane (small, finite) f16 scales.
fn weights(r: &mut Rng, ty: QuantType, n: usize, rows: usize) -> Vec<u8> {
    let rb = ty.row_bytes(n).unwrap();
    let mut w = r.bytes(rb * rows);
    let bs = ty.type_size();
    for b in w.chunks_mut(bs) {
        match ty {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => {
                b[..2].copy_from_slice(&r.scale())
            }
            QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => {
                b[..2].copy_from_slice(&r.scale());
                b[2..4].copy_from_slice(&r.scale());
            }
            QuantType::Q6K => b[208..210].copy_from_slice(&r.scale()),
            QuantType::F16 => b.copy_from_slice(&F16Bits::from_f32(r.f()).0),
            QuantType::F32 => b.copy_from_slice(&r.f().to_le_bytes()),
            _ => unreachable!(),
        }
    }
    w
}

/// Per-element weight values of one row (ggml dequantization, in f64).
fn dequant(ty: QuantType, row: &[u8]) -> Vec<f64> {
    let mut v = Vec::new();
    for b in row.chunks(ty.type_size()) {
        match ty {
            QuantType::F32 => v.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            QuantType::F16 => v.push(h(b)),
            QuantType::Q8_0 => v.extend(b[2..].iter().map(|&q| h(b) * (q as i8) as f64)),
            QuantType::Q4_0 => {
                v.extend(b[2..].iter().map(|&q| h(b) * ((q & 15) as f64 - 8.0)));
                v.extend(b[2..].iter().map(|&q| h(b) * ((q >> 4) as f64 - 8.0)));
            }
            QuantType::Q5_0 => {
                // qh (4 bytes, little-endian) after d; bit j is the fifth bit of element j.
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..32 {
                    let nib = if j < 16 {
                        b[6 + j] & 15
                    } else {
                        b[6 + j - 16] >> 4
                    };
                    let q = nib as u32 + 16 * ((qh >> j) & 1);
                    v.push(h(b) * (q as f64 - 16.0));
                }
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin, s) = (h(b), h(&b[2..]), &b[4..16]);
                let sm = |j: usize| -> (f64, f64) {
                    if j < 4 {
                        ((s[j] & 63) as f64, (s[j + 4] & 63) as f64)
                    } else {
                        (
                            ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)) as f64,
                            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f64,
                        )
                    }
                };
                let (qh, qs) = if ty == QuantType::Q5K {
                    (&b[16..48], &b[48..])
                } else {
                    (&b[..0], &b[16..])
                };
                for j in 0..4 {
                    for half in 0..2 {
                        let (sc, m) = sm(2 * j + half);
                        for l in 0..32 {
                            let mut q = (qs[32 * j + l] >> (4 * half)) & 15;
                            if !qh.is_empty() && qh[l] & (1 << (2 * j + half)) != 0 {
                                q += 16;
                            }
                            v.push(d * sc * q as f64 - dmin * m);
                        }
                    }
                }
            }
            QuantType::Q6K => {
                let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], h(&b[208..]));
                let mut e = [0f64; 256];
                for half in 0..2 {
                    for l in 0..32 {
                        let (a, c, hh) =
                            (ql[64 * half + l], ql[64 * half + l + 32], qh[32 * half + l]);
                        let q = [
                            (a & 15) | ((hh & 3) << 4),
                            (c & 15) | (((hh >> 2) & 3) << 4),
                            (a >> 4) | (((hh >> 4) & 3) << 4),
                            (c >> 4) | (((hh >> 6) & 3) << 4),
                        ];
                        for (k, qk) in q.iter().enumerate() {
                            let idx = 128 * half + 32 * k + l;
                            e[idx] = d
                                * sc[8 * half + 2 * k + l / 16] as i8 as f64
                                * (*qk as f64 - 32.0);
                        }
                    }
                }
                v.extend_from_slice(&e);
            }
            _ => unreachable!(),
        }
    }
    v
}

/// Reference `row · x` for weights of `ty` against the activation bytes `xq` (in `vec_dot_type`),
/// and the sum of |terms| (the scale of the allowed rounding error).
fn ref_dot(ty: QuantType, row: &[u8], xq: &[u8], n: usize) -> (f64, f64) {
    if ty == QuantType::Q4_1 || ty == QuantType::Q5_1 {
        // Σ_blocks d·dy·Σq·qy + m·s (ggml uses the block's stored s for the min term).
        // Q4_1: d, m, qs[16]; Q5_1: d, m, qh (u32 LE, bit j = fifth bit of element j), qs[16].
        let (ts, qo) = if ty == QuantType::Q4_1 {
            (20, 4)
        } else {
            (24, 8)
        };
        let (mut s, mut a) = (0.0, 0.0);
        for (b, y) in row.chunks(ts).zip(xq.chunks(36)).take(n / 32) {
            let qh = if ty == QuantType::Q5_1 {
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as u64
            } else {
                0
            };
            let mut isum = 0i64;
            for j in 0..16 {
                let lo = (b[qo + j] & 15) as i64 + 16 * ((qh >> j) & 1) as i64;
                let hi = (b[qo + j] >> 4) as i64 + 16 * ((qh >> (j + 16)) & 1) as i64;
                isum += lo * (y[4 + j] as i8) as i64;
                isum += hi * (y[20 + j] as i8) as i64;
            }
            let t1 = h(b) * h(y) * isum as f64;
            let t2 = h(&b[2..]) * h(&y[2..]);
            s += t1 + t2;
            a += t1.abs() + t2.abs();
        }
        return (s, a);
    }
    let w = dequant(ty, row);
    let x: Vec<f64> = match ty.vec_dot_type() {
        QuantType::F32 => xq
            .chunks(4)
            .take(n)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        QuantType::Q8_0 => xq
            .chunks(34)
            .take(n / 32)
            .flat_map(|b| b[2..].iter().map(move |&q| h(b) * (q as i8) as f64))
            .collect(),
        QuantType::Q8K => xq
            .chunks(292)
            .take(n / 256)
            .flat_map(|b| {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
                b[4..260].iter().map(move |&q| d * (q as i8) as f64)
            })
            .collect(),
        _ => unreachable!(),
    };
    assert_eq!(w.len(), n);
    let s = w.iter().zip(&x).map(|(a, b)| a * b).sum();
    let a = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
    (s, a)
}

fn check_matvec(ty: QuantType, ns: &[usize], rows: usize) {
    let mut r = Rng(0x1234_5678_9abc_def1 ^ ty as u64);
    for k in tiers() {
        for &n in ns {
            let w = weights(&mut r, ty, n, rows);
            let x = r.vec(n, 2.0);
            let vt = ty.vec_dot_type();
            let mut xq = vec![0u8; vt.row_bytes(n).unwrap()];
            (k.quantize(vt).unwrap())(&x, &mut xq);
            let (wu, xu) = (unaligned(&w), unaligned(&xq));
            let mut out = vec![f32::NAN; rows];
            (k.matvec(ty).unwrap())(n, &wu[1..], &xu[1..], &mut out);
            let rb = ty.row_bytes(n).unwrap();
            for (i, o) in out.iter().enumerate() {
                let (want, mag) = ref_dot(ty, &w[i * rb..(i + 1) * rb], &xq, n);
                let err = (*o as f64 - want).abs();
                let tol = 2e-6 * mag + 1e-30;
                assert!(
                    err <= tol,
                    "{} {} n={n} row {i}: got {o}, want {want} (err {err:e}, tol {tol:e})",
                    k.tier.name(),
                    ty.name()
                );
            }
        }
    }
}

#[test]
fn matvec_f32() {
    check_matvec(
        QuantType::F32,
        &[1, 3, 4, 15, 16, 17, 63, 64, 67, 130, 576],
        5,
    );
}
#[test]
fn matvec_f16() {
    check_matvec(
        QuantType::F16,
        &[1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 67, 576],
        5,
    );
}
#[test]
fn matvec_q4_0() {
    check_matvec(QuantType::Q4_0, &[32, 64, 96, 576, 1536], 6);
}
#[test]
fn matvec_q4_1() {
    check_matvec(QuantType::Q4_1, &[32, 64, 96, 576, 1536], 6);
}
#[test]
fn matvec_q5_0() {
    check_matvec(QuantType::Q5_0, &[32, 64, 96, 640, 2048], 6);
}
#[test]
fn matvec_q5_1() {
    check_matvec(QuantType::Q5_1, &[32, 64, 96, 576, 1536], 6);
}
/// `wtypes::fifth_bits` stored to bytes (elements 0..32).
#[target_feature(enable = "neon")]
fn fifth_bits_bytes(qh: u32) -> [u8; 32] {
    use core::arch::aarch64::vreinterpretq_s8_u8;
    let (lo, hi) = super::wtypes::fifth_bits(qh.to_le_bytes());
    let mut got = [0u8; 32];
    super::util::st_s8(&mut got[..16], vreinterpretq_s8_u8(lo));
    super::util::st_s8(&mut got[16..], vreinterpretq_s8_u8(hi));
    got
}

#[test]
fn q5_fifth_bits_expand_every_bit() {
    assert!(
        super::has_neon(),
        "Advanced SIMD not detected on an aarch64 CPU"
    );
    let mut r = Rng(0x5eed);
    let mut words = vec![0u32, u32::MAX, 1, 1 << 15, 1 << 16, 1 << 31, 0xaaaa_5555];
    words.extend((0..300).map(|_| r.next() as u32));
    for qh in words {
        // SAFETY: Advanced SIMD was detected above (the function only computes on registers and
        // stores into a local array).
        let got = unsafe { fifth_bits_bytes(qh) };
        for (j, &g) in got.iter().enumerate() {
            let want = if (qh >> j) & 1 == 1 { 0x10 } else { 0 };
            assert_eq!(g, want, "qh {qh:#010x} element {j}");
        }
    }
}
#[test]
fn q5_extremes_do_not_overflow() {
    // Every quant at its extreme (Q5_0: q-16 = -16 or 15; Q5_1: q = 31) against ±128/127 activations.
    for k in tiers() {
        let one = F16Bits::from_f32(1.0).0;
        let mut w0 = vec![0u8; 22];
        w0[..2].copy_from_slice(&one); // qh = 0, qs = 0: every q - 16 = -16
        let mut y = vec![0u8; 34];
        y[..2].copy_from_slice(&one);
        y[2..].fill(0x80); // -128
        let mut out = [0.0f32];
        (k.matvec_q5_0)(32, &w0, &y, &mut out);
        assert_eq!(out[0], 32.0 * 16.0 * 128.0, "{} q5_0", k.tier.name());
        let mut w1 = vec![0xffu8; 24];
        w1[..2].copy_from_slice(&one);
        w1[2..4].copy_from_slice(&F16Bits::from_f32(0.0).0); // m = 0
        let mut y1 = vec![0u8; 36];
        y1[..2].copy_from_slice(&one);
        y1[2..4].copy_from_slice(&F16Bits::from_f32(0.0).0);
        y1[4..].fill(0x80);
        (k.matvec_q5_1)(32, &w1, &y1, &mut out);
        assert_eq!(out[0], -(32.0 * 31.0 * 128.0), "{} q5_1", k.tier.name());
    }
}
#[test]
fn matvec_q8_0() {
    check_matvec(QuantType::Q8_0, &[32, 64, 96, 576, 1536], 6);
}
#[test]
fn matvec_q4_k() {
    check_matvec(QuantType::Q4K, &[256, 512, 1536], 6);
}
#[test]
fn matvec_q5_k() {
    check_matvec(QuantType::Q5K, &[256, 512, 1536], 6);
}
#[test]
fn matvec_q6_k() {
    check_matvec(QuantType::Q6K, &[256, 512, 1536], 6);
}

#[test]
fn q8_0_extremes_do_not_overflow() {
    // All quants -128 against -128 activations: 32·16384 per block, which overflows i16 sums.
    let mut w = vec![0u8; 34 * 2];
    for b in w.chunks_mut(34) {
        b[..2].copy_from_slice(&F16Bits::from_f32(1.0).0);
        b[2..].fill(0x80);
    }
    let xq = w.clone();
    for k in tiers() {
        let mut out = [0.0f32; 2];
        (k.matvec_q8_0)(32, &w, &xq, &mut out);
        assert_eq!(out, [32.0 * 16384.0; 2], "{}", k.tier.name());
    }
}

#[test]
fn dot_and_axpy() {
    let mut r = Rng(77);
    for k in tiers() {
        for n in [0usize, 1, 3, 4, 5, 15, 16, 17, 33, 100] {
            let a = r.vec(n, 1.0);
            let b = r.vec(n + 3, 1.0); // longer: only the common length counts
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let mag: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            let got = (k.dot_f32)(&a, &b);
            assert!(
                (got as f64 - want).abs() <= 1e-6 * mag + 1e-30,
                "{} dot n={n}: {got} vs {want}",
                k.tier.name()
            );
            let mut y = r.vec(n + 2, 1.0);
            let y0 = y.clone();
            (k.axpy_f32)(0.75, &a, &mut y);
            for i in 0..n + 2 {
                let want = if i < n { y0[i] + 0.75 * a[i] } else { y0[i] };
                assert!(
                    (y[i] - want).abs() <= 1e-6 * (y0[i].abs() + 1.0),
                    "{} axpy n={n} i={i}",
                    k.tier.name()
                );
            }
        }
    }
}

#[test]
fn n_zero_gives_zeros() {
    for k in tiers() {
        let mut out = [1.0f32; 3];
        (k.matvec_q4_0)(0, &[], &[], &mut out);
        assert_eq!(out, [0.0; 3]);
    }
}

#[test]
fn short_weights_are_rejected() {
    for k in tiers() {
        let w = vec![0u8; 18 * 3]; // 3 rows of one Q4_0 block, but 4 rows asked
        let xq = vec![0u8; 34];
        let mut out = [0.0f32; 4];
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (k.matvec_q4_0)(32, &w, &xq, &mut out)
        }));
        if cfg!(debug_assertions) {
            let err = res.expect_err("debug builds assert on inconsistent lengths");
            let msg = err
                .downcast_ref::<std::string::String>()
                .cloned()
                .unwrap_or_default();
            assert!(
                msg.contains("Q4_0") && msg.contains("54 bytes"),
                "{}: message {msg:?}",
                k.tier.name()
            );
        } else {
            assert!(
                res.is_ok() && out.iter().all(|o| o.is_nan()),
                "{}: release builds write NaN",
                k.tier.name()
            );
        }
    }
}

// ------------------------------------------------------------ matvec2 (fused, two activations)

/// `matvec2` of every NEON tier against the f64 reference `row·xq + row·xr` (the reference above,
/// independent of `scalar.rs`), for row counts around the 4-row groups of the legacy kernels,
/// unaligned inputs, and a second activation unrelated to the first.
fn check_matvec2(ty: QuantType, ns: &[usize]) {
    let mut r = Rng(0x0f0e_0d0c_0b0a_0908 ^ ty as u64);
    for k in tiers() {
        assert!(
            k.matvec2_fused(ty),
            "{} reports {} as not fused",
            k.tier.name(),
            ty.name()
        );
        for &n in ns {
            for rows in [1usize, 2, 3, 4, 5, 7, 8, 9, 13] {
                let w = weights(&mut r, ty, n, rows);
                let vt = ty.vec_dot_type();
                let quant = |x: &[f32]| {
                    let mut q = vec![0u8; vt.row_bytes(n).unwrap()];
                    (k.quantize(vt).unwrap())(x, &mut q);
                    q
                };
                let xq = quant(&r.vec(n, 2.0));
                let xr = quant(&r.vec(n, 0.01));
                let (wu, qu, ru) = (unaligned(&w), unaligned(&xq), unaligned(&xr));
                let mut out = vec![f32::NAN; rows];
                (k.matvec2(ty).unwrap())(n, &wu[1..], &qu[1..], &ru[1..], &mut out);
                let rb = ty.row_bytes(n).unwrap();
                for (i, o) in out.iter().enumerate() {
                    let row = &w[i * rb..(i + 1) * rb];
                    let (a, ma) = ref_dot(ty, row, &xq, n);
                    let (b, mb) = ref_dot(ty, row, &xr, n);
                    let err = (*o as f64 - (a + b)).abs();
                    let tol = 2e-6 * (ma + mb) + 1e-30;
                    assert!(
                        err <= tol,
                        "{} matvec2 {} n={n} rows={rows} row {i}: got {o}, want {} (err {err:e}, tol {tol:e})",
                        k.tier.name(),
                        ty.name(),
                        a + b
                    );
                }
            }
        }
    }
}

#[test]
fn matvec2_q4_0() {
    check_matvec2(QuantType::Q4_0, &[32, 96, 576]);
}
#[test]
fn matvec2_q4_1() {
    check_matvec2(QuantType::Q4_1, &[32, 96, 576]);
}
#[test]
fn matvec2_q5_0() {
    check_matvec2(QuantType::Q5_0, &[32, 96, 640]);
}
#[test]
fn matvec2_q5_1() {
    check_matvec2(QuantType::Q5_1, &[32, 96, 576]);
}
#[test]
fn matvec2_q8_0() {
    check_matvec2(QuantType::Q8_0, &[32, 96, 576]);
}
#[test]
fn matvec2_q4_k() {
    check_matvec2(QuantType::Q4K, &[256, 768]);
}
#[test]
fn matvec2_q5_k() {
    check_matvec2(QuantType::Q5K, &[256, 768]);
}
#[test]
fn matvec2_q6_k() {
    check_matvec2(QuantType::Q6K, &[256, 768]);
}

#[test]
fn matvec2_extremes_do_not_overflow() {
    // Every weight quant and both activations at their extremes, all scales 1 (exact results):
    // Q8_0 −128·−128 (whose pair sums overflow i16), Q5_0 (q−16 = −16), Q5_1 (q = 31), Q4_K/Q5_K
    // (scale 63, quant 15/31, min 0), Q6_K (scale −128, q−32 = −32).
    let one = F16Bits::from_f32(1.0).0;
    let zero16 = F16Bits::from_f32(0.0).0;
    let act8_0 = |v: u8| {
        let mut y = vec![v; 34 * 5];
        for b in y.chunks_mut(34) {
            b[..2].copy_from_slice(&one);
        }
        y
    };
    let act8_1 = |v: u8| {
        let mut y = vec![v; 36 * 5];
        for b in y.chunks_mut(36) {
            b[..2].copy_from_slice(&one);
            b[2..4].copy_from_slice(&zero16);
        }
        y
    };
    let act8_k = |v: i8| {
        let mut y = Vec::new();
        y.extend_from_slice(&1.0f32.to_le_bytes());
        y.extend(core::iter::repeat_n(v as u8, 256));
        for _ in 0..16 {
            y.extend_from_slice(&(16 * v as i16).to_le_bytes());
        }
        y
    };
    // (type, one weight block, activation blocks xq/xr, value of one row per activation block)
    let mut q8_0 = vec![0x80u8; 34];
    q8_0[..2].copy_from_slice(&one);
    let mut q5_0 = vec![0u8; 22];
    q5_0[..2].copy_from_slice(&one);
    let mut q5_1 = vec![0xffu8; 24];
    q5_1[..2].copy_from_slice(&one);
    q5_1[2..4].copy_from_slice(&zero16);
    let k4 = |qh_len: usize| {
        let mut b = vec![0xffu8; 16 + qh_len + 128];
        b[..2].copy_from_slice(&one);
        b[2..4].copy_from_slice(&zero16);
        // Scales 63 (low six bits set everywhere), mins 0.
        b[4..8].fill(0xff);
        b[8..12].fill(0x00);
        b[12..16].fill(0x0f);
        b
    };
    let mut q6 = vec![0u8; 210];
    q6[192..208].fill(0x80);
    q6[208..210].copy_from_slice(&one);
    /// (type, weight block, activation, second activation, expected dot product)
    type Case = (QuantType, Vec<u8>, Vec<u8>, Vec<u8>, f32);
    let cases: Vec<Case> = vec![
        (
            QuantType::Q8_0,
            q8_0,
            act8_0(0x80),
            act8_0(0x80),
            32.0 * 16384.0,
        ),
        (
            QuantType::Q5_0,
            q5_0,
            act8_0(0x80),
            act8_0(0x7f),
            32.0 * 16.0,
        ),
        (
            QuantType::Q5_1,
            q5_1,
            act8_1(0x80),
            act8_1(0x80),
            -32.0 * 31.0 * 128.0,
        ),
        (
            QuantType::Q4K,
            k4(0),
            act8_k(-128),
            act8_k(-128),
            -256.0 * 63.0 * 15.0 * 128.0,
        ),
        (
            QuantType::Q5K,
            k4(32),
            act8_k(127),
            act8_k(127),
            256.0 * 63.0 * 31.0 * 127.0,
        ),
        (
            QuantType::Q6K,
            q6,
            act8_k(-128),
            act8_k(-128),
            -256.0 * 128.0 * 32.0 * 128.0,
        ),
    ];
    for k in tiers() {
        for (ty, blk, xq, xr, per_block) in &cases {
            // Q5_0: xq gives 32·(−16)·(−128), xr 32·(−16)·127; the sum is 32·16.
            let nb = if ty.block_size() == QK { 5 } else { 1 };
            let n = nb * ty.block_size();
            let rows = 5;
            let w: Vec<u8> = blk
                .iter()
                .copied()
                .cycle()
                .take(blk.len() * nb * rows)
                .collect();
            let mut out = vec![f32::NAN; rows];
            (k.matvec2(*ty).unwrap())(n, &w, xq, xr, &mut out);
            let want = if *ty == QuantType::Q4K || *ty == QuantType::Q5K || *ty == QuantType::Q6K {
                2.0 * per_block
            } else if *ty == QuantType::Q5_0 {
                nb as f32 * per_block
            } else {
                2.0 * nb as f32 * per_block
            };
            assert_eq!(out, vec![want; rows], "{} {}", k.tier.name(), ty.name());
        }
    }
}

#[test]
fn matvec2_lengths() {
    for k in tiers() {
        let w = vec![0u8; 20 * 2 * 3]; // 3 rows of two Q4_1 blocks
        let x = vec![0u8; 36 * 2];
        let mut out = [1.0f32; 3];
        (k.matvec2_q4_1)(0, &w, &x, &x, &mut out);
        assert_eq!(out, [0.0; 3], "{}: n = 0 gives zeros", k.tier.name());
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (k.matvec2_q4_1)(64, &w, &x, &x[..36], &mut out)
        }));
        if cfg!(debug_assertions) {
            let err = res.expect_err("debug builds assert on a short second activation");
            let msg = err
                .downcast_ref::<std::string::String>()
                .cloned()
                .unwrap_or_default();
            assert!(
                msg.contains("Q4_1") && msg.contains("36 bytes"),
                "{}: message {msg:?}",
                k.tier.name()
            );
        } else {
            assert!(
                res.is_ok() && out.iter().all(|o| o.is_nan()),
                "{}: release builds write NaN for a short second activation",
                k.tier.name()
            );
        }
    }
}

/// `wtypes::k4_scales` (vector decode) stored to arrays: (scales, mins).
#[target_feature(enable = "neon")]
fn k4_scales_arrays(s: &[u8; 12]) -> ([i32; 8], [i32; 8]) {
    use core::arch::aarch64::*;
    let (sc, mn) = super::wtypes::k4_scales(s);
    let mut sc_a = [0i32; 8];
    let mut mn_a = [0i32; 8];
    for j in 0..4 {
        sc_a[j] = match j {
            0 => vgetq_lane_s32::<0>(sc[0]),
            1 => vgetq_lane_s32::<1>(sc[0]),
            2 => vgetq_lane_s32::<2>(sc[0]),
            _ => vgetq_lane_s32::<3>(sc[0]),
        };
        sc_a[j + 4] = match j {
            0 => vgetq_lane_s32::<0>(sc[1]),
            1 => vgetq_lane_s32::<1>(sc[1]),
            2 => vgetq_lane_s32::<2>(sc[1]),
            _ => vgetq_lane_s32::<3>(sc[1]),
        };
    }
    let mut m16 = [0u8; 16];
    super::util::st_s8(&mut m16, vreinterpretq_s8_s16(mn));
    for (j, m) in mn_a.iter_mut().enumerate() {
        *m = i16::from_le_bytes([m16[2 * j], m16[2 * j + 1]]) as i32;
    }
    (sc_a, mn_a)
}

#[test]
fn k4_vector_scales_match_get_scale_min_k4() {
    assert!(
        super::has_neon(),
        "Advanced SIMD not detected on an aarch64 CPU"
    );
    let mut r = Rng(0xc0ffee);
    let mut cases = vec![[0u8; 12], [0xff; 12]];
    cases.extend((0..500).map(|_| core::array::from_fn(|_| r.byte())));
    for s in cases {
        // Written from ggml's get_scale_min_k4 (independent of wtypes.rs).
        let mut want_sc = [0i32; 8];
        let mut want_mn = [0i32; 8];
        for j in 0..8 {
            let (d, m) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            want_sc[j] = d as i32;
            want_mn[j] = m as i32;
        }
        // SAFETY: Advanced SIMD was detected above (the function only computes on registers and
        // stores into local arrays).
        let got = unsafe { k4_scales_arrays(&s) };
        assert_eq!(got, (want_sc, want_mn), "scales {s:02x?}");
    }
}
