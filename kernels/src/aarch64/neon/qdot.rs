//! Quantized matrix×vector products, generic over the integer dot step ([`IDot`]) so that the same
//! code serves the plain-NEON and the dot-product tier. Each row is the ggml `vec_dot_*` of that
//! weight format against the quantized activation; integer sums are exact, only the order of the
//! f32 accumulation differs from the scalar reference.

use super::quant::Q8K_BYTES;
use super::util::*;
use crate::*;
use core::arch::aarch64::*;

/// Runs `row` for every row of `w` (`rb` bytes each) into `out`.
#[inline(always)]
pub(super) fn each_row(w: &[u8], rb: usize, out: &mut [f32], mut row: impl FnMut(&[u8]) -> f32) {
    for (r, o) in w.chunks_exact(rb).zip(out.iter_mut()) {
        *o = row(r);
    }
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn zero() -> int32x4_t {
    vdupq_n_s32(0)
}

/// Low and high nibbles of 16 bytes as values 0..16.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn nibbles(q: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let lo = vandq_u8(q, vdupq_n_u8(0x0f));
    let hi = vshrq_n_u8::<4>(q);
    (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
}

// ---------------------------------------------------------------- Q4_0 × Q8_0

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q4_0<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    let eight = vdupq_n_s8(8);
    each_row(w, nb * 18, out, |row| {
        let blocks: &[BlockQ4_0] = bytemuck::cast_slice(row);
        let mut acc = vdupq_n_f32(0.0);
        for (b, y) in blocks.iter().zip(x) {
            let (lo, hi) = nibbles(ld_u8(&b.qs));
            let (lo, hi) = (vsubq_s8(lo, eight), vsubq_s8(hi, eight));
            // |(q-8)·y| <= 8·128
            let p = dd.dot2_small(
                zero(),
                lo,
                ld_s8(bytemuck::cast_slice(&y.qs)),
                hi,
                ld_s8(bytemuck::cast_slice(&y.qs[16..])),
            );
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(b.d) * h2f(y.d));
        }
        vaddvq_f32(acc)
    });
}

// ---------------------------------------------------------------- Q4_1 × Q8_1

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q4_1<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let x: &[BlockQ8_1] = bytemuck::cast_slice(&xq[..nb * 36]);
    each_row(w, nb * 20, out, |row| {
        let blocks: &[BlockQ4_1] = bytemuck::cast_slice(row);
        let mut acc = vdupq_n_f32(0.0);
        let mut mins = 0.0f32;
        for (b, y) in blocks.iter().zip(x) {
            let (lo, hi) = nibbles(ld_u8(&b.qs));
            // |q·y| <= 15·128
            let p = dd.dot2_small(
                zero(),
                lo,
                ld_s8(bytemuck::cast_slice(&y.qs)),
                hi,
                ld_s8(bytemuck::cast_slice(&y.qs[16..])),
            );
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(b.d) * h2f(y.d));
            mins += h2f(b.m) * h2f(y.s);
        }
        vaddvq_f32(acc) + mins
    });
}

// ---------------------------------------------------------------- Q5_0 × Q8_0, Q5_1 × Q8_1

/// The fifth bits of a Q5 block (`qh`, bit j = element j) as bytes in element order, 0x10 where the
/// bit is set: elements 0..16 (under the low nibbles) and 16..32 (under the high nibbles).
///
/// The word is duplicated into every 32-bit lane; TBL gives byte j a copy of `qh` byte j/8, and
/// CMTST against `[1, 2, 4, …, 128]` turns bit j%8 into 0xff/0.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn fifth_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let v = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    let sel_lo = vcombine_u8(vdup_n_u8(0), vdup_n_u8(1));
    let sel_hi = vcombine_u8(vdup_n_u8(2), vdup_n_u8(3));
    let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    let b16 = vdupq_n_u8(0x10);
    let lo = vandq_u8(vtstq_u8(vqtbl1q_u8(v, sel_lo), bit), b16);
    let hi = vandq_u8(vtstq_u8(vqtbl1q_u8(v, sel_hi), bit), b16);
    (lo, hi)
}

/// The 32 quants (0..32) of a Q5 block: elements 0..16 and 16..32.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q5_quants(qs: &[u8; 16], qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let q = ld_u8(qs);
    let (h0, h1) = fifth_bits(qh);
    (
        vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), h0),
        vorrq_u8(vshrq_n_u8::<4>(q), h1),
    )
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q5_0<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    let sixteen = vdupq_n_s8(16);
    each_row(w, nb * 22, out, |row| {
        let blocks: &[BlockQ5_0] = bytemuck::cast_slice(row);
        let mut acc = vdupq_n_f32(0.0);
        for (b, y) in blocks.iter().zip(x) {
            let (lo, hi) = q5_quants(&b.qs, b.qh);
            let lo = vsubq_s8(vreinterpretq_s8_u8(lo), sixteen);
            let hi = vsubq_s8(vreinterpretq_s8_u8(hi), sixteen);
            // |(q-16)·y| <= 16·128
            let p = dd.dot2_small(
                zero(),
                lo,
                ld_s8(bytemuck::cast_slice(&y.qs)),
                hi,
                ld_s8(bytemuck::cast_slice(&y.qs[16..])),
            );
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(b.d) * h2f(y.d));
        }
        vaddvq_f32(acc)
    });
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q5_1<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let x: &[BlockQ8_1] = bytemuck::cast_slice(&xq[..nb * 36]);
    each_row(w, nb * 24, out, |row| {
        let blocks: &[BlockQ5_1] = bytemuck::cast_slice(row);
        let mut acc = vdupq_n_f32(0.0);
        let mut mins = 0.0f32;
        for (b, y) in blocks.iter().zip(x) {
            let (lo, hi) = q5_quants(&b.qs, b.qh);
            // |q·y| <= 31·128
            let p = dd.dot2_small(
                zero(),
                vreinterpretq_s8_u8(lo),
                ld_s8(bytemuck::cast_slice(&y.qs)),
                vreinterpretq_s8_u8(hi),
                ld_s8(bytemuck::cast_slice(&y.qs[16..])),
            );
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(b.d) * h2f(y.d));
            mins += h2f(b.m) * h2f(y.s);
        }
        vaddvq_f32(acc) + mins
    });
}

// ---------------------------------------------------------------- Q8_0 × Q8_0

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q8_0<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    each_row(w, nb * 34, out, |row| {
        let blocks: &[BlockQ8_0] = bytemuck::cast_slice(row);
        let mut acc = vdupq_n_f32(0.0);
        for (b, y) in blocks.iter().zip(x) {
            let (bq, yq): (&[u8], &[u8]) =
                (bytemuck::cast_slice(&b.qs), bytemuck::cast_slice(&y.qs));
            let p = dd.dot(zero(), ld_s8(bq), ld_s8(yq));
            let p = dd.dot(p, ld_s8(&bq[16..]), ld_s8(&yq[16..]));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(b.d) * h2f(y.d));
        }
        vaddvq_f32(acc)
    });
}

// ---------------------------------------------------------------- K-quants × Q8_K

/// A Q8_K block read in place from bytes (the in-memory struct is 4-aligned, the byte slice may not be).
pub(super) struct Q8K<'a> {
    pub(super) d: f32,
    pub(super) qs: &'a [u8],
    pub(super) bsums: &'a [u8],
}

impl<'a> Q8K<'a> {
    #[inline(always)]
    pub(super) fn new(b: &'a [u8]) -> Self {
        Q8K {
            d: f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            qs: &b[4..4 + QK_K],
            bsums: &b[4 + QK_K..Q8K_BYTES],
        }
    }
    /// Sum of the quants of sub-block `j` of 32 (two of the 16-element group sums).
    #[inline(always)]
    fn sum32(&self, j: usize) -> i32 {
        let s = &self.bsums[4 * j..4 * j + 4];
        i16::from_le_bytes([s[0], s[1]]) as i32 + i16::from_le_bytes([s[2], s[3]]) as i32
    }
}

/// The activation's `nb` Q8_K blocks as byte chunks.
#[inline(always)]
pub(super) fn q8k_chunks(xq: &[u8], nb: usize) -> core::slice::ChunksExact<'_, u8> {
    xq[..nb * Q8K_BYTES].chunks_exact(Q8K_BYTES)
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(super) fn scales_mins(s: &[u8; K_SCALE_SIZE]) -> ([i32; 8], [i32; 8]) {
    let mut sc = [0i32; 8];
    let mut mn = [0i32; 8];
    for j in 0..4 {
        sc[j] = (s[j] & 63) as i32;
        mn[j] = (s[j + 4] & 63) as i32;
        sc[j + 4] = ((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4)) as i32;
        mn[j + 4] = ((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4)) as i32;
    }
    (sc, mn)
}

/// Σ_j mins[j]·(sum of activation quants of sub-block j).
#[inline(always)]
fn min_term(mn: &[i32; 8], y: &Q8K) -> i32 {
    let mut s = 0;
    for (j, m) in mn.iter().enumerate() {
        s += m * y.sum32(j);
    }
    s
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q4_k<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let x = q8k_chunks(xq, nb);
    each_row(w, nb * 144, out, |row| {
        let blocks: &[BlockQ4K] = bytemuck::cast_slice(row);
        let mut sum = 0.0f32;
        for (b, y) in blocks.iter().zip(x.clone()) {
            let y = Q8K::new(y);
            let (sc, mn) = scales_mins(&b.scales);
            let mut acc = zero();
            for j in 0..4 {
                let q = &b.qs[32 * j..32 * j + 32];
                let (l0, h0) = nibbles(ld_u8(q));
                let (l1, h1) = nibbles(ld_u8(&q[16..]));
                let yq = &y.qs[64 * j..64 * j + 64];
                // |q·y| <= 15·128
                let pl = dd.dot2_small(zero(), l0, ld_s8(yq), l1, ld_s8(&yq[16..]));
                let ph = dd.dot2_small(zero(), h0, ld_s8(&yq[32..]), h1, ld_s8(&yq[48..]));
                acc = vmlaq_n_s32(acc, pl, sc[2 * j]);
                acc = vmlaq_n_s32(acc, ph, sc[2 * j + 1]);
            }
            let d = y.d * h2f(b.d);
            let dmin = y.d * h2f(b.dmin);
            sum += d * vaddvq_s32(acc) as f32 - dmin * min_term(&mn, &y) as f32;
        }
        sum
    });
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q5_k<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let x = q8k_chunks(xq, nb);
    let one = vdupq_n_u8(1);
    let two = vdupq_n_u8(2);
    each_row(w, nb * 176, out, |row| {
        let blocks: &[BlockQ5K] = bytemuck::cast_slice(row);
        let mut sum = 0.0f32;
        for (b, y) in blocks.iter().zip(x.clone()) {
            let y = Q8K::new(y);
            let (sc, mn) = scales_mins(&b.scales);
            // Bit 2j of qh[l] is the fifth bit of element l of sub-block 2j, bit 2j+1 of sub-block 2j+1.
            let mut qh0 = ld_u8(&b.qh);
            let mut qh1 = ld_u8(&b.qh[16..]);
            let mut acc = zero();
            for j in 0..4 {
                let q = &b.qs[32 * j..32 * j + 32];
                let (q0, q1) = (ld_u8(q), ld_u8(&q[16..]));
                let l0 = vorrq_u8(
                    vandq_u8(q0, vdupq_n_u8(0x0f)),
                    vshlq_n_u8::<4>(vandq_u8(qh0, one)),
                );
                let l1 = vorrq_u8(
                    vandq_u8(q1, vdupq_n_u8(0x0f)),
                    vshlq_n_u8::<4>(vandq_u8(qh1, one)),
                );
                let h0 = vorrq_u8(vshrq_n_u8::<4>(q0), vshlq_n_u8::<3>(vandq_u8(qh0, two)));
                let h1 = vorrq_u8(vshrq_n_u8::<4>(q1), vshlq_n_u8::<3>(vandq_u8(qh1, two)));
                qh0 = vshrq_n_u8::<2>(qh0);
                qh1 = vshrq_n_u8::<2>(qh1);
                let yq = &y.qs[64 * j..64 * j + 64];
                let s = vreinterpretq_s8_u8;
                // |q·y| <= 31·128
                let pl = dd.dot2_small(zero(), s(l0), ld_s8(yq), s(l1), ld_s8(&yq[16..]));
                let ph = dd.dot2_small(zero(), s(h0), ld_s8(&yq[32..]), s(h1), ld_s8(&yq[48..]));
                acc = vmlaq_n_s32(acc, pl, sc[2 * j]);
                acc = vmlaq_n_s32(acc, ph, sc[2 * j + 1]);
            }
            let d = y.d * h2f(b.d);
            let dmin = y.d * h2f(b.dmin);
            sum += d * vaddvq_s32(acc) as f32 - dmin * min_term(&mn, &y) as f32;
        }
        sum
    });
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q6_k<D: IDot>(dd: D, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let x = q8k_chunks(xq, nb);
    let off = vdupq_n_s8(32);
    each_row(w, nb * 210, out, |row| {
        let blocks: &[BlockQ6K] = bytemuck::cast_slice(row);
        let mut sum = 0.0f32;
        for (b, y) in blocks.iter().zip(x.clone()) {
            let y = Q8K::new(y);
            let mut acc = zero();
            for h in 0..2 {
                // 128 elements: ql[64h..64h+64], qh[32h..32h+32], scales[8h..8h+8].
                let ql = &b.ql[64 * h..64 * h + 64];
                let qh = &b.qh[32 * h..32 * h + 32];
                let sc = &b.scales[8 * h..8 * h + 8];
                let yq = &y.qs[128 * h..128 * h + 128];
                // Element groups of 16, in order, with their 6-bit values (before the -32 offset).
                let g = q6k_groups(ql, qh);
                for k in 0..8 {
                    let q = vsubq_s8(vreinterpretq_s8_u8(g[k]), off);
                    // |(q-32)·y| <= 32·128
                    let p = dd.dot_small(zero(), q, ld_s8(&yq[16 * k..]));
                    acc = vmlaq_n_s32(acc, p, sc[k] as i32);
                }
            }
            sum += y.d * h2f(b.d) * vaddvq_s32(acc) as f32;
        }
        sum
    });
}
