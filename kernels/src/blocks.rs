//! ggml's quantization blocks, byte for byte as they lie in a GGUF file.
//!
//! Every struct is `#[repr(C)]` with alignment 1 (halves are stored as `F16Bits`, two bytes), so a slice of
//! blocks can be viewed in place over any byte offset of a memory-mapped file with `bytemuck::cast_slice`.
//! Sizes are asserted at compile time against ggml's `ggml_type_traits` table.

use bytemuck::{Pod, Zeroable};

/// Elements per block of the "legacy" formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the K-quant formats.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in a Q4_K / Q5_K super-block.
pub const K_SCALE_SIZE: usize = 12;

/// An IEEE half stored as two little-endian bytes (alignment 1).
#[repr(transparent)]
#[derive(Clone, Copy, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct F16Bits(pub [u8; 2]);

impl F16Bits {
    #[inline(always)]
    pub fn from_f32(v: f32) -> Self {
        F16Bits(half::f16::from_f32(v).to_bits().to_le_bytes())
    }
    #[inline(always)]
    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        half::f16::from_bits(self.bits()).to_f32()
    }
}

impl core::fmt::Debug for F16Bits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

/// Q4_0: 32 weights = d * (q - 8), q in 0..16. Low nibbles hold elements 0..16, high nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16Bits,
    pub qs: [u8; QK / 2],
}

/// Q4_1: 32 weights = d * q + m, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16Bits,
    pub m: F16Bits,
    pub qs: [u8; QK / 2],
}

/// Q5_0: 32 weights = d * (q - 16), q in 0..32; the fifth bits are in `qh` (bit j = element j).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: F16Bits,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1: 32 weights = d * q + m, q in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: F16Bits,
    pub m: F16Bits,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: 32 weights = d * q, q in -128..128 (ggml's quantizer produces -127..=127).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16Bits,
    pub qs: [i8; QK],
}

/// Q8_1: activations for Q4_1/Q5_1 dot products; `s` = d * Σ qs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: F16Bits,
    pub s: F16Bits,
    pub qs: [i8; QK],
}

/// Q4_K: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and min:
/// w = d * sc * q - dmin * m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: F16Bits,
    pub dmin: F16Bits,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: as Q4_K with a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: F16Bits,
    pub dmin: F16Bits,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

impl BlockQ5K {
    /// The fifth-bit values (0 or 16) of element `l` of 64-element chunk `c`'s low and high
    /// 32-element halves: bits `2c` and `2c + 1` of `qh[l]`.
    #[inline]
    pub fn fifth_bits(&self, c: usize, l: usize) -> (u8, u8) {
        let bit = |k: usize| if self.qh[l] & (1u8 << k) != 0 { 16 } else { 0 };
        (bit(2 * c), bit(2 * c + 1))
    }
}

/// Q6_K: 256 weights in 16 sub-blocks of 16 with 8-bit scales: w = d * sc * (q - 32), q in 0..64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Bits,
}

/// Q8_K: activations for K-quant dot products; `bsums[j]` = Σ of qs over the j-th group of 16.
/// Only ever built in memory (never read from a file), so it keeps the natural f32/i16 alignment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(core::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(core::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(core::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(core::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(core::mem::align_of::<BlockQ4_0>() == 1);
const _: () = assert!(core::mem::align_of::<BlockQ4_1>() == 1);
const _: () = assert!(core::mem::align_of::<BlockQ8_0>() == 1);
const _: () = assert!(core::mem::align_of::<BlockQ4K>() == 1);
const _: () = assert!(core::mem::align_of::<BlockQ5K>() == 1);
const _: () = assert!(core::mem::align_of::<BlockQ6K>() == 1);
