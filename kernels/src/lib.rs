//! Compute kernels for edge-run: quantized matrix×vector products over ggml blocks and the fp16 LoRA
//! side computation, with a scalar reference for every kernel and SIMD tiers chosen at run time.
//!
//! The crate is `no_std`. With the default `std` feature, [`Kernels::best`] detects CPU features at run
//! time (a binary built on one x86 machine runs correctly on an older one); without it, the tiers whose
//! target features are enabled at compile time are used.
//!
//! All kernels take and return plain slices; the SIMD tiers are reachable only through a [`Kernels`]
//! table, which is handed out only when the CPU has the features that tier needs.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod blocks;
pub mod lora;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use blocks::*;
pub use scalar::dequantize;

/// ggml tensor types this crate knows, numbered as in `ggml.h` (`enum ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QuantType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    BF16 = 30,
}

impl QuantType {
    /// The type for a ggml type id, if this crate knows it.
    pub fn from_ggml(id: u32) -> Option<Self> {
        use QuantType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            _ => return None,
        })
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        use QuantType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            BF16 => "BF16",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use QuantType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => QK,
            Q4K | Q5K | Q6K | Q8K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use core::mem::size_of;
        use QuantType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => size_of::<BlockQ4_0>(),
            Q4_1 => size_of::<BlockQ4_1>(),
            Q5_0 => size_of::<BlockQ5_0>(),
            Q5_1 => size_of::<BlockQ5_1>(),
            Q8_0 => size_of::<BlockQ8_0>(),
            Q8_1 => size_of::<BlockQ8_1>(),
            Q4K => size_of::<BlockQ4K>(),
            Q5K => size_of::<BlockQ5K>(),
            Q6K => size_of::<BlockQ6K>(),
            Q8K => size_of::<BlockQ8K>(),
        }
    }

    /// Bytes of a row of `n` elements; `None` if `n` is not a multiple of the block size or overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// The format the activation vector is quantized to for a dot product with weights of this type.
    pub fn vec_dot_type(self) -> QuantType {
        use QuantType::*;
        match self {
            F32 | F16 | BF16 => F32,
            Q4_0 | Q5_0 | Q8_0 => Q8_0,
            Q4_1 | Q5_1 => Q8_1,
            Q4K | Q5K | Q6K => Q8K,
            Q8_1 | Q8K => F32,
        }
    }
}

/// Which instruction-set tier a [`Kernels`] table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (+ the AVX2 tier's requirements).
    Avx512,
    /// aarch64 Advanced SIMD without the dot-product extension (Raspberry Pi 4, Cortex-A72).
    Neon,
    /// aarch64 Advanced SIMD with `sdot` (Raspberry Pi 5, Cortex-A76).
    NeonDotprod,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512vnni",
            Tier::Neon => "neon",
            Tier::NeonDotprod => "neon-dotprod",
        }
    }
}

/// `out[r] = row_r(w) · x` for `out.len()` rows of `n` elements each, laid one after the other in `w`
/// (each row `QuantType::row_bytes(n)` bytes); `xq` is the activation in the weight type's
/// [`QuantType::vec_dot_type`] (raw bytes; for F32 the f32 values' bytes).
pub type MatVec = fn(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]);
/// `out[r] = row_r(w) · xq + row_r(w) · xr`: a [`MatVec`] against two activations of the same format
/// at once (the `q8x2` activation mode: an 8-bit quantization `xq` and the 8-bit quantization `xr` of
/// its residual). The result is what two `MatVec` calls and an f32 add give, up to f32 summation
/// order; the length contract is `MatVec`'s with `xr` held to the same length as `xq` (for
/// `n == 0` the output is zeros; on inconsistent lengths, a debug assertion and NaN outputs in
/// release builds, never a panic). Fused tiers unpack each weight block once for both products.
pub type MatVec2 = fn(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]);
/// Quantize `x` into the bytes of `out` (`vec_dot_type` blocks). `x.len()` must be a multiple of the block.
pub type Quantize = fn(x: &[f32], out: &mut [u8]);

/// A table of kernels for one tier. Get one with [`Kernels::best`], [`Kernels::scalar`] or
/// [`Kernels::available`]; every field has the same meaning in every tier.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub tier: Tier,
    pub matvec_f32: MatVec,
    pub matvec_f16: MatVec,
    pub matvec_q4_0: MatVec,
    pub matvec_q4_1: MatVec,
    pub matvec_q5_0: MatVec,
    pub matvec_q5_1: MatVec,
    pub matvec_q8_0: MatVec,
    pub matvec_q4_k: MatVec,
    pub matvec_q5_k: MatVec,
    pub matvec_q6_k: MatVec,
    /// [`MatVec2`] entries of the quantized types (see [`Kernels::matvec2`]).
    pub matvec2_q4_0: MatVec2,
    pub matvec2_q4_1: MatVec2,
    pub matvec2_q5_0: MatVec2,
    pub matvec2_q5_1: MatVec2,
    pub matvec2_q8_0: MatVec2,
    pub matvec2_q4_k: MatVec2,
    pub matvec2_q5_k: MatVec2,
    pub matvec2_q6_k: MatVec2,
    pub quantize_q8_0: Quantize,
    pub quantize_q8_1: Quantize,
    pub quantize_q8_k: Quantize,
    /// Σ a[i]·b[i] over f32.
    pub dot_f32: fn(a: &[f32], b: &[f32]) -> f32,
    /// y[i] += a · x[i] over f32.
    pub axpy_f32: fn(a: f32, x: &[f32], y: &mut [f32]),
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels").field("tier", &self.tier).finish()
    }
}

impl Kernels {
    /// The scalar reference tier (always available).
    pub fn scalar() -> &'static Kernels {
        &scalar::KERNELS
    }

    /// Every tier this CPU can run, scalar first.
    pub fn available() -> impl Iterator<Item = &'static Kernels> {
        let mut v: [Option<&'static Kernels>; 3] = [Some(&scalar::KERNELS), None, None];
        #[cfg(target_arch = "x86_64")]
        {
            v[1] = x86_64::avx2::kernels();
            v[2] = x86_64::avx512::kernels();
        }
        #[cfg(target_arch = "aarch64")]
        {
            v[1] = aarch64::neon::kernels();
            v[2] = aarch64::neon::kernels_dotprod();
        }
        v.into_iter().flatten()
    }

    /// The fastest tier this CPU can run.
    pub fn best() -> &'static Kernels {
        Self::available().last().unwrap_or(&scalar::KERNELS)
    }

    /// The tier with this name (`scalar`, `avx2`, …), if this CPU can run it.
    pub fn by_name(name: &str) -> Option<&'static Kernels> {
        Self::available().find(|k| k.tier.name() == name)
    }

    /// The matrix×vector kernel for weights of type `ty`, if there is one.
    pub fn matvec(&self, ty: QuantType) -> Option<MatVec> {
        use QuantType::*;
        Some(match ty {
            F32 => self.matvec_f32,
            F16 => self.matvec_f16,
            Q4_0 => self.matvec_q4_0,
            Q4_1 => self.matvec_q4_1,
            Q5_0 => self.matvec_q5_0,
            Q5_1 => self.matvec_q5_1,
            Q8_0 => self.matvec_q8_0,
            Q4K => self.matvec_q4_k,
            Q5K => self.matvec_q5_k,
            Q6K => self.matvec_q6_k,
            _ => return None,
        })
    }

    /// The two-activation matrix×vector kernel ([`MatVec2`]) for weights of type `ty`: every type
    /// with an integer dot product (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) has one in every
    /// tier. `None` for F32/F16 (their activations are f32 and have no residual; a caller wanting two
    /// activations there makes two [`MatVec`] calls) and for types without a matvec.
    ///
    /// Every SIMD tier fuses all eight types; the scalar tier (the reference) makes two passes.
    /// [`Kernels::matvec2_fused`] says which are fused.
    pub fn matvec2(&self, ty: QuantType) -> Option<MatVec2> {
        use QuantType::*;
        Some(match ty {
            Q4_0 => self.matvec2_q4_0,
            Q4_1 => self.matvec2_q4_1,
            Q5_0 => self.matvec2_q5_0,
            Q5_1 => self.matvec2_q5_1,
            Q8_0 => self.matvec2_q8_0,
            Q4K => self.matvec2_q4_k,
            Q5K => self.matvec2_q5_k,
            Q6K => self.matvec2_q6_k,
            _ => return None,
        })
    }

    /// Whether this tier's [`Kernels::matvec2`] for `ty` is a fused kernel (each weight block unpacked
    /// once for both activations) rather than two passes of the tier's `MatVec` (the scalar tier's
    /// entries are always two passes: they are the reference).
    pub fn matvec2_fused(&self, ty: QuantType) -> bool {
        let fused: &[QuantType] = match self.tier {
            Tier::Scalar => &[],
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => x86_64::avx512::FUSED2,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => x86_64::avx2::FUSED2,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon | Tier::NeonDotprod => aarch64::neon::FUSED2,
            #[allow(unreachable_patterns)]
            _ => &[],
        };
        fused.contains(&ty)
    }

    /// The activation quantizer for a `vec_dot_type` (`Q8_0`, `Q8_1`, `Q8_K`; `F32` copies the bytes).
    pub fn quantize(&self, vec_dot_type: QuantType) -> Option<Quantize> {
        use QuantType::*;
        Some(match vec_dot_type {
            Q8_0 => self.quantize_q8_0,
            Q8_1 => self.quantize_q8_1,
            Q8K => self.quantize_q8_k,
            F32 => scalar::quantize_f32,
            _ => return None,
        })
    }
}
