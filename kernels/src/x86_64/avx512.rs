//! The AVX-512 tier: F + BW + VL + VNNI (plus the AVX2 tier's AVX2, FMA and F16C). No AMX.
//!
//! The generic bodies of [`super::lanes`] instantiated for the
//! [`Avx512`](super::lanes::Avx512) token (16 lanes): integer dot products by `vpdpbusd` (i32
//! accumulation, so 8-bit weights need no splitting), batched-product tiles of 16 rows, two
//! 32-element blocks per vector in decode, K-quant chunks of 64 elements per vector. Its table
//! starts from the AVX2 tier's and overrides every kernel but the activation quantizers.
use super::tier::{tier_entries, tier_table};
use crate::{Kernels, Tier};

/// This tier's table, if the CPU has AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
pub fn kernels() -> Option<&'static Kernels> {
    supported().then_some(&TABLE)
}

fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

tier_entries!(
    Avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    4,
    6
);

static TABLE: Kernels = tier_table!(Tier::Avx512, ..super::avx2::TABLE);
