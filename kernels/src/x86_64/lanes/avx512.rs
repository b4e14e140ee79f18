//! The [`Lanes`] operations of the AVX-512 token (16 lanes, VNNI).
use core::arch::x86_64::*;

use super::super::common::*;
use super::super::wtypes::{Act32, Legacy};
use super::{quad, Avx2, Avx512, Lanes, ROUND_BITS};

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
    one_op_lanes! {
        F = __m512, I = __m512i; fzero: _mm512_setzero_ps, fsplat: _mm512_set1_ps, fmadd: _mm512_fmadd_ps,
        cvt: _mm512_cvtepi32_ps, izero: _mm512_setzero_si512, iadd: _mm512_add_epi32;
        fadd: _mm512_add_ps, fmul: _mm512_mul_ps, fsub: _mm512_sub_ps, fdiv: _mm512_div_ps
    }
    lane_memory!(16, __m512: ldps16, stps16, ld256, _mm512_cvtph_ps);
    #[inline(always)]
    fn fclamp(self, x: __m512, lo: f32, hi: f32) -> __m512 {
        // vmaxps/vminps return their second operand when either is NaN.
        simd! { _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), x)) }
    }
    #[inline(always)]
    fn pow2_of_rounded(self, t: __m512) -> __m512 {
        simd! {
            let n = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(ROUND_BITS));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))))
        }
    }
    #[inline(always)]
    fn i8_at(self, row: &[u8], at: usize) -> __m512 {
        simd! { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128_at(row, at))) }
    }
    #[inline(always)]
    fn hsum(self, v: __m512) -> f32 {
        simd! { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    fn hsums8(self, v: &[__m512; 8]) -> __m256 {
        // A loop, not `array::map`: a closure would call these intrinsics out of line.
        let mut half = [self.avx2().fzero8(); 8];
        for (h, &x) in half.iter_mut().zip(v) {
            *h = simd! {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
                _mm256_add_ps(_mm512_castps512_ps256(x), hi)
            };
        }
        self.avx2().hsums8(&half)
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
        let [a, b] = self.dot_halves(w, y);
        simd! { _mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_set1_epi32(corr)) }
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
        let [a, b] = self.dot_halves(w, yq);
        let [c, d] = self.dot_halves(w, yr);
        simd! {
            let q = _mm512_slli_epi32::<8>(_mm512_add_epi32(a, b));
            _mm512_add_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(corr)), _mm512_add_epi32(c, d))
        }
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

    #[inline(always)]
    fn kdot(self, q: [__m256i; 2], y: &[i8; 64], sc: __m256i, c: usize) -> __m512i {
        simd! {
            let qq = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q[0]), q[1]);
            let g = (4 * c) as i16;
            let idx = _mm512_set_epi16(
                g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3,
                g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 2,
                g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1,
                g, g, g, g, g, g, g, g,
            );
            let s = _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(sc));
            _mm512_madd_epi16(_mm512_maddubs_epi16(qq, ld512::<0, _>(y)), s)
        }
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
        let yq = self.block_pair(y);
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
                let yr = self.block_pair(r);
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

impl Avx512 {
    /// The quants of up to two activation blocks, block 0 in the low 256 bits (zeros for a missing
    /// second block).
    #[inline(always)]
    fn block_pair<A: Act32>(self, a: &[A]) -> __m512i {
        let lo = simd! { ld256::<0, _>(a[0].qs()) };
        let hi = match a.get(1) {
            Some(b) => simd! { ld256::<0, _>(b.qs()) },
            None => self.avx2().zero(),
        };
        simd! { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
    }

    /// `Σ_k tile·y` per row lane as two partial sums (steps 0..4 and 4..8): two chains of four
    /// `vpdpbusd` instead of one of eight, so that a token's dot waits half as long on their latency.
    #[inline(always)]
    fn dot_halves(self, w: &[__m512i; 8], y: &[i8; 32]) -> [__m512i; 2] {
        let mut h = [self.izero(); 2];
        for s in 0..4 {
            for (k, h) in h.iter_mut().enumerate() {
                let s = 4 * k + s;
                *h = simd! { _mm512_dpbusd_epi32(*h, w[s], _mm512_set1_epi32(quad(y, s))) };
            }
        }
        h
    }
}
