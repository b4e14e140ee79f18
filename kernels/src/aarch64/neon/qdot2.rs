//! Fused two-activation matrix×vector products ([`crate::MatVec2`], the `q8x2` activation mode):
//! `out[r] = row_r · xq + row_r · xr` with each weight block loaded and unpacked once, two integer dot
//! products (the tier's [`IDot`] step) against the two activations, and the weight block's scales
//! converted once. Generic over [`IDot`] like the one-activation kernels in `qdot.rs`, whose
//! unpacking helpers these share; integer sums are exact, only the f32 accumulation order differs
//! from two passes of the one-activation kernel.
//!
//! * Legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): four rows at a time, so that each activation
//!   block's quants are loaded and its scales converted once per four rows; per row and block
//!   `acc += d_w·(dy·Σ q·y + dz·Σ q·z)` (plus `m_w·(s_y + s_z)` for Q4_1/Q5_1).
//! * K-quants (Q4_K, Q5_K, Q6_K): one row at a time (a super-block's activation quants do not fit
//!   the registers); the sub-block scales are decoded into vector lanes once per super-block and
//!   multiplied in with by-element MLA, and both activations' sums are scaled and accumulated with
//!   one vector FMA per super-block.

use super::qdot::*;
use super::util::*;
use crate::*;
use bytemuck::Pod;
use core::arch::aarch64::*;

/// Rows per group of the legacy-format kernels.
const ROWS: usize = 4;

/// Runs a row-group kernel over the rows of `w` (`rb` bytes each, whole blocks of `W`): `R` rows
/// at a time through `many`, the remaining rows one at a time through `one`. The caller has checked
/// that `w` holds `out.len()` rows.
#[inline(always)]
fn row_groups<W: Pod, const R: usize>(
    w: &[u8],
    rb: usize,
    out: &mut [f32],
    mut many: impl FnMut([&[W]; R]) -> [f32; R],
    mut one: impl FnMut([&[W]; 1]) -> [f32; 1],
) {
    let row = |r: usize| -> &[W] { bytemuck::cast_slice(&w[r * rb..(r + 1) * rb]) };
    let mut groups = out.chunks_exact_mut(R);
    let mut r0 = 0;
    for o in &mut groups {
        o.copy_from_slice(&many(core::array::from_fn(|k| row(r0 + k))));
        r0 += R;
    }
    for (k, o) in groups.into_remainder().iter_mut().enumerate() {
        *o = one([row(r0 + k)])[0];
    }
}

/// The activation quants of a 32-element block as two vectors (elements 0..16, 16..32).
#[target_feature(enable = "neon")]
#[inline]
fn act32(qs: &[i8; QK]) -> (int8x16_t, int8x16_t) {
    let q: &[u8] = bytemuck::cast_slice(qs);
    (ld_s8(q), ld_s8(&q[16..]))
}

/// `(Σ lo·a0 + hi·a1, Σ lo·b0 + hi·b1)` for one 32-quant weight block (`lo`, `hi`: elements
/// 0..16, 16..32) against both activations' blocks, every product at most 8191 in magnitude.
#[target_feature(enable = "neon")]
#[inline]
fn dot_small_x2<D: IDot>(
    dd: D,
    lo: int8x16_t,
    hi: int8x16_t,
    y: (int8x16_t, int8x16_t),
    z: (int8x16_t, int8x16_t),
) -> (int32x4_t, int32x4_t) {
    (
        dd.dot2_small(zero(), lo, y.0, hi, y.1),
        dd.dot2_small(zero(), lo, z.0, hi, z.1),
    )
}

/// The integer results of one legacy weight block against both activations: the weight scale `d`
/// (converted), and `Σ q·y`, `Σ q·z` spread over i32 lanes.
type Block2 = (f32, int32x4_t, int32x4_t);
/// The two activation blocks' quants, as [`act32`] gives them.
type Act2 = ((int8x16_t, int8x16_t), (int8x16_t, int8x16_t));

/// `R` rows of a format without offset (Q4_0, Q5_0, Q8_0) against two Q8_0 activations; `block`
/// unpacks one weight block and returns its [`Block2`].
#[target_feature(enable = "neon")]
#[inline]
fn sym_rows2<W: Pod, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
    block: impl Fn(&W, Act2) -> Block2,
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let mut acc = [vdupq_n_f32(0.0); R];
    for (i, (y, v)) in x.iter().zip(z).enumerate() {
        let a = (act32(&y.qs), act32(&v.qs));
        let (dy, dz) = (h2f(y.d), h2f(v.d));
        for r in 0..R {
            let (dw, pq, pr) = block(&rows[r][i], a);
            let t = vmulq_n_f32(vcvtq_f32_s32(pq), dy);
            let t = vfmaq_n_f32(t, vcvtq_f32_s32(pr), dz);
            acc[r] = vfmaq_n_f32(acc[r], t, dw);
        }
    }
    acc.map(|a| vaddvq_f32(a))
}

/// `R` rows of a format with an offset (Q4_1, Q5_1) against two Q8_1 activations: as
/// [`sym_rows2`], plus `m_w·(s_y + s_z)` per block, where `min` gives the block's `m_w`.
#[target_feature(enable = "neon")]
#[inline]
fn min_rows2<W: Pod, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
    block: impl Fn(&W, Act2) -> Block2,
    min: impl Fn(&W) -> F16Bits,
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let mut acc = [vdupq_n_f32(0.0); R];
    let mut mins = [0.0f32; R];
    for (i, (y, v)) in x.iter().zip(z).enumerate() {
        let a = (act32(&y.qs), act32(&v.qs));
        let (dy, dz) = (h2f(y.d), h2f(v.d));
        let s = h2f(y.s) + h2f(v.s);
        for r in 0..R {
            let b = &rows[r][i];
            let (dw, pq, pr) = block(b, a);
            let t = vmulq_n_f32(vcvtq_f32_s32(pq), dy);
            let t = vfmaq_n_f32(t, vcvtq_f32_s32(pr), dz);
            acc[r] = vfmaq_n_f32(acc[r], t, dw);
            mins[r] += h2f(min(b)) * s;
        }
    }
    core::array::from_fn(|r| vaddvq_f32(acc[r]) + mins[r])
}

// ---------------------------------------------------------------- Q4_0, Q5_0, Q8_0 × 2 × Q8_0

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q4_0<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    let z: &[BlockQ8_0] = bytemuck::cast_slice(&xr[..nb * 34]);
    let eight = vdupq_n_s8(8);
    let block = |b: &BlockQ4_0, (y, v): Act2| {
        let (lo, hi) = nibbles(ld_u8(&b.qs));
        let (lo, hi) = (vsubq_s8(lo, eight), vsubq_s8(hi, eight));
        // |(q-8)·y| <= 8·128
        let (pq, pr) = dot_small_x2(dd, lo, hi, y, v);
        (h2f(b.d), pq, pr)
    };
    row_groups::<BlockQ4_0, ROWS>(
        w,
        nb * 18,
        out,
        |g| sym_rows2(g, x, z, block),
        |g| sym_rows2(g, x, z, block),
    );
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q5_0<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    let z: &[BlockQ8_0] = bytemuck::cast_slice(&xr[..nb * 34]);
    let sixteen = vdupq_n_s8(16);
    let block = |b: &BlockQ5_0, (y, v): Act2| {
        let (lo, hi) = q5_quants(&b.qs, b.qh);
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), sixteen);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), sixteen);
        // |(q-16)·y| <= 16·128
        let (pq, pr) = dot_small_x2(dd, lo, hi, y, v);
        (h2f(b.d), pq, pr)
    };
    row_groups::<BlockQ5_0, ROWS>(
        w,
        nb * 22,
        out,
        |g| sym_rows2(g, x, z, block),
        |g| sym_rows2(g, x, z, block),
    );
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q8_0<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK;
    let x: &[BlockQ8_0] = bytemuck::cast_slice(&xq[..nb * 34]);
    let z: &[BlockQ8_0] = bytemuck::cast_slice(&xr[..nb * 34]);
    let block = |b: &BlockQ8_0, ((y0, y1), (z0, z1)): Act2| {
        let (w0, w1) = act32(&b.qs);
        // Products up to 128·128: the general step.
        let pq = dd.dot(dd.dot(zero(), w0, y0), w1, y1);
        let pr = dd.dot(dd.dot(zero(), w0, z0), w1, z1);
        (h2f(b.d), pq, pr)
    };
    row_groups::<BlockQ8_0, ROWS>(
        w,
        nb * 34,
        out,
        |g| sym_rows2(g, x, z, block),
        |g| sym_rows2(g, x, z, block),
    );
}

// ---------------------------------------------------------------- Q4_1, Q5_1 × 2 × Q8_1

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q4_1<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK;
    let x: &[BlockQ8_1] = bytemuck::cast_slice(&xq[..nb * 36]);
    let z: &[BlockQ8_1] = bytemuck::cast_slice(&xr[..nb * 36]);
    let block = |b: &BlockQ4_1, (y, v): Act2| {
        let (lo, hi) = nibbles(ld_u8(&b.qs));
        // |q·y| <= 15·128
        let (pq, pr) = dot_small_x2(dd, lo, hi, y, v);
        (h2f(b.d), pq, pr)
    };
    let min = |b: &BlockQ4_1| b.m;
    row_groups::<BlockQ4_1, ROWS>(
        w,
        nb * 20,
        out,
        |g| min_rows2(g, x, z, block, min),
        |g| min_rows2(g, x, z, block, min),
    );
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q5_1<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK;
    let x: &[BlockQ8_1] = bytemuck::cast_slice(&xq[..nb * 36]);
    let z: &[BlockQ8_1] = bytemuck::cast_slice(&xr[..nb * 36]);
    let block = |b: &BlockQ5_1, (y, v): Act2| {
        let (lo, hi) = q5_quants(&b.qs, b.qh);
        let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
        // |q·y| <= 31·128
        let (pq, pr) = dot_small_x2(dd, lo, hi, y, v);
        (h2f(b.d), pq, pr)
    };
    let min = |b: &BlockQ5_1| b.m;
    row_groups::<BlockQ5_1, ROWS>(
        w,
        nb * 24,
        out,
        |g| min_rows2(g, x, z, block, min),
        |g| min_rows2(g, x, z, block, min),
    );
}

// ---------------------------------------------------------------- K-quants × 2 × Q8_K

/// `acc + p·v[lane]` (by-element MLA; `lane` is a constant wherever this is inlined).
#[target_feature(enable = "neon")]
#[inline]
fn mla_lane(acc: int32x4_t, p: int32x4_t, v: int32x4_t, lane: usize) -> int32x4_t {
    match lane & 3 {
        0 => vmlaq_laneq_s32::<0>(acc, p, v),
        1 => vmlaq_laneq_s32::<1>(acc, p, v),
        2 => vmlaq_laneq_s32::<2>(acc, p, v),
        _ => vmlaq_laneq_s32::<3>(acc, p, v),
    }
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`, done on
/// the three little-endian words of `s`): the scales as i32 lanes (sub-blocks 0..4, 4..8) and the
/// mins, negated, as i16 lanes.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn k4_scales(s: &[u8; K_SCALE_SIZE]) -> ([int32x4_t; 2], int16x8_t) {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    // Sub-blocks 0..4: the low six bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8:
    // the nibbles of bytes 8..12 with the top two bits of bytes 0..4 / 4..8 above them.
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    let sc = (w0 & 0x3f3f_3f3f) as u64 | (sc_hi as u64) << 32;
    let mn = (w1 & 0x3f3f_3f3f) as u64 | (mn_hi as u64) << 32;
    let sc16 = vmovl_u8(vcreate_u8(sc));
    let sc32 = [
        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc16))),
        vreinterpretq_s32_u32(vmovl_high_u16(sc16)),
    ];
    let mn16 = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mn)));
    (sc32, vnegq_s16(mn16))
}

/// `Σ_j neg_mn[j]·(sum of the activation quants of sub-block j)`, spread over i32 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn k4_mins(neg_mn: int16x8_t, y: &Q8K) -> int32x4_t {
    let b0 = vreinterpretq_s16_u8(ld_u8(y.bsums));
    let b1 = vreinterpretq_s16_u8(ld_u8(&y.bsums[16..]));
    // Sub-block sums: |Σ| <= 32·128 fits i16.
    let ps = vpaddq_s16(b0, b1);
    vmlal_high_s16(
        vmull_s16(vget_low_s16(neg_mn), vget_low_s16(ps)),
        neg_mn,
        ps,
    )
}

/// `sum + [q, mq, r, mr]·[d·dy, dmin·dy, d·dz, dmin·dz]` with `q`/`r` the lane sums of the two
/// activations' scaled integer dot products and `mq`/`mr` those of their (negated) min terms;
/// `dm` is the block's `d`, `dmin` pair.
#[target_feature(enable = "neon")]
#[inline]
fn k_acc(
    sum: float32x4_t,
    q: (int32x4_t, int32x4_t),
    m: (int32x4_t, int32x4_t),
    dm: [F16Bits; 2],
    dy: f32,
    dz: f32,
) -> float32x4_t {
    let t = vpaddq_s32(vpaddq_s32(q.0, m.0), vpaddq_s32(q.1, m.1));
    let bits = u32::from(dm[0].bits()) | u32::from(dm[1].bits()) << 16;
    let dm = h4_to_f32(vreinterpret_u16_u32(vdup_n_u32(bits)));
    let dyz = vcombine_f32(vdup_n_f32(dy), vdup_n_f32(dz));
    vfmaq_f32(sum, vcvtq_f32_s32(t), vmulq_f32(dm, dyz))
}

/// The activation quants of sub-blocks `2j` and `2j+1` of a Q8_K block (64 bytes at `64·j`) as four
/// vectors.
#[target_feature(enable = "neon")]
#[inline]
fn act64(qs: &[u8], j: usize) -> [int8x16_t; 4] {
    let q = &qs[64 * j..64 * j + 64];
    [ld_s8(q), ld_s8(&q[16..]), ld_s8(&q[32..]), ld_s8(&q[48..])]
}

/// One 64-element chunk `j` of a Q4_K/Q5_K super-block against both activations: `q` holds the
/// unsigned quants of sub-block `2j` (elements 0..16, 16..32) and of sub-block `2j+1`; adds
/// `sc[2j]·Σ + sc[2j+1]·Σ` to each activation's integer accumulator.
#[target_feature(enable = "neon")]
#[inline]
fn k4_chunk2<D: IDot>(
    dd: D,
    acc: (int32x4_t, int32x4_t),
    q: [int8x16_t; 4],
    (y, z): (&Q8K, &Q8K),
    j: usize,
    sc: &[int32x4_t; 2],
) -> (int32x4_t, int32x4_t) {
    let [l0, l1, h0, h1] = q;
    let (ya, za) = (act64(y.qs, j), act64(z.qs, j));
    // |q·y| <= 31·128
    let (plq, plr) = dot_small_x2(dd, l0, l1, (ya[0], ya[1]), (za[0], za[1]));
    let (phq, phr) = dot_small_x2(dd, h0, h1, (ya[2], ya[3]), (za[2], za[3]));
    let s = sc[j / 2];
    let aq = mla_lane(mla_lane(acc.0, plq, s, 2 * j), phq, s, 2 * j + 1);
    let ar = mla_lane(mla_lane(acc.1, plr, s, 2 * j), phr, s, 2 * j + 1);
    (aq, ar)
}

/// One Q4_K/Q5_K super-block against both activations, added to `sum` (see [`k_acc`]); `quants(j)`
/// gives the unsigned quants of chunk `j` as [`k4_chunk2`] takes them.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn k4_block2<D: IDot>(
    dd: D,
    sum: float32x4_t,
    d: F16Bits,
    dmin: F16Bits,
    scales: &[u8; K_SCALE_SIZE],
    y: &Q8K,
    z: &Q8K,
    mut quants: impl FnMut(usize) -> [int8x16_t; 4],
) -> float32x4_t {
    let (sc, neg_mn) = k4_scales(scales);
    let mut acc = (zero(), zero());
    // Written out so that every lane index is a constant.
    acc = k4_chunk2(dd, acc, quants(0), (y, z), 0, &sc);
    acc = k4_chunk2(dd, acc, quants(1), (y, z), 1, &sc);
    acc = k4_chunk2(dd, acc, quants(2), (y, z), 2, &sc);
    acc = k4_chunk2(dd, acc, quants(3), (y, z), 3, &sc);
    let m = (k4_mins(neg_mn, y), k4_mins(neg_mn, z));
    k_acc(sum, acc, m, [d, dmin], y.d, z.d)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q4_k<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let (x, z) = (q8k_chunks(xq, nb), q8k_chunks(xr, nb));
    each_row(w, nb * 144, out, |row| {
        let blocks: &[BlockQ4K] = bytemuck::cast_slice(row);
        let mut sum = vdupq_n_f32(0.0);
        for ((b, y), v) in blocks.iter().zip(x.clone()).zip(z.clone()) {
            let (y, v) = (Q8K::new(y), Q8K::new(v));
            sum = k4_block2(dd, sum, b.d, b.dmin, &b.scales, &y, &v, |j| {
                let q = &b.qs[32 * j..32 * j + 32];
                let (l0, h0) = nibbles(ld_u8(q));
                let (l1, h1) = nibbles(ld_u8(&q[16..]));
                [l0, l1, h0, h1]
            });
        }
        vaddvq_f32(sum)
    });
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q5_k<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let (x, z) = (q8k_chunks(xq, nb), q8k_chunks(xr, nb));
    let one = vdupq_n_u8(1);
    let two = vdupq_n_u8(2);
    let m4 = vdupq_n_u8(0x0f);
    each_row(w, nb * 176, out, |row| {
        let blocks: &[BlockQ5K] = bytemuck::cast_slice(row);
        let mut sum = vdupq_n_f32(0.0);
        for ((b, y), v) in blocks.iter().zip(x.clone()).zip(z.clone()) {
            let (y, v) = (Q8K::new(y), Q8K::new(v));
            // Bit 2j of qh[l] is the fifth bit of element l of sub-block 2j, bit 2j+1 of sub-block
            // 2j+1; shifted right by 2 after each chunk.
            let mut qh0 = ld_u8(&b.qh);
            let mut qh1 = ld_u8(&b.qh[16..]);
            sum = k4_block2(dd, sum, b.d, b.dmin, &b.scales, &y, &v, |j| {
                let q = &b.qs[32 * j..32 * j + 32];
                let (q0, q1) = (ld_u8(q), ld_u8(&q[16..]));
                let l0 = vorrq_u8(vandq_u8(q0, m4), vshlq_n_u8::<4>(vandq_u8(qh0, one)));
                let l1 = vorrq_u8(vandq_u8(q1, m4), vshlq_n_u8::<4>(vandq_u8(qh1, one)));
                let h0 = vorrq_u8(vshrq_n_u8::<4>(q0), vshlq_n_u8::<3>(vandq_u8(qh0, two)));
                let h1 = vorrq_u8(vshrq_n_u8::<4>(q1), vshlq_n_u8::<3>(vandq_u8(qh1, two)));
                qh0 = vshrq_n_u8::<2>(qh0);
                qh1 = vshrq_n_u8::<2>(qh1);
                let s = vreinterpretq_s8_u8;
                [s(l0), s(l1), s(h0), s(h1)]
            });
        }
        vaddvq_f32(sum)
    });
}

/// One half `h` (128 elements) of a Q6_K super-block against both activations: adds
/// `Σ_k sc[8h+k]·Σ (q−32)·y` over its eight groups of 16 to each activation's accumulator; `sc`
/// holds the 16 scales as i32 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn q6_half2<D: IDot>(
    dd: D,
    acc: (int32x4_t, int32x4_t),
    b: &BlockQ6K,
    (y, z): (&Q8K, &Q8K),
    h: usize,
    sc: &[int32x4_t; 4],
) -> (int32x4_t, int32x4_t) {
    let off = vdupq_n_s8(32);
    // 128 elements: ql[64h..64h+64], qh[32h..32h+32].
    let ql = &b.ql[64 * h..64 * h + 64];
    let qh = &b.qh[32 * h..32 * h + 32];
    let yq = &y.qs[128 * h..128 * h + 128];
    let zq = &z.qs[128 * h..128 * h + 128];
    // Element groups of 16, in order, with their 6-bit values (before the -32 offset).
    let g = q6k_groups(ql, qh);
    let (mut aq, mut ar) = acc;
    for k in 0..8 {
        let q = vsubq_s8(vreinterpretq_s8_u8(g[k]), off);
        let s = sc[2 * h + k / 4];
        // |(q-32)·y| <= 32·128
        let pq = dd.dot_small(zero(), q, ld_s8(&yq[16 * k..]));
        let pr = dd.dot_small(zero(), q, ld_s8(&zq[16 * k..]));
        aq = mla_lane(aq, pq, s, k);
        ar = mla_lane(ar, pr, s, k);
    }
    (aq, ar)
}

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec2_q6_k<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let (x, z) = (q8k_chunks(xq, nb), q8k_chunks(xr, nb));
    each_row(w, nb * 210, out, |row| {
        let blocks: &[BlockQ6K] = bytemuck::cast_slice(row);
        let mut sum = vdupq_n_f32(0.0);
        for ((b, y), v) in blocks.iter().zip(x.clone()).zip(z.clone()) {
            let (y, v) = (Q8K::new(y), Q8K::new(v));
            let s8 = vreinterpretq_s8_u8(ld_u8(bytemuck::cast_slice(&b.scales)));
            let (s16l, s16h) = (vmovl_s8(vget_low_s8(s8)), vmovl_high_s8(s8));
            let sc = [
                vmovl_s16(vget_low_s16(s16l)),
                vmovl_high_s16(s16l),
                vmovl_s16(vget_low_s16(s16h)),
                vmovl_high_s16(s16h),
            ];
            // Written out so that every lane index is a constant.
            let acc = q6_half2(dd, (zero(), zero()), b, (&y, &v), 0, &sc);
            let (aq, ar) = q6_half2(dd, acc, b, (&y, &v), 1, &sc);
            // [q01, q23, r01, r23]·[d·dy, d·dy, d·dz, d·dz]
            let t = vcvtq_f32_s32(vpaddq_s32(aq, ar));
            let dyz = vmulq_n_f32(vcombine_f32(vdup_n_f32(y.d), vdup_n_f32(v.d)), h2f(b.d));
            sum = vfmaq_f32(sum, t, dyz);
        }
        vaddvq_f32(sum)
    });
}
