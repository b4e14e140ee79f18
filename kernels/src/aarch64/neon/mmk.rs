//! Batched products (prefill) for the K-quants: `out[t·rows + i] = row_i · x_t`.
//!
//! As `mm.rs` for the 32-element formats: tokens in tiles of eight (two groups of four), super-
//! blocks in chunks of [`KC`], the activations of a tile and chunk prepared once ([`Act4K`]:
//! token-interleaved quants, the f32 scales, the 32-element sums for the mins), then every row of
//! the chunk against them, one row at a time, each 64-element chunk of a super-block unpacked
//! once for the eight tokens. Per sub-block and four tokens: the token-lane step
//! ([`IDot::dot4x4`]) into a fresh accumulator, one by-element MLA by the sub-block's integer
//! scale; per super-block: the mins (Q4_K, Q5_K: eight by-element MLAs against the prepared sums),
//! two conversions and three multiply-adds.
//!
//! With a residual both activations keep their own integer accumulators and scales (the
//! residual's scale need not be `d/256`).

use super::quant::Q8K_BYTES;
use super::util::*;
use super::wtypes::*;
use crate::*;
use bytemuck::{Pod, Zeroable};
use core::arch::aarch64::*;

/// Super-blocks per chunk (the prepared activations of a tile: `2·KC` [`Act4K`], 17.3 KiB).
const KC: usize = 4;

/// One super-block of four tokens, token `t` in lane `t`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Act4K {
    /// Token-interleaved quants: vector `8s + g` = bytes `4g..4g+4` of sub-block `s` (32
    /// elements) of tokens 0, 1, 2, 3.
    x: [V16; 64],
    xr: [V16; 64],
    /// f32 `d` per token.
    dy: V16,
    dr: V16,
    /// i32 sums of the quants of sub-block `s`, per token.
    bs: [V16; 8],
    bs_r: [V16; 8],
}

#[target_feature(enable = "neon")]
#[inline]
fn st_s32(o: &mut V16, v: int32x4_t) {
    st_u8(&mut o.0, vreinterpretq_u8_s32(v));
}

/// One side (main or residual) of four tokens' Q8_K blocks `y[t]`: interleaved quants into `x`,
/// sub-block sums into `bs`; returns the four scales.
#[target_feature(enable = "neon")]
#[inline]
fn side4(y: [&[u8]; 4], x: &mut [V16; 64], bs: &mut [V16; 8]) -> float32x4_t {
    for s in 0..8 {
        for h in 0..2 {
            let at = 4 + 32 * s + 16 * h;
            let ld = |t: usize| vreinterpretq_s32_u8(ld_u8(&y[t][at..]));
            let v = transpose4_s32([ld(0), ld(1), ld(2), ld(3)]);
            for g in 0..4 {
                st_s32(&mut x[8 * s + 4 * h + g], v[g]);
            }
        }
    }
    // Sums of 32 = pairs of the stored sums of 16 (|Σ| <= 32·128 fits i16), widened, transposed.
    let sums = |t: usize| {
        let b = &y[t][4 + QK_K..];
        let p = vpaddq_s16(
            vreinterpretq_s16_u8(ld_u8(b)),
            vreinterpretq_s16_u8(ld_u8(&b[16..])),
        );
        [vmovl_s16(vget_low_s16(p)), vmovl_high_s16(p)]
    };
    let (s0, s1, s2, s3) = (sums(0), sums(1), sums(2), sums(3));
    for h in 0..2 {
        let v = transpose4_s32([s0[h], s1[h], s2[h], s3[h]]);
        for k in 0..4 {
            st_s32(&mut bs[4 * h + k], v[k]);
        }
    }
    let d = |t: usize| f32::from_le_bytes([y[t][0], y[t][1], y[t][2], y[t][3]]);
    let d: [f32; 4] = [d(0), d(1), d(2), d(3)];
    ld_f32(&d)
}

/// Fills `out[i]` for super-blocks `b0 + i` of four tokens' activation rows `q[t]` (and `r[t]`).
#[target_feature(enable = "neon")]
#[inline]
fn prep4k(two: bool, q: [&[u8]; 4], r: [&[u8]; 4], b0: usize, out: &mut [Act4K]) {
    fn blk(s: [&[u8]; 4], at: usize) -> [&[u8]; 4] {
        let e = at + Q8K_BYTES;
        [&s[0][at..e], &s[1][at..e], &s[2][at..e], &s[3][at..e]]
    }
    for (i, o) in out.iter_mut().enumerate() {
        let at = (b0 + i) * Q8K_BYTES;
        let d = side4(blk(q, at), &mut o.x, &mut o.bs);
        st_u8(&mut o.dy.0, vreinterpretq_u8_f32(d));
        if two {
            let d = side4(blk(r, at), &mut o.xr, &mut o.bs_r);
            st_u8(&mut o.dr.0, vreinterpretq_u8_f32(d));
        }
    }
}

/// Four interleaved activation vectors starting at `x[j]`.
#[target_feature(enable = "neon")]
#[inline]
fn x4(x: &[V16; 64], j: usize) -> [int8x16_t; 4] {
    let v = &x[j..j + 4];
    [
        ld_s8(&v[0].0),
        ld_s8(&v[1].0),
        ld_s8(&v[2].0),
        ld_s8(&v[3].0),
    ]
}

/// The sub-block sum of a 32-element sub-block `s` (quants `q0`, `q1`: elements 0..16, 16..32)
/// against four tokens (lanes).
#[inline(always)]
fn sub32<D: IDot>(
    dd: D,
    x: &[V16; 64],
    s: usize,
    q0: int8x16_t,
    q1: int8x16_t,
    maxp: u32,
) -> int32x4_t {
    // SAFETY: `dd` proves NEON (the loads are neon functions on in-bounds fixed-size data).
    let (a, b) = unsafe { (x4(x, 8 * s), x4(x, 8 * s + 4)) };
    let acc = dd.acc4(dd.load_acc(&ZERO));
    dd.acc4_sum(dd.dot4x4(dd.dot4x4(acc, a, q0, maxp), b, q1, maxp))
}

/// The batched product for the K-quant `ty` (`Q4K`, `Q5K`, `Q6K`); shapes checked by the caller.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matmul<D: IDot>(
    dd: D,
    ty: QuantType,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let sb = ty.type_size();
    match (ty, x.r.is_some()) {
        (QuantType::Q4K, false) => {
            run::<D, false>(dd, sb, n, w, x, out, k4_row::<D, BlockQ4K, false, 2>)
        }
        (QuantType::Q4K, true) => {
            run::<D, true>(dd, sb, n, w, x, out, k4_row::<D, BlockQ4K, true, 2>)
        }
        (QuantType::Q5K, false) => {
            run::<D, false>(dd, sb, n, w, x, out, k4_row::<D, BlockQ5K, false, 2>)
        }
        (QuantType::Q5K, true) => {
            run::<D, true>(dd, sb, n, w, x, out, k4_row::<D, BlockQ5K, true, 2>)
        }
        (_, false) => run::<D, false>(dd, sb, n, w, x, out, q6_row::<D, false, 2>),
        (_, true) => run::<D, true>(dd, sb, n, w, x, out, q6_row::<D, true, 2>),
    }
}

/// One row's super-blocks (bytes) of a chunk against the prepared groups: `[group]` lanes = tokens.
type RowFn<D> = unsafe fn(D, &[u8], [&[Act4K]; 2]) -> [float32x4_t; 2];

/// The tiles, chunks and rows of a batched product; `sb`: bytes per weight super-block.
#[target_feature(enable = "neon")]
#[inline]
fn run<D: IDot, const TWO: bool>(
    dd: D,
    sb: usize,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
    row_fn: RowFn<D>,
) {
    let nb = n / QK_K;
    let (rows, rb, xb) = (out.len() / x.n_tok, nb * sb, nb * Q8K_BYTES);
    let (q, r, n_tok, stride) = (x.q, x.r.unwrap_or(x.q), x.n_tok, x.stride);
    // A token past the end repeats the last one (computed, not stored).
    fn row4(s: &[u8], t: usize, n_tok: usize, stride: usize, xb: usize) -> [&[u8]; 4] {
        let at = |k: usize| (t + k).min(n_tok - 1) * stride;
        let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
        [
            &s[a0..a0 + xb],
            &s[a1..a1 + xb],
            &s[a2..a2 + xb],
            &s[a3..a3 + xb],
        ]
    }
    let mut act = [[Act4K::zeroed(); KC]; 2];
    for t0 in (0..n_tok).step_by(8) {
        for b0 in (0..nb).step_by(KC) {
            let kc = KC.min(nb - b0);
            for (g, a) in act.iter_mut().enumerate() {
                let t = t0 + 4 * g;
                let (qs, rs) = (row4(q, t, n_tok, stride, xb), row4(r, t, n_tok, stride, xb));
                prep4k(TWO, qs, rs, b0, &mut a[..kc]);
            }
            let groups = [&act[0][..kc], &act[1][..kc]];
            for i in 0..rows {
                let wr = &w[i * rb + b0 * sb..i * rb + (b0 + kc) * sb];
                // SAFETY: `row_fn` is one of this module's `#[target_feature(enable = "neon")]`
                // row functions; NEON is proven by `dd`.
                let f = unsafe { row_fn(dd, wr, groups) };
                for (g, v) in f.iter().enumerate() {
                    let mut s = [0.0f32; 4];
                    st_f32(&mut s, *v);
                    let t = t0 + 4 * g;
                    for (l, s) in s.iter().enumerate().take(n_tok.saturating_sub(t).min(4)) {
                        let o = &mut out[(t + l) * rows + i];
                        *o = if b0 == 0 { *s } else { *o + s };
                    }
                }
            }
        }
    }
}

/// One Q4_K/Q5_K row of a chunk against `G` groups of four tokens.
#[target_feature(enable = "neon")]
unsafe fn k4_row<D: IDot, K: K4, const TWO: bool, const G: usize>(
    dd: D,
    wr: &[u8],
    act: [&[Act4K]; 2],
) -> [float32x4_t; 2] {
    let blocks: &[K] = bytemuck::cast_slice(wr);
    let maxp = 31 * 128;
    let mut f = [vdupq_n_f32(0.0); 2];
    for (i, b) in blocks.iter().enumerate() {
        let (sc, mn) = k4_scales(b.scales());
        let mn32 = [vmovl_s16(vget_low_s16(mn)), vmovl_high_s16(mn)];
        let mut st = b.start(dd);
        let z = vdupq_n_s32(0);
        let (mut aq, mut ar) = ([[z; 2]; G], [[z; 2]; G]);
        macro_rules! chunk {
            ($j:literal) => {
                let q = b.chunk(dd, $j, &mut st);
                for g in 0..G {
                    let a = &act[g][i];
                    let pl = sub32(dd, &a.x, 2 * $j, q[0], q[1], maxp);
                    let ph = sub32(dd, &a.x, 2 * $j + 1, q[2], q[3], maxp);
                    aq[g][0] = mla_lane(aq[g][0], pl, sc[$j / 2], 2 * $j);
                    aq[g][1] = mla_lane(aq[g][1], ph, sc[$j / 2], 2 * $j + 1);
                    if TWO {
                        let pl = sub32(dd, &a.xr, 2 * $j, q[0], q[1], maxp);
                        let ph = sub32(dd, &a.xr, 2 * $j + 1, q[2], q[3], maxp);
                        ar[g][0] = mla_lane(ar[g][0], pl, sc[$j / 2], 2 * $j);
                        ar[g][1] = mla_lane(ar[g][1], ph, sc[$j / 2], 2 * $j + 1);
                    }
                }
            };
        }
        chunk!(0);
        chunk!(1);
        chunk!(2);
        chunk!(3);
        let [d, dmin] = b.dm();
        let (d, dmin) = (f16_f32(&d), f16_f32(&dmin));
        for g in 0..G {
            let a = &act[g][i];
            f[g] = k4_acc(f[g], aq[g], &a.bs, &a.dy, mn32, d, dmin);
            if TWO {
                f[g] = k4_acc(f[g], ar[g], &a.bs_r, &a.dr, mn32, d, dmin);
            }
        }
    }
    f
}

/// `f + (d·Σ sc·q·y − dmin·Σ mn·bsum)·d_y` for one super-block and four tokens.
#[target_feature(enable = "neon")]
#[inline]
fn k4_acc(
    f: float32x4_t,
    acc: [int32x4_t; 2],
    bs: &[V16; 8],
    dy: &V16,
    mn: [int32x4_t; 2],
    d: f32,
    dmin: f32,
) -> float32x4_t {
    let b = |s: usize| ld_s32(&bs[s].0);
    let m0 = mla_lane(
        mla_lane(vmulq_laneq_s32::<0>(b(0), mn[0]), b(2), mn[0], 2),
        b(4),
        mn[1],
        0,
    );
    let m0 = mla_lane(m0, b(6), mn[1], 2);
    let m1 = mla_lane(
        mla_lane(vmulq_laneq_s32::<1>(b(1), mn[0]), b(3), mn[0], 3),
        b(5),
        mn[1],
        1,
    );
    let m1 = mla_lane(m1, b(7), mn[1], 3);
    let t = vmulq_n_f32(vcvtq_f32_s32(vaddq_s32(acc[0], acc[1])), d);
    let t = vfmsq_n_f32(t, vcvtq_f32_s32(vaddq_s32(m0, m1)), dmin);
    vfmaq_f32(f, t, ld_f32_bytes(&dy.0))
}

/// One Q6_K row of a chunk against `G` groups of four tokens.
#[target_feature(enable = "neon")]
unsafe fn q6_row<D: IDot, const TWO: bool, const G: usize>(
    dd: D,
    wr: &[u8],
    act: [&[Act4K]; 2],
) -> [float32x4_t; 2] {
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(wr);
    // |(q−32)·y| <= 32·128.
    let maxp = 32 * 128;
    let off = vdupq_n_s8(32);
    let mut f = [vdupq_n_f32(0.0); 2];
    for (i, b) in blocks.iter().enumerate() {
        let s8 = vreinterpretq_s8_u8(ld_u8(bytemuck::cast_slice(&b.scales)));
        let (s16l, s16h) = (vmovl_s8(vget_low_s8(s8)), vmovl_high_s8(s8));
        let sc = [
            vmovl_s16(vget_low_s16(s16l)),
            vmovl_high_s16(s16l),
            vmovl_s16(vget_low_s16(s16h)),
            vmovl_high_s16(s16h),
        ];
        let z = vdupq_n_s32(0);
        let (mut aq, mut ar) = ([[z; 2]; G], [[z; 2]; G]);
        // Written out so that every lane and scale index is a constant.
        macro_rules! pair {
            ($g6:ident, $h:literal, $k:literal) => {
                // Groups of 16 number 8h+k and 8h+k+1: sub-block 4h+k/2 of 32.
                let q0 = vsubq_s8(vreinterpretq_s8_u8($g6[$k]), off);
                let q1 = vsubq_s8(vreinterpretq_s8_u8($g6[$k + 1]), off);
                let (s, v) = (4 * $h + $k / 2, sc[2 * $h + $k / 4]);
                for g in 0..G {
                    let a = &act[g][i];
                    let (p0, p1) = half16x2(dd, &a.x, s, q0, q1, maxp);
                    aq[g][0] = mla_lane(aq[g][0], p0, v, $k);
                    aq[g][1] = mla_lane(aq[g][1], p1, v, $k + 1);
                    if TWO {
                        let (p0, p1) = half16x2(dd, &a.xr, s, q0, q1, maxp);
                        ar[g][0] = mla_lane(ar[g][0], p0, v, $k);
                        ar[g][1] = mla_lane(ar[g][1], p1, v, $k + 1);
                    }
                }
            };
        }
        macro_rules! half {
            ($h:literal) => {
                let g6 = q6k_groups(&b.ql[64 * $h..64 * $h + 64], &b.qh[32 * $h..32 * $h + 32]);
                pair!(g6, $h, 0);
                pair!(g6, $h, 2);
                pair!(g6, $h, 4);
                pair!(g6, $h, 6);
            };
        }
        half!(0);
        half!(1);
        let d = f16_f32(&b.d);
        for g in 0..G {
            let a = &act[g][i];
            let t = vcvtq_f32_s32(vaddq_s32(aq[g][0], aq[g][1]));
            f[g] = vfmaq_n_f32(f[g], vmulq_f32(t, ld_f32_bytes(&a.dy.0)), d);
            if TWO {
                let t = vcvtq_f32_s32(vaddq_s32(ar[g][0], ar[g][1]));
                f[g] = vfmaq_n_f32(f[g], vmulq_f32(t, ld_f32_bytes(&a.dr.0)), d);
            }
        }
    }
    f
}

/// The two 16-element halves of sub-block `s` against four tokens: (elements 0..16 · `q0`,
/// elements 16..32 · `q1`).
#[inline(always)]
fn half16x2<D: IDot>(
    dd: D,
    x: &[V16; 64],
    s: usize,
    q0: int8x16_t,
    q1: int8x16_t,
    maxp: u32,
) -> (int32x4_t, int32x4_t) {
    // SAFETY: `dd` proves NEON (loads of in-bounds fixed-size data).
    let (a, b) = unsafe { (x4(x, 8 * s), x4(x, 8 * s + 4)) };
    let p0 = dd.acc4_sum(dd.dot4x4(dd.acc4(dd.load_acc(&ZERO)), a, q0, maxp));
    let p1 = dd.acc4_sum(dd.dot4x4(dd.acc4(dd.load_acc(&ZERO)), b, q1, maxp));
    (p0, p1)
}
