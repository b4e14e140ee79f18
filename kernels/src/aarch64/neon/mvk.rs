//! Decode (matrix × one activation, and × the `q8x2` pair) for the K-quants, one row at a time.
//!
//! Per 32-element sub-block (16 for Q6_K) the tier's vector-form [`IDot`] step sums `q·y` into a
//! fresh accumulator (loaded zeros: no register copy), which a by-element MLA scales by the
//! sub-block's integer scale into the super-block's i32 accumulator; the mins (Q4_K, Q5_K) and
//! Q6_K's offset −32 are taken from the activation's 16-element sums (`bsums`), so the quants are
//! used unsigned. One conversion per super-block: the integer sums and the min sum go through one
//! pairwise add, one SCVTF and one FMLA against `[d, d, −dmin, −dmin]·d_y`.
//!
//! With a residual the two activations keep separate integer accumulators (a sub-block scale of
//! up to 63 times `256·Σq` could leave i32), converted each with its own scale: the residual
//! scale need not be `d/256` here.

use super::quant::Q8K_BYTES;
use super::util::*;
use super::wtypes::*;
use crate::*;
use core::arch::aarch64::*;

/// The activation quants of chunk `j` (elements `64j..64j+64`) of a Q8_K block.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn act64(qs: &[u8], j: usize) -> [int8x16_t; 4] {
    let q = &qs[64 * j..64 * j + 64];
    [ld_s8(q), ld_s8(&q[16..]), ld_s8(&q[32..]), ld_s8(&q[48..])]
}

/// One chunk `j` of a Q4_K/Q5_K super-block against one activation (quants `y`): adds
/// `sc[2j]·Σ(sub-block 2j)` to `acc[0]` and `sc[2j+1]·Σ(sub-block 2j+1)` to `acc[1]` (two chains,
/// so that consecutive MLAs do not wait on each other).
#[target_feature(enable = "neon")]
#[inline]
fn k4_chunk<D: IDot>(
    dd: D,
    acc: [int32x4_t; 2],
    q: [int8x16_t; 4],
    y: &[u8],
    j: usize,
    sc: &[int32x4_t; 2],
) -> [int32x4_t; 2] {
    let y = act64(y, j);
    // |q·y| <= 31·128: four products per i16 lane fit.
    let pl = dd.dot2_small(dd.load_acc(&ZERO), q[0], y[0], q[1], y[1]);
    let ph = dd.dot2_small(dd.load_acc(&ZERO), q[2], y[2], q[3], y[3]);
    let s = sc[j / 2];
    [
        mla_lane(acc[0], pl, s, 2 * j),
        mla_lane(acc[1], ph, s, 2 * j + 1),
    ]
}

/// `Σ_j mn[j]·(sum of the activation quants of sub-block j)`, spread over i32 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn k4_mins(mn: int16x8_t, y: &Q8K) -> int32x4_t {
    let b0 = vreinterpretq_s16_u8(ld_u8(y.bsums));
    let b1 = vreinterpretq_s16_u8(ld_u8(&y.bsums[16..]));
    // Sub-block sums: |Σ| <= 32·128 fits i16.
    let ps = vpaddq_s16(b0, b1);
    vmlal_high_s16(vmull_s16(vget_low_s16(mn), vget_low_s16(ps)), mn, ps)
}

/// One Q4_K/Q5_K super-block against the activation block `y` (and, if `TWO`, `z`), each weight
/// chunk unpacked once: per activation `[Σ sc·q·y (2 lanes), Σ mn·bsum (2 lanes)]` as i32.
#[target_feature(enable = "neon")]
#[inline]
fn k4_block<D: IDot, K: K4, const TWO: bool>(
    dd: D,
    b: &K,
    y: &Q8K,
    z: &Q8K,
) -> (int32x4_t, int32x4_t) {
    let (sc, mn) = k4_scales(b.scales());
    let mut st = b.start(dd);
    let (mut aq, mut ar) = ([vdupq_n_s32(0); 2], [vdupq_n_s32(0); 2]);
    // Written out so that every lane index is a constant.
    macro_rules! chunk {
        ($j:literal) => {
            let q = b.chunk(dd, $j, &mut st);
            aq = k4_chunk(dd, aq, q, y.qs, $j, &sc);
            if TWO {
                ar = k4_chunk(dd, ar, q, z.qs, $j, &sc);
            }
        };
    }
    chunk!(0);
    chunk!(1);
    chunk!(2);
    chunk!(3);
    let tq = vpaddq_s32(vaddq_s32(aq[0], aq[1]), k4_mins(mn, y));
    let tr = if TWO {
        vpaddq_s32(vaddq_s32(ar[0], ar[1]), k4_mins(mn, z))
    } else {
        tq
    };
    (tq, tr)
}

/// `out[r] = row_r · xq (+ row_r · xr)` for Q4_K/Q5_K; sizes checked by the caller.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_k4<D: IDot, K: K4>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) {
    match xr {
        None => rows_k4::<D, K, false>(dd, n, w, xq, xq, out),
        Some(xr) => rows_k4::<D, K, true>(dd, n, w, xq, xr, out),
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn rows_k4<D: IDot, K: K4, const TWO: bool>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let rb = nb * core::mem::size_of::<K>();
    let (x, xr) = (&xq[..nb * Q8K_BYTES], &xr[..nb * Q8K_BYTES]);
    // [1, 1, −1, −1]: the min sums enter negated.
    let sign = vcombine_f32(vdup_n_f32(1.0), vdup_n_f32(-1.0));
    for (row, o) in w.chunks_exact(rb).zip(out.iter_mut()) {
        let blocks: &[K] = bytemuck::cast_slice(row);
        let mut f = vdupq_n_f32(0.0);
        for (i, b) in blocks.iter().enumerate() {
            let [d, dmin] = b.dm();
            let dm = vmulq_f32(f16x4_f32([d, d, dmin, dmin]), sign);
            let y = Q8K::new(&x[i * Q8K_BYTES..(i + 1) * Q8K_BYTES]);
            let z = Q8K::new(&xr[i * Q8K_BYTES..(i + 1) * Q8K_BYTES]);
            let (tq, tr) = k4_block::<D, K, TWO>(dd, b, &y, &z);
            f = vfmaq_f32(f, vcvtq_f32_s32(tq), vmulq_n_f32(dm, y.d));
            if TWO {
                f = vfmaq_f32(f, vcvtq_f32_s32(tr), vmulq_n_f32(dm, z.d));
            }
        }
        *o = vaddvq_f32(f);
    }
}

/// The offset term of a Q6_K super-block against one activation: `−32·Σ_g sc_g·bsum_g`
/// (`s16`: the 16 scales as i16; |bsum| <= 16·128 fits i16).
#[target_feature(enable = "neon")]
#[inline]
fn q6_offset(s16: [int16x8_t; 2], y: &Q8K) -> int32x4_t {
    let b0 = vreinterpretq_s16_u8(ld_u8(y.bsums));
    let b1 = vreinterpretq_s16_u8(ld_u8(&y.bsums[16..]));
    let o = vmlal_high_s16(
        vmull_s16(vget_low_s16(s16[0]), vget_low_s16(b0)),
        s16[0],
        b0,
    );
    let o = vmlal_high_s16(
        vmlal_s16(o, vget_low_s16(s16[1]), vget_low_s16(b1)),
        s16[1],
        b1,
    );
    vmulq_n_s32(o, -32)
}

/// One Q6_K super-block against `y` (and, if `TWO`, `z`), each group of 16 unpacked once:
/// `Σ_g sc_g·Σ (q−32)·y` in i32 lanes per activation.
#[target_feature(enable = "neon")]
#[inline]
fn q6_block<D: IDot, const TWO: bool>(
    dd: D,
    b: &BlockQ6K,
    y: &Q8K,
    z: &Q8K,
) -> (int32x4_t, int32x4_t) {
    let s8 = vreinterpretq_s8_u8(ld_u8(bytemuck::cast_slice(&b.scales)));
    let s16 = [vmovl_s8(vget_low_s8(s8)), vmovl_high_s8(s8)];
    let sc = [
        vmovl_s16(vget_low_s16(s16[0])),
        vmovl_high_s16(s16[0]),
        vmovl_s16(vget_low_s16(s16[1])),
        vmovl_high_s16(s16[1]),
    ];
    // Two accumulator chains (group k into chain k % 2), so that consecutive MLAs are
    // independent.
    let z4 = vdupq_n_s32(0);
    let mut aq = [q6_offset(s16, y), z4];
    let mut ar = [if TWO { q6_offset(s16, z) } else { z4 }, z4];
    for h in 0..2 {
        // 128 elements: ql[64h..64h+64], qh[32h..32h+32]; groups of 16 in element order, 0..64.
        let g = q6k_groups(&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let (yq, zq) = (&y.qs[128 * h..128 * h + 128], &z.qs[128 * h..128 * h + 128]);
        // Written out so that every lane and chain index is a constant.
        macro_rules! group {
            ($k:literal) => {
                let s = sc[2 * h + $k / 4];
                let q = vreinterpretq_s8_u8(g[$k]);
                // |q·y| <= 63·128: two products per i16 lane fit.
                let p = dd.dot_small(dd.load_acc(&ZERO), q, ld_s8(&yq[16 * $k..]));
                aq[$k % 2] = mla_lane(aq[$k % 2], p, s, $k);
                if TWO {
                    let p = dd.dot_small(dd.load_acc(&ZERO), q, ld_s8(&zq[16 * $k..]));
                    ar[$k % 2] = mla_lane(ar[$k % 2], p, s, $k);
                }
            };
        }
        group!(0);
        group!(1);
        group!(2);
        group!(3);
        group!(4);
        group!(5);
        group!(6);
        group!(7);
    }
    (vaddq_s32(aq[0], aq[1]), vaddq_s32(ar[0], ar[1]))
}

/// `out[r] = row_r · xq (+ row_r · xr)` for Q6_K; sizes checked by the caller.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_q6k<D: IDot>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) {
    match xr {
        None => rows_q6k::<D, false>(dd, n, w, xq, xq, out),
        Some(xr) => rows_q6k::<D, true>(dd, n, w, xq, xr, out),
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn rows_q6k<D: IDot, const TWO: bool>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let (x, xr) = (&xq[..nb * Q8K_BYTES], &xr[..nb * Q8K_BYTES]);
    for (row, o) in w.chunks_exact(nb * 210).zip(out.iter_mut()) {
        let blocks: &[BlockQ6K] = bytemuck::cast_slice(row);
        let mut f = vdupq_n_f32(0.0);
        for (i, b) in blocks.iter().enumerate() {
            let d = f16_f32(&b.d);
            let y = Q8K::new(&x[i * Q8K_BYTES..(i + 1) * Q8K_BYTES]);
            let z = Q8K::new(&xr[i * Q8K_BYTES..(i + 1) * Q8K_BYTES]);
            let (aq, ar) = q6_block::<D, TWO>(dd, b, &y, &z);
            f = vfmaq_n_f32(f, vcvtq_f32_s32(aq), d * y.d);
            if TWO {
                f = vfmaq_n_f32(f, vcvtq_f32_s32(ar), d * z.d);
            }
        }
        *o = vaddvq_f32(f);
    }
}
