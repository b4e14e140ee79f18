//! The lane width of the x86-64 tiers: one trait, [`Lanes`], implemented by two zero-sized proof
//! tokens, [`Avx2`] (256-bit vectors, 8 i32/f32 lanes) and [`Avx512`] (512-bit, 16 lanes, VNNI), so
//! that a kernel is one generic body instantiated once per tier (as the NEON tiers' `IDot`).
//!
//! A token can only be made by its `new`, a `#[target_feature]` function, so holding one proves the
//! CPU has the tier's features; the methods are `#[inline(always)]` value-only operations (the
//! `simd!` blocks), and every memory access goes through the const-checked loads of `common`. The
//! generic bodies are `#[inline(always)]` too and are instantiated inside the tiers'
//! `#[target_feature]` entry points, where all of it is inlined.
//!
//! What the two widths share and where they differ:
//! - Row tiles: a matmul tile is `N` weight rows, one per i32 lane. [`Lanes::tile`] turns the
//!   rows' unpacked 32-byte (sub-)blocks into 8 vectors, vector `s` holding bytes `4s..4s+4` of every
//!   row (an 8×8 dword transpose per 8 rows), so that one broadcast activation dword meets every row.
//! - The integer dot of a tile with one activation block ([`Lanes::dot_q`]): AVX-512 VNNI
//!   accumulates 8 `vpdpbusd` in i32; AVX2 sums `vpmaddubsw` pairs in i16 as far as the weights'
//!   range allows without saturation (`maxu` = largest weight byte: 8 steps for 4-bit, 4 for 5-bit,
//!   2 for 6-bit) and widens with one `vpmaddwd` per group.
//! - 8-bit weights ([`Lanes::tile8`]): VNNI takes `w + 128` as it is; AVX2 splits it into two nibble
//!   tiles (a `vpmaddubsw` pair of 8-bit weights could saturate).
use core::arch::x86_64::*;

use super::wtypes::{Act32, Legacy};

/// `unsafe` block for the value-only SIMD intrinsics of a token method.
macro_rules! simd {
    ($($t:tt)*) => {
        // SAFETY: value-only intrinsics, or the const-checked loads of `common` (which read only
        // inside the referenced value); the token `self` exists only after its `new`, a
        // `#[target_feature]` function, ran, i.e. on a CPU with every feature these need.
        unsafe { $($t)* }
    };
}
pub(super) use simd;

/// AVX2 + FMA + F16C (every x86 tier has these).
#[derive(Clone, Copy)]
pub(crate) struct Avx2(pub(super) ());

/// AVX-512 F/BW/VL/VNNI, plus AVX2 + FMA + F16C.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(pub(super) ());

impl Avx2 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn new() -> Self {
        Avx2(())
    }
}

impl Avx512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(crate) fn new() -> Self {
        Avx512(())
    }
}

/// Steps of 4 activation bytes whose `vpmaddubsw` pairs can be summed in i16 without overflow, for
/// weight bytes `0..=maxu` against activation bytes of magnitude ≤ 128: `2·g·maxu·128 ≤ 32767`.
#[inline(always)]
pub(super) const fn i16_steps(maxu: u32) -> usize {
    if maxu <= 15 {
        8
    } else if maxu <= 31 {
        4
    } else {
        2
    }
}

/// Operations of one lane width (see the module documentation).
pub(crate) trait Lanes: Copy {
    /// i32/f32 lanes per vector: rows per matmul tile.
    const N: usize;
    /// Integer vector.
    type I: Copy;
    /// f32 vector.
    type F: Copy;
    /// Per-row sub-block scales in the form [`Lanes::dot_sc`] multiplies by.
    type Sc: Copy;
    /// A tile of 8-bit weights (see [`Lanes::tile8`]).
    type W8: Copy;

    /// The AVX2 token every tier also is.
    fn avx2(self) -> Avx2;

    fn fzero(self) -> Self::F;
    fn fsplat(self, v: f32) -> Self::F;
    fn fadd(self, a: Self::F, b: Self::F) -> Self::F;
    fn fmul(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a·b + c`.
    fn fmadd(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn fsub(self, a: Self::F, b: Self::F) -> Self::F;
    fn fdiv(self, a: Self::F, b: Self::F) -> Self::F;
    /// `x` clamped to `[lo, hi]`, NaN lanes left NaN.
    fn fclamp(self, x: Self::F, lo: f32, hi: f32) -> Self::F;
    /// `2ⁿ` per lane for `t = n + ROUND` ([`crate::scalar::elementwise::pow2_of_rounded`]).
    fn pow2_of_rounded(self, t: Self::F) -> Self::F;
    /// i32 → f32.
    fn cvt(self, a: Self::I) -> Self::F;
    /// The first `N` f16 values of `h`, converted.
    fn f16s(self, h: &[u16; 16]) -> Self::F;
    /// `N` f32 from `row` at byte `at` (zeros if `row` is too short: a caller bug).
    fn f32_at(self, row: &[u8], at: usize) -> Self::F;
    /// `N` f16 from `row` at byte `at`, converted (zeros if `row` is too short).
    fn f16_at(self, row: &[u8], at: usize) -> Self::F;
    /// `N` signed bytes from `row` at byte `at`, converted (zeros if `row` is too short).
    fn i8_at(self, row: &[u8], at: usize) -> Self::F;
    /// Σ of the lanes.
    fn hsum(self, v: Self::F) -> f32;
    /// The lane sums of eight vectors, as one 8-lane vector (lane `j` = Σ of `v[j]`).
    fn hsums8(self, v: &[Self::F; 8]) -> __m256;
    /// `o[..N]` (zeros unless `o` holds exactly `N` values).
    fn fload(self, o: &[f32]) -> Self::F;
    /// `o[..N] = v` (`o` holds exactly `N` values; anything else is left alone).
    fn store_to(self, o: &mut [f32], v: Self::F);
    /// `o[..N] += v` (`o` holds exactly `N` values; anything else is left alone).
    fn add_to(self, o: &mut [f32], v: Self::F);

    fn izero(self) -> Self::I;
    fn iadd(self, a: Self::I, b: Self::I) -> Self::I;

    /// The tile of `N` rows' unpacked 32-byte (sub-)blocks (`q[i]` = row `i`'s bytes, each at most
    /// 127; only the first `N` are read): vector `s` holds bytes `4s..4s+4` of row `i` in lane `i`.
    fn tile(self, q: &[__m256i; 16]) -> [Self::I; 8];
    /// `corr + Σ_k tile[row][k]·y[k]` per row lane; `maxu` bounds the tile's bytes (15, 31, 63).
    fn dot_q(self, w: &[Self::I; 8], y: &[i8; 32], corr: i32, maxu: u32) -> Self::I;
    /// `corr + 256·Σ_k tile·yq + Σ_k tile·yr` per row lane (the `q8x2` pair; exact in i32 for one
    /// 32-element block).
    fn dot_qr(
        self,
        w: &[Self::I; 8],
        yq: &[i8; 32],
        yr: &[i8; 32],
        corr: i32,
        maxu: u32,
    ) -> Self::I;

    /// The tile of the packed nibbles of `N` rows: the 16 bytes at `at + i·stride` of `w` for row
    /// `i` (low nibbles = elements 0..16, high = 16..32, as Q4_0/Q4_1 store them), transposed
    /// before the nibbles are split (4 dwords per row instead of 8).
    fn tile_nib(self, w: &[u8], at: usize, stride: usize) -> [Self::I; 8];
    /// The 8-bit tile of `N` rows of signed bytes (Q8_0): the 32 bytes at `at + i·stride` of `w`
    /// with the sign bit flipped (`w + 128`).
    fn tile_q8(self, w: &[u8], at: usize, stride: usize) -> Self::W8;
    /// The f16 pairs at `at + i·stride` of `w` (row `i`), converted: (first of each, second).
    fn f16_pairs(self, w: &[u8], at: usize, stride: usize) -> (Self::F, Self::F);

    /// A tile of 8-bit weights `u` (`q[i]` = row `i`'s 32 bytes, any values; the first `N`).
    fn tile8(self, q: &[__m256i; 16]) -> Self::W8;
    /// [`Lanes::dot_q`] for an 8-bit tile.
    fn dot8_q(self, w: &Self::W8, y: &[i8; 32], corr: i32) -> Self::I;
    /// [`Lanes::dot_qr`] for an 8-bit tile.
    fn dot8_qr(self, w: &Self::W8, yq: &[i8; 32], yr: &[i8; 32], corr: i32) -> Self::I;

    /// Per-row scales `sc[i]` (first `N`; |sc| ≤ 127) for [`Lanes::dot_sc`].
    fn scales(self, sc: &[i16; 16]) -> Self::Sc;
    /// `Σ_k sc·tile·y` per row lane, with the scale `sc[0]` on steps 0..4 (bytes 0..16) and `sc[1]`
    /// on steps 4..8 (pass the same scale twice for one scale per 32 bytes).
    fn dot_sc(self, w: &[Self::I; 8], y: &[i8; 32], sc: [Self::Sc; 2], maxu: u32) -> Self::I;

    /// `Σ_k sc·tile·y` per row lane with one scale for all 32 bytes.
    fn dot_sc1(self, w: &[Self::I; 8], y: &[i8; 32], sc: Self::Sc, maxu: u32) -> Self::I;

    /// Per-row i16 pairs: lane `i` = `(p[i][0], p[i][1])` (first `N`).
    fn pairs(self, p: &[[i16; 2]; 16]) -> Self::I;
    /// `Σ_j Σ pairs[j]·b[j]` per lane, `b[j]` an i16 pair broadcast to every lane (`vpmaddwd`).
    fn dot_pairs<const K: usize>(self, m: &[Self::I; K], b: &[u32; K]) -> Self::I;

    /// Σ of the 32 signed bytes.
    fn sum_i8(self, y: &[i8; 32]) -> i32;

    /// Blocks of 32 per vector in the direct (row by row) matrix×vector kernels: 1 or 2.
    const BLK: usize;
    /// A group of `BLK` activation blocks (and residual blocks) as [`Lanes::grp_dot`] takes them.
    type Y: Copy;
    /// The activation group `y` (up to `BLK` blocks; `r` the residual's) for weights of byte range
    /// `maxu` and offset `off`, and the lanes' share of `−off·Σ y` (`−off·Σ (256·q + r)` with a
    /// residual) that [`Lanes::grp_dot`] adds.
    fn grp_act<A: Act32>(self, y: &[A], r: Option<&[A]>, off: i32, maxu: u32)
        -> (Self::Y, Self::I);
    /// The quants of up to `BLK` weight blocks (missing ones zero) in the form `grp_dot` takes.
    fn grp_u<B: Legacy>(self, blks: &[B]) -> Self::I;
    /// `base + Σ u·y` per lane, `256·Σ u·q + Σ u·r + base` with a residual (`two`).
    fn grp_dot(self, u: Self::I, y: &Self::Y, base: Self::I, two: bool, maxu: u32) -> Self::I;
    /// Lanes of block 0 get `p[0]`, those of block 1 `p[2]`.
    fn grp_spread(self, p: __m128) -> Self::F;

    /// `Σ_g sc_g · Σ u·y` over the four groups of 16 of a 64-element K-quant chunk `c` (0..4): `q`
    /// the chunk's two sub-blocks' quants, `sc` the block's 16 group scales (i16).
    fn kdot(self, q: [__m256i; 2], y: &[i8; 64], sc: __m256i, c: usize) -> Self::I;

    /// The quants 0..32 of a Q5_0/Q5_1 block: `v` (its nibbles in element order) plus 16 on the
    /// elements whose bit is set in `qh`.
    fn fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i;
}

/// The [`Lanes`] methods that are one intrinsic on the f32 vector `F` or the i32 vector `I` of a
/// width, each given as `method: intrinsic` (after the `;`: the binary f32 operations).
macro_rules! one_op_lanes {
    (F = $f:ty, I = $i:ty; fzero: $fzero:ident, fsplat: $fsplat:ident, fmadd: $fmadd:ident,
     cvt: $cvt:ident, izero: $izero:ident, iadd: $iadd:ident; $($bin:ident: $binop:ident),*) => {
        #[inline(always)]
        fn fzero(self) -> $f {
            simd! { $fzero() }
        }
        #[inline(always)]
        fn fsplat(self, v: f32) -> $f {
            simd! { $fsplat(v) }
        }
        #[inline(always)]
        fn fmadd(self, a: $f, b: $f, c: $f) -> $f {
            simd! { $fmadd(a, b, c) }
        }
        #[inline(always)]
        fn cvt(self, a: $i) -> $f {
            simd! { $cvt(a) }
        }
        #[inline(always)]
        fn izero(self) -> $i {
            simd! { $izero() }
        }
        #[inline(always)]
        fn iadd(self, a: $i, b: $i) -> $i {
            simd! { $iadd(a, b) }
        }
        $(
            #[inline(always)]
            fn $bin(self, a: $f, b: $f) -> $f {
                simd! { $binop(a, b) }
            }
        )*
    };
}

/// The f32/f16 loads and stores of [`Lanes`] for `$n` lanes of the f32 vector `$f`: `$ld`/`$st`
/// the const-checked loads/stores of `$n` f32 (`common`), `$ldh` the const-checked load of `$n`
/// halves and `$cvtph` their conversion.
macro_rules! lane_memory {
    ($n:literal, $f:ty: $ld:ident, $st:ident, $ldh:ident, $cvtph:ident) => {
        #[inline(always)]
        fn f16s(self, h: &[u16; 16]) -> $f {
            simd! { $cvtph($ldh::<0, _>(h)) }
        }
        #[inline(always)]
        fn f32_at(self, row: &[u8], at: usize) -> $f {
            match row
                .get(at..at + 4 * $n)
                .and_then(|c| <&[u8; 4 * $n]>::try_from(c).ok())
            {
                Some(c) => simd! { $ld::<0, _>(c) },
                None => self.fzero(),
            }
        }
        #[inline(always)]
        fn f16_at(self, row: &[u8], at: usize) -> $f {
            match row
                .get(at..at + 2 * $n)
                .and_then(|c| <&[u8; 2 * $n]>::try_from(c).ok())
            {
                Some(c) => simd! { $cvtph($ldh::<0, _>(c)) },
                None => self.fzero(),
            }
        }
        #[inline(always)]
        fn fload(self, o: &[f32]) -> $f {
            match <&[f32; $n]>::try_from(o) {
                Ok(o) => simd! { $ld::<0, _>(o) },
                Err(_) => self.fzero(),
            }
        }
        #[inline(always)]
        fn store_to(self, o: &mut [f32], v: $f) {
            if let Ok(o) = <&mut [f32; $n]>::try_from(o) {
                simd! { $st(o, v) }
            }
        }
        #[inline(always)]
        fn add_to(self, o: &mut [f32], v: $f) {
            if let Ok(o) = <&mut [f32; $n]>::try_from(o) {
                simd! { $st(o, self.fadd($ld::<0, _>(o), v)) }
            }
        }
    };
}

/// The bit pattern of [`crate::scalar::elementwise::ROUND`] as the integer lanes subtract it.
pub(super) const ROUND_BITS: i32 = crate::scalar::elementwise::ROUND.to_bits() as i32;

/// The 4 activation bytes of step `s` as one i32.
#[inline(always)]
pub(super) fn quad(y: &[i8; 32], s: usize) -> i32 {
    i32::from_le_bytes([
        y[4 * s] as u8,
        y[4 * s + 1] as u8,
        y[4 * s + 2] as u8,
        y[4 * s + 3] as u8,
    ])
}

mod avx2;
mod avx512;
