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

use super::common::*;
use super::wtypes::{Act32, Layout, Legacy};

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
pub(crate) struct Avx2(());

/// AVX-512 F/BW/VL/VNNI, plus AVX2 + FMA + F16C.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(());

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
const fn i16_steps(maxu: u32) -> usize {
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
    /// i32 → f32.
    fn cvt(self, a: Self::I) -> Self::F;
    /// The first `N` f16 values of `h`, converted.
    fn f16s(self, h: &[u16; 16]) -> Self::F;
    /// `N` f32 from `row` at byte `at` (zeros if `row` is too short: a caller bug).
    fn f32_at(self, row: &[u8], at: usize) -> Self::F;
    /// `N` f16 from `row` at byte `at`, converted (zeros if `row` is too short).
    fn f16_at(self, row: &[u8], at: usize) -> Self::F;
    /// Σ of the lanes.
    fn hsum(self, v: Self::F) -> f32;
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

    /// The quants 0..32 of a Q5_0/Q5_1 block: `v` (its nibbles in element order) plus 16 on the
    /// elements whose bit is set in `qh`.
    fn fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i;
}

/// The 4 activation bytes of step `s` as one i32.
#[inline(always)]
fn quad(y: &[i8; 32], s: usize) -> i32 {
    i32::from_le_bytes([
        y[4 * s] as u8,
        y[4 * s + 1] as u8,
        y[4 * s + 2] as u8,
        y[4 * s + 3] as u8,
    ])
}

impl Avx2 {
    /// 8×8 transpose of dwords: `out[s]` lane `i` = dword `s` of `r[i]`.
    #[inline(always)]
    pub(super) fn transpose8(self, r: [__m256i; 8]) -> [__m256i; 8] {
        simd! {
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
            let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
            let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            [
                _mm256_permute2x128_si256::<0x20>(u0, u4),
                _mm256_permute2x128_si256::<0x20>(u1, u5),
                _mm256_permute2x128_si256::<0x20>(u2, u6),
                _mm256_permute2x128_si256::<0x20>(u3, u7),
                _mm256_permute2x128_si256::<0x31>(u0, u4),
                _mm256_permute2x128_si256::<0x31>(u1, u5),
                _mm256_permute2x128_si256::<0x31>(u2, u6),
                _mm256_permute2x128_si256::<0x31>(u3, u7),
            ]
        }
    }

    /// The 16 nibbles of `qs` as 32 bytes in element order: low nibbles (elements 0..16), then high.
    #[inline(always)]
    pub(super) fn nibbles(self, qs: &[u8; 16]) -> __m256i {
        simd! {
            let q = _mm256_broadcastsi128_si256(ld128::<0, _>(qs));
            let q = _mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
            _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
        }
    }

    /// `v | 0x10` on the bytes whose bit is set in `qh` (bit j = byte j): the fifth bits of Q5_0/Q5_1.
    #[inline(always)]
    pub(super) fn or_fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i {
        simd! { _mm256_or_si256(v, fifth_bits(qh)) }
    }

    /// `i16` lanes of `v` summed in pairs into i32 lanes, times `m` (an i16 vector).
    #[inline(always)]
    fn madd(self, v: __m256i, m: __m256i) -> __m256i {
        simd! { _mm256_madd_epi16(v, m) }
    }

    /// The i16 sums of `vpmaddubsw(w[s], y step s)` over steps `s0..s0+g` (a tree of adds).
    #[inline(always)]
    fn ubs16(self, w: &[__m256i; 8], y: &[i8; 32], s0: usize, g: usize) -> __m256i {
        let mut p = [self.izero(); 8];
        for s in s0..s0 + g {
            p[s - s0] = simd! { _mm256_maddubs_epi16(w[s], _mm256_set1_epi32(quad(y, s))) };
        }
        // A tree of adds (the chain would be as long as the group).
        let mut k = g;
        while k > 1 {
            k /= 2;
            for i in 0..k {
                p[i] = simd! { _mm256_add_epi16(p[i], p[i + k]) };
            }
        }
        p[0]
    }

    /// Hints the cache line `ahead` bytes after `p` into L1 (only the address is computed).
    #[inline(always)]
    pub(super) fn prefetch<T>(self, p: &T, ahead: usize) {
        simd! { prefetch(p, ahead) }
    }

    /// The zero vector.
    #[inline(always)]
    pub(super) fn zero(self) -> __m256i {
        simd! { _mm256_setzero_si256() }
    }

    /// 16 i16 `v` broadcast.
    #[inline(always)]
    fn splat16(self, v: i16) -> __m256i {
        simd! { _mm256_set1_epi16(v) }
    }
}

impl Lanes for Avx2 {
    const N: usize = 8;
    type I = __m256i;
    type F = __m256;
    /// i16 scale in both halves of each i32 lane (a `vpmaddwd` operand).
    type Sc = __m256i;
    /// The low and high nibble tiles.
    type W8 = [__m256i; 16];

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        self
    }
    #[inline(always)]
    fn fzero(self) -> __m256 {
        simd! { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn fsplat(self, v: f32) -> __m256 {
        simd! { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    fn fadd(self, a: __m256, b: __m256) -> __m256 {
        simd! { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn fmul(self, a: __m256, b: __m256) -> __m256 {
        simd! { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fmadd(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        simd! { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn cvt(self, a: __m256i) -> __m256 {
        simd! { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn f16s(self, h: &[u16; 16]) -> __m256 {
        simd! { _mm256_cvtph_ps(ld128::<0, _>(h)) }
    }
    #[inline(always)]
    fn f32_at(self, row: &[u8], at: usize) -> __m256 {
        match row
            .get(at..at + 32)
            .and_then(|c| <&[u8; 32]>::try_from(c).ok())
        {
            Some(c) => simd! { ldps::<0, _>(c) },
            None => self.fzero(),
        }
    }
    #[inline(always)]
    fn f16_at(self, row: &[u8], at: usize) -> __m256 {
        match row
            .get(at..at + 16)
            .and_then(|c| <&[u8; 16]>::try_from(c).ok())
        {
            Some(c) => simd! { _mm256_cvtph_ps(ld128::<0, _>(c)) },
            None => self.fzero(),
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m256) -> f32 {
        simd! { hsum256(v) }
    }
    #[inline(always)]
    fn add_to(self, o: &mut [f32], v: __m256) {
        if let Ok(o) = <&mut [f32; 8]>::try_from(o) {
            simd! { stps(o, _mm256_add_ps(ldps::<0, _>(o), v)) }
        }
    }
    #[inline(always)]
    fn izero(self) -> __m256i {
        simd! { _mm256_setzero_si256() }
    }
    #[inline(always)]
    fn iadd(self, a: __m256i, b: __m256i) -> __m256i {
        simd! { _mm256_add_epi32(a, b) }
    }

    #[inline(always)]
    fn tile(self, q: &[__m256i; 16]) -> [__m256i; 8] {
        self.transpose8([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]])
    }
    #[inline(always)]
    fn dot_q(self, w: &[__m256i; 8], y: &[i8; 32], corr: i32, maxu: u32) -> __m256i {
        let g = i16_steps(maxu);
        let ones = self.splat16(1);
        let mut acc = simd! { _mm256_set1_epi32(corr) };
        for s0 in (0..8).step_by(g) {
            acc = self.iadd(acc, self.madd(self.ubs16(w, y, s0, g), ones));
        }
        acc
    }
    #[inline(always)]
    fn dot_qr(
        self,
        w: &[__m256i; 8],
        yq: &[i8; 32],
        yr: &[i8; 32],
        corr: i32,
        maxu: u32,
    ) -> __m256i {
        let g = i16_steps(maxu);
        let (ones, k256) = (self.splat16(1), self.splat16(256));
        let mut acc = simd! { _mm256_set1_epi32(corr) };
        for s0 in (0..8).step_by(g) {
            let q = self.madd(self.ubs16(w, yq, s0, g), k256);
            let r = self.madd(self.ubs16(w, yr, s0, g), ones);
            acc = self.iadd(acc, self.iadd(q, r));
        }
        acc
    }

    #[inline(always)]
    fn tile_nib(self, w: &[u8], at: usize, stride: usize) -> [__m256i; 8] {
        simd! {
            macro_rules! r {
                ($i:expr) => {
                    ld128_at(w, at + $i * stride)
                };
            }
            let v0 = _mm256_set_m128i(r!(4), r!(0));
            let v1 = _mm256_set_m128i(r!(5), r!(1));
            let v2 = _mm256_set_m128i(r!(6), r!(2));
            let v3 = _mm256_set_m128i(r!(7), r!(3));
            let t0 = _mm256_unpacklo_epi32(v0, v1);
            let t1 = _mm256_unpackhi_epi32(v0, v1);
            let t2 = _mm256_unpacklo_epi32(v2, v3);
            let t3 = _mm256_unpackhi_epi32(v2, v3);
            let p = [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ];
            let m = _mm256_set1_epi8(0x0f);
            [
                _mm256_and_si256(p[0], m),
                _mm256_and_si256(p[1], m),
                _mm256_and_si256(p[2], m),
                _mm256_and_si256(p[3], m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(p[0]), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(p[1]), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(p[2]), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(p[3]), m),
            ]
        }
    }
    #[inline(always)]
    fn tile_q8(self, w: &[u8], at: usize, stride: usize) -> [__m256i; 16] {
        let mut q = [self.zero(); 16];
        for (i, q) in q[..8].iter_mut().enumerate() {
            *q = simd! { _mm256_xor_si256(ld256_at(w, at + i * stride), _mm256_set1_epi8(-128)) };
        }
        self.tile8(&q)
    }
    #[inline(always)]
    fn f16_pairs(self, w: &[u8], at: usize, stride: usize) -> (__m256, __m256) {
        simd! {
            let g = gather8_u32(w, at, stride);
            let lo = _mm256_and_si256(g, _mm256_set1_epi32(0xffff));
            let hi = _mm256_srli_epi32::<16>(g);
            let lo = _mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256::<1>(lo));
            let hi = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256::<1>(hi));
            (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
        }
    }
    #[inline(always)]
    fn tile8(self, q: &[__m256i; 16]) -> [__m256i; 16] {
        let u = self.tile(q);
        let low = simd! { _mm256_set1_epi8(0x0f) };
        let mut t = [self.izero(); 16];
        for k in 0..8 {
            t[k] = simd! { _mm256_and_si256(u[k], low) };
            t[8 + k] = simd! { _mm256_and_si256(_mm256_srli_epi16::<4>(u[k]), low) };
        }
        t
    }
    #[inline(always)]
    fn dot8_q(self, w: &[__m256i; 16], y: &[i8; 32], corr: i32) -> __m256i {
        let (l, h) = split8(w);
        let (ones, k16) = (self.splat16(1), self.splat16(16));
        let a = self.madd(self.ubs16(l, y, 0, 8), ones);
        let b = self.madd(self.ubs16(h, y, 0, 8), k16);
        simd! { _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_set1_epi32(corr)) }
    }
    #[inline(always)]
    fn dot8_qr(self, w: &[__m256i; 16], yq: &[i8; 32], yr: &[i8; 32], corr: i32) -> __m256i {
        let (l, h) = split8(w);
        let (ones, k16, k256, k4096) = (
            self.splat16(1),
            self.splat16(16),
            self.splat16(256),
            self.splat16(4096),
        );
        let a = self.madd(self.ubs16(l, yq, 0, 8), k256);
        let b = self.madd(self.ubs16(h, yq, 0, 8), k4096);
        let c = self.madd(self.ubs16(l, yr, 0, 8), ones);
        let d = self.madd(self.ubs16(h, yr, 0, 8), k16);
        simd! {
            let s = _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
            _mm256_add_epi32(s, _mm256_set1_epi32(corr))
        }
    }

    #[inline(always)]
    fn scales(self, sc: &[i16; 16]) -> __m256i {
        simd! {
            let v = ld128::<0, _>(sc);
            // Each i16 twice: [s0 s0 s1 s1 ...] over the 8 lanes.
            _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v))
        }
    }
    #[inline(always)]
    fn dot_sc(self, w: &[__m256i; 8], y: &[i8; 32], sc: [__m256i; 2], maxu: u32) -> __m256i {
        let g = i16_steps(maxu).min(4);
        let mut acc = self.izero();
        for s0 in (0..8).step_by(g) {
            acc = self.iadd(acc, self.madd(self.ubs16(w, y, s0, g), sc[s0 / 4]));
        }
        acc
    }

    #[inline(always)]
    fn dot_sc1(self, w: &[__m256i; 8], y: &[i8; 32], sc: __m256i, maxu: u32) -> __m256i {
        let g = i16_steps(maxu);
        let mut acc = self.izero();
        for s0 in (0..8).step_by(g) {
            acc = self.iadd(acc, self.madd(self.ubs16(w, y, s0, g), sc));
        }
        acc
    }

    #[inline(always)]
    fn pairs(self, p: &[[i16; 2]; 16]) -> __m256i {
        simd! { ld256::<0, _>(p) }
    }
    #[inline(always)]
    fn dot_pairs<const K: usize>(self, m: &[__m256i; K], b: &[u32; K]) -> __m256i {
        let mut acc = self.izero();
        for j in 0..K {
            acc = self.iadd(
                acc,
                self.madd(m[j], simd! { _mm256_set1_epi32(b[j] as i32) }),
            );
        }
        acc
    }

    #[inline(always)]
    fn sum_i8(self, y: &[i8; 32]) -> i32 {
        simd! {
            // Σ (y + 128) by `vpsadbw` against zero, minus 32·128.
            let u = _mm256_xor_si256(ld256::<0, _>(y), _mm256_set1_epi8(-128));
            let s = _mm256_sad_epu8(u, _mm256_setzero_si256());
            let s = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(s) - 32 * 128
        }
    }

    #[inline(always)]
    fn fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i {
        self.or_fifth(v, qh)
    }

    const BLK: usize = 1;
    /// `[q, r]` bytes; for 8-bit weights the 16-bit activation `256·q + r` (or `q`) in two halves.
    type Y = [__m256i; 2];
    #[inline(always)]
    fn grp_act<A: Act32>(
        self,
        y: &[A],
        r: Option<&[A]>,
        off: i32,
        maxu: u32,
    ) -> ([__m256i; 2], __m256i) {
        let yq = simd! { ld256::<0, _>(y[0].qs()) };
        let yr = match r {
            Some(r) => simd! { ld256::<0, _>(r[0].qs()) },
            None => self.zero(),
        };
        if maxu > 127 {
            // Signed weights against 16-bit activations: exact with `vpmaddwd`, no offset.
            simd! {
                let w16 = |v: __m256i, k: i16| {
                    let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
                    let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v));
                    let k = _mm256_set1_epi16(k);
                    [_mm256_mullo_epi16(lo, k), _mm256_mullo_epi16(hi, k)]
                };
                let y = match r {
                    None => w16(yq, 1),
                    Some(_) => {
                        let (q, s) = (w16(yq, 256), w16(yr, 1));
                        [_mm256_add_epi16(q[0], s[0]), _mm256_add_epi16(q[1], s[1])]
                    }
                };
                (y, _mm256_setzero_si256())
            }
        } else {
            let o = simd! { _mm256_set1_epi8(off as i8) };
            let base = match r {
                None => self.madd(simd! { _mm256_maddubs_epi16(o, yq) }, self.splat16(1)),
                Some(_) => simd! {
                    let q = self.madd(_mm256_maddubs_epi16(o, yq), self.splat16(256));
                    let r = self.madd(_mm256_maddubs_epi16(o, yr), self.splat16(1));
                    _mm256_add_epi32(q, r)
                },
            };
            (
                [yq, yr],
                simd! { _mm256_sub_epi32(_mm256_setzero_si256(), base) },
            )
        }
    }
    #[inline(always)]
    fn grp_u<B: Legacy>(self, blks: &[B]) -> __m256i {
        match B::LAYOUT {
            // The signed bytes themselves (see `grp_act`).
            Layout::Bytes => {
                simd! { _mm256_xor_si256(blks[0].quants(self), _mm256_set1_epi8(-128)) }
            }
            _ => blks[0].quants(self),
        }
    }
    #[inline(always)]
    fn grp_dot(self, u: __m256i, y: &[__m256i; 2], base: __m256i, two: bool, maxu: u32) -> __m256i {
        simd! {
            if maxu > 127 {
                let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(u));
                let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(u));
                _mm256_add_epi32(_mm256_madd_epi16(lo, y[0]), _mm256_madd_epi16(hi, y[1]))
            } else if two {
                let q = self.madd(_mm256_maddubs_epi16(u, y[0]), self.splat16(256));
                let r = self.madd(_mm256_maddubs_epi16(u, y[1]), self.splat16(1));
                _mm256_add_epi32(_mm256_add_epi32(q, r), base)
            } else {
                let q = self.madd(_mm256_maddubs_epi16(u, y[0]), self.splat16(1));
                _mm256_add_epi32(q, base)
            }
        }
    }
    #[inline(always)]
    fn grp_spread(self, p: __m128) -> __m256 {
        simd! { _mm256_broadcastss_ps(p) }
    }
}

/// The low and high nibble halves of an AVX2 8-bit tile.
#[inline(always)]
fn split8(w: &[__m256i; 16]) -> (&[__m256i; 8], &[__m256i; 8]) {
    let (l, h) = w.split_at(8);
    match (l.try_into(), h.try_into()) {
        (Ok(l), Ok(h)) => (l, h),
        _ => unreachable!(),
    }
}

impl Lanes for Avx512 {
    const N: usize = 16;
    type I = __m512i;
    type F = __m512;
    /// i32 scale per lane (a `vpmulld` operand).
    type Sc = __m512i;
    type W8 = [__m512i; 8];

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        Avx2(())
    }
    #[inline(always)]
    fn fzero(self) -> __m512 {
        simd! { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn fsplat(self, v: f32) -> __m512 {
        simd! { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn fadd(self, a: __m512, b: __m512) -> __m512 {
        simd! { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn fmul(self, a: __m512, b: __m512) -> __m512 {
        simd! { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fmadd(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        simd! { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn cvt(self, a: __m512i) -> __m512 {
        simd! { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn f16s(self, h: &[u16; 16]) -> __m512 {
        simd! { _mm512_cvtph_ps(ld256::<0, _>(h)) }
    }
    #[inline(always)]
    fn f32_at(self, row: &[u8], at: usize) -> __m512 {
        match row
            .get(at..at + 64)
            .and_then(|c| <&[u8; 64]>::try_from(c).ok())
        {
            Some(c) => simd! { ldps16::<0, _>(c) },
            None => self.fzero(),
        }
    }
    #[inline(always)]
    fn f16_at(self, row: &[u8], at: usize) -> __m512 {
        match row
            .get(at..at + 32)
            .and_then(|c| <&[u8; 32]>::try_from(c).ok())
        {
            Some(c) => simd! { _mm512_cvtph_ps(ld256::<0, _>(c)) },
            None => self.fzero(),
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m512) -> f32 {
        simd! { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    fn add_to(self, o: &mut [f32], v: __m512) {
        if let Ok(o) = <&mut [f32; 16]>::try_from(o) {
            simd! { stps16(o, _mm512_add_ps(ldps16::<0, _>(o), v)) }
        }
    }
    #[inline(always)]
    fn izero(self) -> __m512i {
        simd! { _mm512_setzero_si512() }
    }
    #[inline(always)]
    fn iadd(self, a: __m512i, b: __m512i) -> __m512i {
        simd! { _mm512_add_epi32(a, b) }
    }

    #[inline(always)]
    fn tile(self, q: &[__m256i; 16]) -> [__m512i; 8] {
        let a = self
            .avx2()
            .transpose8([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]);
        let b = self
            .avx2()
            .transpose8([q[8], q[9], q[10], q[11], q[12], q[13], q[14], q[15]]);
        let mut t = [self.izero(); 8];
        for s in 0..8 {
            t[s] = simd! { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a[s]), b[s]) };
        }
        t
    }
    #[inline(always)]
    fn dot_q(self, w: &[__m512i; 8], y: &[i8; 32], corr: i32, _maxu: u32) -> __m512i {
        let mut acc = simd! { _mm512_set1_epi32(corr) };
        for s in 0..8 {
            acc = simd! { _mm512_dpbusd_epi32(acc, w[s], _mm512_set1_epi32(quad(y, s))) };
        }
        acc
    }
    #[inline(always)]
    fn dot_qr(
        self,
        w: &[__m512i; 8],
        yq: &[i8; 32],
        yr: &[i8; 32],
        corr: i32,
        _maxu: u32,
    ) -> __m512i {
        let mut acc = self.izero();
        for s in 0..8 {
            acc = simd! { _mm512_dpbusd_epi32(acc, w[s], _mm512_set1_epi32(quad(yq, s))) };
        }
        acc = simd! { _mm512_slli_epi32::<8>(acc) };
        for s in 0..8 {
            acc = simd! { _mm512_dpbusd_epi32(acc, w[s], _mm512_set1_epi32(quad(yr, s))) };
        }
        simd! { _mm512_add_epi32(acc, _mm512_set1_epi32(corr)) }
    }

    #[inline(always)]
    fn tile8(self, q: &[__m256i; 16]) -> [__m512i; 8] {
        self.tile(q)
    }
    #[inline(always)]
    fn tile_nib(self, w: &[u8], at: usize, stride: usize) -> [__m512i; 8] {
        simd! {
            // v[j] = rows j, j+4, j+8, j+12 in its 128-bit lanes.
            macro_rules! v {
                ($j:expr) => {{
                    let a = _mm512_castsi128_si512(ld128_at(w, at + $j * stride));
                    let a = _mm512_inserti32x4::<1>(a, ld128_at(w, at + ($j + 4) * stride));
                    let a = _mm512_inserti32x4::<2>(a, ld128_at(w, at + ($j + 8) * stride));
                    _mm512_inserti32x4::<3>(a, ld128_at(w, at + ($j + 12) * stride))
                }};
            }
            let (v0, v1, v2, v3) = (v!(0), v!(1), v!(2), v!(3));
            let t0 = _mm512_unpacklo_epi32(v0, v1);
            let t1 = _mm512_unpackhi_epi32(v0, v1);
            let t2 = _mm512_unpacklo_epi32(v2, v3);
            let t3 = _mm512_unpackhi_epi32(v2, v3);
            let p = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
            let m = _mm512_set1_epi8(0x0f);
            [
                _mm512_and_si512(p[0], m),
                _mm512_and_si512(p[1], m),
                _mm512_and_si512(p[2], m),
                _mm512_and_si512(p[3], m),
                _mm512_and_si512(_mm512_srli_epi16::<4>(p[0]), m),
                _mm512_and_si512(_mm512_srli_epi16::<4>(p[1]), m),
                _mm512_and_si512(_mm512_srli_epi16::<4>(p[2]), m),
                _mm512_and_si512(_mm512_srli_epi16::<4>(p[3]), m),
            ]
        }
    }
    #[inline(always)]
    fn tile_q8(self, w: &[u8], at: usize, stride: usize) -> [__m512i; 8] {
        let mut q = [self.avx2().zero(); 16];
        for (i, q) in q.iter_mut().enumerate() {
            *q = simd! { ld256_at(w, at + i * stride) };
        }
        let t = self.tile(&q);
        let mut u = [self.izero(); 8];
        for s in 0..8 {
            u[s] = simd! { _mm512_xor_si512(t[s], _mm512_set1_epi8(-128)) };
        }
        u
    }
    #[inline(always)]
    fn f16_pairs(self, w: &[u8], at: usize, stride: usize) -> (__m512, __m512) {
        simd! {
            let g = gather16_u32(w, at, stride);
            let lo = _mm512_cvtepi32_epi16(g);
            let hi = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(g));
            (_mm512_cvtph_ps(lo), _mm512_cvtph_ps(hi))
        }
    }
    #[inline(always)]
    fn dot8_q(self, w: &[__m512i; 8], y: &[i8; 32], corr: i32) -> __m512i {
        self.dot_q(w, y, corr, 255)
    }
    #[inline(always)]
    fn dot8_qr(self, w: &[__m512i; 8], yq: &[i8; 32], yr: &[i8; 32], corr: i32) -> __m512i {
        self.dot_qr(w, yq, yr, corr, 255)
    }

    #[inline(always)]
    fn scales(self, sc: &[i16; 16]) -> __m512i {
        simd! { _mm512_cvtepi16_epi32(ld256::<0, _>(sc)) }
    }
    #[inline(always)]
    fn dot_sc(self, w: &[__m512i; 8], y: &[i8; 32], sc: [__m512i; 2], _maxu: u32) -> __m512i {
        let mut h = [self.izero(); 2];
        for s in 0..8 {
            h[s / 4] = simd! { _mm512_dpbusd_epi32(h[s / 4], w[s], _mm512_set1_epi32(quad(y, s))) };
        }
        simd! { _mm512_add_epi32(_mm512_mullo_epi32(h[0], sc[0]), _mm512_mullo_epi32(h[1], sc[1])) }
    }

    #[inline(always)]
    fn dot_sc1(self, w: &[__m512i; 8], y: &[i8; 32], sc: __m512i, _maxu: u32) -> __m512i {
        simd! { _mm512_mullo_epi32(self.dot_q(w, y, 0, 255), sc) }
    }

    #[inline(always)]
    fn pairs(self, p: &[[i16; 2]; 16]) -> __m512i {
        simd! { ld512::<0, _>(p) }
    }
    #[inline(always)]
    fn dot_pairs<const K: usize>(self, m: &[__m512i; K], b: &[u32; K]) -> __m512i {
        let mut acc = self.izero();
        for j in 0..K {
            acc = simd! { _mm512_dpwssd_epi32(acc, m[j], _mm512_set1_epi32(b[j] as i32)) };
        }
        acc
    }

    #[inline(always)]
    fn sum_i8(self, y: &[i8; 32]) -> i32 {
        self.avx2().sum_i8(y)
    }

    #[inline(always)]
    fn fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i {
        // One masked byte add: `qh` is the byte mask of element order.
        simd! { _mm256_mask_add_epi8(v, u32::from_le_bytes(qh), v, _mm256_set1_epi8(16)) }
    }

    const BLK: usize = 2;
    /// `[q, r]`, two blocks each (block 0 in the low 256 bits).
    type Y = [__m512i; 2];
    #[inline(always)]
    fn grp_act<A: Act32>(
        self,
        y: &[A],
        r: Option<&[A]>,
        off: i32,
        _maxu: u32,
    ) -> ([__m512i; 2], __m512i) {
        let pair = |a: &[A]| -> __m512i {
            let lo = simd! { ld256::<0, _>(a[0].qs()) };
            let hi = match a.get(1) {
                Some(b) => simd! { ld256::<0, _>(b.qs()) },
                None => self.avx2().zero(),
            };
            simd! { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
        };
        let yq = pair(y);
        let o = simd! { _mm512_set1_epi8(off as i8) };
        match r {
            None => {
                let base = simd! { _mm512_dpbusd_epi32(_mm512_setzero_si512(), o, yq) };
                (
                    [yq, yq],
                    simd! { _mm512_sub_epi32(_mm512_setzero_si512(), base) },
                )
            }
            Some(r) => {
                let yr = pair(r);
                simd! {
                    let q = _mm512_dpbusd_epi32(_mm512_setzero_si512(), o, yq);
                    let r = _mm512_dpbusd_epi32(_mm512_setzero_si512(), o, yr);
                    let base = _mm512_add_epi32(_mm512_slli_epi32::<8>(q), r);
                    ([yq, yr], _mm512_sub_epi32(_mm512_setzero_si512(), base))
                }
            }
        }
    }
    #[inline(always)]
    fn grp_u<B: Legacy>(self, blks: &[B]) -> __m512i {
        let lo = blks[0].quants(self);
        let hi = match blks.get(1) {
            Some(b) => b.quants(self),
            None => self.avx2().zero(),
        };
        simd! { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
    }
    #[inline(always)]
    fn grp_dot(
        self,
        u: __m512i,
        y: &[__m512i; 2],
        base: __m512i,
        two: bool,
        _maxu: u32,
    ) -> __m512i {
        simd! {
            if two {
                let q = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y[0]);
                let s = _mm512_dpbusd_epi32(_mm512_slli_epi32::<8>(q), u, y[1]);
                _mm512_add_epi32(s, base)
            } else {
                _mm512_dpbusd_epi32(base, u, y[0])
            }
        }
    }
    #[inline(always)]
    fn grp_spread(self, p: __m128) -> __m512 {
        simd! {
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(p))
        }
    }
}
