//! The element-wise functions ([`crate::scalar::elementwise`]) in NEON: the scalar reference's
//! operations lane by lane (separate multiplies and adds, IEEE division, `FMAX`/`FMIN`, which keep
//! NaN), so every element has the scalar tier's bits; a tail shorter than a vector goes through the
//! scalar functions.
use super::util::{ld_f32, st_f32};
use crate::scalar::elementwise::{
    self as r, EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, LOG2E, ROUND,
};
use core::arch::aarch64::*;

/// [`r::exp`] per lane.
#[target_feature(enable = "neon")]
#[inline]
fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
    let t = vaddq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)), vdupq_n_f32(ROUND));
    let n = vsubq_f32(t, vdupq_n_f32(ROUND));
    let r = vsubq_f32(
        vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(LN2_HI))),
        vmulq_f32(n, vdupq_n_f32(LN2_LO)),
    );
    let mut p = vdupq_n_f32(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(c));
    }
    let k = vsubq_s32(
        vreinterpretq_s32_f32(t),
        vdupq_n_s32(ROUND.to_bits() as i32),
    );
    let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))));
    vmulq_f32(p, pow2)
}

/// `x / (1 + exp(a)) · u` per lane.
#[target_feature(enable = "neon")]
#[inline]
fn gate(x: float32x4_t, a: float32x4_t, u: float32x4_t) -> float32x4_t {
    vmulq_f32(vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), exp(a))), u)
}

/// `g = f(g, u)` element-wise: vectors through `v`, the tail through the scalar `s`.
#[target_feature(enable = "neon")]
#[inline]
fn map2(
    g: &mut [f32],
    u: &[f32],
    v: impl Fn(float32x4_t, float32x4_t) -> float32x4_t,
    s: fn(f32, f32) -> f32,
) {
    let n = g.len().min(u.len());
    let (g, u) = (&mut g[..n], &u[..n]);
    let mut cg = g.chunks_exact_mut(4);
    let mut cu = u.chunks_exact(4);
    for (gc, uc) in (&mut cg).zip(&mut cu) {
        let y = v(ld_f32(gc), ld_f32(uc));
        st_f32(gc, y);
    }
    for (g, &u) in cg.into_remainder().iter_mut().zip(cu.remainder()) {
        *g = s(*g, u);
    }
}

/// `g = silu(g)·u` ([`r::swiglu`]).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn swiglu(g: &mut [f32], u: &[f32]) {
    map2(g, u, |x, u| gate(x, vnegq_f32(x), u), r::swiglu1);
}

/// `g = gelu_tanh(g)·u` ([`r::geglu`]).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn geglu(g: &mut [f32], u: &[f32]) {
    let gelu = |x, u| {
        let x3 = vmulq_f32(vmulq_f32(vmulq_n_f32(x, r::GELU_K), x), x);
        let z = vmulq_n_f32(vaddq_f32(x, x3), r::GELU_C);
        gate(x, vmulq_n_f32(z, -2.0), u)
    };
    map2(g, u, gelu, r::geglu1);
}

/// `s = exp(s − shift)`, returning the sum ([`r::exp_shift`]; the sum in lanes, then across them).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn exp_shift(s: &mut [f32], shift: f32) -> f32 {
    let mut cs = s.chunks_exact_mut(4);
    let mut acc = vdupq_n_f32(0.0);
    for c in &mut cs {
        let e = exp(vsubq_f32(ld_f32(c), vdupq_n_f32(shift)));
        st_f32(c, e);
        acc = vaddq_f32(acc, e);
    }
    let mut sum = vaddvq_f32(acc);
    for v in cs.into_remainder() {
        *v = r::exp(*v - shift);
        sum += *v;
    }
    sum
}
