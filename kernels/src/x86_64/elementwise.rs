//! The element-wise functions ([`crate::scalar::elementwise`]) for both x86 tiers: the scalar reference's
//! operations lane by lane (separate multiplies and adds, IEEE division), so every element has the
//! scalar tier's bits; a tail shorter than a vector goes through the scalar functions.
use super::lanes::Lanes;
use crate::scalar::elementwise::{
    self as r, EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, LOG2E, ROUND,
};

/// [`r::exp`] per lane.
#[inline(always)]
fn exp<L: Lanes>(l: L, x: L::F) -> L::F {
    let x = l.fclamp(x, EXP_LO, EXP_HI);
    let t = l.fadd(l.fmul(x, l.fsplat(LOG2E)), l.fsplat(ROUND));
    let n = l.fsub(t, l.fsplat(ROUND));
    let r = l.fsub(
        l.fsub(x, l.fmul(n, l.fsplat(LN2_HI))),
        l.fmul(n, l.fsplat(LN2_LO)),
    );
    let mut p = l.fsplat(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = l.fadd(l.fmul(p, r), l.fsplat(c));
    }
    l.fmul(p, l.pow2_of_rounded(t))
}

/// `x / (1 + exp(a)) · u` per lane.
#[inline(always)]
fn gate<L: Lanes>(l: L, x: L::F, a: L::F, u: L::F) -> L::F {
    l.fmul(l.fdiv(x, l.fadd(l.fsplat(1.0), exp(l, a))), u)
}

/// `g = f(g, u)` element-wise: vectors through `v`, the tail through the scalar `s`.
#[inline(always)]
fn map2<L: Lanes>(
    l: L,
    g: &mut [f32],
    u: &[f32],
    v: impl Fn(L::F, L::F) -> L::F,
    s: fn(f32, f32) -> f32,
) {
    let n = g.len().min(u.len());
    let (g, u) = (&mut g[..n], &u[..n]);
    let full = n / L::N * L::N;
    for (gc, uc) in g[..full]
        .chunks_exact_mut(L::N)
        .zip(u[..full].chunks_exact(L::N))
    {
        let y = v(l.fload(gc), l.fload(uc));
        l.store_to(gc, y);
    }
    for (g, &u) in g[full..].iter_mut().zip(&u[full..]) {
        *g = s(*g, u);
    }
}

/// [`r::swiglu`].
#[inline(always)]
pub(super) fn swiglu<L: Lanes>(l: L, g: &mut [f32], u: &[f32]) {
    map2(
        l,
        g,
        u,
        |x, u| gate(l, x, l.fsub(l.fzero(), x), u),
        r::swiglu1,
    );
}

/// [`r::geglu`].
#[inline(always)]
pub(super) fn geglu<L: Lanes>(l: L, g: &mut [f32], u: &[f32]) {
    map2(
        l,
        g,
        u,
        |x, u| {
            let x3 = l.fmul(l.fmul(l.fmul(l.fsplat(r::GELU_K), x), x), x);
            let z = l.fmul(l.fsplat(r::GELU_C), l.fadd(x, x3));
            gate(l, x, l.fmul(l.fsplat(-2.0), z), u)
        },
        r::geglu1,
    );
}

/// [`r::exp_shift`] (the sum in vector lanes, then across them).
#[inline(always)]
pub(super) fn exp_shift<L: Lanes>(l: L, s: &mut [f32], shift: f32) -> f32 {
    let full = s.len() / L::N * L::N;
    let mut acc = l.fzero();
    for c in s[..full].chunks_exact_mut(L::N) {
        let e = exp(l, l.fsub(l.fload(c), l.fsplat(shift)));
        l.store_to(c, e);
        acc = l.fadd(acc, e);
    }
    let mut sum = l.hsum(acc);
    for v in &mut s[full..] {
        *v = r::exp(*v - shift);
        sum += *v;
    }
    sum
}
