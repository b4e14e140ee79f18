//! x86-64 LoRA tiers: AVX2+FMA+F16C (8 lanes) and AVX-512 F+BW+VL (16 lanes, masked tails).
//! See [`crate::lora`] for the semantics; both tiers implement only `rows_dot`, the dot products of fp16
//! rows with f32 vectors, four at a time (four rows against one token's vector when decoding, one row
//! against four tokens' vectors when batching, so every fp16 load is converted once per four FMAs).
use crate::lora::LoraKernels;
use crate::Tier;

/// The AVX2 LoRA table, if the CPU has AVX2, FMA and F16C.
pub fn avx2() -> Option<&'static LoraKernels> {
    avx2::detected().then_some(&avx2::TABLE)
}

/// The AVX-512 LoRA table, if the CPU has AVX-512 F, BW and VL (and the AVX2 tier's features).
/// It reports [`Tier::Avx512`] although it does not need VNNI.
pub fn avx512() -> Option<&'static LoraKernels> {
    avx512::detected().then_some(&avx512::TABLE)
}

mod avx2 {
    use super::*;
    use crate::lora::RowsDot;
    use core::arch::x86_64::*;

    pub(super) static TABLE: LoraKernels = LoraKernels {
        tier: Tier::Avx2,
        shrink,
        expand,
        shrink_batch,
        expand_batch,
    };

    pub(super) fn detected() -> bool {
        crate::x86_64::has_avx2()
    }

    crate::lora::lora_tier_fns!(rows_dot);

    /// 8 halves from the start of `c` (`c.len() >= 8`), widened.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ldh(c: &[u16]) -> __m256 {
        let c = &c[..8];
        // SAFETY: `c` holds exactly 8 u16 (16 bytes); `loadu` has no alignment requirement.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(c.as_ptr().cast())) }
    }

    /// 8 floats from the start of `c` (`c.len() >= 8`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ldf(c: &[f32]) -> __m256 {
        let c = &c[..8];
        // SAFETY: `c` holds exactly 8 f32; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(c.as_ptr()) }
    }

    /// `c` (shorter than 8) widened and zero-padded to 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ldh_tail(c: &[u16]) -> __m256 {
        let mut buf = [0u16; 8];
        buf[..c.len()].copy_from_slice(c);
        ldh(&buf)
    }

    /// `c` (shorter than 8) zero-padded to 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ldf_tail(c: &[f32]) -> __m256 {
        let mut buf = [0f32; 8];
        buf[..c.len()].copy_from_slice(c);
        ldf(&buf)
    }

    /// The four horizontal sums `[Σa, Σb, Σc, Σd]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> [f32; 4] {
        let s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let mut r = [0f32; 4];
        // SAFETY: `r` holds 4 f32; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_ps(r.as_mut_ptr(), s) };
        r
    }

    /// `[w[q] · v[q] for q in 0..4]`, all slices of length `k`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot4(k: usize, w: [&[u16]; 4], v: [&[f32]; 4]) -> [f32; 4] {
        let w = [&w[0][..k], &w[1][..k], &w[2][..k], &w[3][..k]];
        let v = [&v[0][..k], &v[1][..k], &v[2][..k], &v[3][..k]];
        let mut acc = [_mm256_setzero_ps(); 4];
        let main = k & !7;
        let mut i = 0;
        while i < main {
            for q in 0..4 {
                acc[q] = _mm256_fmadd_ps(ldh(&w[q][i..]), ldf(&v[q][i..]), acc[q]);
            }
            i += 8;
        }
        if i < k {
            for q in 0..4 {
                acc[q] = _mm256_fmadd_ps(ldh_tail(&w[q][i..]), ldf_tail(&v[q][i..]), acc[q]);
            }
        }
        hsum4(acc[0], acc[1], acc[2], acc[3])
    }

    /// `w · v`, both of length `k`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot1(k: usize, w: &[u16], v: &[f32]) -> f32 {
        let (w, v) = (&w[..k], &v[..k]);
        let mut acc = _mm256_setzero_ps();
        let main = k & !7;
        let mut i = 0;
        while i < main {
            acc = _mm256_fmadd_ps(ldh(&w[i..]), ldf(&v[i..]), acc);
            i += 8;
        }
        if i < k {
            acc = _mm256_fmadd_ps(ldh_tail(&w[i..]), ldf_tail(&v[i..]), acc);
        }
        let z = _mm256_setzero_ps();
        hsum4(acc, z, z, z)[0]
    }

    /// The sums of eight vectors, in order: `[Σa0, Σa1, …, Σa7]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn hsum8(a: [__m256; 8]) -> __m256 {
        // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]: two levels leave the
        // sums of each vector's low and high 128-bit halves, which the last step adds.
        let h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        let lo = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
        let hi = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
        _mm256_add_ps(lo, hi)
    }

    /// Eight dots of rows `row..row + 8` (length `k`, a multiple of 8) with `v`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot8_rows(j: &RowsDot<'_>, row: usize, v: &[f32]) -> __m256 {
        let w = &j.w[row * j.k..(row + 8) * j.k];
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < j.k {
            let x = ldf(&v[i..]);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(ldh(&w[q * j.k + i..]), x, *a);
            }
            i += 8;
        }
        hsum8(acc)
    }

    /// Eight dots of rows `row..row + 8` of length 4 with `v` (`v.len() == 4`): two rows per vector.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot8_rows_k4(j: &RowsDot<'_>, row: usize, v: &[f32]) -> __m256 {
        let w = &j.w[row * 4..(row + 8) * 4];
        let v = &v[..4];
        // SAFETY: `v` holds exactly 4 f32; `loadu` has no alignment requirement.
        let v4 = unsafe { _mm_loadu_ps(v.as_ptr()) };
        let vv = _mm256_set_m128(v4, v4);
        let p = [0, 1, 2, 3].map(|m| _mm256_mul_ps(ldh(&w[8 * m..]), vv));
        // [r0, r2, r4, r6 | r1, r3, r5, r7] after three pairwise levels; put the rows in order.
        let s = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
        _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Stores (shrink) or adds `scale ·` (expand) eight results for rows `row..row + 8` of token `tok`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn put8(j: &RowsDot<'_>, out: &mut [f32], tok: usize, row: usize, d: __m256) {
        let base = tok * j.ldo + j.ooff + (row - j.row0);
        let o = &mut out[base..base + 8];
        // SAFETY: `o` holds exactly 8 f32; `loadu`/`storeu` have no alignment requirement.
        unsafe {
            let r = match j.scale {
                None => d,
                Some(s) => _mm256_fmadd_ps(d, _mm256_set1_ps(s), _mm256_loadu_ps(o.as_ptr())),
            };
            _mm256_storeu_ps(o.as_mut_ptr(), r);
        }
    }

    /// All rows against one token's vector: eight rows at a time when the rows are short (the expand's
    /// rank-long rows, where a horizontal sum per row would cost more than the dot), else four.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn one_token(j: &RowsDot<'_>, tok: usize, out: &mut [f32]) {
        let v = j.vec(tok);
        let mut row = j.row0;
        if j.k == 4 || (j.k.is_multiple_of(8) && j.k <= 64) {
            while row + 8 <= j.row1 {
                let d = if j.k == 4 {
                    dot8_rows_k4(j, row, v)
                } else {
                    dot8_rows(j, row, v)
                };
                put8(j, out, tok, row, d);
                row += 8;
            }
        }
        while row + 4 <= j.row1 {
            let d = dot4(
                j.k,
                [j.row(row), j.row(row + 1), j.row(row + 2), j.row(row + 3)],
                [v; 4],
            );
            for (q, d) in d.into_iter().enumerate() {
                j.put(out, tok, row + q, d);
            }
            row += 4;
        }
        while row < j.row1 {
            j.put(out, tok, row, dot1(j.k, j.row(row), v));
            row += 1;
        }
    }

    /// `o[..8] = v`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn stf(o: &mut [f32], v: __m256) {
        let o = &mut o[..8];
        // SAFETY: `o` holds exactly 8 f32; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) }
    }

    /// `a·b + c`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }

    /// The lane sums of `acc`, in order (`out.len() == acc.len()`): eight at a time by [`hsum8`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn sums(acc: &[__m256], out: &mut [f32]) {
        let mut q = 0;
        while q < acc.len() {
            let mut a = [_mm256_setzero_ps(); 8];
            let n = (acc.len() - q).min(8);
            a[..n].copy_from_slice(&acc[q..q + n]);
            let mut r = [0f32; 8];
            stf(&mut r, hsum8(a));
            out[q..q + n].copy_from_slice(&r[..n]);
            q += n;
        }
    }

    crate::lora::columns_token!(
        "avx2,fma,f16c",
        __m256,
        8,
        ldh,
        ldf,
        stf,
        _mm256_set1_ps,
        fmadd,
        sums
    );

    /// This tier's [`RowsDot`]: the expand of several tokens by columns; otherwise two rows against
    /// four tokens at a time (the shrink of a batch), or one token's rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn rows_dot(j: &RowsDot<'_>, out: &mut [f32]) {
        if j.scale.is_some() && j.n_tok > 1 {
            let row = crate::lora::expand_columns(Cols::new(), j, out);
            return by_tokens(&j.rows_from(row), out);
        }
        by_tokens(j, out)
    }

    /// [`RowsDot`] four tokens at a time (two rows per block: eight accumulators and their operands
    /// fit the 16 registers), then token by token.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn by_tokens(j: &RowsDot<'_>, out: &mut [f32]) {
        let mut tok = crate::lora::by_token_groups::<_, 2>(Cols::new(), j, out);
        while tok < j.n_tok {
            one_token(j, tok, out);
            tok += 1;
        }
    }
}

mod avx512 {
    use super::*;
    use crate::lora::RowsDot;
    use core::arch::x86_64::*;

    pub(super) static TABLE: LoraKernels = LoraKernels {
        tier: Tier::Avx512,
        shrink,
        expand,
        shrink_batch,
        expand_batch,
    };

    pub(super) fn detected() -> bool {
        crate::x86_64::has_avx2() && crate::x86_64::has_features!("avx512f", "avx512bw", "avx512vl")
    }

    crate::lora::lora_tier_fns!(rows_dot);

    /// The first `c.len().min(16)` halves of `c`, widened; missing lanes are 0 (masked load: nothing
    /// past the end of `c` is read).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ldh(c: &[u16]) -> __m512 {
        let n = c.len().min(16);
        let m: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
        // SAFETY: the mask enables exactly the first `n <= c.len()` lanes; masked-off lanes are not
        // accessed (AVX-512 fault suppression), and `loadu` has no alignment requirement.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, c.as_ptr().cast())) }
    }

    /// The first `c.len().min(16)` floats of `c`; missing lanes are 0 (masked load).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ldf(c: &[f32]) -> __m512 {
        let n = c.len().min(16);
        let m: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
        // SAFETY: as in `ldh`: only the first `n <= c.len()` lanes are read.
        unsafe { _mm512_maskz_loadu_ps(m, c.as_ptr()) }
    }

    /// `[w[q] · v[q] for q in 0..4]`, all slices of length `k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn dot4(k: usize, w: [&[u16]; 4], v: [&[f32]; 4]) -> [f32; 4] {
        let w = [&w[0][..k], &w[1][..k], &w[2][..k], &w[3][..k]];
        let v = [&v[0][..k], &v[1][..k], &v[2][..k], &v[3][..k]];
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // Full vectors first (plain loads; the shrink's A rows are long), then one masked tail.
        while i + 16 <= k {
            for q in 0..4 {
                acc[q] = _mm512_fmadd_ps(ldh16(&w[q][i..]), ldf16(&v[q][i..]), acc[q]);
            }
            i += 16;
        }
        if i < k {
            for q in 0..4 {
                acc[q] = _mm512_fmadd_ps(ldh(&w[q][i..]), ldf(&v[q][i..]), acc[q]);
            }
        }
        // Element by element, not `array::map`: a closure would call the reduction out of line.
        [
            _mm512_reduce_add_ps(acc[0]),
            _mm512_reduce_add_ps(acc[1]),
            _mm512_reduce_add_ps(acc[2]),
            _mm512_reduce_add_ps(acc[3]),
        ]
    }

    /// 16 halves from the start of `c` (`c.len() >= 16`), widened.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ldh16(c: &[u16]) -> __m512 {
        let c = &c[..16];
        // SAFETY: `c` holds exactly 16 u16 (32 bytes); `loadu` has no alignment requirement.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(c.as_ptr().cast())) }
    }

    /// 16 floats from the start of `c` (`c.len() >= 16`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ldf16(c: &[f32]) -> __m512 {
        let c = &c[..16];
        // SAFETY: `c` holds exactly 16 f32; `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_ps(c.as_ptr()) }
    }

    /// `w · v`, both of length `k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn dot1(k: usize, w: &[u16], v: &[f32]) -> f32 {
        let (w, v) = (&w[..k], &v[..k]);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < k {
            acc = _mm512_fmadd_ps(ldh(&w[i..]), ldf(&v[i..]), acc);
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// All rows against one token's vector, four rows at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn one_token(j: &RowsDot<'_>, tok: usize, out: &mut [f32]) {
        let v = j.vec(tok);
        let mut row = j.row0;
        while row + 4 <= j.row1 {
            let d = dot4(
                j.k,
                [j.row(row), j.row(row + 1), j.row(row + 2), j.row(row + 3)],
                [v; 4],
            );
            for (q, d) in d.into_iter().enumerate() {
                j.put(out, tok, row + q, d);
            }
            row += 4;
        }
        while row < j.row1 {
            j.put(out, tok, row, dot1(j.k, j.row(row), v));
            row += 1;
        }
    }

    /// `o[..16] = v`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn stf16(o: &mut [f32], v: __m512) {
        let o = &mut o[..16];
        // SAFETY: `o` holds exactly 16 f32; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) }
    }

    /// The lane sums of `acc`, in order (`out.len() == acc.len()`): each vector folded to 8 lanes,
    /// then eight at a time by the AVX2 tier's sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn sums(acc: &[__m512], out: &mut [f32]) {
        for (a, o) in acc.chunks(16).zip(out.chunks_mut(16)) {
            let mut h = [_mm256_setzero_ps(); 16];
            for (h, &a) in h.iter_mut().zip(a) {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
                *h = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
            }
            super::avx2::sums(&h[..o.len()], o);
        }
    }

    /// `a·b + c`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }

    crate::lora::columns_token!(
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        __m512,
        16,
        ldh16,
        ldf16,
        stf16,
        _mm512_set1_ps,
        fmadd,
        sums
    );

    /// This tier's [`RowsDot`]: the expand of several tokens by columns (the rest of the rows by the
    /// AVX2 code); four rows against four tokens at a time for the shrink of a batch; rows shorter
    /// than 16 (small ranks in the expand) by the AVX2 code, whose 8-lane vectors waste fewer lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) fn rows_dot(j: &RowsDot<'_>, out: &mut [f32]) {
        if j.scale.is_some() && j.n_tok > 1 {
            let row = crate::lora::expand_columns(Cols::new(), j, out);
            return super::avx2::rows_dot(&j.rows_from(row), out);
        }
        if j.k < 16 {
            return super::avx2::rows_dot(j, out);
        }
        if j.n_tok == 1 && j.k.is_multiple_of(8) && j.k <= 64 {
            // Short rows (the expand of ranks up to 64): eight rows per horizontal sum.
            return super::avx2::one_token(j, 0, out);
        }
        let mut tok = crate::lora::by_token_groups::<_, 4>(Cols::new(), j, out);
        while tok < j.n_tok {
            one_token(j, tok, out);
            tok += 1;
        }
    }
}
