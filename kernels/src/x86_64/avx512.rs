//! The AVX-512 tier: F + BW + VL + VNNI (plus the AVX2 tier's AVX2, FMA and F16C). No AMX.
//!
//! The 4-bit and 8-bit dot products use `vpdpbusd` (unsigned × signed bytes, summed in i32 lanes),
//! two 32-element blocks per 512-bit instruction, four weight rows per pass over the activation:
//! - Q4_1: the nibbles are the unsigned operand as they are.
//! - Q4_0: `Σ (q−8)·y = Σ q·y − 8·Σ y`; `−8·Σ y` is computed once per activation block (also by
//!   `vpdpbusd`) and is the accumulator the row's product is added to.
//! - Q8_0: the weight is made unsigned by flipping its sign bit (`w + 128`), and `−128·Σ y` is the
//!   starting accumulator. Exact for every byte value, −128 included.
//!
//! - Q5_1 / Q5_0: as Q4_1 / Q4_0 with q in 0..32 (`−16·Σ y` instead of `−8·Σ y`). The fifth bits
//!   are not unpacked byte by byte: the two blocks' `qh` words are rearranged (a few integer shifts)
//!   into a 64-bit byte mask in the nibble layout below, and one masked byte add (`vpaddb` under
//!   `k`) puts 16 onto exactly those quants ([`q5x2`]).
//!
//! The nibble layout puts the low nibbles of two blocks next to each other: the 512-bit weight vector
//! is `[lo(b0), lo(b1), hi(b0), hi(b1)]` (128-bit lanes) and the activation is rearranged to match once
//! per block pair, so each row costs one 256-bit shift, one insert and one mask for two blocks.
//!
//! The K-quants use `vpmaddubsw`/`vpmaddwd` (the sub-block scale rides in the `vpmaddwd`) on 512-bit
//! vectors, two 32-element sub-blocks per instruction. The activation quantizers are the AVX2 tier's.
//!
//! The two-activation kernels (`MatVec2`, every quantized type fused) are in `x2`.
use core::arch::x86_64::*;

use super::avx2;
use super::common::*;
use crate::{ActRows, Kernels, Tier};
use crate::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1, F16Bits};
use crate::{BlockQ5_0, BlockQ5_1};

mod x2;

/// This tier's matrix×vector kernels of the 32-element types: `super::matvec` for [`Avx512`].
mod mv {
    use super::super::lanes::Avx512;
    use super::super::matvec;
    use crate::{check_matvec, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantType};

    macro_rules! mv {
        ($($name:ident, $name2:ident => $b:ty, $ty:ident;)*) => {$(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub(super) fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
                if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, None, out) {
                    matvec::legacy::<Avx512, $b>(Avx512::new(), s, w, xq, None, out)
                }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub(super) fn $name2(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
                if let Some(s) = check_matvec(QuantType::$ty, n, w, xq, Some(xr), out) {
                    matvec::legacy::<Avx512, $b>(Avx512::new(), s, w, xq, Some(xr), out)
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

/// This tier's batched products: the generic bodies of `super::matmul` instantiated for [`Avx512`].
mod mm {
    use super::super::float::{self, F16W, F32W};
    use super::super::lanes::Avx512;
    use super::super::matmul;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) fn f32(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
        float::matmul::<Avx512, F32W, 4, 6>(Avx512::new(), n, w, x, out)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) fn f16(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
        float::matmul::<Avx512, F16W, 4, 6>(Avx512::new(), n, w, x, out)
    }
    use crate::{
        ActRows, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
        BlockQ8_0,
    };

    macro_rules! mm {
        ($($name:ident => $f:ident::<$b:ty>;)*) => {$(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub(super) fn $name(n: usize, w: &[u8], x: ActRows<'_>, out: &mut [f32]) {
                matmul::$f::<Avx512, $b>(Avx512::new(), n, w, x, out)
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

/// This tier's table, if the CPU has AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
pub fn kernels() -> Option<&'static Kernels> {
    supported().then_some(&TABLE)
}

fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

static TABLE: Kernels = Kernels {
    tier: Tier::Avx512,
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
            // only after checking that the CPU supports avx512f, avx512bw, avx512vl, avx512vnni,
            // avx2, fma and f16c (a superset of the features the implementation enables).
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
    matvec_q4_k => mv_q4_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q5_k => mv_q5_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec_q6_k => mv_q6_k[n: usize, w: &[u8], xq: &[u8], out: &mut [f32]];
    matvec2_q4_0 => mv::q4_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q4_1 => mv::q4_1_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_0 => mv::q5_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_1 => mv::q5_1_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q8_0 => mv::q8_0_2[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q4_k => x2::mv2_q4_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q5_k => x2::mv2_q5_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    matvec2_q6_k => x2::mv2_q6_k[n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]];
    quantize_q8_0 => avx2::quant_q8_0[x: &[f32], out: &mut [u8]];
    quantize_q8_1 => avx2::quant_q8_1[x: &[f32], out: &mut [u8]];
    quantize_q8_k => avx2::quant_q8_k[x: &[f32], out: &mut [u8]];
    dot_f32 => dot[a: &[f32], b: &[f32]] -> f32;
    axpy_f32 => axpy[a: f32, x: &[f32], y: &mut [f32]];
}

/// The 512-bit `[a.lo, b.lo, a.hi, b.hi]` (128-bit lanes) of two 256-bit vectors: the order of the
/// elements of two blocks after [`nibbles2`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn interleave2(a: __m256i, b: __m256i) -> __m512i {
    let lo = _mm256_permute2x128_si256::<0x20>(a, b);
    let hi = _mm256_permute2x128_si256::<0x31>(a, b);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The nibbles of two Q4 blocks' `qs` as `[lo(a), lo(b), hi(a), hi(b)]` (128-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles2(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    let q = _mm256_set_m128i(ld128::<0, _>(b), ld128::<0, _>(a));
    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
    _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
}

/// The quants (0..32) of two Q5 blocks in the [`nibbles2`] order `[lo(a), lo(b), hi(a), hi(b)]`.
/// Bits 0..16 of a block's `qh` belong to its low-nibble elements and bits 16..32 to its high ones,
/// so moving the four 16-bit halves into that order gives a byte mask of the fifth bits; a masked
/// byte add of 16 (the nibbles are < 16, so this is bit 4) applies it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5x2(qa: &[u8; 16], ha: [u8; 4], qb: &[u8; 16], hb: [u8; 4]) -> __m512i {
    let (a, b) = (u32::from_le_bytes(ha) as u64, u32::from_le_bytes(hb) as u64);
    let k: __mmask64 = (a & 0xffff) | (b & 0xffff) << 16 | (a >> 16) << 32 | (b >> 16) << 48;
    let q = nibbles2(qa, qb);
    _mm512_mask_add_epi8(q, k, q, _mm512_set1_epi8(16))
}

/// The quants (0..32) of one Q5 block in the [`nibbles`] order (elements 0..32): `qh` is already
/// the byte mask of that order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5x1(q: &[u8; 16], h: [u8; 4]) -> __m256i {
    let v = nibbles(ld128::<0, _>(q));
    _mm256_mask_add_epi8(v, u32::from_le_bytes(h), v, _mm256_set1_epi8(16))
}

/// Broadcasts f32 lane `i` of `v` within each group of 4 lanes by `i` = pattern of `sel`:
/// lanes 0..4 and 8..12 take `v[a]`, lanes 4..8 and 12..16 take `v[b]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread2(v: __m128, a: i32, b: i32) -> __m512 {
    let idx = _mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

// ---------------------------------------------------------------------------------------------------
// f32 / f16 weights
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_f32(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<[u8; 4], [u8; 4]>(crate::QuantType::F32, n, w, xq, out) {
        drive_rows!(f32_rows, 4, w, x, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f32_rows<const R: usize>(rows: [&[[u8; 4]]; R], x: &[[u8; 4]]) -> [f32; R] {
    let (xc, xt) = x.as_chunks::<16>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<16>());
    let mut acc = [_mm512_setzero_ps(); R];
    for (k, xv) in xc.iter().enumerate() {
        let xv = ldps16::<0, _>(xv);
        for r in 0..R {
            prefetch(&rows[r].0[k], PREFETCH_AHEAD);
            acc[r] = _mm512_fmadd_ps(ldps16::<0, _>(&rows[r].0[k]), xv, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut s = _mm512_reduce_add_ps(acc[r]);
        for (a, b) in rows[r].1.iter().zip(xt) {
            s += f32::from_le_bytes(*a) * f32::from_le_bytes(*b);
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_f16(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<F16Bits, [u8; 4]>(crate::QuantType::F16, n, w, xq, out) {
        drive_rows!(f16_rows, 4, w, x, nb, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_rows<const R: usize>(rows: [&[F16Bits]; R], x: &[[u8; 4]]) -> [f32; R] {
    let (xc, xt) = x.as_chunks::<16>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<16>());
    let mut acc = [_mm512_setzero_ps(); R];
    for (k, xv) in xc.iter().enumerate() {
        let xv = ldps16::<0, _>(xv);
        for r in 0..R {
            prefetch(&rows[r].0[k], PREFETCH_AHEAD);
            let wv = _mm512_cvtph_ps(ld256::<0, _>(&rows[r].0[k]));
            acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut s = _mm512_reduce_add_ps(acc[r]);
        for (a, b) in rows[r].1.iter().zip(xt) {
            s += f16(*a) * f32::from_le_bytes(*b);
        }
        out[r] = s;
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Legacy 32-element blocks, two per 512-bit vector
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q4_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ4_1, BlockQ8_1>(crate::QuantType::Q4_1, n, w, xq, out)
    {
        drive_rows!(q4_1_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·Σ q·y + m·s`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_1_rows<const R: usize>(rows: [&[BlockQ4_1]; R], x: &[BlockQ8_1]) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let mut acc = [_mm512_setzero_ps(); R];
    // Lanes 1 and 3 accumulate m·s of the pair's two blocks (lanes 0 and 2 collect d·dy, unused).
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in xp.iter().enumerate() {
        let y = interleave2(ld256::<0, _>(&xb[0].qs), ld256::<0, _>(&xb[1].qs));
        let xs = f16_heads2(&xb[0], &xb[1]);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16_heads2(&wb[0], &wb[1]), xs);
            accm[r] = _mm_add_ps(accm[r], p);
            let dot =
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles2(&wb[0].qs, &wb[1].qs), y);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), spread2(p, 0, 2), acc[r]);
        }
    }
    if let Some(xb) = xt.first() {
        let y = ld256::<0, _>(&xb.qs);
        let xs = f16_head(xb);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let p = _mm_mul_ps(f16_head(wb), xs);
            accm[r] = _mm_add_ps(accm[r], _mm_movelh_ps(p, _mm_setzero_ps()));
            let dot =
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(ld128::<0, _>(&wb.qs)), y);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcastss_ps(p));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let m = _mm_movehdup_ps(accm[r]);
        let m = _mm_add_ss(m, _mm_movehl_ps(m, m));
        out[r] = _mm512_reduce_add_ps(acc[r]) + _mm_cvtss_f32(m);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q4_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ4_0, BlockQ8_0>(crate::QuantType::Q4_0, n, w, xq, out)
    {
        drive_rows!(q4_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·(Σ q·y − 8·Σ y)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_0_rows<const R: usize>(rows: [&[BlockQ4_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, xb) in xp.iter().enumerate() {
        let y = interleave2(ld256::<0, _>(&xb[0].qs), ld256::<0, _>(&xb[1].qs));
        let y8 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), y);
        let base = _mm512_sub_epi32(_mm512_setzero_si512(), y8);
        let xs = f16x2(xb[0].d, xb[1].d);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16x2(wb[0].d, wb[1].d), xs);
            let dot = _mm512_dpbusd_epi32(base, nibbles2(&wb[0].qs, &wb[1].qs), y);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), spread2(p, 0, 1), acc[r]);
        }
    }
    if let Some(xb) = xt.first() {
        let y = ld256::<0, _>(&xb.qs);
        let y8 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), y);
        let base = _mm256_sub_epi32(_mm256_setzero_si256(), y8);
        let dy = f16x8(xb.d);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let dot = _mm256_dpbusd_epi32(base, nibbles(ld128::<0, _>(&wb.qs)), y);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(f16x8(wb.d), dy));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q5_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ5_1, BlockQ8_1>(crate::QuantType::Q5_1, n, w, xq, out)
    {
        drive_rows!(q5_1_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·Σ q·y + m·s`, q in 0..32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_1_rows<const R: usize>(rows: [&[BlockQ5_1]; R], x: &[BlockQ8_1]) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let mut acc = [_mm512_setzero_ps(); R];
    // Lanes 1 and 3 accumulate m·s of the pair's two blocks (lanes 0 and 2 collect d·dy, unused).
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in xp.iter().enumerate() {
        let y = interleave2(ld256::<0, _>(&xb[0].qs), ld256::<0, _>(&xb[1].qs));
        let xs = f16_heads2(&xb[0], &xb[1]);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16_heads2(&wb[0], &wb[1]), xs);
            accm[r] = _mm_add_ps(accm[r], p);
            let q = q5x2(&wb[0].qs, wb[0].qh, &wb[1].qs, wb[1].qh);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), spread2(p, 0, 2), acc[r]);
        }
    }
    if let Some(xb) = xt.first() {
        let y = ld256::<0, _>(&xb.qs);
        let xs = f16_head(xb);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let p = _mm_mul_ps(f16_head(wb), xs);
            accm[r] = _mm_add_ps(accm[r], _mm_movelh_ps(p, _mm_setzero_ps()));
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q5x1(&wb.qs, wb.qh), y);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcastss_ps(p));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let m = _mm_movehdup_ps(accm[r]);
        let m = _mm_add_ss(m, _mm_movehl_ps(m, m));
        out[r] = _mm512_reduce_add_ps(acc[r]) + _mm_cvtss_f32(m);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q5_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ5_0, BlockQ8_0>(crate::QuantType::Q5_0, n, w, xq, out)
    {
        drive_rows!(q5_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·(Σ q·y − 16·Σ y)`, q in 0..32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_rows<const R: usize>(rows: [&[BlockQ5_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, xb) in xp.iter().enumerate() {
        let y = interleave2(ld256::<0, _>(&xb[0].qs), ld256::<0, _>(&xb[1].qs));
        let y16 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(16), y);
        let base = _mm512_sub_epi32(_mm512_setzero_si512(), y16);
        let xs = f16x2(xb[0].d, xb[1].d);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16x2(wb[0].d, wb[1].d), xs);
            let q = q5x2(&wb[0].qs, wb[0].qh, &wb[1].qs, wb[1].qh);
            let dot = _mm512_dpbusd_epi32(base, q, y);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), spread2(p, 0, 1), acc[r]);
        }
    }
    if let Some(xb) = xt.first() {
        let y = ld256::<0, _>(&xb.qs);
        let y16 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(16), y);
        let base = _mm256_sub_epi32(_mm256_setzero_si256(), y16);
        let dy = f16x8(xb.d);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let dot = _mm256_dpbusd_epi32(base, q5x1(&wb.qs, wb.qh), y);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(f16x8(wb.d), dy));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q8_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) =
        geometry::<BlockQ8_0, BlockQ8_0>(crate::QuantType::Q8_0, n, w, xq, out)
    {
        drive_rows!(q8_0_rows, 4, w, x, nb, out);
    }
}

/// Per block: `(d·dy)·(Σ (w+128)·y − 128·Σ y)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_0_rows<const R: usize>(rows: [&[BlockQ8_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
    let (xp, xt) = x.as_chunks::<2>();
    let rows = rows.map(|r| r[..x.len()].as_chunks::<2>());
    let flip = _mm512_set1_epi8(-128);
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, xb) in xp.iter().enumerate() {
        let y = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(ld256::<0, _>(&xb[0].qs)),
            ld256::<0, _>(&xb[1].qs),
        );
        let y128 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, y);
        let base = _mm512_sub_epi32(_mm512_setzero_si512(), y128);
        let xs = f16x2(xb[0].d, xb[1].d);
        for r in 0..R {
            let wb = &rows[r].0[b];
            prefetch(wb, PREFETCH_AHEAD);
            let p = _mm_mul_ps(f16x2(wb[0].d, wb[1].d), xs);
            let wv = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(ld256::<0, _>(&wb[0].qs)),
                ld256::<0, _>(&wb[1].qs),
            );
            let dot = _mm512_dpbusd_epi32(base, _mm512_xor_si512(wv, flip), y);
            let s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(p));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
        }
    }
    if let Some(xb) = xt.first() {
        let flip = _mm256_set1_epi8(-128);
        let y = ld256::<0, _>(&xb.qs);
        let base = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), flip, y),
        );
        let dy = f16x8(xb.d);
        for r in 0..R {
            let Some(wb) = rows[r].1.first() else {
                continue;
            };
            let dot = _mm256_dpbusd_epi32(base, _mm256_xor_si256(ld256::<0, _>(&wb.qs), flip), y);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(f16x8(wb.d), dy));
            acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(t));
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// K-quants: two 32-element sub-blocks per 512-bit vector
// ---------------------------------------------------------------------------------------------------

/// A `vpshufb` control broadcasting, in 128-bit lane `L` of 4, the 16-bit word `w[L]` of that lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn word_ctl(w: [usize; 4]) -> __m512i {
    let c = |i: usize| (((2 * i + 1) << 8) | (2 * i)) as i16;
    let v = _mm256_set_m128i(_mm_set1_epi16(c(w[1])), _mm_set1_epi16(c(w[0])));
    let u = _mm256_set_m128i(_mm_set1_epi16(c(w[3])), _mm_set1_epi16(c(w[2])));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v), u)
}

/// The 8 sub-block scales (bytes of `sc`) as i16 words, in every 128-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales_x4(sc: u64) -> __m512i {
    _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q4_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ4K, Q8KBytes>(crate::QuantType::Q4K, n, w, xq, out) {
        drive_rows!(q4_k_rows, 2, w, x, nb, out);
    }
}

/// The mins term `Σ_j m_j (bsums[2j] + bsums[2j+1])` as 4 i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mins_term(mn: u64, xb: &Q8KBytes) -> __m128i {
    let bs = ld256::<0, _>(&xb.bsums);
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    );
    _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64)), pairs)
}

/// Per super-block: `(d·dy)·Σ_j sc_j Σ q·y − (dmin·dy)·Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k_rows<const R: usize>(rows: [&[BlockQ4K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm512_set1_epi8(0x0f);
    let ctl = [
        word_ctl([0, 0, 1, 1]),
        word_ctl([2, 2, 3, 3]),
        word_ctl([4, 4, 5, 5]),
        word_ctl([6, 6, 7, 7]),
    ];
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = _mm_set1_ps(f32::from_le_bytes(xb.d));
        let ys: &[[i8; 64]; 4] = bytemuck::cast_ref(&xb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(f16x2(wb.d, wb.dmin), dy);
            let (sc, mn) = k4_scales(&wb.scales);
            let summ = mins_term(mn, xb);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0x55>(dd), _mm_cvtepi32_ps(summ), accm[r]);
            let scv = scales_x4(sc);
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.qs);
            let mut sumi = _mm512_setzero_si512();
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
                let p = _mm512_maddubs_epi16(_mm512_and_si512(qq, low), ld512::<0, _>(&ys[j]));
                sumi =
                    _mm512_add_epi32(sumi, _mm512_madd_epi16(p, _mm512_shuffle_epi8(scv, ctl[j])));
            }
            acc[r] = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]) - hsum128(accm[r]);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q5_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ5K, Q8KBytes>(crate::QuantType::Q5K, n, w, xq, out) {
        drive_rows!(q5_k_rows, 2, w, x, nb, out);
    }
}

/// As Q4_K, with the fifth bit of sub-block `2j` / `2j+1` in bit `2j` / `2j+1` of `qh[l]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_k_rows<const R: usize>(rows: [&[BlockQ5K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm512_set1_epi8(0x0f);
    let one = _mm512_set1_epi8(1);
    let ctl = [
        word_ctl([0, 0, 1, 1]),
        word_ctl([2, 2, 3, 3]),
        word_ctl([4, 4, 5, 5]),
        word_ctl([6, 6, 7, 7]),
    ];
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = _mm_set1_ps(f32::from_le_bytes(xb.d));
        let ys: &[[i8; 64]; 4] = bytemuck::cast_ref(&xb.qs);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let dd = _mm_mul_ps(f16x2(wb.d, wb.dmin), dy);
            let (sc, mn) = k4_scales(&wb.scales);
            let summ = mins_term(mn, xb);
            accm[r] = _mm_fmadd_ps(_mm_permute_ps::<0x55>(dd), _mm_cvtepi32_ps(summ), accm[r]);
            let scv = scales_x4(sc);
            let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&wb.qs);
            // [qh, qh >> 1]: after the per-chunk shift by 2, bit 0 of each byte is the fifth bit of
            // the low half (low nibbles) / high half (high nibbles) of the chunk. The 16-bit shifts
            // move bits across bytes only above bit 1, which the mask drops.
            let h = ld256::<0, _>(&wb.qh);
            let mut h =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<1>(h));
            let mut sumi = _mm512_setzero_si512();
            for j in 0..4 {
                let q = ld256::<0, _>(&qs[j]);
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
                let hb = _mm512_slli_epi16::<4>(_mm512_and_si512(h, one));
                h = _mm512_srli_epi16::<2>(h);
                let qq = _mm512_or_si512(_mm512_and_si512(qq, low), hb);
                let p = _mm512_maddubs_epi16(qq, ld512::<0, _>(&ys[j]));
                sumi =
                    _mm512_add_epi32(sumi, _mm512_madd_epi16(p, _mm512_shuffle_epi8(scv, ctl[j])));
            }
            acc[r] = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]) - hsum128(accm[r]);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn mv_q6_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    if let Some((w, x, nb)) = geometry::<BlockQ6K, Q8KBytes>(crate::QuantType::Q6K, n, w, xq, out) {
        drive_rows!(q6_k_rows, 2, w, x, nb, out);
    }
}

/// Per super-block: `(d·dy)·Σ_g sc_g Σ (q−32)·y` over 16 groups of 16; `Σ 32·y` from the
/// activation itself, so any activation bytes give the scalar result.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_rows<const R: usize>(rows: [&[BlockQ6K]; R], x: &[Q8KBytes]) -> [f32; R] {
    let rows = rows.map(|r| &r[..x.len()]);
    let low = _mm512_set1_epi8(0x0f);
    let three = _mm512_set1_epi8(3);
    let m32 = _mm512_set1_epi8(32);
    // 64-element piece `p` (0..4) of a 128-element half covers groups 4p..4p+4 of the half's 8.
    let ctl = [word_ctl([0, 1, 2, 3]), word_ctl([4, 5, 6, 7])];
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, xb) in x.iter().enumerate() {
        let dy = f32::from_le_bytes(xb.d);
        let ys: &[[i8; 64]; 4] = bytemuck::cast_ref(&xb.qs);
        let y32 = [0, 1, 2, 3].map(|i| _mm512_maddubs_epi16(m32, ld512::<0, _>(&ys[i])));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_block(wb);
            let d = _mm512_set1_ps(f16(wb.d) * dy);
            let sc16 = _mm256_cvtepi8_epi16(ld128::<0, _>(&wb.scales));
            let halves = [
                _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc16)),
                _mm512_broadcast_i32x4(_mm256_extracti128_si256::<1>(sc16)),
            ];
            let ql: &[[u8; 64]; 2] = bytemuck::cast_ref(&wb.ql);
            let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&wb.qh);
            let mut sumi = _mm512_setzero_si512();
            for n in 0..2 {
                let h = ld256::<0, _>(&qh[n]);
                // [h, h >> 2] gives the top bits of elements 0..32 and 32..64 of the half;
                // shifted by 4 more, of elements 64..96 and 96..128.
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
                    let prod =
                        _mm512_sub_epi16(_mm512_maddubs_epi16(q, ld512::<0, _>(&ys[i])), y32[i]);
                    let s = _mm512_shuffle_epi8(halves[n], ctl[p]);
                    sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(prod, s));
                }
            }
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// f32 vector helpers
// ---------------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ac, at) = a.as_chunks::<64>();
    let (bc, bt) = b.as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    for (x, y) in ac.iter().zip(bc) {
        acc[0] = _mm512_fmadd_ps(ldps16::<0, _>(x), ldps16::<0, _>(y), acc[0]);
        acc[1] = _mm512_fmadd_ps(ldps16::<64, _>(x), ldps16::<64, _>(y), acc[1]);
        acc[2] = _mm512_fmadd_ps(ldps16::<128, _>(x), ldps16::<128, _>(y), acc[2]);
        acc[3] = _mm512_fmadd_ps(ldps16::<192, _>(x), ldps16::<192, _>(y), acc[3]);
    }
    let (at16, att) = at.as_chunks::<16>();
    let (bt16, btt) = bt.as_chunks::<16>();
    for (x, y) in at16.iter().zip(bt16) {
        acc[0] = _mm512_fmadd_ps(ldps16::<0, _>(x), ldps16::<0, _>(y), acc[0]);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_ps(s);
    for (x, y) in att.iter().zip(btt) {
        s += x * y;
    }
    s
}

/// `y += a·x` with a separate multiply and add (bit-exact with the scalar tier).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let av = _mm512_set1_ps(a);
    let (xc, xt) = x.as_chunks::<16>();
    let (yc, yt) = y.as_chunks_mut::<16>();
    for (xv, yv) in xc.iter().zip(yc.iter_mut()) {
        let r = _mm512_add_ps(ldps16::<0, _>(yv), _mm512_mul_ps(av, ldps16::<0, _>(xv)));
        stps16(yv, r);
    }
    for (xv, yv) in xt.iter().zip(yt) {
        *yv += a * xv;
    }
}
