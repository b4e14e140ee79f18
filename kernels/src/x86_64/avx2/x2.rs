//! Fused two-activation kernels ([`crate::MatVec2`]) of the AVX2 tier for the legacy formats:
//! `W·xq + W·xr` with each weight block loaded and unpacked once, two integer dot products
//! (`vpmaddubsw` + `vpmaddwd`, as the one-activation kernels) against the two activations, and one
//! weight-scale multiply per block: `acc += d_w · (dq·Σq + dr·Σr)`.
//!
//! The K-quants likewise: each super-block's quants are unpacked once (8 × 32 bytes), and both
//! activations' `vpmaddubsw`/`vpmaddwd` chains use them and the sub-block scales.
use core::arch::x86_64::*;

use super::super::common::*;
use super::{bcast_word, bsum_pairs, q6_scale_ctl};
use crate::{BlockQ4K, BlockQ5K, BlockQ6K, F16Bits, QuantType};
use crate::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use bytemuck::Pod;

/// The types whose `MatVec2` is fused in this tier (see [`crate::Kernels::matvec2_fused`]).
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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q4_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4_0, BlockQ8_0>(crate::QuantType::Q4_0, n, w, xq, xr, out)
    {
        drive_rows2!(q4_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q5_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5_0, BlockQ8_0>(crate::QuantType::Q5_0, n, w, xq, xr, out)
    {
        drive_rows2!(q5_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q8_0(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ8_0, BlockQ8_0>(crate::QuantType::Q8_0, n, w, xq, xr, out)
    {
        drive_rows2!(q8_0_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q4_1(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4_1, BlockQ8_1>(crate::QuantType::Q4_1, n, w, xq, xr, out)
    {
        drive_rows2!(q4_1_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q5_1(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5_1, BlockQ8_1>(crate::QuantType::Q5_1, n, w, xq, xr, out)
    {
        drive_rows2!(q5_1_rows2, 4, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_rows2<const R: usize>(
    rows: [&[BlockQ4_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    sym_rows2::<_, R>(rows, x, z, 8, |b| b.d, |b| nibbles(ld128::<0, _>(&b.qs)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_rows2<const R: usize>(
    rows: [&[BlockQ5_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    sym_rows2::<_, R>(
        rows,
        x,
        z,
        16,
        |b| b.d,
        |b| _mm256_or_si256(nibbles(ld128::<0, _>(&b.qs)), fifth_bits(b.qh)),
    )
}

/// Rows of Q4_0/Q5_0: per block and activation `(d·dy)·(Σ u·y − off·Σ y)` with `u` the unsigned
/// quants (`q1`), `off·Σ y` once per activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sym_rows2<W: Pod, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
    off: i8,
    d: impl Fn(&W) -> F16Bits,
    q1: impl Fn(&W) -> __m256i,
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let ones = _mm256_set1_epi16(1);
    let offv = _mm256_set1_epi8(off);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let yq = ld256::<0, _>(&xb.qs);
        let yr = ld256::<0, _>(&zb.qs);
        let oq = _mm256_madd_epi16(_mm256_maddubs_epi16(offv, yq), ones);
        let or = _mm256_madd_epi16(_mm256_maddubs_epi16(offv, yr), ones);
        let (dyq, dyr) = (f16x8(xb.d), f16x8(zb.d));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let q = q1(wb);
            let sq = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, yq), ones), oq);
            let sr = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, yr), ones), or);
            let t = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sr),
                dyr,
                _mm256_mul_ps(_mm256_cvtepi32_ps(sq), dyq),
            );
            acc[r] = _mm256_fmadd_ps(t, f16x8(d(wb)), acc[r]);
        }
    }
    acc.map(|a| hsum256(a))
}

/// Q8_0: per block and activation `(d·dy)·Σ q·y`, both sides widened to i16 (exact for every byte).
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_rows2<const R: usize>(
    rows: [&[BlockQ8_0]; R],
    x: &[BlockQ8_0],
    z: &[BlockQ8_0],
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let yq0 = _mm256_cvtepi8_epi16(ld128::<0, _>(&xb.qs));
        let yq1 = _mm256_cvtepi8_epi16(ld128::<16, _>(&xb.qs));
        let yr0 = _mm256_cvtepi8_epi16(ld128::<0, _>(&zb.qs));
        let yr1 = _mm256_cvtepi8_epi16(ld128::<16, _>(&zb.qs));
        let (dyq, dyr) = (f16x8(xb.d), f16x8(zb.d));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let w0 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.qs));
            let w1 = _mm256_cvtepi8_epi16(ld128::<16, _>(&wb.qs));
            let sq = _mm256_add_epi32(_mm256_madd_epi16(w0, yq0), _mm256_madd_epi16(w1, yq1));
            let sr = _mm256_add_epi32(_mm256_madd_epi16(w0, yr0), _mm256_madd_epi16(w1, yr1));
            let t = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sr),
                dyr,
                _mm256_mul_ps(_mm256_cvtepi32_ps(sq), dyq),
            );
            acc[r] = _mm256_fmadd_ps(t, f16x8(wb.d), acc[r]);
        }
    }
    acc.map(|a| hsum256(a))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_rows2<const R: usize>(
    rows: [&[BlockQ4_1]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
) -> [f32; R] {
    min_rows2::<_, R>(rows, x, z, |b| nibbles(ld128::<0, _>(&b.qs)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_rows2<const R: usize>(
    rows: [&[BlockQ5_1]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
) -> [f32; R] {
    min_rows2::<_, R>(rows, x, z, |b| {
        _mm256_or_si256(nibbles(ld128::<0, _>(&b.qs)), fifth_bits(b.qh))
    })
}

/// Rows of Q4_1/Q5_1: per block `d_w·(dq·Σ q·yq + dr·Σ q·yr) + m·(sq + sr)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_rows2<W: Pod, const R: usize>(
    rows: [&[W]; R],
    x: &[BlockQ8_1],
    z: &[BlockQ8_1],
    q1: impl Fn(&W) -> __m256i,
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 1 accumulates m·(sq + sr); lane 0 stays zero.
    let mut accm = [_mm_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let yq = ld256::<0, _>(&xb.qs);
        let yr = ld256::<0, _>(&zb.qs);
        let aq = f16_head(xb);
        let ar = f16_head(zb);
        let (dyq, dyr) = (_mm256_broadcastss_ps(aq), _mm256_broadcastss_ps(ar));
        // [0, sq + sr, 0, 0]
        let ss = _mm_blend_ps::<0b0010>(_mm_setzero_ps(), _mm_add_ps(aq, ar));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let ws = f16_head(wb);
            accm[r] = _mm_fmadd_ps(ws, ss, accm[r]);
            let q = q1(wb);
            let sq = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yq), ones);
            let sr = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yr), ones);
            let t = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sr),
                dyr,
                _mm256_mul_ps(_mm256_cvtepi32_ps(sq), dyq),
            );
            acc[r] = _mm256_fmadd_ps(t, _mm256_broadcastss_ps(ws), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) + hsum128(accm[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q4_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ4K, Q8KBytes>(crate::QuantType::Q4K, n, w, xq, xr, out)
    {
        drive_rows2!(q4_k_rows2, 2, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q5_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ5K, Q8KBytes>(crate::QuantType::Q5K, n, w, xq, xr, out)
    {
        drive_rows2!(q5_k_rows2, 2, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv2_q6_k(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    if let Some((w, x, z, nb)) =
        geometry2::<BlockQ6K, Q8KBytes>(crate::QuantType::Q6K, n, w, xq, xr, out)
    {
        drive_rows2!(q6_k_rows2, 2, w, x, z, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_rows2<const R: usize>(rows: [&[BlockQ4K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0f);
    k4_rows2::<_, R>(
        rows,
        x,
        z,
        |b| (b.d, b.dmin, &b.scales),
        |b| {
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&b.qs);
            core::array::from_fn(|i| {
                let q = ld256::<0, _>(&qs[i / 2]);
                if i % 2 == 0 {
                    _mm256_and_si256(q, low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low)
                }
            })
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_rows2<const R: usize>(rows: [&[BlockQ5K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    k4_rows2::<_, R>(
        rows,
        x,
        z,
        |b| (b.d, b.dmin, &b.scales),
        |b| {
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&b.qs);
            // Shifted right by 2 per 64-element chunk: bit 0 / bit 1 of each byte is then the
            // chunk's fifth bit for the low / high nibbles.
            let mut h = ld256::<0, _>(&b.qh);
            let mut out = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(h, one));
                let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), one));
                h = _mm256_srli_epi16::<2>(h);
                out[2 * j] = _mm256_or_si256(_mm256_and_si256(q, low), h0);
                out[2 * j + 1] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), low), h1);
            }
            out
        },
    )
}

/// Rows of Q4_K/Q5_K: `hdr` gives `(d, dmin, packed scales)`, `quants` the 8 sub-blocks' unsigned
/// quants (32 bytes each). Per super-block and activation:
/// `(d·dy)·Σ_j sc_j Σ q·y − (dmin·dy)·Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_rows2<'a, W: Pod, const R: usize>(
    rows: [&'a [W]; R],
    x: &[Q8KBytes],
    z: &[Q8KBytes],
    hdr: impl Fn(&'a W) -> (F16Bits, F16Bits, &'a [u8; 12]),
    quants: impl Fn(&W) -> [__m256i; 8],
) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let mut acc = [_mm256_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let (dyq, dyr) = (f32::from_le_bytes(xb.d), f32::from_le_bytes(zb.d));
        let dys = _mm_setr_ps(dyq, dyr, dyq, dyr);
        let (pq, pr) = (bsum_pairs(xb), bsum_pairs(zb));
        let ysq: &[[i8; 32]; 8] = bytemuck::cast_ref(&xb.qs);
        let ysr: &[[i8; 32]; 8] = bytemuck::cast_ref(&zb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let (d, dmin, scales) = hdr(wb);
            let w = f16x2(d, dmin);
            // [d·dyq, d·dyr, dmin·dyq, dmin·dyr]
            let dd = _mm_mul_ps(_mm_unpacklo_ps(w, w), dys);
            let (sc, mn) = k4_scales(scales);
            let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let mq = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pq));
            let mr = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pr));
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0xaa>(dd), mq, accm[r]);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0xff>(dd), mr, accm[r]);
            let scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let qs = quants(wb);
            let mut sq = _mm256_setzero_si256();
            let mut sr = _mm256_setzero_si256();
            for k in 0..8 {
                let s = _mm256_shuffle_epi8(scv, bcast_word(k));
                let p = _mm256_maddubs_epi16(qs[k], ld256::<0, _>(&ysq[k]));
                sq = _mm256_add_epi32(sq, _mm256_madd_epi16(p, s));
                let p = _mm256_maddubs_epi16(qs[k], ld256::<0, _>(&ysr[k]));
                sr = _mm256_add_epi32(sr, _mm256_madd_epi16(p, s));
            }
            let dq = _mm256_broadcastss_ps(dd);
            let dr = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            acc[r] = _mm256_fmadd_ps(dq, _mm256_cvtepi32_ps(sq), acc[r]);
            acc[r] = _mm256_fmadd_ps(dr, _mm256_cvtepi32_ps(sr), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) - hsum128(accm[r]);
    }
    out
}

/// Q6_K: per super-block and activation `(d·dy)·Σ_g sc_g Σ (q−32)·y` over 16 groups of 16, with
/// `Σ 32·y` from the activation bytes (as the one-activation kernel).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_rows2<const R: usize>(rows: [&[BlockQ6K]; R], x: &[Q8KBytes], z: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let z = &z[..x.len()];
    let low = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, (xb, zb)) in x.iter().zip(z).enumerate() {
        let ysq: &[[i8; 32]; 8] = bytemuck::cast_ref(&xb.qs);
        let ysr: &[[i8; 32]; 8] = bytemuck::cast_ref(&zb.qs);
        let dys = _mm_setr_ps(f32::from_le_bytes(xb.d), f32::from_le_bytes(zb.d), 0.0, 0.0);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(_mm_set1_ps(f16(wb.d)), dys);
            let sc16 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.scales));
            let halves = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            let ql: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.ql);
            let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&wb.qh);
            let mut sq = _mm256_setzero_si256();
            let mut sr = _mm256_setzero_si256();
            for n in 0..2 {
                let h = ld256::<0, _>(&qh[n]);
                let l0 = ld256::<0, _>(&ql[2 * n]);
                let l1 = ld256::<0, _>(&ql[2 * n + 1]);
                let hb = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, three));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(l0, low), hb(h)),
                    _mm256_or_si256(_mm256_and_si256(l1, low), hb(_mm256_srli_epi16::<2>(h))),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), low),
                        hb(_mm256_srli_epi16::<4>(h)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), low),
                        hb(_mm256_srli_epi16::<6>(h)),
                    ),
                ];
                for k in 0..4 {
                    let s = _mm256_shuffle_epi8(halves[n], q6_scale_ctl(k));
                    let y = ld256::<0, _>(&ysq[4 * n + k]);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(q[k], y),
                        _mm256_maddubs_epi16(m32, y),
                    );
                    sq = _mm256_add_epi32(sq, _mm256_madd_epi16(p, s));
                    let y = ld256::<0, _>(&ysr[4 * n + k]);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(q[k], y),
                        _mm256_maddubs_epi16(m32, y),
                    );
                    sr = _mm256_add_epi32(sr, _mm256_madd_epi16(p, s));
                }
            }
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sq), acc[r]);
            acc[r] = _mm256_fmadd_ps(
                _mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                _mm256_cvtepi32_ps(sr),
                acc[r],
            );
        }
    }
    acc.map(|a| hsum256(a))
}
