//! x86-64 tiers: [`avx2`] and [`avx512`], one generic body per kernel over the lane-width trait of
//! [`lanes`] (the tiers differ in their token's instructions, not in their code).
//!
//! - `matvec`: decode (`MatVec`, `MatVec2`) of the quantized types; `matmul` (with `tiles`):
//!   batched products; `float`: F32/F16 weights and the f32 vector functions; `quant`: activation
//!   quantizers; `wtypes`: what the bodies need to know about each weight type; `common`: the
//!   const-checked loads (the only `unsafe` memory accesses) and small utilities; `tier`: the entries
//!   and tables generated per token.
use crate::QuantType;

pub mod avx2;
pub mod avx512;
mod common;
mod elementwise;
mod float;
mod lanes;
pub mod lora;
mod matmul;
mod matvec;
mod quant;
mod rows;
mod tier;
mod tiles;
mod wtypes;

/// Whether the CPU has every named target feature: detected at run time with `std`, otherwise the
/// ones this build enables.
macro_rules! has_features {
    ($($f:tt),+) => {{
        #[cfg(feature = "std")]
        let has = true $(&& std::is_x86_feature_detected!($f))+;
        #[cfg(not(feature = "std"))]
        let has = cfg!(all($(target_feature = $f),+));
        has
    }};
}
pub(crate) use has_features;

/// AVX2, FMA and F16C: the AVX2 tier's features, which every x86 tier also needs.
fn has_avx2() -> bool {
    has_features!("avx2", "fma", "f16c")
}

/// The types whose `MatVec2` is fused (each weight block unpacked once for both activations) in
/// both x86 tiers (see [`crate::Kernels::matvec2_fused`]): every quantized type.
pub(crate) const FUSED2: &[QuantType] = QuantType::QUANTIZED;
