//! Fused two-activation kernels ([`crate::MatVec2`]) of the AVX-512 tier: `W·xq + W·xr` with each
//! weight block loaded and unpacked once, then two `vpdpbusd` (legacy formats) or two
//! `vpmaddubsw`/`vpmaddwd` chains (K-quants) against the two activations, and the weight's scales
//! converted once and multiplied by both activations' scales in one vector multiply.
//!
//! Same layouts and integer identities as the one-activation kernels of the parent module (nibble
//! order `[lo(b0), lo(b1), hi(b0), hi(b1)]`, `Σ (q−o)·y = Σ q·y − o·Σ y` with `o·Σ y` once per
//! activation block, `w + 128` for Q8_0). Each activation keeps its own f32 scale, so the two
//! integer sums are converted and accumulated separately; only the weight side is shared.
use core::arch::x86_64::*;

use super::super::common::*;
use super::{interleave2, ld512, nibbles2, q5x1, q5x2, scales_x4, word_ctl};
use crate::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K};
use crate::{BlockQ8_0, BlockQ8_1, F16Bits, QuantType};
use bytemuck::Pod;

/// The (type, tier) pairs of this tier whose `MatVec2` is fused (see [`crate::Kernels::matvec2_fused`]).
pub(crate) const FUSED2: &[QuantType] = &[
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

// ---------------------------------------------------------------------------------------------------
// Entry points (called from the parent's safe table entries)
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q4_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4_0, BlockQ8_0>(crate::QuantType::Q4_0, n, w, xq, xr, out)
    {
        drive_rows2!(q4_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q5_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5_0, BlockQ8_0>(crate::QuantType::Q5_0, n, w, xq, xr, out)
    {
        drive_rows2!(q5_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q8_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ8_0, BlockQ8_0>(crate::QuantType::Q8_0, n, w, xq, xr, out)
    {
        drive_rows2!(q8_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q4_1(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4_1, BlockQ8_1>(crate::QuantType::Q4_1, n, w, xq, xr, out)
    {
        drive_rows2!(q4_1_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q5_1(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5_1, BlockQ8_1>(crate::QuantType::Q5_1, n, w, xq, xr, out)
    {
        drive_rows2!(q5_1_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q4_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4K, Q8KBytes>(crate::QuantType::Q4K, n, w, xq, xr, out)
    {
        drive_rows2!(q4_k_rows2, 2, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q5_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5K, Q8KBytes>(crate::QuantType::Q5K, n, w, xq, xr, out)
    {
        drive_rows2!(q5_k_rows2, 2, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn mv2_q6_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ6K, Q8KBytes>(crate::QuantType::Q6K, n, w, xq, xr, out)
    {
        drive_rows2!(q6_k_rows2, 2, w, x, z, nb, out);
    }
}

// ---------------------------------------------------------------------------------------------------
// Legacy formats with a fixed offset (Q4_0, Q5_0, Q8_0): per block `(d·dy)·(Σ u·y − o·Σ y)`
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_0_rows2<const R: usize>(
    rows: [&[BlockQ4_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    sym_rows2::<_, true, R>(
        rows,
        x,
        z,
        8,
        |b| b.d,
        |b| nibbles2(&b[0].qs, &b[1].qs),
        |b| nibbles(ld128::<0, _>(&b.qs)),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_rows2<const R: usize>(
    rows: [&[BlockQ5_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    sym_rows2::<_, true, R>(
        rows,
        x,
        z,
        16,
        |b| b.d,
        |b| q5x2(&b[0].qs, b[0].qh, &b[1].qs, b[1].qh),
        |b| q5x1(&b.qs, b.qh),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_0_rows2<const R: usize>(
    rows: [&[BlockQ8_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    let flip = _mm512_set1_epi8(-128);
    sym_rows2::<_, false, R>(
        rows,
        x,
        z,
        -128,
        |b| b.d,
        |b| {
            let v = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(ld256::<0, _>(&b[0].qs)),
                ld256::<0, _>(&b[1].qs),
            );
            _mm512_xor_si512(v, flip)
        },
        |b| _mm256_xor_si256(ld256::<0, _>(&b.qs), _mm512_castsi512_si256(flip)),
    )
}

/// Two Q8_0/Q8_1 blocks' quants as one vector: in the nibble order of [`interleave2`] (`IL`) or
/// one block after the other.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act2<const IL: bool>(a: &[i8; 32], b: &[i8; 32]) -> __m512i {
    if IL {
        interleave2(ld256::<0, _>(a), ld256::<0, _>(b))
    } else {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ld256::<0, _>(a)), ld256::<0, _>(b))
    }
}

/// The `vpermps` indices spreading lane `a` / `b` of a 4-lane scale vector over the i32 lanes of
/// block 0 / block 1 of a two-block product (nibble order if `IL`, else block after block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread_idx<const IL: bool>(a: i32, b: i32) -> __m512i {
    if IL {
        _mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b)
    } else {
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    }
}

/// Rows of a symmetric legacy format: `u` = the weight quants as unsigned bytes (`q2` for two
/// blocks in the activation layout, `q1` for one block in element order), value `u − off` (`off`
/// as an unsigned byte: 8, 16, or 128 for Q8_0's sign flip).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn sym_rows2<W: Pod, const IL: bool, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
    off: i8,
    d: impl Fn(&W) -> F16Bits,
    q2: impl Fn(&[W; 2]) -> __m512i,
    q1: impl Fn(&W) -> __m256i,
) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let (zp, zt) = z[..x.len()].as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let offv = _mm512_set1_epi8(off);
    let iw = spread_idx::<IL>(0, 1);
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, (xb, zb)) in xp.iter().zip(zp).enumerate() {
        let yq = act2::<IL>(&xb[0].qs, &xb[1].qs);
        let yr = act2::<IL>(&zb[0].qs, &zb[1].qs);
        let zero = _mm512_setzero_si512();
        let bq = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offv, yq));
        let br = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offv, yr));
        // The activations' scales spread over their blocks' lanes, once per block pair; per row
        // only the weight's two scales are spread: acc += d_w · (Σq·dq + Σr·dr).
        let sq = _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(f16x2(xb[0].d, xb[1].d)));
        let sr = _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(f16x2(zb[0].d, zb[1].d)));
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let q = q2(wb);
            let dq = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(bq, q, yq));
            let dr = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(br, q, yr));
            let t = _mm512_fmadd_ps(dr, sr, _mm512_mul_ps(dq, sq));
            let wd = f16x2(d(&wb[0]), d(&wb[1]));
            acc[r] = _mm512_fmadd_ps(
                t,
                _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(wd)),
                acc[r],
            );
        }
    }
    if let (Some(xb), Some(zb)) = (xt.first(), zt.first()) {
        let off8 = _mm256_set1_epi8(off);
        let zero = _mm256_setzero_si256();
        let yq = ld256::<0, _>(&xb.qs);
        let yr = ld256::<0, _>(&zb.qs);
        let bq = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off8, yq));
        let br = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off8, yr));
        let (dyq, dyr) = (f16x8(xb.d), f16x8(zb.d));
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let q = q1(wb);
            let dw = f16x8(d(wb));
            let dq = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(bq, q, yq));
            let dr = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(br, q, yr));
            let t = _mm256_fmadd_ps(
                dr,
                _mm256_mul_ps(dw, dyr),
                _mm256_mul_ps(dq, _mm256_mul_ps(dw, dyq)),
            );
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}

// ---------------------------------------------------------------------------------------------------
// Legacy formats with a minimum (Q4_1, Q5_1): per block `(d·dy)·Σ q·y + m·s`
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_1_rows2<const R: usize>(
    rows: [&[BlockQ4_1]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
) -> [f32; R] {
    min_rows2::<_, R>(
        rows,
        x,
        z,
        |b| nibbles2(&b[0].qs, &b[1].qs),
        |b| nibbles(ld128::<0, _>(&b.qs)),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_1_rows2<const R: usize>(
    rows: [&[BlockQ5_1]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
) -> [f32; R] {
    min_rows2::<_, R>(
        rows,
        x,
        z,
        |b| q5x2(&b[0].qs, b[0].qh, &b[1].qs, b[1].qh),
        |b| q5x1(&b.qs, b.qh),
    )
}

/// Rows of a legacy format with a minimum (its first four bytes are the f16 `d`, `m`), `q2`/`q1`
/// its quants as in [`sym_rows2`] (nibble order for two blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn min_rows2<W: Pod, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
    q2: impl Fn(&[W; 2]) -> __m512i,
    q1: impl Fn(&W) -> __m256i,
) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let (zp, zt) = z[..x.len()].as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    // Per row: acc += d_w · (Σq·dq + Σr·dr) over the pair's lanes (the activation scales spread
    // once per block pair), and accm += [d0, m0, d1, m1] · [0, sq0 + sr0, 0, sq1 + sr1].
    let iw = spread_idx::<true>(0, 2);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    let odd = _mm_castsi128_ps(_mm_setr_epi32(0, -1, 0, -1));
    for (b, (xb, zb)) in xp.iter().zip(zp).enumerate() {
        let yq = interleave2(ld256::<0, _>(&xb[0].qs), ld256::<0, _>(&xb[1].qs));
        let yr = interleave2(ld256::<0, _>(&zb[0].qs), ld256::<0, _>(&zb[1].qs));
        let aq = f16_heads2(&xb[0], &xb[1]);
        let ar = f16_heads2(&zb[0], &zb[1]);
        let sq = _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(aq));
        let sr = _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(ar));
        let ss = _mm_and_ps(_mm_add_ps(aq, ar), odd);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let ws = f16_heads2(&wb[0], &wb[1]);
            accm[r] = _mm_fmadd_ps(ws, ss, accm[r]);
            let q = q2(wb);
            let dq = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, yq));
            let dr = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, yr));
            let t = _mm512_fmadd_ps(dr, sr, _mm512_mul_ps(dq, sq));
            acc[r] = _mm512_fmadd_ps(
                t,
                _mm512_permutexvar_ps(iw, _mm512_castps128_ps512(ws)),
                acc[r],
            );
        }
    }
    if let (Some(xb), Some(zb)) = (xt.first(), zt.first()) {
        let yq = ld256::<0, _>(&xb.qs);
        let yr = ld256::<0, _>(&zb.qs);
        // [dq, sq, dr, sr]
        let xs = f16_heads2(xb, zb);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let ws = f16_head(wb);
            // [d·dq, m·sq, d·dr, m·sr]: the odd lanes go to `accm` (its lanes 1 and 3)
            let p = _mm_mul_ps(_mm_movelh_ps(ws, ws), xs);
            accm[r] = _mm_add_ps(accm[r], _mm_and_ps(p, odd));
            let q = q1(wb);
            let dq = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, yq));
            let dr = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, yr));
            let t = _mm256_fmadd_ps(
                dr,
                _mm256_broadcastss_ps(_mm_movehl_ps(p, p)),
                _mm256_mul_ps(dq, _mm256_broadcastss_ps(p)),
            );
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        // (the even lanes of accm are zero)
        out[r] = _mm512_reduce_add_ps(acc[r]) + hsum128(accm[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------------

/// `[d·dyq, d·dyr, dmin·dyq, dmin·dyr]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k_scales(d: F16Bits, dmin: F16Bits, dys: __m128) -> __m128 {
    let w = f16x2(d, dmin);
    _mm_mul_ps(_mm_unpacklo_ps(w, w), dys)
}

/// The 8 pairwise sums of a Q8_K block's 16 bsums (one per 32-element sub-block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bsum_pairs(xb: &Q8KBytes) -> __m128i {
    let bs = ld256::<0, _>(&xb.bsums);
    _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k_rows2<const R: usize>(rows: [&[BlockQ4K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let low = _mm512_set1_epi8(0x0f);
    k4_rows2::<_, R>(
        rows,
        x,
        z,
        |b| (b.d, b.dmin, &b.scales),
        |b| {
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&b.qs);
            qs.map(|q| {
                let q = ld256::<0, _>(&q);
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
                _mm512_and_si512(qq, low)
            })
        },
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_k_rows2<const R: usize>(rows: [&[BlockQ5K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let low = _mm512_set1_epi8(0x0f);
    let one = _mm512_set1_epi8(1);
    k4_rows2::<_, R>(
        rows,
        x,
        z,
        |b| (b.d, b.dmin, &b.scales),
        |b| {
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&b.qs);
            // [qh, qh >> 1], shifted by 2 per 64-element chunk: bit 0 of each byte is the fifth
            // bit of the chunk's low (first half) / high (second half) nibbles.
            let h = ld256::<0, _>(&b.qh);
            let mut h =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<1>(h));
            let mut out = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
                let hb = _mm512_slli_epi16::<4>(_mm512_and_si512(h, one));
                h = _mm512_srli_epi16::<2>(h);
                out[j] = _mm512_or_si512(_mm512_and_si512(qq, low), hb);
            }
            out
        },
    )
}

/// Rows of Q4_K/Q5_K: `hdr` gives `(d, dmin, packed scales)`, `quants` the 4 × 64 unsigned quants
/// of a super-block (chunk `j` = sub-blocks `2j`, `2j+1`, 32 elements each, one per 256-bit half).
/// Per super-block and activation: `(d·dy)·Σ_j sc_j Σ q·y − (dmin·dy)·Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_rows2<'a, W: Pod, const R: usize>(
    rows: [&'a [W]; R],
    x: &[Q8KBytes],
    z: &[Q8KBytes],
    hdr: impl Fn(&'a W) -> (F16Bits, F16Bits, &'a [u8; 12]),
    quants: impl Fn(&W) -> [__m512i; 4],
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let ctl = [
        word_ctl([0, 0, 1, 1]),
        word_ctl([2, 2, 3, 3]),
        word_ctl([4, 4, 5, 5]),
        word_ctl([6, 6, 7, 7]),
    ];
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let (dyq, dyr) = (f32::from_le_bytes(xb.d), f32::from_le_bytes(zb.d));
        let dys = _mm_setr_ps(dyq, dyr, dyq, dyr);
        let (pq, pr) = (bsum_pairs(xb), bsum_pairs(zb));
        let ysq: &[[i8; 64]; 4] = bytemuck::cast_ref(&xb.qs);
        let ysr: &[[i8; 64]; 4] = bytemuck::cast_ref(&zb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let (d, dmin, scales) = hdr(wb);
            let dd = k_scales(d, dmin, dys);
            let (sc, mn) = k4_scales(scales);
            let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let mq = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pq));
            let mr = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pr));
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0xaa>(dd), mq, accm[r]);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0xff>(dd), mr, accm[r]);
            let scv = scales_x4(sc);
            let qs = quants(wb);
            let mut sq = _mm512_setzero_si512();
            let mut sr = _mm512_setzero_si512();
            for j in 0..4 {
                let s = _mm512_shuffle_epi8(scv, ctl[j]);
                let p = _mm512_maddubs_epi16(qs[j], ld512::<0, _>(&ysq[j]));
                sq = _mm512_add_epi32(sq, _mm512_madd_epi16(p, s));
                let p = _mm512_maddubs_epi16(qs[j], ld512::<0, _>(&ysr[j]));
                sr = _mm512_add_epi32(sr, _mm512_madd_epi16(p, s));
            }
            let dq = _mm512_broadcastss_ps(dd);
            let dr = _mm512_broadcastss_ps(_mm_movehdup_ps(dd));
            acc[r] = _mm512_fmadd_ps(dq, _mm512_cvtepi32_ps(sq), acc[r]);
            acc[r] = _mm512_fmadd_ps(dr, _mm512_cvtepi32_ps(sr), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]) - hsum128(accm[r]);
    }
    out
}

/// Q6_K: per super-block and activation `(d·dy)·Σ_g sc_g Σ (q−32)·y` over 16 groups of 16, with
/// `Σ 32·y` taken from the activation bytes (not bsums), as the one-activation kernel does.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_rows2<const R: usize>(rows: [&[BlockQ6K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let low = _mm512_set1_epi8(0x0f);
    let three = _mm512_set1_epi8(3);
    let m32 = _mm512_set1_epi8(32);
    let ctl = [word_ctl([0, 1, 2, 3]), word_ctl([4, 5, 6, 7])];
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let ysq: &[[i8; 64]; 4] = bytemuck::cast_ref(&xb.qs);
        let ysr: &[[i8; 64]; 4] = bytemuck::cast_ref(&zb.qs);
        let y32q = [0, 1, 2, 3].map(|i| _mm512_maddubs_epi16(m32, ld512::<0, _>(&ysq[i])));
        let y32r = [0, 1, 2, 3].map(|i| _mm512_maddubs_epi16(m32, ld512::<0, _>(&ysr[i])));
        let dys = _mm_setr_ps(f32::from_le_bytes(xb.d), f32::from_le_bytes(zb.d), 0.0, 0.0);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(_mm_set1_ps(f16(wb.d)), dys);
            let sc16 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.scales));
            let halves = [
                _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc16)),
                _mm512_broadcast_i32x4(_mm256_extracti128_si256::<1>(sc16)),
            ];
            let ql: &[[u8; 64]; 2] = bytemuck::cast_ref(&wb.ql);
            let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&wb.qh);
            let mut sq = _mm512_setzero_si512();
            let mut sr = _mm512_setzero_si512();
            for n in 0..2 {
                let h = ld256::<0, _>(&qh[n]);
                let h =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<2>(h));
                let l = ld512::<0, _>(&ql[n]);
                let q01 = _mm512_or_si512(
                    _mm512_and_si512(l, low),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(h, three)),
                );
                let q23 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l), low),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(h), three)),
                );
                for (p, q) in [q01, q23].into_iter().enumerate() {
                    let i = 2 * n + p;
                    let s = _mm512_shuffle_epi8(halves[n], ctl[p]);
                    let a =
                        _mm512_sub_epi16(_mm512_maddubs_epi16(q, ld512::<0, _>(&ysq[i])), y32q[i]);
                    sq = _mm512_add_epi32(sq, _mm512_madd_epi16(a, s));
                    let a =
                        _mm512_sub_epi16(_mm512_maddubs_epi16(q, ld512::<0, _>(&ysr[i])), y32r[i]);
                    sr = _mm512_add_epi32(sr, _mm512_madd_epi16(a, s));
                }
            }
            acc[r] = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sq), acc[r]);
            acc[r] = _mm512_fmadd_ps(
                _mm512_broadcastss_ps(_mm_movehdup_ps(dd)),
                _mm512_cvtepi32_ps(sr),
                acc[r],
            );
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}
