//! Shared by the x86-64 tiers: an alignment-1 view of Q8_K blocks, the loads, stores,
//! gathers and prefetches (the only `unsafe` memory accesses of the tiers: const-checked offsets
//! into fixed-size values, or slices checked at run time), and small vector utilities.
//!
//! Every function with vector arguments or results is a `#[target_feature]` function (AVX2 + FMA +
//! F16C, or AVX-512F for the 512-bit ones); the generic kernels reach them through the lane
//! tokens' methods ([`super::lanes`]), which are inlined into the tiers' target-feature entries.
use bytemuck::{Pod, Zeroable};
use core::arch::x86_64::*;
use core::mem::size_of;

use crate::{F16Bits, QK_K};

/// A Q8_K block as bytes (alignment 1), so that a `&[u8]` activation at any address can be viewed as
/// `&[Q8KBytes]`. Same layout as [`crate::BlockQ8K`]: `d` (f32 LE), `qs`, `bsums` (16 × i16 LE).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Q8KBytes {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [u8; 32],
}

const _: () = assert!(size_of::<Q8KBytes>() == size_of::<crate::BlockQ8K>());
const _: () = assert!(core::mem::align_of::<Q8KBytes>() == 1);

/// 16 bytes at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld128<const OFF: usize, T: Pod>(a: &T) -> __m128i {
    const { assert!(OFF + 16 <= size_of::<T>()) };
    // SAFETY: the compile-time assertion keeps bytes OFF..OFF+16 inside `*a`, which is readable for
    // its whole size; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128((a as *const T).cast::<u8>().add(OFF).cast()) }
}

/// 8 bytes at byte offset `OFF` of `a`, in the low half of the vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld64<const OFF: usize, T: Pod>(a: &T) -> __m128i {
    const { assert!(OFF + 8 <= size_of::<T>()) };
    // SAFETY: the compile-time assertion keeps bytes OFF..OFF+8 inside `*a`; `loadl` reads 8 bytes
    // with no alignment requirement.
    unsafe { _mm_loadl_epi64((a as *const T).cast::<u8>().add(OFF).cast()) }
}

/// 32 bytes at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld256<const OFF: usize, T: Pod>(a: &T) -> __m256i {
    const { assert!(OFF + 32 <= size_of::<T>()) };
    // SAFETY: the compile-time assertion keeps bytes OFF..OFF+32 inside `*a`; unaligned load.
    unsafe { _mm256_loadu_si256((a as *const T).cast::<u8>().add(OFF).cast()) }
}

/// 64 bytes at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ld512<const OFF: usize, T: Pod>(a: &T) -> __m512i {
    const { assert!(OFF + 64 <= size_of::<T>()) };
    // SAFETY: the compile-time assertion keeps bytes OFF..OFF+64 inside `*a`; unaligned load.
    unsafe { _mm512_loadu_si512((a as *const T).cast::<u8>().add(OFF).cast()) }
}

/// 16 f32 (little-endian bytes, any alignment) at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ldps16<const OFF: usize, T: Pod>(a: &T) -> __m512 {
    _mm512_castsi512_ps(ld512::<OFF, T>(a))
}

/// Stores 16 f32 into `a`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn stps16(a: &mut [f32; 16], v: __m512) {
    // SAFETY: `a` is 64 writable bytes; unaligned store.
    unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) }
}

/// 16 bytes at byte offset `at` of `s` (zeros if they are not all inside `s`: a caller bug).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld128_at(s: &[u8], at: usize) -> __m128i {
    match s
        .get(at..at + 16)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        Some(c) => ld128::<0, _>(c),
        None => _mm_setzero_si128(),
    }
}

/// 8 bytes at byte offset `at` of `s`, in the low half (zeros if they are not all inside `s`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld64_at(s: &[u8], at: usize) -> __m128i {
    match s.get(at..at + 8).and_then(|c| <&[u8; 8]>::try_from(c).ok()) {
        Some(c) => ld64::<0, _>(c),
        None => _mm_setzero_si128(),
    }
}

/// 32 bytes at byte offset `at` of `s` (zeros if they are not all inside `s`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld256_at(s: &[u8], at: usize) -> __m256i {
    match s
        .get(at..at + 32)
        .and_then(|c| <&[u8; 32]>::try_from(c).ok())
    {
        Some(c) => ld256::<0, _>(c),
        None => _mm256_setzero_si256(),
    }
}

/// The 8 little-endian u32 at byte offsets `at + i·stride` (i = 0..8) of `s`, by one `vpgatherdd`;
/// zeros if the last of them is not inside `s` (a caller bug) or the offsets overflow an i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gather8_u32(s: &[u8], at: usize, stride: usize) -> __m256i {
    let fits = stride <= (i32::MAX / 8) as usize
        && at
            .checked_add(7 * stride + 4)
            .is_some_and(|end| end <= s.len());
    if !fits {
        return _mm256_setzero_si256();
    }
    let st = stride as i32;
    let idx = _mm256_setr_epi32(0, st, 2 * st, 3 * st, 4 * st, 5 * st, 6 * st, 7 * st);
    // SAFETY: the check above keeps every 4-byte element `at + i·stride .. + 4` (i < 8) inside `s`;
    // the gather reads exactly those (scale 1, no alignment requirement).
    unsafe { _mm256_i32gather_epi32::<1>(s.as_ptr().add(at).cast(), idx) }
}

/// The 16 little-endian u32 at byte offsets `at + i·stride` (i = 0..16) of `s`, by one gather;
/// zeros if the last of them is not inside `s` or the offsets overflow an i32.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn gather16_u32(s: &[u8], at: usize, stride: usize) -> __m512i {
    let fits = stride <= (i32::MAX / 16) as usize
        && at
            .checked_add(15 * stride + 4)
            .is_some_and(|end| end <= s.len());
    if !fits {
        return _mm512_setzero_si512();
    }
    let st = stride as i32;
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(st),
    );
    // SAFETY: the check above keeps every 4-byte element `at + i·stride .. + 4` (i < 16) inside
    // `s`; the gather reads exactly those (scale 1, no alignment requirement).
    unsafe { _mm512_i32gather_epi32::<1>(idx, s.as_ptr().add(at).cast()) }
}

/// 8 f32 (little-endian bytes, any alignment) at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ldps<const OFF: usize, T: Pod>(a: &T) -> __m256 {
    _mm256_castsi256_ps(ld256::<OFF, T>(a))
}

/// Stores 32 bytes at byte offset `OFF` of `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn st256<const OFF: usize, T: Pod>(a: &mut T, v: __m256i) {
    const { assert!(OFF + 32 <= size_of::<T>()) };
    // SAFETY: the compile-time assertion keeps bytes OFF..OFF+32 inside `*a`, which we borrow
    // mutably and which (being `Pod`) accepts any bytes; unaligned store.
    unsafe { _mm256_storeu_si256((a as *mut T).cast::<u8>().add(OFF).cast(), v) }
}

/// Stores 8 f32 into `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn stps(a: &mut [f32; 8], v: __m256) {
    st256::<0, _>(a, _mm256_castps_si256(v))
}

/// `[a, b, 0, 0]` converted from f16 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16x2(a: F16Bits, b: F16Bits) -> __m128 {
    let bits = a.bits() as u32 | (b.bits() as u32) << 16;
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// The first four bytes of a block as a little-endian `u32`: the f16 pair `(d, m)` of Q4_1/Q5_1 or
/// `(d, s)` of Q8_1, which [`f16_heads2`] converts in one instruction instead of gathering halves.
#[inline(always)]
pub(super) fn head32<T: Pod>(a: &T) -> u32 {
    const { assert!(size_of::<T>() >= 4) };
    let b = bytemuck::bytes_of(a);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// `[d(a), m(a), d(b), m(b)]`: the leading f16 pairs ([`head32`]) of two blocks, converted.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_heads2<T: Pod>(a: &T, b: &T) -> __m128 {
    let bits = head32(a) as u64 | (head32(b) as u64) << 32;
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// `[d(a), m(a), 0, 0]`: the leading f16 pair ([`head32`]) of one block, converted.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_head<T: Pod>(a: &T) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(head32(a) as i32))
}

/// One f16 value converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16(a: F16Bits) -> f32 {
    _mm_cvtss_f32(f16x2(a, F16Bits([0, 0])))
}

/// Σ of the 4 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Σ of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum256(v: __m256) -> f32 {
    hsum128(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps::<1>(v),
    ))
}

/// Maximum of the 8 lanes (inputs without NaN).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hmax256(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// The fifth bits of a Q5_0/Q5_1 block (`qh`: bit j belongs to element j) as 32 bytes in element
/// order, `0x10` where the bit is set and 0 elsewhere, to be OR-ed onto [`nibbles`].
///
/// The 32-bit word is broadcast, `vpshufb` gives byte j a copy of `qh` byte j/8 (the shuffle works
/// within 128-bit lanes, and each lane holds the whole word), and a per-byte test of bit j%8
/// against the constant `[1, 2, 4, …, 128]` turns it into 0xff/0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
    let spread = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let b = _mm256_shuffle_epi8(v, spread);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Hints the cache line `ahead` bytes after `p` into L1 (`prefetcht0`). Only the address is
/// computed (wrapping, so past the end of the slice is fine): a prefetch never faults or reads
/// into Rust-visible memory.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch<T>(p: &T, ahead: usize) {
    _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>().wrapping_add(ahead));
}

/// Decodes the 12 packed bytes of Q4_K/Q5_K 6-bit scales and mins into `(scales, mins)`, 8 bytes
/// each (byte j = sub-block j), as `get_scale_min_k4` defines them.
#[inline(always)]
pub(super) fn k4_scales(s: &[u8; 12]) -> (u64, u64) {
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    // Sub-blocks 0..4: low 6 bits of bytes 0..4 (scales) and 4..8 (mins).
    // Sub-blocks 4..8: low/high nibbles of bytes 8..12, plus the top 2 bits of bytes 0..4 / 4..8.
    let sc_lo = u0 & M6;
    let sc_hi = (u2 & M4) | (((u0 >> 6) & M2) << 4);
    let mn_lo = u1 & M6;
    let mn_hi = ((u2 >> 4) & M4) | (((u1 >> 6) & M2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_scales_match_get_scale_min_k4() {
        let mut s = [0u8; 12];
        let mut state = 0x9e37_79b9u32;
        for _ in 0..1000 {
            for b in s.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let (sc, mn) = k4_scales(&s);
            for j in 0..8 {
                let (a, b) = crate::scalar::get_scale_min_k4(j, &s);
                assert_eq!(((sc >> (8 * j)) & 0xff) as u8, a, "scale {j} of {s:?}");
                assert_eq!(((mn >> (8 * j)) & 0xff) as u8, b, "min {j} of {s:?}");
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod fifth_bits_tests {
    use super::*;

    #[test]
    fn fifth_bits_expand_every_bit_in_element_order() {
        if !(std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"))
        {
            std::eprintln!("fifth_bits: AVX2 not available, not checked");
            return;
        }
        let mut state = 0x2545_f491u32;
        let mut words = std::vec![0u32, u32::MAX, 1, 1 << 31, 0x0001_8000, 0xaaaa_5555];
        for _ in 0..500 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            words.push(state);
        }
        for qh in words {
            let mut got = [0u8; 32];
            // SAFETY: AVX2, FMA and F16C were detected above.
            unsafe { st256::<0, _>(&mut got, fifth_bits(qh.to_le_bytes())) };
            for (j, &g) in got.iter().enumerate() {
                let want = if (qh >> j) & 1 == 1 { 0x10 } else { 0 };
                assert_eq!(g, want, "qh {qh:#010x} element {j}");
            }
        }
    }
}

/// Tiers against the scalar reference where tests/tiers.rs does not look: activations and quantizer
/// outputs at odd addresses, the model's row widths (576, 1536) with 16 rows, bit-exact quantizers
/// (these tiers promise the scalar bytes, ties included) and the inconsistent-length contract.
#[cfg(all(test, feature = "std"))]
mod tier_tests {
    use crate::*;
    use std::vec::Vec;
    use std::{eprintln, vec};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn f(&mut self) -> f32 {
            (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn tiers() -> Vec<&'static Kernels> {
        let t: Vec<_> = Kernels::available()
            .filter(|k| k.tier != Tier::Scalar)
            .collect();
        eprintln!(
            "tiers under test: {:?}",
            t.iter().map(|k| k.tier.name()).collect::<Vec<_>>()
        );
        assert!(!t.is_empty());
        t
    }

    /// Random weight bytes of `rows` rows of type `ty` with sane f16 scales.
    fn weights(rng: &mut Rng, ty: QuantType, n: usize, rows: usize) -> Vec<u8> {
        let rb = ty.row_bytes(n).unwrap();
        let mut w = rng.bytes(rb * rows);
        let ts = ty.type_size();
        let h = |v: f32| F16Bits::from_f32(v).0;
        match ty {
            QuantType::F32 => {
                for c in w.chunks_exact_mut(4) {
                    c.copy_from_slice(&rng.f().to_le_bytes());
                }
            }
            QuantType::F16 => {
                for c in w.chunks_exact_mut(2) {
                    c.copy_from_slice(&h(rng.f()));
                }
            }
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => {
                for b in w.chunks_exact_mut(ts) {
                    b[0..2].copy_from_slice(&h(rng.f() * 0.01));
                }
            }
            QuantType::Q4_1 | QuantType::Q5_1 => {
                for b in w.chunks_exact_mut(ts) {
                    b[0..2].copy_from_slice(&h(rng.f() * 0.01));
                    b[2..4].copy_from_slice(&h(rng.f() * 0.1));
                }
            }
            QuantType::Q4K | QuantType::Q5K => {
                for b in w.chunks_exact_mut(ts) {
                    b[0..2].copy_from_slice(&h(rng.f() * 0.001));
                    b[2..4].copy_from_slice(&h(rng.f() * 0.001));
                }
            }
            QuantType::Q6K => {
                for b in w.chunks_exact_mut(ts) {
                    b[208..210].copy_from_slice(&h(rng.f() * 0.001));
                }
            }
            _ => unreachable!(),
        }
        w
    }

    fn sum_abs(ty: QuantType, n: usize, w: &[u8], xt: QuantType, xq: &[u8], row: usize) -> f64 {
        let rb = ty.row_bytes(n).unwrap();
        let mut wf = vec![0f32; n];
        assert!(scalar::dequantize(
            ty,
            &w[row * rb..(row + 1) * rb],
            &mut wf
        ));
        let mut xf = vec![0f32; n];
        assert!(scalar::dequantize(
            xt,
            &xq[..xt.row_bytes(n).unwrap()],
            &mut xf
        ));
        wf.iter().zip(&xf).map(|(a, b)| (a * b).abs() as f64).sum()
    }

    #[test]
    fn quantizers_bit_exact() {
        let mut rng = Rng(7);
        for k in tiers() {
            for n in [256usize, 512, 1024] {
                for trial in 0..20 {
                    let mut x: Vec<f32> = (0..n).map(|_| rng.f() * 3.0).collect();
                    if trial % 5 == 1 {
                        x[..n / 2].fill(0.0);
                    }
                    if trial % 5 == 2 {
                        // Ties: exact halves after scaling.
                        for v in x.iter_mut() {
                            *v = (rng.next() % 255) as f32 - 127.0 + 0.5 * (rng.next() % 2) as f32;
                        }
                    }
                    if trial % 5 == 3 {
                        x[5] = -1000.0;
                        x[9] = 1000.0;
                    }
                    for vt in [QuantType::Q8_0, QuantType::Q8_1, QuantType::Q8K] {
                        let len = vt.row_bytes(n).unwrap();
                        let mut a = vec![0xAAu8; len + 3];
                        let mut b = vec![0x55u8; len + 3];
                        (Kernels::scalar().quantize(vt).unwrap())(&x, &mut a[..len]);
                        (k.quantize(vt).unwrap())(&x, &mut b[..len]);
                        assert_eq!(
                            a[..len],
                            b[..len],
                            "{} {} n={n} trial {trial}",
                            k.tier.name(),
                            vt.name()
                        );
                        assert_eq!(b[len..], [0x55; 3]);
                        // Unaligned output.
                        (k.quantize(vt).unwrap())(&x, &mut b[1..len + 1]);
                        assert_eq!(
                            a[..len],
                            b[1..len + 1],
                            "unaligned {} {}",
                            k.tier.name(),
                            vt.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matvec_close_to_scalar() {
        let mut rng = Rng(11);
        let s = Kernels::scalar();
        let cases: &[(QuantType, &[usize])] = &[
            (QuantType::F32, &[1, 7, 8, 9, 31, 33, 64, 100, 577]),
            (QuantType::F16, &[1, 7, 8, 9, 31, 33, 64, 100, 577]),
            (QuantType::Q4_0, &[32, 64, 96, 576]),
            (QuantType::Q4_1, &[32, 64, 96, 576, 1536]),
            (QuantType::Q5_0, &[32, 64, 96, 640, 2048]),
            (QuantType::Q5_1, &[32, 64, 96, 576, 1536]),
            (QuantType::Q8_0, &[32, 64, 96, 576]),
            (QuantType::Q4K, &[256, 512, 768]),
            (QuantType::Q5K, &[256, 512, 768]),
            (QuantType::Q6K, &[256, 512, 768]),
        ];
        let mut checked = 0;
        for k in tiers() {
            for &(ty, ns) in cases {
                for &n in ns {
                    for rows in [1usize, 2, 3, 4, 5, 7, 9, 16] {
                        let w = weights(&mut rng, ty, n, rows);
                        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                        let vt = ty.vec_dot_type();
                        let xl = vt.row_bytes(n).unwrap();
                        // Misaligned activation (offset 1).
                        let mut xq = vec![0u8; xl + 1];
                        (s.quantize(vt).unwrap())(&x, &mut xq[1..]);
                        let xq = &xq[1..];
                        let mut want = vec![0f32; rows];
                        let mut got = vec![0f32; rows];
                        (s.matvec(ty).unwrap())(n, &w, xq, &mut want);
                        (k.matvec(ty).unwrap())(n, &w, xq, &mut got);
                        for r in 0..rows {
                            let tol = 2e-5 * sum_abs(ty, n, &w, vt, xq, r) + 1e-6;
                            let err = (want[r] as f64 - got[r] as f64).abs();
                            assert!(
                                err <= tol,
                                "{} {} n={n} rows={rows} row {r}: scalar {} vs {} (tol {tol})",
                                k.tier.name(),
                                ty.name(),
                                want[r],
                                got[r]
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        eprintln!("{checked} rows compared");
    }

    #[test]
    fn matvec_bad_lengths_give_nan_in_release() {
        if cfg!(debug_assertions) {
            eprintln!("debug build: length mismatches are debug assertions; not checked");
            return;
        }
        for k in tiers() {
            let w = vec![0u8; 20 * 2 * 3 - 1];
            let xq = vec![0u8; 36 * 2];
            let mut out = [0f32; 3];
            (k.matvec_q4_1)(64, &w, &xq, &mut out);
            assert!(out.iter().all(|v| v.is_nan()));
            (k.matvec_q4_1)(0, &w, &xq, &mut out);
            assert!(out.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn dot_and_axpy() {
        let mut rng = Rng(3);
        for k in tiers() {
            for n in [0usize, 1, 7, 8, 31, 32, 33, 100, 1000] {
                let a: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                let want = (Kernels::scalar().dot_f32)(&a, &b);
                let got = (k.dot_f32)(&a, &b);
                let bound: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
                assert!(
                    (want - got).abs() <= 1e-5 * bound + 1e-6,
                    "dot n={n}: {want} vs {got}"
                );
                let mut y1 = b.clone();
                let mut y2 = b.clone();
                (Kernels::scalar().axpy_f32)(0.37, &a, &mut y1);
                (k.axpy_f32)(0.37, &a, &mut y2);
                assert_eq!(y1, y2, "axpy n={n}");
            }
        }
    }
}
