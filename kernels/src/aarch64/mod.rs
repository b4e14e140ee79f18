//! aarch64 tiers.
pub mod neon;
pub mod lora;
