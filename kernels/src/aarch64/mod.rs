//! aarch64 tiers.
pub mod lora;
pub mod neon;
