//! The element-wise functions (SwiGLU and GeGLU gates, the softmax's `exp_shift`):
//! - the scalar `exp` against f64 `exp` over its whole range (within 2 ulp), its clamps and NaN;
//! - the scalar gates against their defining formulas evaluated in f64;
//! - every SIMD tier against the scalar one, bit for bit per element (the tiers evaluate the same
//!   operations in the same order), on every length 0..=70 and on extreme, zero and NaN inputs;
//!   `exp_shift`'s sum within the rounding of a reordered sum.
mod common;
use common::*;
use edge_run_kernels::scalar::elementwise::{self as ew, EXP_HI, EXP_LO};
use edge_run_kernels::*;

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn scalar_exp_is_within_2_ulp_of_f64_over_its_range() {
    let (mut worst, mut at) = (0, 0.0f32);
    let steps = 2_000_000;
    for i in 0..=steps {
        let x = EXP_LO + (EXP_HI - EXP_LO) * i as f32 / steps as f32;
        for x in [x, x * 1e-3, x * 1e-6] {
            let want = (x as f64).exp() as f32;
            let u = ulps(ew::exp(x), want);
            if u > worst {
                (worst, at) = (u, x);
            }
        }
    }
    eprintln!("scalar exp: worst {worst} ulp (at x = {at})");
    assert!(worst <= 2, "exp({at}) is {worst} ulp from f64");
    assert_eq!(ew::exp(0.0), 1.0);
    assert_eq!(ew::exp(-1e4), ew::exp(EXP_LO), "clamped below");
    assert_eq!(ew::exp(1e4), ew::exp(EXP_HI), "clamped above");
    assert!(ew::exp(f32::INFINITY).is_finite() && ew::exp(f32::NEG_INFINITY) > 0.0);
    assert!(ew::exp(f32::NAN).is_nan(), "NaN passes through");
}

#[test]
fn scalar_gates_follow_their_formulas() {
    let mut g = Rng(7);
    for i in 0..20_000 {
        let x = if i < 10_000 {
            40.0 * g.uniform()
        } else {
            4.0 * g.normal()
        };
        let u = g.normal();
        let (xd, ud) = (x as f64, u as f64);
        let silu = xd / (1.0 + (-xd).exp()) * ud;
        let z = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
        // ½x(1 + tanh z) = x / (1 + e^(−2z)); the second form keeps its precision where tanh z
        // rounds to −1 in f64.
        let gelu = xd / (1.0 + (-2.0 * z).exp()) * ud;
        if z > -5.0 {
            assert!((gelu - 0.5 * xd * (1.0 + z.tanh()) * ud).abs() <= 1e-12 * (1.0 + gelu.abs()));
        }
        // Relative error: a few roundings, plus the f32 rounding of the exponent's argument `a`
        // times exp's condition number |a| (z carries ~4 roundings).
        for (name, got, want, a) in [
            ("swiglu", ew::swiglu1(x, u), silu, xd),
            ("geglu", ew::geglu1(x, u), gelu, 2.0 * z),
        ] {
            let tol = (8.0 + 4.0 * a.abs()) * EPS * want.abs() + 1e-30;
            assert!(
                (got as f64 - want).abs() <= tol,
                "{name}({x}, {u}) = {got}, f64 formula {want}"
            );
        }
    }
    let mut v = [f32::NAN, 1.0];
    ew::swiglu(&mut v, &[1.0, 2.0]);
    assert!(v[0].is_nan() && v[1] == 2.0 * ew::swiglu1(1.0, 1.0));
}

/// The inputs of one comparison: normal values, a wide uniform range, and (from length 8 on) the
/// clamps, zeros and NaN.
fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut g = Rng(seed);
    let mut x: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                120.0 * g.uniform()
            } else {
                3.0 * g.normal()
            }
        })
        .collect();
    let special = [0.0, -0.0, f32::NAN, 88.5, -88.5, 1e-30, -200.0, 200.0];
    if n >= special.len() {
        let at = g.below(n - special.len() + 1);
        x[at..at + special.len()].copy_from_slice(&special);
    }
    (x, (0..n).map(|_| g.normal()).collect())
}

/// Bit equality, with every NaN equal to every NaN.
fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| !(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())))
}

/// A gate entry of the table (`g = f(g)·u`).
type Gate = fn(&mut [f32], &[f32]);

fn compare_elementwise(k: &Kernels, n: usize, seed: u64) -> Result<(), String> {
    let s = Kernels::scalar();
    let (x, u) = inputs(n, seed);
    let gates: [(&str, Gate, Gate); 2] =
        [("swiglu", s.swiglu, k.swiglu), ("geglu", s.geglu, k.geglu)];
    for (name, want_fn, got_fn) in gates {
        let (mut want, mut got) = (x.clone(), x.clone());
        want_fn(&mut want, &u);
        got_fn(&mut got, &u);
        if let Some(i) = same_bits(&got, &want) {
            return Err(format!(
                "{} {name} n={n} seed={seed}: element {i} (x = {}) is {} vs scalar {}",
                k.tier.name(),
                x[i],
                got[i],
                want[i]
            ));
        }
    }
    // Softmax-like rows: finite scores and their maximum as the shift.
    let scores: Vec<f32> = x
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    let shift = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut want, mut got) = (scores.clone(), scores);
    let (sum_want, sum_got) = (
        (s.exp_shift)(&mut want, shift),
        (k.exp_shift)(&mut got, shift),
    );
    let sum_tol = dot_tol(n as f64, sum_want as f64);
    match same_bits(&got, &want) {
        Some(i) => Err(format!(
            "{} exp_shift n={n} seed={seed}: element {i} is {} vs scalar {}",
            k.tier.name(),
            got[i],
            want[i]
        )),
        None if !within(sum_got, sum_want, sum_tol) => Err(format!(
            "{} exp_shift n={n} seed={seed}: sum {sum_got} vs scalar {sum_want}",
            k.tier.name()
        )),
        None => Ok(()),
    }
}

fn compare_tier(k: &'static Kernels) -> Result<(), String> {
    for n in 0..=70 {
        for seed in 0..4 {
            compare_elementwise(k, n, seed * 100 + n as u64)?;
        }
    }
    compare_elementwise(k, 4099, 1)
}

#[test]
fn every_tier_matches_scalar_bit_for_bit() {
    compare_every_tier("swiglu/geglu/exp_shift", compare_tier);
}

/// A SiLU through the library `exp` and a GELU through `tanh`: right to a few ulp, not bit-exact.
fn libm_swiglu(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
fn tanh_geglu(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (ew::GELU_C * (x + ew::GELU_K * x * x * x)).tanh()) * u;
    }
}
fn exp_shift_dropping_last(s: &mut [f32], shift: f32) -> f32 {
    let n = s.len().saturating_sub(1);
    scalar::exp_shift(&mut s[..n], shift)
}

#[test]
fn comparison_catches_near_miss_kernels() {
    let mut wrong = *Kernels::scalar();
    wrong.tier = Tier::Avx2;
    wrong.swiglu = libm_swiglu;
    assert!(
        compare_elementwise(&wrong, 64, 3).is_err(),
        "library-exp SiLU"
    );
    let mut wrong = *Kernels::scalar();
    wrong.geglu = tanh_geglu;
    assert!(compare_elementwise(&wrong, 64, 3).is_err(), "tanh GELU");
    let mut wrong = *Kernels::scalar();
    wrong.exp_shift = exp_shift_dropping_last;
    assert!(compare_elementwise(&wrong, 9, 3).is_err(), "exp_shift tail");
    compare_tier(Kernels::scalar()).unwrap();
}
