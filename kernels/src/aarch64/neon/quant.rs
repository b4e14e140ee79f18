//! Activation quantizers (f32 → Q8_0 / Q8_1 / Q8_K), bit-identical to ggml's reference quantizers:
//! Q8_0/Q8_1 round half away from zero (`roundf`, FCVTAS), Q8_K rounds half to even (ggml's
//! `nearest_int`, FCVTNS).

use super::util::*;
use crate::{F16Bits, QK, QK_K};
use core::arch::aarch64::*;

/// Bytes of a Q8_K block: d (f32), 256 quants, 16 i16 group sums.
pub(super) const Q8K_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);

/// Eight f32 vectors scaled by `id`, rounded with `round`, narrowed (saturating) to two i8 vectors.
#[target_feature(enable = "neon")]
#[inline]
fn narrow16(v: &[float32x4_t], id: f32, round: impl Fn(float32x4_t) -> int32x4_t) -> int8x16_t {
    let mut i = [vdupq_n_s32(0); 4];
    for k in 0..4 {
        i[k] = round(vmulq_n_f32(v[k], id));
    }
    let a = vcombine_s16(vqmovn_s32(i[0]), vqmovn_s32(i[1]));
    let b = vcombine_s16(vqmovn_s32(i[2]), vqmovn_s32(i[3]));
    vcombine_s8(vqmovn_s16(a), vqmovn_s16(b))
}

/// Shared body of Q8_0 / Q8_1: returns (d, qs, Σqs) for one block of 32.
#[target_feature(enable = "neon")]
#[inline]
fn q8_block(x: &[f32]) -> (f32, [int8x16_t; 2], i32) {
    let mut v = [vdupq_n_f32(0.0); 8];
    for (k, vk) in v.iter_mut().enumerate() {
        *vk = ld_f32(&x[4 * k..]);
    }
    let mut m = vabsq_f32(v[0]);
    for vk in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*vk));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let round = |t: float32x4_t| vcvtaq_s32_f32(t);
    let q0 = narrow16(&v[..4], id, round);
    let q1 = narrow16(&v[4..], id, round);
    let sum = vaddlvq_s8(q0) as i32 + vaddlvq_s8(q1) as i32;
    (d, [q0, q1], sum)
}

/// Sizes already checked: `x.len()` is a multiple of 32, `out` holds `x.len()/32` blocks of 34 bytes.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        let (d, q, _) = q8_block(xb);
        ob[..2].copy_from_slice(&F16Bits::from_f32(d).0);
        st_s8(&mut ob[2..], q[0]);
        st_s8(&mut ob[18..], q[1]);
    }
}

/// As [`quantize_q8_0`] with 36-byte blocks carrying `s = d·Σqs`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(36)) {
        let (d, q, sum) = q8_block(xb);
        ob[..2].copy_from_slice(&F16Bits::from_f32(d).0);
        ob[2..4].copy_from_slice(&F16Bits::from_f32(sum as f32 * d).0);
        st_s8(&mut ob[4..], q[0]);
        st_s8(&mut ob[20..], q[1]);
    }
}

/// The signed value of largest magnitude in `x` (the first one if several tie), as ggml picks it.
#[target_feature(enable = "neon")]
#[inline]
fn signed_absmax(x: &[f32], v: &[float32x4_t]) -> (f32, f32) {
    let mut mabs = vabsq_f32(v[0]);
    let mut mx = v[0];
    let mut mn = v[0];
    for vk in &v[1..] {
        mabs = vmaxq_f32(mabs, vabsq_f32(*vk));
        mx = vmaxq_f32(mx, *vk);
        mn = vminq_f32(mn, *vk);
    }
    let amax = vmaxvq_f32(mabs);
    let (hi, lo) = (vmaxvq_f32(mx), vminvq_f32(mn));
    let max = if hi == amax && lo != -amax {
        amax
    } else if lo == -amax && hi != amax {
        -amax
    } else {
        // Both signs reach the magnitude (or NaN): the first element of that magnitude decides.
        x.iter().copied().find(|t| t.abs() == amax).unwrap_or(amax)
    };
    (amax, max)
}

/// One Q8_K block of `xb` (256 values) into `ob` (292 bytes); returns `d` and the quants (sixteen
/// vectors), or `None` for an all-zero block (then `ob` is zeroed).
#[target_feature(enable = "neon")]
#[inline]
fn q8k_block(xb: &[f32], ob: &mut [u8]) -> Option<(f32, [int8x16_t; 16])> {
    let mut v = [vdupq_n_f32(0.0); 64];
    for (k, vk) in v.iter_mut().enumerate() {
        *vk = ld_f32(&xb[4 * k..]);
    }
    let (amax, max) = signed_absmax(xb, &v);
    if amax == 0.0 {
        ob.fill(0);
        return None;
    }
    let iscale = -127.0 / max;
    let cap = vdupq_n_s32(127);
    let round = |t: float32x4_t| vminq_s32(vcvtnq_s32_f32(t), cap);
    let mut qs = [vdupq_n_s8(0); 16];
    for (g, qg) in qs.iter_mut().enumerate() {
        let q = narrow16(&v[4 * g..4 * g + 4], iscale, round);
        st_s8(&mut ob[4 + 16 * g..], q);
        let s = vaddlvq_s8(q);
        ob[4 + QK_K + 2 * g..4 + QK_K + 2 * g + 2].copy_from_slice(&s.to_le_bytes());
        *qg = q;
    }
    let d = 1.0 / iscale;
    ob[..4].copy_from_slice(&d.to_le_bytes());
    Some((d, qs))
}

/// Sizes already checked: `x.len()` is a multiple of 256, `out` holds `x.len()/256` blocks of 292
/// bytes (d as little-endian f32, 256 quants, 16 little-endian i16 sums).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        q8k_block(xb, ob);
    }
}

// ---------------------------------------------------------------- q8x2 (`Quantize2`)
//
// Each step as `scalar::quantize2_*` computes it (same f32 operations, no fused multiply-add), with
// the roundings done by FCVTNS (ties to even, as the scalar `nearest_int`); the Q8_1 sum `Σx` is
// added in a different order (the accepted difference, see kernels/tests/matmul.rs).

/// The residual quants of four values `v` whose main quants are `q` (as f32): `nearest((v −
/// d·q)·id256)`, saturated to i8 by the caller's narrowing.
#[target_feature(enable = "neon")]
#[inline]
fn residual4(v: float32x4_t, q: float32x4_t, d: f32, id256: f32) -> int32x4_t {
    let res = vsubq_f32(v, vmulq_n_f32(q, d));
    vcvtnq_s32_f32(vmulq_n_f32(res, id256))
}

/// Four i32 vectors narrowed (saturating) to one i8 vector.
#[target_feature(enable = "neon")]
#[inline]
fn narrow_i32(i: [int32x4_t; 4]) -> int8x16_t {
    let a = vcombine_s16(vqmovn_s32(i[0]), vqmovn_s32(i[1]));
    let b = vcombine_s16(vqmovn_s32(i[2]), vqmovn_s32(i[3]));
    vcombine_s8(vqmovn_s16(a), vqmovn_s16(b))
}

/// One `q8x2` block of 32: (the f16 scale, `d`, main quants, residual quants, Σ main quants, Σx).
#[target_feature(enable = "neon")]
#[inline]
fn x2_block32(xb: &[f32]) -> (F16Bits, f32, [int8x16_t; 2], [int8x16_t; 2], i32, f32) {
    let mut v = [vdupq_n_f32(0.0); 8];
    for (k, vk) in v.iter_mut().enumerate() {
        *vk = ld_f32(&xb[4 * k..]);
    }
    let mut m = vabsq_f32(v[0]);
    let mut sx = v[0];
    for vk in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*vk));
        sx = vaddq_f32(sx, *vk);
    }
    let ds = crate::scalar::x2_scale_f16(vmaxvq_f32(m));
    let d = ds.to_f32();
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let id256 = id * 256.0;
    let (lim, nlim) = (vdupq_n_s32(127), vdupq_n_s32(-127));
    let mut q = [vdupq_n_s8(0); 2];
    let mut r = [vdupq_n_s8(0); 2];
    for h in 0..2 {
        let mut qi = [vdupq_n_s32(0); 4];
        let mut ri = [vdupq_n_s32(0); 4];
        for k in 0..4 {
            let x = v[4 * h + k];
            qi[k] = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(x, id)), lim), nlim);
            ri[k] = residual4(x, vcvtq_f32_s32(qi[k]), d, id256);
        }
        q[h] = narrow_i32(qi);
        r[h] = narrow_i32(ri);
    }
    let sum = i32::from(vaddlvq_s8(q[0])) + i32::from(vaddlvq_s8(q[1]));
    (ds, d, q, r, sum, vaddvq_f32(sx))
}

/// `q8x2` to Q8_0 blocks (sizes already checked: `x.len()` a multiple of 32, `q` and `r` holding
/// `x.len()/32` blocks of 34 bytes).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize2_q8_0(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    for ((xb, qb), rb) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(34))
        .zip(r.chunks_exact_mut(34))
    {
        let (ds, d, qv, rv, _, _) = x2_block32(xb);
        qb[..2].copy_from_slice(&ds.0);
        rb[..2].copy_from_slice(&F16Bits::from_f32(d / 256.0).0);
        for h in 0..2 {
            st_s8(&mut qb[2 + 16 * h..], qv[h]);
            st_s8(&mut rb[2 + 16 * h..], rv[h]);
        }
    }
}

/// `q8x2` to Q8_1 blocks (36 bytes; sizes as [`quantize2_q8_0`]): `s_q = f16(d·Σq)`, `s_r =
/// f16(Σx − s_q)`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize2_q8_1(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    for ((xb, qb), rb) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(36))
        .zip(r.chunks_exact_mut(36))
    {
        let (ds, d, qv, rv, sum, sx) = x2_block32(xb);
        let sq = F16Bits::from_f32(sum as f32 * d);
        qb[..2].copy_from_slice(&ds.0);
        qb[2..4].copy_from_slice(&sq.0);
        rb[..2].copy_from_slice(&F16Bits::from_f32(d / 256.0).0);
        rb[2..4].copy_from_slice(&F16Bits::from_f32(sx - sq.to_f32()).0);
        for h in 0..2 {
            st_s8(&mut qb[4 + 16 * h..], qv[h]);
            st_s8(&mut rb[4 + 16 * h..], rv[h]);
        }
    }
}

/// `q8x2` to Q8_K blocks (292 bytes each in `q` and `r`; sizes checked): the main block as
/// [`quantize_q8_k`], the residual `nearest((x − d·q)·256/d)` with scale `d/256` and its sums.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize2_q8_k(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let blocks = x.chunks_exact(QK_K).zip(q.chunks_exact_mut(Q8K_BYTES));
    for ((xb, qb), rb) in blocks.zip(r.chunks_exact_mut(Q8K_BYTES)) {
        let Some((d, qs)) = q8k_block(xb, qb) else {
            rb.fill(0);
            continue;
        };
        let is256 = 256.0 / d;
        for (g, qg) in qs.iter().enumerate() {
            let (lo, hi) = (vmovl_s8(vget_low_s8(*qg)), vmovl_high_s8(*qg));
            let qf = [
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
                vcvtq_f32_s32(vmovl_high_s16(lo)),
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
                vcvtq_f32_s32(vmovl_high_s16(hi)),
            ];
            let mut ri = [vdupq_n_s32(0); 4];
            for k in 0..4 {
                ri[k] = residual4(ld_f32(&xb[16 * g + 4 * k..]), qf[k], d, is256);
            }
            let rv = narrow_i32(ri);
            st_s8(&mut rb[4 + 16 * g..], rv);
            let s = vaddlvq_s8(rv);
            rb[4 + QK_K + 2 * g..4 + QK_K + 2 * g + 2].copy_from_slice(&s.to_le_bytes());
        }
        rb[..4].copy_from_slice(&(d / 256.0).to_le_bytes());
    }
}
