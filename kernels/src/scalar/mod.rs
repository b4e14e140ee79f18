//! Scalar reference kernels: the definition every SIMD tier is tested against.
//!
//! Plain safe Rust, `no_std`, no floating-point library calls (rounding and square roots are done
//! with exact integer/IEEE arithmetic so that the results are the same with and without `std`).
//!
//! What "bit-exact with ggml" means here:
//! - Dequantization (`dequantize_row_*`) evaluates ggml's reference formulas in f32 in ggml's order
//!   (`q*d`, `q*d + m`, `(d*sc)*q - dmin*m`, `(d*sc)*q`), each operation rounded separately (no fused
//!   multiply-add).
//! - `quantize_row_q4_0/q4_1/q5_0/q5_1/q8_0/q8_1/q8_K` follow ggml's `quantize_row_*_ref`: the same
//!   scale, the same reciprocal, `roundf` (ties away from zero) for Q8_0/Q8_1, truncation after `+ 8.5`
//!   style offsets for the 4/5-bit formats, and `nearest_int` (ties to even) for Q8_K.
//! - `quantize_row_q4_k/q5_k/q6_k` follow `quantize_row_q4_K_ref`/`q5_K_ref`/`q6_K_ref` (the
//!   `make_qkx2_quants` / `make_qx_quants` searches) operation by operation without FMA contraction; a C
//!   build that contracts `a*b + c` into FMA may differ from it (and from itself across compilers).
//! - Dot products multiply integers within a block like ggml and accumulate f32 across blocks; they are
//!   not bit-identical to any particular ggml build (ggml's own SIMD paths differ from each other), but
//!   their order is fixed and documented per function so SIMD tiers can be compared with a tolerance.
//!
//! Slice-length contract: the typed functions process as many whole blocks as both sides hold
//! (`debug_assert!`s flag a mismatch in debug builds); the byte-level [`MatVec`] / [`Quantize`] functions
//! write NaN to `out` (matvec) or leave the tail untouched (quantize) on inconsistent lengths. Nothing
//! here panics in release builds on any input.
use crate::*;
use bytemuck::{Pod, Zeroable};
use core::mem::size_of;

mod dequant;
mod dot;
pub mod elementwise;
mod matvec;
mod quantize;
mod quantize_weights;
mod rows;
pub use dequant::*;
pub use dot::*;
pub use elementwise::{exp_shift, geglu, swiglu};
pub use matvec::*;
pub use quantize::*;
pub use quantize_weights::*;
pub use rows::*;

/// The scalar tier's table; every other tier's table starts from it and states what it overrides.
pub const TABLE: Kernels = Kernels {
    tier: Tier::Scalar,
    matvec_f32,
    matvec_f16,
    matvec_q4_0,
    matvec_q4_1,
    matvec_q5_0,
    matvec_q5_1,
    matvec_q8_0,
    matvec_q4_k,
    matvec_q5_k,
    matvec_q6_k,
    matvec2_q4_0,
    matvec2_q4_1,
    matvec2_q5_0,
    matvec2_q5_1,
    matvec2_q8_0,
    matvec2_q4_k,
    matvec2_q5_k,
    matvec2_q6_k,
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_k,
    quantize2_q8_0,
    quantize2_q8_1,
    quantize2_q8_k,
    matmul_f32: None,
    matmul_f16: None,
    matmul_q4_0: None,
    matmul_q4_1: None,
    matmul_q5_0: None,
    matmul_q5_1: None,
    matmul_q8_0: None,
    matmul_q4_k: None,
    matmul_q5_k: None,
    matmul_q6_k: None,
    dot_f32,
    axpy_f32,
    dot_rows_f32: dot_rows,
    axpy_rows_f32: axpy_rows,
    dot_rows_f16: dot_rows,
    axpy_rows_f16: axpy_rows,
    dot_rows_q8_0: dot_rows,
    axpy_rows_q8_0: axpy_rows,
    swiglu,
    geglu,
    exp_shift,
};

/// The scalar tier ([`TABLE`]) at a fixed address.
pub static KERNELS: Kernels = TABLE;

// ---------------------------------------------------------------------------------------------------
// Exact arithmetic (no libm in core)
// ---------------------------------------------------------------------------------------------------

#[inline(always)]
fn absf(v: f32) -> f32 {
    f32::from_bits(v.to_bits() & 0x7fff_ffff)
}

/// ggml's `nearest_int`: `v + 1.5·2^23`, then read the mantissa. Rounds to nearest, ties to even, for
/// |v| ≤ 4194303; other inputs give some integer (never a panic), as in ggml.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let t = v + 12582912.0f32;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C `roundf` (ties away from zero) as an integer, for |v| < 2^31; NaN gives 0.
#[inline(always)]
pub fn round_away(v: f32) -> i32 {
    if v.is_nan() || absf(v) >= 8388608.0 {
        // |v| ≥ 2^23 is already integral (or NaN/inf): saturating conversion.
        return v as i32;
    }
    let t = v as i32; // truncation toward zero, exact here
    let frac = v - t as f32; // exact for |v| < 2^23
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Correctly rounded f32 square root (IEEE `sqrtf`) without libm: Newton in f64, then a fix-up with
/// exact midpoint comparisons.
pub fn sqrtf(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    let xd = x as f64;
    // Initial guess: halve the f64 exponent.
    let mut y = f64::from_bits((xd.to_bits() >> 1) + (0x3ff0_0000_0000_0000u64 >> 1));
    for _ in 0..6 {
        y = 0.5 * (y + xd / y);
    }
    let mut r = y as f32;
    // r and its neighbours have 24-bit significands: midpoints have 25 bits and their squares fit
    // exactly in an f64, so the comparisons below are exact.
    loop {
        let up = f32::from_bits(r.to_bits() + 1);
        let mid = (r as f64 + up as f64) * 0.5;
        if mid * mid < xd {
            r = up;
            continue;
        }
        if r.to_bits() > 1 {
            let down = f32::from_bits(r.to_bits() - 1);
            let mid = (r as f64 + down as f64) * 0.5;
            if mid * mid > xd {
                r = down;
                continue;
            }
        }
        return r;
    }
}

#[inline(always)]
fn fp16(v: f32) -> F16Bits {
    F16Bits::from_f32(v)
}

/// `1 / d`, or 0 for a zero scale (ggml's `id`).
#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The two 5-bit weights of byte `j` of a Q5 block, minus `offset`.
#[inline(always)]
pub(super) fn q5_pair(qs: &[u8; QK / 2], qh: u32, j: usize, offset: i32) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    let v0 = ((qs[j] & 0x0f) as u32 | h0) as i32 - offset;
    let v1 = ((qs[j] >> 4) as u32 | h1) as i32 - offset;
    (v0, v1)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even_and_round_away() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
        assert_eq!(round_away(2.5), 3);
        assert_eq!(round_away(-2.5), -3);
        assert_eq!(round_away(0.49999997), 0);
        assert_eq!(round_away(-126.5), -127);
        assert_eq!(round_away(f32::NAN), 0);
    }

    #[test]
    fn sqrt_is_correctly_rounded() {
        // Exact squares, and a check of the rounding property on a spread of values.
        for i in 1u32..2000 {
            let v = (i * i) as f32;
            assert_eq!(sqrtf(v), i as f32);
        }
        let mut state = 0x1234_5678u32;
        for _ in 0..200_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let bits = (state % 0x7f7f_ffff) + 1; // positive finite, not the largest
            let x = f32::from_bits(bits);
            let r = sqrtf(x);
            let rd = r as f64;
            let up = f32::from_bits(r.to_bits() + 1) as f64;
            let down = f32::from_bits(r.to_bits() - 1) as f64;
            let xd = x as f64;
            let (mu, md) = ((rd + up) / 2.0, (rd + down) / 2.0);
            assert!(mu * mu > xd && md * md < xd, "sqrt({x}) = {r}");
        }
        assert!(sqrtf(-1.0).is_nan());
        assert_eq!(sqrtf(0.0), 0.0);
    }
}
