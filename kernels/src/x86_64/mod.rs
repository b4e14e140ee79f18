//! x86-64 tiers.
pub mod avx2;
pub mod avx512;
mod common;
mod float;
mod lanes;
pub mod lora;
mod matmul;
mod matvec;
mod tiles;
mod wtypes;
