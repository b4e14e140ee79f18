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
    super::has_avx2() && super::has_features!("avx512f", "avx512bw", "avx512vl", "avx512vnni")
}

tier_entries!(
    Avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    4,
    6
);

static TABLE: Kernels = tier_table!(Tier::Avx512, ..super::avx2::TABLE);
