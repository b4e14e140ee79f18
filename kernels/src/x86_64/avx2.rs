//! The AVX2 + FMA + F16C tier.
//!
//! Every kernel is one of the generic bodies shared with the AVX-512 tier ([`super::lanes`]),
//! instantiated for the [`Avx2`](super::lanes::Avx2) token (8 i32/f32 lanes): integer dot products
//! as `vpmaddubsw` pairs summed in i16 as far as the weight range allows without saturation, then
//! `vpmaddwd` (Q8_0 weights, whose pairs could saturate, as two nibble tiles in the batched product
//! and widened to 16 bits in decode). Every integer product is exact for any input bytes, so
//! results differ from the scalar tier only by f32 summation order. The activation quantizers
//! ([`super::quant`]) are bit-exact with the scalar tier; the AVX-512 tier uses them too.
//!
//! The entries are reachable only through [`kernels`], which checks the CPU first.
use super::tier::{tier_entries, tier_table};
use crate::{Kernels, Tier};

/// This tier's table, if the CPU has AVX2, FMA and F16C.
pub fn kernels() -> Option<&'static Kernels> {
    super::has_avx2().then_some(&TABLE)
}

tier_entries!(Avx2, "avx2,fma,f16c", 3, 4);

/// The activation quantizers' entries (shared with the AVX-512 tier through its table).
mod q {
    use super::super::quant;

    macro_rules! entry {
        ($name:ident => $imp:ident($($a:ident: $t:ty),*)) => {
            pub(super) fn $name($($a: $t),*) {
                // SAFETY: reachable only through the AVX2 table (or the AVX-512 table built on
                // it), handed out only on a CPU with avx2, fma and f16c, the features `$imp`
                // enables.
                unsafe { quant::$imp($($a),*) }
            }
        };
    }
    entry!(quantize_q8_0 => quant_q8_0(x: &[f32], out: &mut [u8]));
    entry!(quantize_q8_1 => quant_q8_1(x: &[f32], out: &mut [u8]));
    entry!(quantize_q8_k => quant_q8_k(x: &[f32], out: &mut [u8]));
    entry!(quantize2_q8_0 => quant2_q8_0(x: &[f32], q: &mut [u8], r: &mut [u8]));
    entry!(quantize2_q8_1 => quant2_q8_1(x: &[f32], q: &mut [u8], r: &mut [u8]));
    entry!(quantize2_q8_k => quant2_q8_k(x: &[f32], q: &mut [u8], r: &mut [u8]));
}

/// Every field is this tier's; a field added to [`Kernels`] later starts as the scalar reference's.
#[allow(clippy::needless_update)]
pub(super) static TABLE: Kernels = tier_table!(
    Tier::Avx2,
    quantize_q8_0: q::quantize_q8_0,
    quantize_q8_1: q::quantize_q8_1,
    quantize_q8_k: q::quantize_q8_k,
    quantize2_q8_0: q::quantize2_q8_0,
    quantize2_q8_1: q::quantize2_q8_1,
    quantize2_q8_k: q::quantize2_q8_k,
    ..crate::scalar::TABLE
);
