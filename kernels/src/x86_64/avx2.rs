//! The AVX2 + FMA + F16C tier.
//!
//! Integer dot products within a block as ggml does them (`vpmaddubsw` of unsigned 4/5/6-bit quants
//! with signed 8-bit activations, then `vpmaddwd`), one f32 FMA per block into f32 accumulators.
//! Every integer product is exact for any input bytes (no saturating shortcut is taken: the Q8_0
//! product widens both sides to i16, and Q4_0/Q6_K subtract their offsets from the activation sums),
//! so results differ from the scalar tier only by f32 summation order.
//!
//! Q5_0/Q5_1 expand the 32 fifth bits of a block with one broadcast, `vpshufb` and compare
//! ([`fifth_bits`]) and OR them onto the nibbles; then they are Q4_0/Q4_1 with q in 0..32 (Q5_0
//! subtracts `16·Σ y` where Q4_0 subtracts `8·Σ y`).
//!
//! The legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and F32/F16 process four rows per pass, so that each
//! activation load and conversion is reused four times; the K-quants two rows.
//!
//! The two-activation kernels (`MatVec2`, every quantized type fused) are in `x2`.
//!
//! All kernels are `#[target_feature]` functions reachable only through [`kernels`], which checks the
//! CPU first; the slice-length contract is the scalar tier's (NaN rows on inconsistent lengths).
use core::arch::x86_64::*;

use super::common::*;
use crate::{ActRows, Kernels, Tier, QK, QK_K};
use crate::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1, F16Bits};
use crate::{BlockQ5_0, BlockQ5_1};

/// This tier's table, if the CPU has AVX2, FMA and F16C.
pub fn kernels() -> Option<&'static Kernels> {
    supported().then_some(&TABLE)
}

fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

static TABLE: Kernels = Kernels {
    tier: Tier::Avx2,
    matvec_f32,
    matvec_f16,
    matvec_q4_0,
    matvec_q4_1,
    matvec_q5_0,
    matvec_q5_1,
    matvec_q8_0,
    matvec_q4_k,
    matvec_q5_k,
    matvec_q6_k,
    matvec2_q4_0,
    matvec2_q4_1,
    matvec2_q5_0,
    matvec2_q5_1,
    matvec2_q8_0,
    matvec2_q4_k,
    matvec2_q5_k,
    matvec2_q6_k,
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_k,
    matmul_f32: Some(matmul_f32),
    matmul_f16: Some(matmul_f16),
    matmul_q4_0: Some(matmul_q4_0),
    matmul_q4_1: Some(matmul_q4_1),
    matmul_q5_0: Some(matmul_q5_0),
    matmul_q5_1: Some(matmul_q5_1),
    matmul_q8_0: Some(matmul_q8_0),
    matmul_q4_k: Some(matmul_q4_k),
    matmul_q5_k: Some(matmul_q5_k),
    matmul_q6_k: Some(matmul_q6_k),
    dot_f32,
    axpy_f32,
    ..crate::scalar::TABLE
};

/// Safe table entries: each calls its `#[target_feature]` implementation.
macro_rules! entries {
    ($( $name:ident => $imp:path [ $($arg:ident : $ty:ty),* ] $(-> $ret:ty)? ;)*) => {$(
        fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: this function is reachable only through `TABLE`, which `kernels()` hands out
            // only after checking that the CPU supports avx2, fma and f16c (the features `$imp`
            // enables).
            unsafe { $imp($($arg),*) }
        }
    )*};
}

entries! {
    matmul_f32 => mm::f32[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_f16 => mm::f16[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q4_0 => mm::q4_0[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q4_1 => mm::q4_1[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q5_0 => mm::q5_0[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q5_1 => mm::q5_1[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q8_0 => mm::q8_0[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q4_k => mm::q4_k[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q5_k => mm::q5_k[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matmul_q6_k => mm::q6_k[n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]];
    matvec_f32 => mv_f32[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_f16 => mv_f16[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q4_0 => mv::q4_0[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q4_1 => mv::q4_1[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q5_0 => mv::q5_0[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q5_1 => mv::q5_1[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q8_0 => mv::q8_0[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec2_q4_0 => mv::q4_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q4_1 => mv::q4_1_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_0 => mv::q5_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_1 => mv::q5_1_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q8_0 => mv::q8_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec_q4_k => mv_q4_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q5_k => mv_q5_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q6_k => mv_q6_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec2_q4_k => x2::mv2_q4_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_k => x2::mv2_q5_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q6_k => x2::mv2_q6_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    quantize_q8_0 => quant_q8_0[x: &[f32], out: &mut [u8]];
    quantize_q8_1 => quant_q8_1[x: &[f32], out: &mut [u8]];
    quantize_q8_k => quant_q8_k[x: &[f32], out: &mut [u8]];
    dot_f32 => dot[a: &[f32], b: &[f32]] -> f32;
    axpy_f32 => axpy[a: f32, x: &[f32], y: &mut [f32]];
}

mod x2;

/// This tier's matrix×vector kernels of the 32-element types: `super::matvec` for [`Avx2`].
mod mv {
    use super::super::lanes::Avx2;
    use super::super::matvec;
    use crate::{check_matvec, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantType};

    macro_rules! mv {
        ($($name:ident, $name2:ident => $b:ty, $ty:ident;)*) => {$(
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, None, out) {
                    matvec::legacy::<Avx2, $b>(Avx2::new(), s, w, xq, None, out)
                }
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name2(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
                if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, Some(xr), out) {
                    matvec::legacy::<Avx2, $b>(Avx2::new(), s, w, xq, Some(xr), out)
                }
            }
        )*};
    }
    mv! {
        q4_0, q4_0_2 => BlockQ4_0, Q4_0;
        q4_1, q4_1_2 => BlockQ4_1, Q4_1;
        q5_0, q5_0_2 => BlockQ5_0, Q5_0;
        q5_1, q5_1_2 => BlockQ5_1, Q5_1;
        q8_0, q8_0_2 => BlockQ8_0, Q8_0;
    }
}

/// This tier's batched products: the generic bodies of `super::matmul` instantiated for [`Avx2`].
mod mm {
    use super::super::float::{self, F16W, F32W};
    use super::super::lanes::Avx2;
    use super::super::matmul;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f32(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
        float::matmul::<Avx2, F32W, 3, 4>(Avx2::new(), n, w, x, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f16(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
        float::matmul::<Avx2, F16W, 3, 4>(Avx2::new(), n, w, x, out)
    }
    use crate::{
        ActRows, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
        BlockQ8_0,
    };

    macro_rules! mm {
        ($($name:ident => $f:ident::<$b:ty>;)*) => {$(
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                matmul::$f::<Avx2, $b>(Avx2::new(), n, w, x, out)
            }
        )*};
    }
    mm! {
        q4_0 => legacy::<BlockQ4_0>;
        q4_1 => legacy::<BlockQ4_1>;
        q5_0 => legacy::<BlockQ5_0>;
        q5_1 => legacy::<BlockQ5_1>;
        q8_0 => legacy::<BlockQ8_0>;
        q4_k => kquant::<BlockQ4K>;
        q5_k => kquant::<BlockQ5K>;
        q6_k => kquant::<BlockQ6K>;
    }
}
pub(crate) use x2::FUSED2;

// ---------------------------------------------------------------------------------------------------
// f32 / f16 weights
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_f32(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<[u8; 4], [u8; 4]>(crate::QuantType::F32, n, w, xq, out) {
        drive_rows!(f32_rows, 4, w, x, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_rows<const R: usize>(rows: [&[[u8; 4]]; R], x: &[[u8; 4]]) -> [f32; R] {
    let (xc, xt) = x.as_chunks::<8>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<8>());
    let mut acc = [_mm256_setzero_ps(); R];
    for (k, xv) in xc.iter().enumerate() {
        let xv = ldps::<0, _>(xv);
        for r in 0..R {
            prefetch(&rows[r].0[k], PREFETCH_AHEAD);
            acc[r] = _mm256_fmadd_ps(ldps::<0, _>(&rows[r].0[k]), xv, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut s = hsum256(acc[r]);
        for (a, b) in rows[r].1.iter().zip(xt) {
            s += f32::from_le_bytes(*a) * f32::from_le_bytes(*b);
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_f16(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<F16Bits, [u8; 4]>(crate::QuantType::F16, n, w, xq, out) {
        drive_rows!(f16_rows, 4, w, x, nb, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_rows<const R: usize>(rows: [&[F16Bits]; R], x: &[[u8; 4]]) -> [f32; R] {
    let (xc, xt) = x.as_chunks::<8>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<8>());
    let mut acc = [_mm256_setzero_ps(); R];
    for (k, xv) in xc.iter().enumerate() {
        let xv = ldps::<0, _>(xv);
        for r in 0..R {
            prefetch(&rows[r].0[k], PREFETCH_AHEAD);
            let wv = _mm256_cvtph_ps(ld128::<0, _>(&rows[r].0[k]));
            acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut s = hsum256(acc[r]);
        for (a, b) in rows[r].1.iter().zip(xt) {
            s += f16(*a) * f32::from_le_bytes(*b);
        }
        out[r] = s;
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Legacy 32-element blocks
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_q4_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ4_1, BlockQ8_1>(crate::QuantType::Q4_1, n, w, xq, out)
    {
        drive_rows!(q4_1_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·Σ q·y + m·s`; the integer sum by `vpmaddubsw` (q in 0..16 is the unsigned side).
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_rows<const R: usize>(rows: [&[BlockQ4_1]; R], x: &[BlockQ8_1]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 1 accumulates m·s (lane 0 collects d·dy, unused).
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let y = ld256::<0, _>(&xb.qs);
        let xs = f16_head(xb);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16_head(wb), xs);
            accm[r] = _mm_add_ps(accm[r], p);
            let q = nibbles(ld128::<0, _>(&wb.qs));
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcastss_ps(p), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(accm[r]));
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_q4_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ4_0, BlockQ8_0>(crate::QuantType::Q4_0, n, w, xq, out)
    {
        drive_rows!(q4_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·(Σ q·y − 8·Σ y)`, with `8·Σ y` computed once per activation block.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_rows<const R: usize>(rows: [&[BlockQ4_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let ones = _mm256_set1_epi16(1);
    let eight = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let y = ld256::<0, _>(&xb.qs);
        let y8 = _mm256_madd_epi16(_mm256_maddubs_epi16(eight, y), ones);
        let dy = f16x8(xb.d);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let q = nibbles(ld128::<0, _>(&wb.qs));
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            let dot = _mm256_sub_epi32(dot, y8);
            let d = _mm256_mul_ps(f16x8(wb.d), dy);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_q5_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ5_1, BlockQ8_1>(crate::QuantType::Q5_1, n, w, xq, out)
    {
        drive_rows!(q5_1_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·Σ q·y + m·s` with q = nibble | fifth bit << 4 in 0..32 (the unsigned side of
/// `vpmaddubsw`; a pair of products is at most 2·31·128, no saturation).
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_rows<const R: usize>(rows: [&[BlockQ5_1]; R], x: &[BlockQ8_1]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 1 accumulates m·s (lane 0 collects d·dy, unused).
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let y = ld256::<0, _>(&xb.qs);
        let xs = f16_head(xb);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16_head(wb), xs);
            accm[r] = _mm_add_ps(accm[r], p);
            let q = _mm256_or_si256(nibbles(ld128::<0, _>(&wb.qs)), fifth_bits(wb.qh));
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcastss_ps(p), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(accm[r]));
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_q5_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ5_0, BlockQ8_0>(crate::QuantType::Q5_0, n, w, xq, out)
    {
        drive_rows!(q5_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·(Σ q·y − 16·Σ y)` with q = nibble | fifth bit << 4 in 0..32, and `16·Σ y`
/// computed once per activation block.
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_rows<const R: usize>(rows: [&[BlockQ5_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let ones = _mm256_set1_epi16(1);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let y = ld256::<0, _>(&xb.qs);
        let y16 = _mm256_madd_epi16(_mm256_maddubs_epi16(sixteen, y), ones);
        let dy = f16x8(xb.d);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let q = _mm256_or_si256(nibbles(ld128::<0, _>(&wb.qs)), fifth_bits(wb.qh));
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            let dot = _mm256_sub_epi32(dot, y16);
            let d = _mm256_mul_ps(f16x8(wb.d), dy);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mv_q8_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ8_0, BlockQ8_0>(crate::QuantType::Q8_0, n, w, xq, out)
    {
        drive_rows!(q8_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·Σ q·y`, both sides widened to i16 (exact for every byte value, -128 included).
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_rows<const R: usize>(rows: [&[BlockQ8_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let y0 = _mm256_cvtepi8_epi16(ld128::<0, _>(&xb.qs));
        let y1 = _mm256_cvtepi8_epi16(ld128::<16, _>(&xb.qs));
        let dy = f16x8(xb.d);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch(wb, PREFETCH_AHEAD);
            let w0 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.qs));
            let w1 = _mm256_cvtepi8_epi16(ld128::<16, _>(&wb.qs));
            let dot = _mm256_add_epi32(_mm256_madd_epi16(w0, y0), _mm256_madd_epi16(w1, y1));
            let d = _mm256_mul_ps(f16x8(wb.d), dy);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// K-quants (256-element super-blocks) against Q8_K
// ---------------------------------------------------------------------------------------------------

/// A `vpshufb` control that broadcasts 16-bit word `k` (0..8) of each 128-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast_word(k: usize) -> __m256i {
    _mm256_set1_epi16((((2 * k + 1) << 8) | (2 * k)) as i16)
}

/// The 8 pairwise sums of the 16 bsums of a Q8_K block (one per 32-element sub-block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsum_pairs(xb: &Q8KBytes) -> __m128i {
    let bs = ld256::<0, _>(&xb.bsums);
    _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv_q4_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ4K, Q8KBytes>(crate::QuantType::Q4K, n, w, xq, out) {
        drive_rows!(q4_k_rows, 2, w, x, nb, out);
    }
}

/// Per super-block: `(d·dy)·Σ_j sc_j Σ q·y − (dmin·dy)·Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_rows<const R: usize>(rows: [&[BlockQ4K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = _mm_set1_ps(f32::from_le_bytes(xb.d));
        let bpair = bsum_pairs(xb);
        let ys: &[[i8; 32]; 8] = bytemuck::cast_ref(&xb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(f16x2(wb.d, wb.dmin), dy);
            let (sc, mn) = k4_scales(&wb.scales);
            let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let summ = _mm_madd_epi16(mins, bpair);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0x55>(dd), _mm_cvtepi32_ps(summ), accm[r]);
            let scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.qs);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let lo = _mm256_and_si256(q, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                let plo = _mm256_maddubs_epi16(lo, ld256::<0, _>(&ys[2 * j]));
                let phi = _mm256_maddubs_epi16(hi, ld256::<0, _>(&ys[2 * j + 1]));
                let plo = _mm256_madd_epi16(plo, _mm256_shuffle_epi8(scv, bcast_word(2 * j)));
                let phi = _mm256_madd_epi16(phi, _mm256_shuffle_epi8(scv, bcast_word(2 * j + 1)));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) - hsum128(accm[r]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv_q5_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ5K, Q8KBytes>(crate::QuantType::Q5K, n, w, xq, out) {
        drive_rows!(q5_k_rows, 2, w, x, nb, out);
    }
}

/// As Q4_K, with the fifth bit of sub-block `2j` / `2j+1` in bit `2j` / `2j+1` of `qh[l]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_rows<const R: usize>(rows: [&[BlockQ5K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = _mm_set1_ps(f32::from_le_bytes(xb.d));
        let bpair = bsum_pairs(xb);
        let ys: &[[i8; 32]; 8] = bytemuck::cast_ref(&xb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(f16x2(wb.d, wb.dmin), dy);
            let (sc, mn) = k4_scales(&wb.scales);
            let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let summ = _mm_madd_epi16(mins, bpair);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0x55>(dd), _mm_cvtepi32_ps(summ), accm[r]);
            let scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.qs);
            // Shifted right by 2 per 64-element chunk: bit 0 / bit 1 of each byte is then the
            // chunk's fifth bit for the low / high nibbles (16-bit shifts: the bits that cross
            // into a byte from its neighbour land above bit 1 and are masked off).
            let mut h = ld256::<0, _>(&wb.qh);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(h, one));
                let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), one));
                h = _mm256_srli_epi16::<2>(h);
                let lo = _mm256_or_si256(_mm256_and_si256(q, low), h0);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), low), h1);
                let plo = _mm256_maddubs_epi16(lo, ld256::<0, _>(&ys[2 * j]));
                let phi = _mm256_maddubs_epi16(hi, ld256::<0, _>(&ys[2 * j + 1]));
                let plo = _mm256_madd_epi16(plo, _mm256_shuffle_epi8(scv, bcast_word(2 * j)));
                let phi = _mm256_madd_epi16(phi, _mm256_shuffle_epi8(scv, bcast_word(2 * j + 1)));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]) - hsum128(accm[r]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mv_q6_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ6K, Q8KBytes>(crate::QuantType::Q6K, n, w, xq, out) {
        drive_rows!(q6_k_rows, 2, w, x, nb, out);
    }
}

/// A `vpshufb` control for Q6_K chunk `k` (0..4) of a half: the low 128-bit lane broadcasts word
/// `2k`, the high lane word `2k+1` (the scales of the chunk's two 16-element groups).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_scale_ctl(k: usize) -> __m256i {
    let w = |i: usize| (((2 * i + 1) << 8) | (2 * i)) as i16;
    _mm256_set_m128i(_mm_set1_epi16(w(2 * k + 1)), _mm_set1_epi16(w(2 * k)))
}

/// Per super-block: `(d·dy)·Σ_g sc_g Σ (q−32)·y` over 16 groups of 16; `Σ 32·y` by `vpmaddubsw`
/// from the activation itself (not from its bsums), so any activation bytes give the scalar result.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_rows<const R: usize>(rows: [&[BlockQ6K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = f32::from_le_bytes(xb.d);
        let ys: &[[i8; 32]; 8] = bytemuck::cast_ref(&xb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let d = _mm256_set1_ps(f16(wb.d) * dy);
            let sc16 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.scales));
            let halves = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            let ql: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.ql);
            let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&wb.qh);
            let mut sumi = _mm256_setzero_si256();
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
                    let y = ld256::<0, _>(&ys[4 * n + k]);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(q[k], y),
                        _mm256_maddubs_epi16(m32, y),
                    );
                    let s = _mm256_shuffle_epi8(halves[n], q6_scale_ctl(k));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
                }
            }
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(acc[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Activation quantizers (bit-exact with the scalar tier)
// ---------------------------------------------------------------------------------------------------

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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_q8_0(x: &[f32], out: &mut [u8]) {
    let nb = quant_blocks(crate::QuantType::Q8_0, x, out);
    let Ok(y) =
        bytemuck::try_cast_slice_mut::<u8, BlockQ8_0>(&mut out[..nb * size_of::<BlockQ8_0>()])
    else {
        return;
    };
    for (xb, yb) in x[..nb * QK].as_chunks::<QK>().0.iter().zip(y) {
        let (d, _) = q8_block(xb, &mut yb.qs);
        yb.d = F16Bits::from_f32(d);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_q8_1(x: &[f32], out: &mut [u8]) {
    let nb = quant_blocks(crate::QuantType::Q8_1, x, out);
    let Ok(y) =
        bytemuck::try_cast_slice_mut::<u8, BlockQ8_1>(&mut out[..nb * size_of::<BlockQ8_1>()])
    else {
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
    let ts = size_of::<Q8KBytes>();
    let nb = quant_blocks(crate::QuantType::Q8K, x, out);
    let Ok(y) = bytemuck::try_cast_slice_mut::<u8, Q8KBytes>(&mut out[..nb * ts]) else {
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
// f32 vector helpers
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ac, at) = a.as_chunks::<32>();
    let (bc, bt) = b.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (x, y) in ac.iter().zip(bc) {
        acc[0] = _mm256_fmadd_ps(ldps::<0, _>(x), ldps::<0, _>(y), acc[0]);
        acc[1] = _mm256_fmadd_ps(ldps::<32, _>(x), ldps::<32, _>(y), acc[1]);
        acc[2] = _mm256_fmadd_ps(ldps::<64, _>(x), ldps::<64, _>(y), acc[2]);
        acc[3] = _mm256_fmadd_ps(ldps::<96, _>(x), ldps::<96, _>(y), acc[3]);
    }
    let (at8, att) = at.as_chunks::<8>();
    let (bt8, btt) = bt.as_chunks::<8>();
    for (x, y) in at8.iter().zip(bt8) {
        acc[0] = _mm256_fmadd_ps(ldps::<0, _>(x), ldps::<0, _>(y), acc[0]);
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum256(s);
    for (x, y) in att.iter().zip(btt) {
        s += x * y;
    }
    s
}

/// `y += a·x` with a separate multiply and add (bit-exact with the scalar tier).
#[target_feature(enable = "avx2,fma,f16c")]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let av = _mm256_set1_ps(a);
    let (xc, xt) = x.as_chunks::<8>();
    let (yc, yt) = y.as_chunks_mut::<8>();
    for (xv, yv) in xc.iter().zip(yc.iter_mut()) {
        let r = _mm256_add_ps(ldps::<0, _>(yv), _mm256_mul_ps(av, ldps::<0, _>(xv)));
        stps(yv, r);
    }
    for (xv, yv) in xt.iter().zip(yt) {
        *yv += a * xv;
    }
}

use core::mem::size_of;
