//! aarch64 Advanced SIMD tiers.
//!
//! * [`kernels`] — [`Tier::Neon`]: Advanced SIMD only (widening multiplies SMULL/SMLAL + SADALP for the
//!   integer dot products), so it runs on a Cortex-A72 (Raspberry Pi 4).
//! * [`kernels_dotprod`] — [`Tier::NeonDotprod`]: the same kernels with the integer step done by SDOT
//!   (Cortex-A76 / Raspberry Pi 5 and later). `vdotq_s32` is still unstable in Rust 1.95, so SDOT is
//!   emitted with `asm!` (see `neon/util.rs`).
//!
//! Kernel bodies (each one generic body over the `util::IDot` proof token, instantiated per tier):
//!
//! * decode (`MatVec`, `MatVec2`): `mv.rs` for the 32-element formats (four rows at a time, one
//!   pairwise-add tree per block, the rows' f16 scales converted together), `mvk.rs` for the
//!   K-quants (one row at a time, integer sub-block scales by by-element MLA);
//! * batched products (`MatMul`, prefill): `mm.rs` and `mmk.rs`: activations prepared once per
//!   tile of eight tokens (token-interleaved, `act.rs`), each weight block unpacked once for the
//!   eight tokens, the token-lane step (`IDot::dot4x4`: SDOT by element, or SMULL/SMLAL) giving
//!   one token per lane;
//! * the `q8x2` pair (activation + residual): fused everywhere (each weight block unpacked once for
//!   both); where every residual block has the scale `d/256` of its main block (what `Quantize2`
//!   produces) the 32-element formats combine the two integer sums as `256·Σw·q + Σw·r` and convert
//!   once, otherwise each sum has its own scale (`act::Mode`).
//!
//! Q5_0/Q5_1 expand their 32 fifth bits with TBL + CMTST (`wtypes::fifth_bits`), then are Q4_0/Q4_1
//! with quants in 0..32. Weight offsets (`q − 8`, `q − 16`, Q6_K's `q − 32` in decode) are folded
//! into the activation side (block sums), so the quants are used as unpacked.
//!
//! F16 weights are widened with FCVTL (`vcvt_f32_f16`), which is base ARMv8-A Advanced SIMD: the
//! `fp16` feature (FEAT_FP16) only adds half-precision arithmetic and is not needed for conversion,
//! so both tiers use it unconditionally.
//!
//! Each kernel is one generic body (in `neon/`) instantiated in a `#[target_feature]` function per
//! tier; the table entries are safe wrappers that check the slice sizes first (inconsistent sizes are
//! a caller bug: a debug assertion, and NaN outputs / only the whole blocks that fit in release, the
//! same as the scalar tier) and then call the tier function. The tables are handed out only when the
//! CPU has the tier's features.

use crate::{Kernels, QuantType, Tier, QK, QK_K};

mod act;
mod elementwise;
mod float;
mod mm;
mod mmk;
mod mv;
mod mvk;
mod quant;
mod rows;
#[cfg(test)]
mod tests;
mod util;
mod wtypes;

/// The types whose `MatVec2` is fused in the NEON tiers (both `neon` and `neon-dotprod`; see
/// [`crate::Kernels::matvec2_fused`]): every quantized type.
pub(crate) const FUSED2: &[QuantType] = QuantType::QUANTIZED;

/// The Advanced SIMD tier, if this CPU (or, without `std`, this build target) has Advanced SIMD.
pub fn kernels() -> Option<&'static Kernels> {
    if has_neon() {
        Some(&NEON)
    } else {
        None
    }
}

/// The dot-product tier, if this CPU (or, without `std`, this build target) has Advanced SIMD and
/// the dot-product extension (FEAT_DotProd).
pub fn kernels_dotprod() -> Option<&'static Kernels> {
    if has_neon() && has_dotprod() {
        Some(&NEON_DOTPROD)
    } else {
        None
    }
}

fn has_neon() -> bool {
    // The vector loads reinterpret little-endian bytes.
    if cfg!(target_endian = "big") {
        return false;
    }
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "dotprod")
    }
}

/// Checks a matvec call's sizes with the crate's shape contract ([`crate::check_matvec`], shared by
/// every tier): `false` when there is nothing to compute — `n == 0` (then `out` is zeroed) or
/// inconsistent lengths (a debug assertion, and `out` filled with NaN in release builds).
fn check_matvec(ty: QuantType, n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) -> bool {
    crate::check_matvec(ty, n, w, xq, None, out).is_some()
}

/// [`check_matvec`] for a two-activation call (`xr` held to the same length as `xq`).
fn check_matvec2(ty: QuantType, n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) -> bool {
    crate::check_matvec(ty, n, w, xq, Some(xr), out).is_some()
}

/// The whole blocks a quantizer call converts ([`crate::quantize_blocks`], shared by every tier).
fn quantize_len(ty: QuantType, x: &[f32], out: &[u8]) -> usize {
    crate::quantize_blocks(ty, x, out.len())
}

const _: () = assert!(quant::Q8K_BYTES == core::mem::size_of::<crate::BlockQ8K>());
const _: () = assert!(QK == 32 && QK_K == 256);

/// A table entry `$name` that calls `$md::$f` (with the same arguments) in a function compiled for the
/// features `$feat`.
macro_rules! entry {
    ($feat:literal, $name:ident => $md:ident::$f:ident($($a:ident: $t:ty),*) $(-> $r:ty)?) => {
        pub(super) fn $name($($a: $t),*) $(-> $r)? {
            #[target_feature(enable = $feat)]
            unsafe fn imp($($a: $t),*) $(-> $r)? {
                $md::$f($($a),*)
            }
            // SAFETY: reachable only through the tier's table (features detected).
            unsafe { imp($($a),*) }
        }
    };
}

/// Defines, for one tier, the `#[target_feature]` entry points (`unsafe fn`, to be called only when
/// the CPU has `$feat`), the safe wrappers that check sizes and call them, and the table.
macro_rules! tier {
    ($table:ident, $tier:expr, $m:ident, $feat:literal, $dot:expr) => {
        mod $m {
            use super::{
                check_matvec, check_matvec2, elementwise, float, mm, mmk, mv, mvk, quant,
                quantize_len, rows,
            };
            use crate::{
                ActRows, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ8_0,
                QuantType,
            };

            macro_rules! matvec {
                ($name:ident, $ty:expr, $body:expr) => {
                    pub(super) fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        unsafe fn imp(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                            $body(n, w, xq, out)
                        }
                        if check_matvec($ty, n, w, xq, out) {
                            // SAFETY: this function is reachable only through the tier's table, which
                            // `kernels()`/`kernels_dotprod()` hand out only after detecting the tier's
                            // target features on this CPU; sizes were checked above.
                            unsafe { imp(n, w, xq, out) }
                        }
                    }
                };
            }
            matvec!(matvec_f32, QuantType::F32, float::matvec_f32);
            matvec!(matvec_f16, QuantType::F16, float::matvec_f16);

            macro_rules! matvec2 {
                ($name:ident, $ty:expr, $body:expr) => {
                    pub(super) fn $name(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        unsafe fn imp(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
                            $body($dot, n, w, xq, xr, out)
                        }
                        if check_matvec2($ty, n, w, xq, xr, out) {
                            // SAFETY: this function is reachable only through the tier's table, which
                            // `kernels()`/`kernels_dotprod()` hand out only after detecting the tier's
                            // target features on this CPU; sizes (of `w`, `xq` and `xr`) were checked
                            // above.
                            unsafe { imp(n, w, xq, xr, out) }
                        }
                    }
                };
            }
            /// A quantized type's `MatVec` (`$k` without a residual) and its fused `MatVec2` (each
            /// weight block unpacked once for both activations).
            macro_rules! matvec_q {
                ($name:ident, $name2:ident, $ty:expr, $k:expr) => {
                    matvec!($name, $ty, |n, w, x, o| $k($dot, n, w, x, None, o));
                    matvec2!($name2, $ty, |d, n, w, x, r, o| $k(d, n, w, x, Some(r), o));
                };
            }
            matvec_q!(matvec_q4_0, matvec2_q4_0, QuantType::Q4_0, mv::matvec::<_, BlockQ4_0>);
            matvec_q!(matvec_q4_1, matvec2_q4_1, QuantType::Q4_1, mv::matvec::<_, BlockQ4_1>);
            matvec_q!(matvec_q5_0, matvec2_q5_0, QuantType::Q5_0, mv::matvec::<_, BlockQ5_0>);
            matvec_q!(matvec_q5_1, matvec2_q5_1, QuantType::Q5_1, mv::matvec::<_, BlockQ5_1>);
            matvec_q!(matvec_q8_0, matvec2_q8_0, QuantType::Q8_0, mv::matvec::<_, BlockQ8_0>);
            matvec_q!(matvec_q4_k, matvec2_q4_k, QuantType::Q4K, mvk::matvec_k4::<_, BlockQ4K>);
            matvec_q!(matvec_q5_k, matvec2_q5_k, QuantType::Q5K, mvk::matvec_k4::<_, BlockQ5K>);
            matvec_q!(matvec_q6_k, matvec2_q6_k, QuantType::Q6K, mvk::matvec_q6k);

            macro_rules! matmul {
                ($name:ident, $ty:expr, $body:expr) => {
                    pub(super) fn $name(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        unsafe fn imp(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                            $body(n, w, x, out)
                        }
                        if n == 0 || x.n_tok == 0 {
                            out.fill(0.0);
                            return;
                        }
                        // `Kernels::matmul` has checked the shapes; a direct call of the table
                        // entry gets the same check (NaN outputs on a violation).
                        if crate::matmul_shape($ty, n, w, &x, out).is_none() {
                            out.fill(f32::NAN);
                            return;
                        }
                        // SAFETY: reachable only through the tier's table, handed out only after
                        // detecting the tier's target features; shapes checked above.
                        unsafe { imp(n, w, x, out) }
                    }
                };
            }
            matmul!(matmul_f32, QuantType::F32, float::matmul::<false>);
            matmul!(matmul_f16, QuantType::F16, float::matmul::<true>);
            /// `MatMul` of a 32-element type (`mm`) or a K-quant (`mmk`).
            macro_rules! matmul_q {
                ($name:ident, $ty:ident, mm::<$b:ty>) => {
                    matmul!($name, QuantType::$ty, |n, w, x, o| {
                        mm::matmul::<_, $b>($dot, n, w, x, o)
                    });
                };
                ($name:ident, $ty:ident, mmk) => {
                    matmul!($name, QuantType::$ty, |n, w, x, o| {
                        mmk::matmul($dot, QuantType::$ty, n, w, x, o)
                    });
                };
            }
            matmul_q!(matmul_q4_0, Q4_0, mm::<BlockQ4_0>);
            matmul_q!(matmul_q4_1, Q4_1, mm::<BlockQ4_1>);
            matmul_q!(matmul_q5_0, Q5_0, mm::<BlockQ5_0>);
            matmul_q!(matmul_q5_1, Q5_1, mm::<BlockQ5_1>);
            matmul_q!(matmul_q8_0, Q8_0, mm::<BlockQ8_0>);
            matmul_q!(matmul_q4_k, Q4K, mmk);
            matmul_q!(matmul_q5_k, Q5K, mmk);
            matmul_q!(matmul_q6_k, Q6K, mmk);

            macro_rules! quantize {
                ($name:ident, $ty:expr, $body:path) => {
                    pub(super) fn $name(x: &[f32], out: &mut [u8]) {
                        #[target_feature(enable = $feat)]
                        unsafe fn imp(x: &[f32], out: &mut [u8]) {
                            $body(x, out)
                        }
                        let nb = quantize_len($ty, x, out);
                        let (x, out) = (
                            &x[..nb * $ty.block_size()],
                            &mut out[..nb * $ty.type_size()],
                        );
                        // SAFETY: reachable only through the tier's table, handed out only after
                        // detecting the tier's target features; `x` and `out` hold `nb` whole blocks.
                        unsafe { imp(x, out) }
                    }
                };
            }
            quantize!(quantize_q8_0, QuantType::Q8_0, quant::quantize_q8_0);
            quantize!(quantize_q8_1, QuantType::Q8_1, quant::quantize_q8_1);
            quantize!(quantize_q8_k, QuantType::Q8K, quant::quantize_q8_k);

            macro_rules! quantize2 {
                ($name:ident, $ty:expr, $body:path) => {
                    pub(super) fn $name(x: &[f32], q: &mut [u8], r: &mut [u8]) {
                        #[target_feature(enable = $feat)]
                        unsafe fn imp(x: &[f32], q: &mut [u8], r: &mut [u8]) {
                            $body(x, q, r)
                        }
                        let nb = quantize_len($ty, x, q).min(quantize_len($ty, x, r));
                        let (bs, ts) = ($ty.block_size(), $ty.type_size());
                        let (x, q, r) = (&x[..nb * bs], &mut q[..nb * ts], &mut r[..nb * ts]);
                        // SAFETY: reachable only through the tier's table, handed out only after
                        // detecting the tier's target features; `x`, `q` and `r` hold `nb` blocks.
                        unsafe { imp(x, q, r) }
                    }
                };
            }
            quantize2!(quantize2_q8_0, QuantType::Q8_0, quant::quantize2_q8_0);
            quantize2!(quantize2_q8_1, QuantType::Q8_1, quant::quantize2_q8_1);
            quantize2!(quantize2_q8_k, QuantType::Q8K, quant::quantize2_q8_k);

            entry!($feat, dot_f32 => float::dot_f32(a: &[f32], b: &[f32]) -> f32);
            entry!($feat, axpy_f32 => float::axpy_f32(a: f32, x: &[f32], y: &mut [f32]));
            entry!($feat, dot_rows_f32 => rows::dot_rows(
                q: &[f32], r: &[f32], stride: usize, out: &mut [f32]
            ));
            entry!($feat, axpy_rows_f32 => rows::axpy_rows(
                w: &[f32], r: &[f32], stride: usize, out: &mut [f32]
            ));
            entry!($feat, dot_rows_f16 => rows::dot_rows(
                q: &[f32], r: &[crate::F16Bits], stride: usize, out: &mut [f32]
            ));
            entry!($feat, axpy_rows_f16 => rows::axpy_rows(
                w: &[f32], r: &[crate::F16Bits], stride: usize, out: &mut [f32]
            ));
            entry!($feat, dot_rows_q8_0 => rows::dot_rows(
                q: &[f32], r: &[crate::BlockQ8_0], stride: usize, out: &mut [f32]
            ));
            entry!($feat, axpy_rows_q8_0 => rows::axpy_rows(
                w: &[f32], r: &[crate::BlockQ8_0], stride: usize, out: &mut [f32]
            ));
            entry!($feat, swiglu => elementwise::swiglu(g: &mut [f32], u: &[f32]));
            entry!($feat, geglu => elementwise::geglu(g: &mut [f32], u: &[f32]));
            entry!($feat, exp_shift => elementwise::exp_shift(s: &mut [f32], shift: f32) -> f32);
        }

        static $table: Kernels = Kernels {
            tier: $tier,
            matvec_f32: $m::matvec_f32,
            matvec_f16: $m::matvec_f16,
            matvec_q4_0: $m::matvec_q4_0,
            matvec_q4_1: $m::matvec_q4_1,
            matvec_q5_0: $m::matvec_q5_0,
            matvec_q5_1: $m::matvec_q5_1,
            matvec_q8_0: $m::matvec_q8_0,
            matvec_q4_k: $m::matvec_q4_k,
            matvec_q5_k: $m::matvec_q5_k,
            matvec_q6_k: $m::matvec_q6_k,
            matvec2_q4_0: $m::matvec2_q4_0,
            matvec2_q4_1: $m::matvec2_q4_1,
            matvec2_q5_0: $m::matvec2_q5_0,
            matvec2_q5_1: $m::matvec2_q5_1,
            matvec2_q8_0: $m::matvec2_q8_0,
            matvec2_q4_k: $m::matvec2_q4_k,
            matvec2_q5_k: $m::matvec2_q5_k,
            matvec2_q6_k: $m::matvec2_q6_k,
            quantize_q8_0: $m::quantize_q8_0,
            quantize_q8_1: $m::quantize_q8_1,
            quantize_q8_k: $m::quantize_q8_k,
            quantize2_q8_0: $m::quantize2_q8_0,
            quantize2_q8_1: $m::quantize2_q8_1,
            quantize2_q8_k: $m::quantize2_q8_k,
            matmul_f32: Some($m::matmul_f32),
            matmul_f16: Some($m::matmul_f16),
            matmul_q4_0: Some($m::matmul_q4_0),
            matmul_q4_1: Some($m::matmul_q4_1),
            matmul_q5_0: Some($m::matmul_q5_0),
            matmul_q5_1: Some($m::matmul_q5_1),
            matmul_q8_0: Some($m::matmul_q8_0),
            matmul_q4_k: Some($m::matmul_q4_k),
            matmul_q5_k: Some($m::matmul_q5_k),
            matmul_q6_k: Some($m::matmul_q6_k),
            dot_f32: $m::dot_f32,
            axpy_f32: $m::axpy_f32,
            dot_rows_f32: $m::dot_rows_f32,
            axpy_rows_f32: $m::axpy_rows_f32,
            dot_rows_f16: $m::dot_rows_f16,
            axpy_rows_f16: $m::axpy_rows_f16,
            dot_rows_q8_0: $m::dot_rows_q8_0,
            axpy_rows_q8_0: $m::axpy_rows_q8_0,
            swiglu: $m::swiglu,
            geglu: $m::geglu,
            exp_shift: $m::exp_shift,
        };
    };
}

tier!(
    NEON,
    Tier::Neon,
    neon_tier,
    "neon",
    super::util::Mull::new()
);
tier!(
    NEON_DOTPROD,
    Tier::NeonDotprod,
    dotprod_tier,
    "neon,dotprod",
    super::util::Sdot::new()
);
