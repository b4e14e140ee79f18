//! Activation quantizers of the x86 tiers (AVX2 + FMA + F16C; the AVX-512 tier uses them too: at
//! one block of 32 per 256 bits they are not the bottleneck). Bit-exact with the scalar tier,
//! rounding ties included: the same scale, reciprocal and rounding steps in the same order, no
//! fused multiply-add.
//!
//! `q8x2` (`Quantize2`): per block the scalar scale (`scalar::x2_scale_f16`, the Q8_K block's own
//! scale), `q = nearest(x·id)`, `r = nearest((x − d·q)·256·id)` as in `scalar::quantize2_block32`,
//! eight lanes at a time; the Q8_1 block sums as the scalar sums them (Σx in element order).
use core::arch::x86_64::*;
use core::mem::size_of;

use super::common::*;
use crate::{BlockQ8_0, BlockQ8_1, F16Bits, QuantType, QK, QK_K};

/// C `roundf` of each lane, clamped to -128..=127, NaN → 0, as i32 (the scalar `q8_round`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_away_clamped(v: __m256) -> __m256i {
    let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
    let v = _mm256_min_ps(
        _mm256_max_ps(v, _mm256_set1_ps(-128.0)),
        _mm256_set1_ps(127.0),
    );
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let f = _mm256_sub_ps(v, t);
    let one = _mm256_set1_ps(1.0);
    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(f, _mm256_set1_ps(0.5)), one);
    let down = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_set1_ps(-0.5)), one);
    _mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(t, up), down))
}

/// Packs 32 i32 (in four vectors, element order) into 32 i8 with signed saturation.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i8(i: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(i[0], i[1]);
    let b = _mm256_packs_epi32(i[2], i[3]);
    let p = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Q8_0/Q8_1 quantization of one block: `(d, quants, Σ quants)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_block(xb: &[f32; QK], qs: &mut [i8; QK]) -> (f32, i32) {
    let v = [
        ldps::<0, _>(xb),
        ldps::<32, _>(xb),
        ldps::<64, _>(xb),
        ldps::<96, _>(xb),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    }
    let amax = hmax256(m);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let i = v.map(|v| round_away_clamped(_mm256_mul_ps(v, id)));
    st256::<0, _>(qs, pack_i8(i));
    let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_hadd_epi32(s, s);
    let s = _mm_hadd_epi32(s, s);
    (d, _mm_cvtsi128_si32(s))
}

/// The first `nb` blocks of `bytes` as `B`; `None` when `bytes` lacks `B`'s alignment.
#[inline(always)]
fn as_blocks<B: bytemuck::Pod>(bytes: &mut [u8], nb: usize) -> Option<&mut [B]> {
    bytemuck::try_cast_slice_mut(&mut bytes[..nb * size_of::<B>()]).ok()
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_q8_0(x: &[f32], out: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_0, x, out.len());
    let Some(y) = as_blocks::<BlockQ8_0>(out, nb) else {
        return;
    };
    for (xb, yb) in x[..nb * QK].as_chunks::<QK>().0.iter().zip(y) {
        let (d, _) = q8_block(xb, &mut yb.qs);
        yb.d = F16Bits::from_f32(d);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_q8_1(x: &[f32], out: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_1, x, out.len());
    let Some(y) = as_blocks::<BlockQ8_1>(out, nb) else {
        return;
    };
    for (xb, yb) in x[..nb * QK].as_chunks::<QK>().0.iter().zip(y) {
        let (d, sum) = q8_block(xb, &mut yb.qs);
        yb.d = F16Bits::from_f32(d);
        yb.s = F16Bits::from_f32(sum as f32 * d);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_q8_k(x: &[f32], out: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8K, x, out.len());
    let Some(y) = as_blocks::<Q8KBytes>(out, nb) else {
        return;
    };
    for (xb, yb) in x[..nb * QK_K].as_chunks::<QK_K>().0.iter().zip(y) {
        q8_k_block(xb, yb);
    }
}

/// ggml's `quantize_row_q8_K_ref` for one block: scale `-127/max` where `max` is the first element of
/// largest magnitude, `nearest_int` by the `+1.5·2^23` trick, clamp, bsums.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_k_block(xb: &[f32; QK_K], yb: &mut Q8KBytes) {
    let xc: &[[f32; 8]; 32] = bytemuck::cast_ref(xb);
    let sign = _mm256_set1_ps(-0.0);
    // `max(|v|, m)` keeps `m` when |v| is NaN, as the scalar `if ax > amax` does.
    let mut m = _mm256_setzero_ps();
    for c in xc {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, ldps::<0, _>(c)), m);
    }
    let amax = hmax256(m);
    if amax == 0.0 {
        *yb = bytemuck::Zeroable::zeroed();
        return;
    }
    let av = _mm256_set1_ps(amax);
    let mut max = amax;
    for c in xc {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_andnot_ps(sign, ldps::<0, _>(c)),
            av,
        ));
        if hit != 0 {
            max = c[hit.trailing_zeros() as usize % 8];
            break;
        }
    }
    let iscale = -127.0f32 / max;
    let is = _mm256_set1_ps(iscale);
    let magic = _mm256_set1_ps(12582912.0);
    let mant = _mm256_set1_epi32(0x007f_ffff);
    let bias = _mm256_set1_epi32(0x0040_0000);
    let xq: &[[f32; 32]; 8] = bytemuck::cast_ref(xb);
    let qs: &mut [[i8; 32]; 8] = bytemuck::cast_mut(&mut yb.qs);
    for (c, q) in xq.iter().zip(qs.iter_mut()) {
        let v = [
            ldps::<0, _>(c),
            ldps::<32, _>(c),
            ldps::<64, _>(c),
            ldps::<96, _>(c),
        ];
        let i = v.map(|v| {
            let t = _mm256_add_ps(_mm256_mul_ps(is, v), magic);
            _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(t), mant), bias)
        });
        st256::<0, _>(q, pack_i8(i));
    }
    let mut bsums = [0u8; 32];
    for (g, s) in bsums.as_chunks_mut::<2>().0.iter_mut().enumerate() {
        let sum: i16 = yb.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
        *s = sum.to_le_bytes();
    }
    yb.bsums = bsums;
    yb.d = (1.0 / iscale).to_le_bytes();
}

// ---------------------------------------------------------------------------------------------------
// q8x2: the quantization and its residual on the grid d/256
// ---------------------------------------------------------------------------------------------------

/// ggml's `nearest_int` of each lane (`v + 1.5·2^23`, mantissa bits), as the scalar `nearest_int`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nearest(v: __m256) -> __m256i {
    let t = _mm256_add_ps(v, _mm256_set1_ps(12582912.0));
    let m = _mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(0x007f_ffff));
    _mm256_sub_epi32(m, _mm256_set1_epi32(0x0040_0000))
}

/// Clamps i32 lanes to `lo..=hi`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn clamp(v: __m256i, lo: i32, hi: i32) -> __m256i {
    _mm256_min_epi32(
        _mm256_max_epi32(v, _mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    )
}

/// One `q8x2` block of 32 with scale `d` (f32 of the block's f16 scale): the quants `q` and the
/// residual `r` (`scalar::quantize2_block32`), and `Σ q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn x2_block(xb: &[f32; QK], d: f32, q: &mut [i8; QK], r: &mut [i8; QK]) -> i32 {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (idv, id256, dv) = (
        _mm256_set1_ps(id),
        _mm256_set1_ps(id * 256.0),
        _mm256_set1_ps(d),
    );
    let v = [
        ldps::<0, _>(xb),
        ldps::<32, _>(xb),
        ldps::<64, _>(xb),
        ldps::<96, _>(xb),
    ];
    let qi = v.map(|v| clamp(nearest(_mm256_mul_ps(v, idv)), -127, 127));
    let ri: [__m256i; 4] = core::array::from_fn(|k| {
        let res = _mm256_sub_ps(v[k], _mm256_mul_ps(dv, _mm256_cvtepi32_ps(qi[k])));
        clamp(nearest(_mm256_mul_ps(res, id256)), -128, 127)
    });
    st256::<0, _>(q, pack_i8(qi));
    st256::<0, _>(r, pack_i8(ri));
    let s = _mm256_add_epi32(
        _mm256_add_epi32(qi[0], qi[1]),
        _mm256_add_epi32(qi[2], qi[3]),
    );
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
    _mm_cvtsi128_si32(s)
}

/// The block's largest magnitude (as the scalar fold of `|v|`, for finite inputs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn amax32(xb: &[f32; QK]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for v in [
        ldps::<0, _>(xb),
        ldps::<32, _>(xb),
        ldps::<64, _>(xb),
        ldps::<96, _>(xb),
    ] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    }
    hmax256(m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant2_q8_0(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_0, x, q.len().min(r.len()));
    let (Some(qb), Some(rb)) = (as_blocks::<BlockQ8_0>(q, nb), as_blocks::<BlockQ8_0>(r, nb))
    else {
        return;
    };
    for ((xb, qb), rb) in x[..nb * QK].as_chunks::<QK>().0.iter().zip(qb).zip(rb) {
        let ds = crate::scalar::x2_scale_f16(amax32(xb));
        let d = ds.to_f32();
        x2_block(xb, d, &mut qb.qs, &mut rb.qs);
        qb.d = ds;
        rb.d = F16Bits::from_f32(d / 256.0);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant2_q8_1(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_1, x, q.len().min(r.len()));
    let (Some(qb), Some(rb)) = (as_blocks::<BlockQ8_1>(q, nb), as_blocks::<BlockQ8_1>(r, nb))
    else {
        return;
    };
    for ((xb, qb), rb) in x[..nb * QK].as_chunks::<QK>().0.iter().zip(qb).zip(rb) {
        let ds = crate::scalar::x2_scale_f16(amax32(xb));
        let d = ds.to_f32();
        let sum_q = x2_block(xb, d, &mut qb.qs, &mut rb.qs);
        // Σx in element order, as the scalar reference sums it.
        let sum_x: f32 = xb.iter().sum();
        qb.d = ds;
        qb.s = F16Bits::from_f32(sum_q as f32 * d);
        rb.d = F16Bits::from_f32(d / 256.0);
        rb.s = F16Bits::from_f32(sum_x - qb.s.to_f32());
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant2_q8_k(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8K, x, q.len().min(r.len()));
    let (Some(qb), Some(rb)) = (as_blocks::<Q8KBytes>(q, nb), as_blocks::<Q8KBytes>(r, nb)) else {
        return;
    };
    for ((xb, qb), rb) in x[..nb * QK_K].as_chunks::<QK_K>().0.iter().zip(qb).zip(rb) {
        q8_k_block(xb, qb);
        let d = f32::from_le_bytes(qb.d);
        let is256 = _mm256_set1_ps(if d != 0.0 { 256.0 / d } else { 0.0 });
        let dv = _mm256_set1_ps(d);
        let xs: &[[f32; 32]; 8] = bytemuck::cast_ref(xb);
        let qs: &[[i8; 32]; 8] = bytemuck::cast_ref(&qb.qs);
        let rs: &mut [[i8; 32]; 8] = bytemuck::cast_mut(&mut rb.qs);
        for ((c, qc), rc) in xs.iter().zip(qs).zip(rs.iter_mut()) {
            let v = [
                ldps::<0, _>(c),
                ldps::<32, _>(c),
                ldps::<64, _>(c),
                ldps::<96, _>(c),
            ];
            let (lo, hi) = (ld128::<0, _>(qc), ld128::<16, _>(qc));
            let qv = [
                _mm256_cvtepi8_epi32(lo),
                _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
                _mm256_cvtepi8_epi32(hi),
                _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
            ];
            let ri: [__m256i; 4] = core::array::from_fn(|k| {
                let res = _mm256_sub_ps(v[k], _mm256_mul_ps(dv, _mm256_cvtepi32_ps(qv[k])));
                clamp(nearest(_mm256_mul_ps(res, is256)), -128, 127)
            });
            st256::<0, _>(rc, pack_i8(ri));
        }
        let mut bsums = [0u8; 32];
        for (g, s) in bsums.as_chunks_mut::<2>().0.iter_mut().enumerate() {
            let sum: i16 = rb.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            *s = sum.to_le_bytes();
        }
        rb.bsums = bsums;
        rb.d = (d / 256.0).to_le_bytes();
    }
}
