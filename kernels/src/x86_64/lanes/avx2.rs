//! The [`Lanes`] operations of the AVX2 token (8 lanes), and its 256-bit functions that the AVX-512
//! token shares.
use core::arch::x86_64::*;

use super::super::common::*;
use super::super::wtypes::{Act32, Layout, Legacy};
use super::{i16_steps, quad, Avx2, Lanes, ROUND_BITS};

impl Avx2 {
    /// 8×8 transpose of dwords: `out[s]` lane `i` = dword `s` of `r[i]`.
    #[inline(always)]
    pub(in super::super) fn transpose8(self, r: [__m256i; 8]) -> [__m256i; 8] {
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
    pub(in super::super) fn nibbles(self, qs: &[u8; 16]) -> __m256i {
        simd! {
            let q = _mm256_broadcastsi128_si256(ld128::<0, _>(qs));
            let q = _mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
            _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
        }
    }

    /// `v | 0x10` on the bytes whose bit is set in `qh` (bit j = byte j): the fifth bits of Q5_0/Q5_1.
    #[inline(always)]
    pub(in super::super) fn or_fifth(self, v: __m256i, qh: [u8; 4]) -> __m256i {
        simd! { _mm256_or_si256(v, fifth_bits(qh)) }
    }

    /// `i16` lanes of `v` summed in pairs into i32 lanes, times `m` (an i16 vector).
    #[inline(always)]
    fn madd(self, v: __m256i, m: __m256i) -> __m256i {
        simd! { _mm256_madd_epi16(v, m) }
    }

    /// The 32 signed bytes of `v` widened to i16 and multiplied by `k`: elements 0..16, 16..32.
    #[inline(always)]
    fn widen_times(self, v: __m256i, k: i16) -> [__m256i; 2] {
        simd! {
            let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
            let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v));
            let k = _mm256_set1_epi16(k);
            [_mm256_mullo_epi16(lo, k), _mm256_mullo_epi16(hi, k)]
        }
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
    pub(in super::super) fn prefetch<T>(self, p: &T, ahead: usize) {
        simd! { prefetch(p, ahead) }
    }

    /// Prefetches the `bytes` bytes `ahead` bytes after `p` (one hint per cache line).
    #[inline(always)]
    pub(in super::super) fn prefetch_span<T>(self, p: &T, ahead: usize, bytes: usize) {
        let mut k = 0;
        while k < bytes {
            self.prefetch(p, ahead + k);
            k += 64;
        }
    }

    #[inline(always)]
    pub(in super::super) fn fzero8(self) -> __m256 {
        simd! { _mm256_setzero_ps() }
    }

    /// Σ of the 8 lanes.
    #[inline(always)]
    pub(in super::super) fn hsum8(self, v: __m256) -> f32 {
        simd! { hsum256(v) }
    }

    /// `acc + s·Σ pairs(w16·bsums)`: the 16 i16 weights against a Q8_K block's 16 bsums.
    #[inline(always)]
    pub(in super::super) fn bsum_fma(
        self,
        w16: __m256i,
        bsums: &[u8; 32],
        s: f32,
        acc: __m256,
    ) -> __m256 {
        simd! {
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(w16, ld256::<0, _>(bsums)));
            _mm256_fmadd_ps(p, _mm256_set1_ps(s), acc)
        }
    }

    /// The zero vector.
    #[inline(always)]
    pub(in super::super) fn zero(self) -> __m256i {
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
    one_op_lanes! {
        F = __m256, I = __m256i; fzero: _mm256_setzero_ps, fsplat: _mm256_set1_ps, fmadd: _mm256_fmadd_ps,
        cvt: _mm256_cvtepi32_ps, izero: _mm256_setzero_si256, iadd: _mm256_add_epi32;
        fadd: _mm256_add_ps, fmul: _mm256_mul_ps, fsub: _mm256_sub_ps, fdiv: _mm256_div_ps
    }
    lane_memory!(8, __m256: ldps, stps, ld128, _mm256_cvtph_ps);
    #[inline(always)]
    fn fclamp(self, x: __m256, lo: f32, hi: f32) -> __m256 {
        // vmaxps/vminps return their second operand when either is NaN.
        simd! { _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), x)) }
    }
    #[inline(always)]
    fn pow2_of_rounded(self, t: __m256) -> __m256 {
        simd! {
            let n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(ROUND_BITS));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127))))
        }
    }
    #[inline(always)]
    fn i8_at(self, row: &[u8], at: usize) -> __m256 {
        simd! { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld64_at(row, at))) }
    }
    #[inline(always)]
    fn hsum(self, v: __m256) -> f32 {
        simd! { hsum256(v) }
    }
    #[inline(always)]
    fn hsums8(self, v: &[__m256; 8]) -> __m256 {
        simd! {
            // Pairwise sums within 128-bit halves, then the two halves of each row added.
            let t0 = _mm256_hadd_ps(v[0], v[1]);
            let t1 = _mm256_hadd_ps(v[2], v[3]);
            let t2 = _mm256_hadd_ps(v[4], v[5]);
            let t3 = _mm256_hadd_ps(v[6], v[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(u0, u1),
                _mm256_permute2f128_ps::<0x31>(u0, u1),
            )
        }
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

    #[inline(always)]
    fn kdot(self, q: [__m256i; 2], y: &[i8; 64], sc: __m256i, c: usize) -> __m256i {
        simd! {
            let ys: &[[i8; 32]; 2] = bytemuck::cast_ref(y);
            // Group scales of the chunk's halves: [sc(4c) ×8 | sc(4c+1) ×8], [sc(4c+2) …]: the
            // 128-bit half of `sc` holding them, and a `vpshufb` broadcasting its words.
            let src = if c < 2 {
                _mm256_permute2x128_si256::<0x00>(sc, sc)
            } else {
                _mm256_permute2x128_si256::<0x11>(sc, sc)
            };
            let word = |k: usize| (((2 * k + 1) << 8) | (2 * k)) as i16;
            let g = (4 * c) % 8;
            let c0 = _mm256_set_m128i(_mm_set1_epi16(word(g + 1)), _mm_set1_epi16(word(g)));
            let c1 = _mm256_set_m128i(_mm_set1_epi16(word(g + 3)), _mm_set1_epi16(word(g + 2)));
            let s0 = _mm256_shuffle_epi8(src, c0);
            let s1 = _mm256_shuffle_epi8(src, c1);
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[0], ld256::<0, _>(&ys[0])), s0);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[1], ld256::<0, _>(&ys[1])), s1);
            _mm256_add_epi32(p0, p1)
        }
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
            let y = match r {
                None => self.widen_times(yq, 1),
                Some(_) => {
                    let (q, s) = (self.widen_times(yq, 256), self.widen_times(yr, 1));
                    simd! { [_mm256_add_epi16(q[0], s[0]), _mm256_add_epi16(q[1], s[1])] }
                }
            };
            (y, self.zero())
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
