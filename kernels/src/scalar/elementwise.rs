//! The element-wise functions of the forward pass: the SiLU and GELU(tanh) gates of the feed-forward
//! and the exponentials of the attention softmax, all on one `exp` of plain f32 arithmetic (no
//! library call, no fused multiply-add). The SIMD tiers evaluate the same operations in the same
//! order lane by lane, so every tier gives the same bits for every element (sums of elements are
//! the exception: their order differs).
//!
//! `exp(x)`: `x` clamped to `[EXP_LO, EXP_HI]` (NaN passes through), `n = round(x·log₂e)` by the
//! `1.5·2²³` rounding trick (which also leaves `n` in the low mantissa bits, so `2ⁿ` is built from
//! the bits), `r = x − n·ln2` in two parts (Cody–Waite), `eʳ` by its Taylor polynomial of degree 7
//! (|r| ≤ ln2/2: truncation below 6·10⁻⁹ relative) in Horner form, times `2ⁿ`. Measured against
//! f64 `exp` over the whole range: within 2 ulp (the tests hold it to that).

/// Below this, `2ⁿ` would leave the normal range: `exp` is clamped here (e⁻⁸⁷ ≈ 1.6·10⁻³⁸).
pub const EXP_LO: f32 = -87.0;
/// Above this, `eˣ` would overflow: `exp` is clamped here (e⁸⁸ ≈ 1.7·10³⁸).
pub const EXP_HI: f32 = 88.0;
/// `x + ROUND − ROUND` rounds `|x| < 2²²` to the nearest integer (ties to even), and the integer is
/// then the difference of the bit patterns of `x + ROUND` and `ROUND`.
pub const ROUND: f32 = 12_582_912.0;
pub const LOG2E: f32 = core::f32::consts::LOG2_E;
/// ln 2 = `LN2_HI + LN2_LO`, `LN2_HI` short enough (9 significant bits) that `n·LN2_HI` is exact.
pub const LN2_HI: f32 = 355.0 / 512.0;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// The Taylor coefficients of `eʳ`, highest degree first (1/7!, 1/6!, …, 1, 1).
pub const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// √(2/π), the GELU(tanh) constant.
pub const GELU_C: f32 = 0.797_884_6;
/// The cubic coefficient of the GELU(tanh) argument.
pub const GELU_K: f32 = 0.044_715;

/// `2ⁿ` for `t = n + ROUND` as [`exp`] computes it (`n` in −126..=127).
#[inline(always)]
pub fn pow2_of_rounded(t: f32) -> f32 {
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// `eˣ` (see the module documentation).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // `clamp` keeps NaN, which therefore reaches the polynomial and the result.
    let x = x.clamp(EXP_LO, EXP_HI);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    p * pow2_of_rounded(t)
}

/// `silu(x)·u = x / (1 + e⁻ˣ) · u`.
#[inline(always)]
pub fn swiglu1(x: f32, u: f32) -> f32 {
    x / (1.0 + exp(-x)) * u
}

/// `gelu_tanh(x)·u`: `½x(1 + tanh z) = x / (1 + e⁻²ᶻ)`, `z = √(2/π)(x + 0.044715x³)`, times `u`.
#[inline(always)]
pub fn geglu1(x: f32, u: f32) -> f32 {
    let z = GELU_C * (x + GELU_K * x * x * x);
    x / (1.0 + exp(-2.0 * z)) * u
}

/// `g[i] = silu(g[i])·u[i]` over the common length.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = swiglu1(*g, u);
    }
}

/// `g[i] = gelu_tanh(g[i])·u[i]` over the common length.
pub fn geglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = geglu1(*g, u);
    }
}

/// `s[i] = exp(s[i] − shift)`, returning `Σ s[i]` (in order).
pub fn exp_shift(s: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = exp(*v - shift);
        sum += *v;
    }
    sum
}
