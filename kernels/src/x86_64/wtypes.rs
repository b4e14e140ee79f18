//! What the generic x86 kernels need to know about each quantized weight type: the activation
//! block it meets, its quants unpacked to bytes (one 32-element block or sub-block at a time), its
//! scales, and the integer identity that turns its signed value into an unsigned byte times the
//! activation (`u − off`, or `d·u + m` for the types with a minimum).
use core::arch::x86_64::*;

use super::common::*;
use super::lanes::{simd, Avx2, Lanes};
use crate::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K};
use crate::{BlockQ8_0, BlockQ8_1, F16Bits};
use bytemuck::{Pod, Zeroable};

/// A 32-element activation block (Q8_0 or Q8_1).
pub(super) trait Act32: Pod {
    fn qs(&self) -> &[i8; 32];
    /// The f16 scale `d`.
    fn d(&self) -> F16Bits;
    /// Q8_1's f16 block sum `s` (`d·Σq`); zero for Q8_0.
    fn s(&self) -> F16Bits;
}

/// `impl Act32` for an activation block; `s` names its block-sum field, `_` if it has none.
macro_rules! act32 {
    ($b:ty, $s:tt) => {
        impl Act32 for $b {
            #[inline(always)]
            fn qs(&self) -> &[i8; 32] {
                &self.qs
            }
            f16_fields!(d: d, s: $s);
        }
    };
}

/// Trait methods `name(&self) -> F16Bits` returning a field (`name: field`), or zero (`name: _`).
macro_rules! f16_fields {
    ($($name:ident: $f:tt),*) => {
        $(
            #[inline(always)]
            fn $name(&self) -> F16Bits {
                field_or_zero!(self, $f)
            }
        )*
    };
}

/// The field `$f` of `$v`, or zero for `_`.
macro_rules! field_or_zero {
    ($v:ident, _) => {
        F16Bits([0, 0])
    };
    ($v:ident, $f:ident) => {
        $v.$f
    };
}

act32!(BlockQ8_0, _);
act32!(BlockQ8_1, s);

/// How a full tile of a 32-element type is unpacked: its packed nibbles transposed first
/// ([`Lanes::tile_nib`]), its signed bytes ([`Lanes::tile_q8`]), or each row's block unpacked
/// ([`Legacy::quants`]) and then transposed ([`Lanes::tile`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    Nibbles,
    Bytes,
    Rows,
}

/// A 32-element weight block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0). Its value is `d·(u − OFF)` (or
/// `d·u + m` when `MIN`) with `u` the unsigned quants that [`Legacy::quants`] gives, at most `MAXU`.
pub(super) trait Legacy: Pod {
    /// The activation block it is multiplied with.
    type Act: Act32;
    const MAXU: u32;
    const OFF: i32;
    const MIN: bool;
    const LAYOUT: Layout;
    /// Byte offset of the quants (`qs`) in the block.
    const QS: usize;
    /// The 32 quants `u` in element order.
    fn quants<L: Lanes>(&self, l: L) -> __m256i;
    fn d(&self) -> F16Bits;
    /// The minimum `m` (zero unless `MIN`).
    fn m(&self) -> F16Bits;
    #[inline(always)]
    fn zero() -> Self {
        Zeroable::zeroed()
    }
}

/// `impl Legacy` for a block type: its [`Layout`], the activation block it meets, `MAXU`, `OFF`, its minimum field (`m`, or `_` for none: `MIN` is false and `m()` zero)
/// and its quants `|block, lanes| …`.
macro_rules! legacy {
    ($b:ty: $layout:ident, $act:ty, $maxu:literal, $off:literal, $m:tt,
     |$x:ident, $l:ident| $quants:expr) => {
        impl Legacy for $b {
            const LAYOUT: Layout = Layout::$layout;
            const QS: usize = core::mem::offset_of!($b, qs);
            type Act = $act;
            const MAXU: u32 = $maxu;
            const OFF: i32 = $off;
            const MIN: bool = has_min!($m);
            #[inline(always)]
            fn quants<L: Lanes>(&self, $l: L) -> __m256i {
                let $x = self;
                $quants
            }
            f16_fields!(d: d, m: $m);
        }
    };
}

/// Whether a [`legacy!`] minimum field is named.
macro_rules! has_min {
    (_) => {
        false
    };
    ($m:ident) => {
        true
    };
}

legacy!(BlockQ4_0: Nibbles, BlockQ8_0, 15, 8, _, |b, l| l.avx2().nibbles(&b.qs));
legacy!(BlockQ4_1: Nibbles, BlockQ8_1, 15, 0, m, |b, l| l.avx2().nibbles(&b.qs));
legacy!(BlockQ5_0: Rows, BlockQ8_0, 31, 16, _, |b, l| l.fifth(l.avx2().nibbles(&b.qs), b.qh));
legacy!(BlockQ5_1: Rows, BlockQ8_1, 31, 0, m, |b, l| l.fifth(l.avx2().nibbles(&b.qs), b.qh));
// Q8_0's quants are `w + 128` (the sign bit flipped).
legacy!(BlockQ8_0: Bytes, BlockQ8_0, 255, 128, _, |b, l| l.avx2().flip(&b.qs));

impl Avx2 {
    /// An f16 value converted (F16C).
    #[inline(always)]
    pub(super) fn h2f(self, h: F16Bits) -> f32 {
        simd! { f16(h) }
    }

    /// The 32 signed bytes with the sign bit flipped (`w + 128` as unsigned bytes).
    #[inline(always)]
    pub(super) fn flip(self, qs: &[i8; 32]) -> __m256i {
        simd! { _mm256_xor_si256(ld256::<0, _>(qs), _mm256_set1_epi8(-128)) }
    }
}

// ---------------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------------

/// A 256-element K-quant weight block, read as 8 sub-blocks of 32 (each two groups of 16):
/// value = `d·Σ_g sc_g Σ u·y + CW·cw·Σ_g bw_g·bsum_g` over the 16 groups `g` of the block, with the
/// activation's 16-element sums `bsum_g`.
pub(super) trait KQuant: Pod {
    const MAXU: u32;
    /// Whether both groups of a sub-block share one scale (Q4_K, Q5_K).
    const ONE_SCALE: bool;
    /// The factor of the bsum term: −1 (`−dmin·Σ m·bsum`) or −32 (Q6_K: `−32·d·Σ sc·bsum`).
    const CW: f32;
    /// The unsigned quants of sub-block `j` (0..8), in element order.
    fn quants<L: Lanes>(&self, l: L, j: usize) -> __m256i;
    fn d(&self) -> F16Bits;
    /// The f16 weight of the bsum term (`dmin`, or Q6_K's `d`).
    fn cw(&self) -> F16Bits;
    /// Per group of 16: the scale `sc_g` and the bsum weight `bw_g`.
    fn group_scales(&self) -> ([i16; 16], [i16; 16]);
    /// [`KQuant::group_scales`] as two vectors of 16 i16.
    fn group_vecs(&self, a: Avx2) -> (__m256i, __m256i);
    #[inline(always)]
    fn zero() -> Self {
        Zeroable::zeroed()
    }
}

/// Q4_K/Q5_K group scales: sub-block `j`'s 6-bit scale and min on both of its groups.
#[inline(always)]
fn k4_groups(scales: &[u8; 12]) -> ([i16; 16], [i16; 16]) {
    let (sc, mn) = k4_scales(scales);
    (
        core::array::from_fn(|g| ((sc >> (8 * (g / 2))) & 0xff) as i16),
        core::array::from_fn(|g| ((mn >> (8 * (g / 2))) & 0xff) as i16),
    )
}

/// `impl KQuant` for Q4_K (`MAXU` 15) or Q5_K (31): 6-bit scales and mins shared by a sub-block's
/// two groups, the bsum term `−dmin·Σ m·bsum`; the quants of sub-block `j` are `|block, lanes, j| …`.
macro_rules! k4 {
    ($b:ty, $maxu:literal, |$x:ident, $l:ident, $j:ident| $quants:expr) => {
        impl KQuant for $b {
            const MAXU: u32 = $maxu;
            const ONE_SCALE: bool = true;
            const CW: f32 = -1.0;
            #[inline(always)]
            fn quants<L: Lanes>(&self, $l: L, $j: usize) -> __m256i {
                let $x = self;
                $quants
            }
            f16_fields!(d: d, cw: dmin);
            #[inline(always)]
            fn group_scales(&self) -> ([i16; 16], [i16; 16]) {
                k4_groups(&self.scales)
            }
            #[inline(always)]
            fn group_vecs(&self, a: Avx2) -> (__m256i, __m256i) {
                let (sc, mn) = k4_scales(&self.scales);
                (a.dup_u8x8(sc), a.dup_u8x8(mn))
            }
        }
    };
}

/// The low (`j` even) or high nibbles of the 32 bytes of Q4_K/Q5_K's `qs` that hold sub-block `j`.
#[inline(always)]
fn k4_nibbles(a: Avx2, qs: &[u8; 128], j: usize) -> __m256i {
    let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(qs);
    a.nib_half(&qs[j / 2], j % 2 == 1)
}

k4!(BlockQ4K, 15, |b, l, j| k4_nibbles(l.avx2(), &b.qs, j));
k4!(BlockQ5K, 31, |b, l, j| {
    let a = l.avx2();
    a.or_high(k4_nibbles(a, &b.qs, j), &b.qh, j as u32, 1)
});

/// Q6_K: sub-block `j` (32 elements) is quarter `j % 4` of half `j / 4`; its quants are 0..64 (value
/// `q − 32`), its two groups of 16 have the scales `scales[2j]`, `scales[2j + 1]`.
impl KQuant for BlockQ6K {
    const MAXU: u32 = 63;
    const ONE_SCALE: bool = false;
    const CW: f32 = -32.0;
    #[inline(always)]
    fn quants<L: Lanes>(&self, l: L, j: usize) -> __m256i {
        let ql: &[[u8; 32]; 4] = bytemuck::cast_ref(&self.ql);
        let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&self.qh);
        let (n, p) = (j / 4, j % 4);
        let a = l.avx2();
        let lo = a.nib_half(&ql[2 * n + p % 2], p >= 2);
        a.or_high(lo, &qh[n], 2 * p as u32, 3)
    }
    f16_fields!(d: d, cw: d);
    #[inline(always)]
    fn group_scales(&self) -> ([i16; 16], [i16; 16]) {
        let s: [i16; 16] = core::array::from_fn(|g| self.scales[g] as i16);
        (s, s)
    }
    #[inline(always)]
    fn group_vecs(&self, _a: Avx2) -> (__m256i, __m256i) {
        let s = simd! { _mm256_cvtepi8_epi16(ld128::<0, _>(&self.scales)) };
        (s, s)
    }
}

impl Avx2 {
    /// The 8 bytes of `v` as i16, each twice: `[v0, v0, v1, v1, …, v7, v7]`.
    #[inline(always)]
    pub(super) fn dup_u8x8(self, v: u64) -> __m256i {
        simd! {
            let w = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(v as i64));
            _mm256_set_m128i(_mm_unpackhi_epi16(w, w), _mm_unpacklo_epi16(w, w))
        }
    }

    /// The low (`hi == false`) or high nibbles of 32 bytes.
    #[inline(always)]
    pub(super) fn nib_half(self, q: &[u8; 32], hi: bool) -> __m256i {
        simd! {
            let v = ld256::<0, _>(q);
            let v = if hi { _mm256_srli_epi16::<4>(v) } else { v };
            _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
        }
    }

    /// `v | (((qh >> shift) & mask) << 4)` per byte: the high bits of a 5-bit (`mask` 1) or 6-bit
    /// (`mask` 3) quant above its nibble `v`.
    #[inline(always)]
    pub(super) fn or_high(self, v: __m256i, qh: &[u8; 32], shift: u32, mask: i8) -> __m256i {
        simd! {
            let h = _mm256_srl_epi16(ld256::<0, _>(qh), _mm_cvtsi32_si128(shift as i32));
            let h = _mm256_and_si256(h, _mm256_set1_epi8(mask));
            _mm256_or_si256(v, _mm256_slli_epi16::<4>(h))
        }
    }
}
