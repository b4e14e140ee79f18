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

/// Sizes already checked: `x.len()` is a multiple of 256, `out` holds `x.len()/256` blocks of 292
/// bytes (d as little-endian f32, 256 quants, 16 little-endian i16 sums).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        let mut v = [vdupq_n_f32(0.0); 64];
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = ld_f32(&xb[4 * k..]);
        }
        let (amax, max) = signed_absmax(xb, &v);
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let cap = vdupq_n_s32(127);
        let round = |t: float32x4_t| vminq_s32(vcvtnq_s32_f32(t), cap);
        for g in 0..16 {
            let q = narrow16(&v[4 * g..4 * g + 4], iscale, round);
            st_s8(&mut ob[4 + 16 * g..], q);
            let s = vaddlvq_s8(q);
            ob[4 + QK_K + 2 * g..4 + QK_K + 2 * g + 2].copy_from_slice(&s.to_le_bytes());
        }
        ob[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
