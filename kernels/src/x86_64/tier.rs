//! The kernel entries of one x86 tier, generated for its lane token ([`super::lanes`]): each is a
//! safe function with the table's signature that calls a `#[target_feature]` function
//! instantiating the generic body (`matvec`, `matmul`, `float`) for the token. The shape checks
//! are the crate's ([`crate::check_matvec`]; `MatMul` shapes are checked by
//! [`crate::Kernels::matmul`] before any entry runs).

/// Defines, in a module `k`, the kernel entries of the tier whose token is `$tok` and whose
/// features are `$feat` (float tiles `$rm × $rn`). The entries are reachable only through the
/// tier's table, which its `kernels()` hands out only after detecting `$feat`.
macro_rules! tier_entries {
    ($tok:ident, $feat:literal, $rm:literal, $rn:literal) => {
        pub(super) mod k {
            use super::super::float::{self, F16W, F32W};
            use super::super::lanes::$tok;
            use super::super::{elementwise, matmul, matvec, rows};
            use crate::{check_matvec, ActRows, QuantType};
            use crate::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1};
            use crate::{BlockQ6K, BlockQ8_0};

            /// `MatVec` and `MatVec2` entries of a quantized type.
            macro_rules! mv {
                ($name:ident, $name2:ident => $f:ident::<$b:ty>, $ty:ident) => {
                    pub(in super::super) fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        fn imp(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                            if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, None, out) {
                                matvec::$f::<$tok, $b>($tok::new(), s, w, xq, None, out)
                            }
                        }
                        // SAFETY: reachable only through the tier's table, handed out only on a
                        // CPU with the features `imp` enables.
                        unsafe { imp(n, w, xq, out) }
                    }
                    pub(in super::super) fn $name2(
                        n: usize,
                        w: &[u8],
                        xq: &[u8],
                        xr: &[u8],
                        out: &mut [f32],
                    ) {
                        #[target_feature(enable = $feat)]
                        fn imp(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
                            if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, Some(xr), out) {
                                matvec::$f::<$tok, $b>($tok::new(), s, w, xq, Some(xr), out)
                            }
                        }
                        // SAFETY: as for the one-activation entry above.
                        unsafe { imp(n, w, xq, xr, out) }
                    }
                };
            }
            mv!(matvec_q4_0, matvec2_q4_0 => legacy::<BlockQ4_0>, Q4_0);
            mv!(matvec_q4_1, matvec2_q4_1 => legacy::<BlockQ4_1>, Q4_1);
            mv!(matvec_q5_0, matvec2_q5_0 => legacy::<BlockQ5_0>, Q5_0);
            mv!(matvec_q5_1, matvec2_q5_1 => legacy::<BlockQ5_1>, Q5_1);
            mv!(matvec_q8_0, matvec2_q8_0 => legacy::<BlockQ8_0>, Q8_0);
            mv!(matvec_q4_k, matvec2_q4_k => kquant::<BlockQ4K>, Q4K);
            mv!(matvec_q5_k, matvec2_q5_k => kquant::<BlockQ5K>, Q5K);
            mv!(matvec_q6_k, matvec2_q6_k => kquant::<BlockQ6K>, Q6K);

            /// `MatVec` of F32/F16 weights.
            macro_rules! mvf {
                ($name:ident => $w:ty, $ty:ident) => {
                    pub(in super::super) fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        fn imp(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                            if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, None, out) {
                                float::matvec::<$tok, $w, 4>($tok::new(), s, w, xq, out)
                            }
                        }
                        // SAFETY: as for the quantized entries.
                        unsafe { imp(n, w, xq, out) }
                    }
                };
            }
            mvf!(matvec_f32 => F32W, F32);
            mvf!(matvec_f16 => F16W, F16);

            /// `MatMul` entries (shapes checked by `Kernels::matmul`).
            macro_rules! mm {
                ($name:ident => $f:path) => {
                    pub(in super::super) fn $name(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                        #[target_feature(enable = $feat)]
                        fn imp(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                            $f($tok::new(), n, w, x, out)
                        }
                        // SAFETY: as for the matrix×vector entries.
                        unsafe { imp(n, w, x, out) }
                    }
                };
            }
            mm!(matmul_f32 => float::matmul::<$tok, F32W, $rm, $rn>);
            mm!(matmul_f16 => float::matmul::<$tok, F16W, $rm, $rn>);
            mm!(matmul_q4_0 => matmul::legacy::<$tok, BlockQ4_0>);
            mm!(matmul_q4_1 => matmul::legacy::<$tok, BlockQ4_1>);
            mm!(matmul_q5_0 => matmul::legacy::<$tok, BlockQ5_0>);
            mm!(matmul_q5_1 => matmul::legacy::<$tok, BlockQ5_1>);
            mm!(matmul_q8_0 => matmul::legacy::<$tok, BlockQ8_0>);
            mm!(matmul_q4_k => matmul::kquant::<$tok, BlockQ4K>);
            mm!(matmul_q5_k => matmul::kquant::<$tok, BlockQ5K>);
            mm!(matmul_q6_k => matmul::kquant::<$tok, BlockQ6K>);

            pub(in super::super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
                #[target_feature(enable = $feat)]
                fn imp(a: &[f32], b: &[f32]) -> f32 {
                    float::dot($tok::new(), a, b)
                }
                // SAFETY: as for the matrix entries.
                unsafe { imp(a, b) }
            }

            pub(in super::super) fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
                #[target_feature(enable = $feat)]
                fn imp(a: f32, x: &[f32], y: &mut [f32]) {
                    float::axpy($tok::new(), a, x, y)
                }
                // SAFETY: as for the matrix entries.
                unsafe { imp(a, x, y) }
            }

            /// Entries of the products of one vector with f32 rows at a stride.
            macro_rules! rows {
                ($name:ident => $f:ident, $elem:ty) => {
                    pub(in super::super) fn $name(
                        v: &[f32],
                        rows: &[$elem],
                        stride: usize,
                        out: &mut [f32],
                    ) {
                        #[target_feature(enable = $feat)]
                        fn imp(v: &[f32], rows: &[$elem], stride: usize, out: &mut [f32]) {
                            rows::$f($tok::new(), v, rows, stride, out)
                        }
                        // SAFETY: as for the matrix entries.
                        unsafe { imp(v, rows, stride, out) }
                    }
                };
            }
            rows!(dot_rows_f32 => dot_rows, f32);
            rows!(axpy_rows_f32 => axpy_rows, f32);
            rows!(dot_rows_f16 => dot_rows, crate::F16Bits);
            rows!(axpy_rows_f16 => axpy_rows, crate::F16Bits);
            rows!(dot_rows_q8_0 => dot_rows, crate::BlockQ8_0);
            rows!(axpy_rows_q8_0 => axpy_rows, crate::BlockQ8_0);

            /// Entries of the element-wise gates (`g = f(g)·u`).
            macro_rules! gate {
                ($name:ident) => {
                    pub(in super::super) fn $name(g: &mut [f32], u: &[f32]) {
                        #[target_feature(enable = $feat)]
                        fn imp(g: &mut [f32], u: &[f32]) {
                            elementwise::$name($tok::new(), g, u)
                        }
                        // SAFETY: as for the matrix entries.
                        unsafe { imp(g, u) }
                    }
                };
            }
            gate!(swiglu);
            gate!(geglu);

            pub(in super::super) fn exp_shift(s: &mut [f32], shift: f32) -> f32 {
                #[target_feature(enable = $feat)]
                fn imp(s: &mut [f32], shift: f32) -> f32 {
                    elementwise::exp_shift($tok::new(), s, shift)
                }
                // SAFETY: as for the matrix entries.
                unsafe { imp(s, shift) }
            }
        }
    };
}
pub(super) use tier_entries;

/// The table fields every x86 tier sets from its `k` module (see [`tier_entries`]); `$rest` is
/// the table the others come from.
macro_rules! tier_table {
    ($tier:expr, $($extra:ident: $v:expr,)* ..$rest:expr) => {
        crate::Kernels {
            tier: $tier,
            matvec_f32: k::matvec_f32,
            matvec_f16: k::matvec_f16,
            matvec_q4_0: k::matvec_q4_0,
            matvec_q4_1: k::matvec_q4_1,
            matvec_q5_0: k::matvec_q5_0,
            matvec_q5_1: k::matvec_q5_1,
            matvec_q8_0: k::matvec_q8_0,
            matvec_q4_k: k::matvec_q4_k,
            matvec_q5_k: k::matvec_q5_k,
            matvec_q6_k: k::matvec_q6_k,
            matvec2_q4_0: k::matvec2_q4_0,
            matvec2_q4_1: k::matvec2_q4_1,
            matvec2_q5_0: k::matvec2_q5_0,
            matvec2_q5_1: k::matvec2_q5_1,
            matvec2_q8_0: k::matvec2_q8_0,
            matvec2_q4_k: k::matvec2_q4_k,
            matvec2_q5_k: k::matvec2_q5_k,
            matvec2_q6_k: k::matvec2_q6_k,
            matmul_f32: Some(k::matmul_f32),
            matmul_f16: Some(k::matmul_f16),
            matmul_q4_0: Some(k::matmul_q4_0),
            matmul_q4_1: Some(k::matmul_q4_1),
            matmul_q5_0: Some(k::matmul_q5_0),
            matmul_q5_1: Some(k::matmul_q5_1),
            matmul_q8_0: Some(k::matmul_q8_0),
            matmul_q4_k: Some(k::matmul_q4_k),
            matmul_q5_k: Some(k::matmul_q5_k),
            matmul_q6_k: Some(k::matmul_q6_k),
            dot_f32: k::dot_f32,
            axpy_f32: k::axpy_f32,
            dot_rows_f32: k::dot_rows_f32,
            axpy_rows_f32: k::axpy_rows_f32,
            dot_rows_f16: k::dot_rows_f16,
            axpy_rows_f16: k::axpy_rows_f16,
            dot_rows_q8_0: k::dot_rows_q8_0,
            axpy_rows_q8_0: k::axpy_rows_q8_0,
            swiglu: k::swiglu,
            geglu: k::geglu,
            exp_shift: k::exp_shift,
            $($extra: $v,)*
            ..$rest
        }
    };
}
pub(super) use tier_table;
