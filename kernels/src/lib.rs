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
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "std")]
extern crate std;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod blocks;
pub mod kv_elem;
pub mod lora;
pub mod prefetch;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use blocks::*;
pub use kv_elem::KvElem;
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
    /// Every type a model's matrices can have here (each has a [`MatVec`] and a [`MatMul`] in every
    /// tier), in ggml's numbering order.
    pub const WEIGHTS: &'static [QuantType] = &[
        QuantType::F32,
        QuantType::F16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The weight types with an integer dot product (activations quantized to Q8_0, Q8_1 or Q8_K,
    /// and a [`MatVec2`]): [`QuantType::WEIGHTS`] without F32 and F16.
    pub const QUANTIZED: &'static [QuantType] = Self::WEIGHTS.split_at(2).1;

    /// The activation types of the integer dot products: every [`QuantType::QUANTIZED`] type's
    /// [`QuantType::vec_dot_type`] is one of them.
    pub const ACTIVATIONS: &'static [QuantType] =
        &[QuantType::Q8_0, QuantType::Q8_1, QuantType::Q8K];

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
        if !n.is_multiple_of(self.block_size()) {
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

// ---------------------------------------------------------------------------------------------------
// The shape contract: one place where every tier's matrix kernels and quantizers check their lengths
// ---------------------------------------------------------------------------------------------------

/// The lengths of one matrix×vector call that passed [`check_matvec`]: `nb` blocks per row (`n` over
/// the block size; `n` elements for F32/F16), `row_bytes` per weight row, `act_bytes` per activation
/// row (in the weight type's [`QuantType::vec_dot_type`]; the f32 bytes for F32/F16 weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatShape {
    pub nb: usize,
    pub row_bytes: usize,
    pub act_bytes: usize,
}

/// The second activation's length in a shape-check message (nothing when there is none).
struct SecondActivation(Option<usize>);

impl core::fmt::Display for SecondActivation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(len) => write!(f, ", xr={len} bytes"),
            None => Ok(()),
        }
    }
}

/// The lengths a [`MatVec`] (`xr == None`) or [`MatVec2`] (`xr == Some`) call needs: `n` a whole
/// number of blocks of `ty`, `w` holding `out.len()` rows, `xq` (and `xr`) one activation row.
/// Every tier checks its calls here, before any kernel runs. Returns `None` when there is nothing
/// to compute: `n == 0` (then `out` is zeroed) or inconsistent lengths (a caller bug: a debug
/// assertion, and `out` filled with NaN in release builds; nothing is read past a slice).
pub(crate) fn check_matvec(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) -> Option<MatShape> {
    if n == 0 {
        out.fill(0.0);
        return None;
    }
    let shape = (|| {
        let row_bytes = ty.row_bytes(n)?;
        let act_bytes = ty.vec_dot_type().row_bytes(n)?;
        let fits = w.len() >= row_bytes.checked_mul(out.len())?
            && xq.len() >= act_bytes
            && xr.is_none_or(|r| r.len() >= act_bytes);
        fits.then_some(MatShape {
            nb: n / ty.block_size(),
            row_bytes,
            act_bytes,
        })
    })();
    debug_assert!(
        shape.is_some(),
        "{} matvec: inconsistent lengths (n={n}, w={} bytes, xq={} bytes{}, rows={})",
        ty.name(),
        w.len(),
        xq.len(),
        SecondActivation(xr.map(<[u8]>::len)),
        out.len()
    );
    if shape.is_none() {
        out.fill(f32::NAN);
    }
    shape
}

/// The lengths a [`MatMul`] call needs (see [`Kernels::matmul`]), for `n > 0`: the shape of one
/// row × token product, or `None` on a violation.
fn matmul_shape(
    ty: QuantType,
    n: usize,
    w: &[u8],
    x: &ActRows<'_>,
    out: &[f32],
) -> Option<MatShape> {
    let row_bytes = ty.row_bytes(n)?;
    let act_bytes = ty.vec_dot_type().row_bytes(n)?;
    let shape = MatShape {
        nb: n / ty.block_size(),
        row_bytes,
        act_bytes,
    };
    if x.n_tok == 0 {
        return out.is_empty().then_some(shape);
    }
    let float = matches!(ty, QuantType::F32 | QuantType::F16);
    let rows = out.len() / x.n_tok;
    let act_len = (x.n_tok - 1)
        .checked_mul(x.stride)
        .and_then(|l| l.checked_add(act_bytes));
    let ok = out.len().is_multiple_of(x.n_tok)
        && x.stride >= act_bytes
        && row_bytes.checked_mul(rows).is_some_and(|l| l <= w.len())
        && act_len.is_some_and(|l| l <= x.q.len())
        && match x.r {
            None => true,
            Some(r) => !float && act_len.is_some_and(|l| l <= r.len()),
        };
    ok.then_some(shape)
}

/// The whole blocks a [`Quantize`] / [`Quantize2`] call converts into `out_len` bytes of `vt` blocks
/// (`vt` the activation type): those that both `x` and the output hold. `x.len()` not a multiple of
/// the block, or an output too short, is a caller bug (a debug assertion); release builds convert
/// the blocks that fit and leave the rest of the output untouched.
pub(crate) fn quantize_blocks(vt: QuantType, x: &[f32], out_len: usize) -> usize {
    let (bs, ts) = (vt.block_size(), vt.type_size());
    debug_assert!(
        x.len().is_multiple_of(bs),
        "quantize {}: {} values are not a multiple of {bs}",
        vt.name(),
        x.len()
    );
    debug_assert!(
        out_len / ts >= x.len() / bs,
        "quantize {}: output of {out_len} bytes too short for {} values",
        vt.name(),
        x.len()
    );
    (x.len() / bs).min(out_len / ts)
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
/// `out[r] = row_r(w) · xq + row_r(w) · xr`: a [`MatVec`] against the two activation rows of the
/// `q8x2` mode, `xq` and its residual row `xr` as a [`Quantize2`] wrote them (each `xr` block's scale
/// exactly its `xq` block's / 256: the SIMD tiers rely on it to add the two integer sums of a
/// 32-element block as one i32, `256·Σ w·q + Σ w·r`). The result is what two `MatVec` calls and an
/// f32 add give, up to f32 summation order; the length contract is `MatVec`'s with `xr` held to the
/// same length as `xq` (for `n == 0` the output is zeros; on inconsistent lengths, a debug assertion
/// and NaN outputs in release builds, never a panic). Fused tiers unpack each weight block once for
/// both products.
pub type MatVec2 = fn(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]);
/// Quantize `x` into the bytes of `out` (`vec_dot_type` blocks). `x.len()` must be a multiple of the block.
pub type Quantize = fn(x: &[f32], out: &mut [u8]);
/// Quantize `x` for the `q8x2` activation mode into two rows of `vec_dot_type` blocks: `q`, and `r`,
/// the quantization of the residual `x − dequantize(q)` on the grid `d/256` of its block in `q`
/// (each `r` block's scale field is exactly its `q` block's scale / 256, so `q` and `r` together
/// are a 16-bit quantization `x ≈ d·(q + r/256)` and either row is a valid block row on its own).
/// See [`scalar::quantize2_q8_0`] for the definition. Lengths as [`Quantize`]; `r` as long as `q`.
pub type Quantize2 = fn(x: &[f32], q: &mut [u8], r: &mut [u8]);

/// The activation rows of a batched product ([`MatMul`]): `n_tok` rows of `stride` bytes in `q`,
/// each starting with one token's activation in the weight type's [`QuantType::vec_dot_type`]
/// (F32 and F16 weights: the f32 values' bytes), and in the `q8x2` mode the residual rows in `r`
/// (same layout, from a [`Quantize2`] with `q`, whose scale relation the kernels rely on as
/// [`MatVec2`] does; always `None` for F32 and F16 weights).
#[derive(Clone, Copy, Debug)]
pub struct ActRows<'a> {
    pub q: &'a [u8],
    pub r: Option<&'a [u8]>,
    pub stride: usize,
    pub n_tok: usize,
}

impl<'a> ActRows<'a> {
    /// `x` (rows of `n` f32 values) as the activations of F32 / F16 weights.
    pub fn f32(x: &'a [f32], n: usize) -> ActRows<'a> {
        ActRows {
            q: bytemuck::cast_slice(x),
            r: None,
            stride: 4 * n,
            n_tok: x.len() / n.max(1),
        }
    }
}

/// Batched matrix product, `out[t·rows + i] = row_i(w) · x_t` for every token `t < x.n_tok` and
/// row `i < rows = out.len() / x.n_tok` (`w` holds `rows` rows of `n` elements); with a residual,
/// `row_i(w) · q_t + row_i(w) · r_t` as [`MatVec2`] gives it. Tiers unpack each weight block once
/// for several tokens. Reached through [`Kernels::matmul`], which checks the shapes first.
pub type MatMul = fn(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]);

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
    /// [`Quantize2`] per activation format (see [`Kernels::quantize2`]).
    pub quantize2_q8_0: Quantize2,
    pub quantize2_q8_1: Quantize2,
    pub quantize2_q8_k: Quantize2,
    /// [`MatMul`] entries a tier provides; `None` falls back to one [`MatVec`] / [`MatVec2`] call
    /// per token (see [`Kernels::matmul`]). The scalar tier has none: the fallback is the reference.
    pub matmul_f32: Option<MatMul>,
    pub matmul_f16: Option<MatMul>,
    pub matmul_q4_0: Option<MatMul>,
    pub matmul_q4_1: Option<MatMul>,
    pub matmul_q5_0: Option<MatMul>,
    pub matmul_q5_1: Option<MatMul>,
    pub matmul_q8_0: Option<MatMul>,
    pub matmul_q4_k: Option<MatMul>,
    pub matmul_q5_k: Option<MatMul>,
    pub matmul_q6_k: Option<MatMul>,
    /// Σ a[i]·b[i] over f32.
    pub dot_f32: fn(a: &[f32], b: &[f32]) -> f32,
    /// y[i] += a · x[i] over f32.
    pub axpy_f32: fn(a: f32, x: &[f32], y: &mut [f32]),
    /// out[j] = q · rows[j·stride ..][..q.len()] for j < out.len() (attention scores over cached
    /// keys). Lengths that do not fit are a caller bug: a debug assertion, and NaN in `out`.
    pub dot_rows_f32: fn(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]),
    /// out[i] += Σ_j w[j] · rows[j·stride + i] for j < w.len() (attention's weighted sum of cached
    /// values); lengths as for `dot_rows_f32`.
    pub axpy_rows_f32: fn(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]),
    /// `dot_rows_f32` over f16 rows (an f16 KV cache).
    pub dot_rows_f16: fn(q: &[f32], rows: &[F16Bits], stride: usize, out: &mut [f32]),
    /// `axpy_rows_f32` over f16 rows.
    pub axpy_rows_f16: fn(w: &[f32], rows: &[F16Bits], stride: usize, out: &mut [f32]),
    /// `dot_rows_f32` over rows of Q8_0 blocks (value `d·q`); lengths and strides in values, whole
    /// blocks.
    pub dot_rows_q8_0: fn(q: &[f32], rows: &[BlockQ8_0], stride: usize, out: &mut [f32]),
    /// `axpy_rows_f32` over rows of Q8_0 blocks.
    pub axpy_rows_q8_0: fn(w: &[f32], rows: &[BlockQ8_0], stride: usize, out: &mut [f32]),
    /// g[i] = silu(g[i]) · u[i] (the SwiGLU gate), bit-identical in every tier
    /// ([`scalar::elementwise`]).
    pub swiglu: fn(g: &mut [f32], u: &[f32]),
    /// g[i] = gelu_tanh(g[i]) · u[i] (the GeGLU gate), bit-identical in every tier.
    pub geglu: fn(g: &mut [f32], u: &[f32]),
    /// s[i] = exp(s[i] − shift), returning Σ s[i] (the softmax's numerators and denominator); the
    /// values are bit-identical in every tier, the sum's order is the tier's.
    pub exp_shift: fn(s: &mut [f32], shift: f32) -> f32,
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
            Tier::Avx512 | Tier::Avx2 => x86_64::FUSED2,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon | Tier::NeonDotprod => aarch64::neon::FUSED2,
            #[allow(unreachable_patterns)]
            _ => &[],
        };
        fused.contains(&ty)
    }

    /// The `q8x2` activation quantizer ([`Quantize2`]) for a `vec_dot_type` (`Q8_0`, `Q8_1`, `Q8_K`).
    pub fn quantize2(&self, vec_dot_type: QuantType) -> Option<Quantize2> {
        use QuantType::*;
        Some(match vec_dot_type {
            Q8_0 => self.quantize2_q8_0,
            Q8_1 => self.quantize2_q8_1,
            Q8K => self.quantize2_q8_k,
            _ => return None,
        })
    }

    /// This tier's own [`MatMul`] for weights of type `ty`, if it has one.
    pub fn matmul_entry(&self, ty: QuantType) -> Option<MatMul> {
        use QuantType::*;
        match ty {
            F32 => self.matmul_f32,
            F16 => self.matmul_f16,
            Q4_0 => self.matmul_q4_0,
            Q4_1 => self.matmul_q4_1,
            Q5_0 => self.matmul_q5_0,
            Q5_1 => self.matmul_q5_1,
            Q8_0 => self.matmul_q8_0,
            Q4K => self.matmul_q4_k,
            Q5K => self.matmul_q5_k,
            Q6K => self.matmul_q6_k,
            _ => None,
        }
    }

    /// The batched product ([`MatMul`]) of `out.len() / x.n_tok` rows of `w` (type `ty`, rows of
    /// `n` elements) with every activation row of `x`, through the tier's kernel or, where it has
    /// none and for a single token, one [`MatVec`] (or [`MatVec2`] with a residual) per token.
    ///
    /// The shapes are checked here, once, for every tier: `n` a whole number of blocks, `w` holding
    /// the rows, `x.stride` at least one activation row, `x.q` (and `x.r`) holding `n_tok` rows,
    /// `out.len()` a multiple of `n_tok`, no residual for F32/F16. On a violation (a caller bug) a
    /// debug assertion fires and `out` is filled with NaN in release builds; `n == 0` gives zeros.
    /// Returns `false` when `ty` has no kernel (then `out` is untouched).
    pub fn matmul(
        &self,
        ty: QuantType,
        n: usize,
        w: &[u8],
        x: ActRows<'_>,
        out: &mut [f32],
    ) -> bool {
        let Some(mv) = self.matvec(ty) else {
            return false;
        };
        if n == 0 {
            out.fill(0.0);
            return true;
        }
        let Some(shape) = matmul_shape(ty, n, w, &x, out) else {
            debug_assert!(
                false,
                "matmul {}: inconsistent shapes (n={n}, w={} bytes, x.q={} bytes, stride={}, n_tok={}, out={})",
                ty.name(),
                w.len(),
                x.q.len(),
                x.stride,
                x.n_tok,
                out.len()
            );
            out.fill(f32::NAN);
            return true;
        };
        if x.n_tok == 0 {
            return true;
        }
        // One token is a decode step: the matrix×vector kernels are made for it.
        if let (Some(mm), true) = (self.matmul_entry(ty), x.n_tok > 1) {
            mm(n, w, x, out);
            return true;
        }
        let rows = out.len() / x.n_tok;
        let xb = shape.act_bytes;
        for (t, o) in out.chunks_exact_mut(rows).enumerate() {
            let q = &x.q[t * x.stride..t * x.stride + xb];
            match (x.r, self.matvec2(ty)) {
                (Some(r), Some(mv2)) => mv2(n, w, q, &r[t * x.stride..t * x.stride + xb], o),
                _ => mv(n, w, q, o),
            }
        }
        true
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
