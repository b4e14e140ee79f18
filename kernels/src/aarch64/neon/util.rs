//! Small building blocks shared by the NEON kernels: bounds-checked vector loads/stores, f16 scale
//! conversion, and the integer dot-product step that differs between the two tiers.
//!
//! The helpers are safe `#[target_feature(enable = "neon")]` functions, so the value-only intrinsics
//! need no `unsafe`; only pointer loads and stores do, and each of those reads or writes exactly the
//! bytes of a slice that was bounds-checked just before.

use crate::F16Bits;
use core::arch::aarch64::*;
use core::arch::asm;

/// Loads the first 16 bytes of `s` (panics if `s` is shorter; every caller passes fixed-size data).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_u8(s: &[u8]) -> uint8x16_t {
    let s = &s[..16];
    // SAFETY: `s` is exactly 16 readable bytes; LD1 has no alignment requirement.
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// Loads the first 16 bytes of `s` as signed bytes.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_s8(s: &[u8]) -> int8x16_t {
    vreinterpretq_s8_u8(ld_u8(s))
}

/// Loads four f32 from the first 16 bytes of `s` (little-endian target).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_f32_bytes(s: &[u8]) -> float32x4_t {
    vreinterpretq_f32_u8(ld_u8(s))
}

/// Loads `s[0..4]`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_f32(s: &[f32]) -> float32x4_t {
    let s = &s[..4];
    // SAFETY: `s` is exactly four readable f32; LD1 needs no more than the element alignment.
    unsafe { vld1q_f32(s.as_ptr()) }
}

/// Stores `v` into `s[0..4]`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn st_f32(s: &mut [f32], v: float32x4_t) {
    let s = &mut s[..4];
    // SAFETY: `s` is exactly four writable f32, borrowed mutably (no aliasing).
    unsafe { vst1q_f32(s.as_mut_ptr(), v) }
}

/// Stores `v` into `s[0..16]`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn st_s8(s: &mut [u8], v: int8x16_t) {
    let s = &mut s[..16];
    // SAFETY: `s` is exactly 16 writable bytes, borrowed mutably (no aliasing).
    unsafe { vst1q_u8(s.as_mut_ptr(), vreinterpretq_u8_s8(v)) }
}

/// Four halves (given as their bits) to f32 with FCVTL. Half→single conversion is part of base
/// ARMv8-A Advanced SIMD (FEAT_FP16 only adds half-precision *arithmetic*), so this runs on a
/// Cortex-A72 too.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn h4_to_f32(bits: uint16x4_t) -> float32x4_t {
    vcvt_f32_f16(vreinterpret_f16_u16(bits))
}

/// One f16 scale to f32 (FCVTL on lane 0; exact, as every f16 is representable in f32).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn h2f(h: F16Bits) -> f32 {
    vgetq_lane_f32::<0>(h4_to_f32(vdup_n_u16(h.bits())))
}

/// The integer step of the quantized dot products: Σ a[i]·b[i] over 16 signed bytes, added to the
/// four i32 lanes of `acc` (how the sum is spread over the lanes is unspecified; callers only ever
/// add the lanes up or scale all of them by one factor).
pub(super) trait IDot: Copy {
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
    /// `dot` for one pair whose products all satisfy |a[i]·b[i]| <= 8191.
    fn dot_small(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        self.dot(acc, a, b)
    }
    /// `dot(dot(acc, a0, b0), a1, b1)` where every product satisfies |a·b| <= 8191, so that four
    /// of them fit an i16 lane.
    fn dot2_small(
        self,
        acc: int32x4_t,
        a0: int8x16_t,
        b0: int8x16_t,
        a1: int8x16_t,
        b1: int8x16_t,
    ) -> int32x4_t {
        self.dot(self.dot(acc, a0, b0), a1, b1)
    }
}

/// Plain Advanced SIMD: widening multiplies (SMULL/SMLAL) and pairwise accumulation (SADALP). A
/// value can only be made by [`Mull::new`], a `#[target_feature(enable = "neon")]` function.
#[derive(Clone, Copy)]
pub(super) struct Mull(());

impl Mull {
    #[target_feature(enable = "neon")]
    #[inline]
    pub(super) fn new() -> Self {
        Mull(())
    }
}

impl IDot for Mull {
    #[inline(always)]
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY (all three methods): value-only Advanced SIMD intrinsics; `self` exists only if
        // `Mull::new` ran, which requires the neon target feature.
        unsafe {
            // A single product is at most 128·128 = 16384, which fits an i16 lane; sums do not.
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
    #[inline(always)]
    fn dot_small(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: as in `dot`.
        unsafe {
            let p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            vpadalq_s16(acc, vmlal_high_s8(p, a, b))
        }
    }
    #[inline(always)]
    fn dot2_small(
        self,
        acc: int32x4_t,
        a0: int8x16_t,
        b0: int8x16_t,
        a1: int8x16_t,
        b1: int8x16_t,
    ) -> int32x4_t {
        // SAFETY: as in `dot`.
        unsafe {
            let p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
            let p = vmlal_high_s8(p, a0, b0);
            let p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
            vpadalq_s16(acc, vmlal_high_s8(p, a1, b1))
        }
    }
}

/// The dot-product extension: one SDOT per 16 byte pairs. A value of this type can only be made by
/// [`Sdot::new`], a `#[target_feature(enable = "dotprod")]` function, i.e. only on a path where the
/// CPU is known to have the extension.
#[derive(Clone, Copy)]
pub(super) struct Sdot(());

impl Sdot {
    #[target_feature(enable = "neon,dotprod")]
    #[inline]
    pub(super) fn new() -> Self {
        Sdot(())
    }
}

impl IDot for Sdot {
    #[inline(always)]
    fn dot(self, mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // `vdotq_s32` is still unstable (stdarch_neon_dotprod) in Rust 1.95, hence the asm. The
        // `.arch_extension` line lets the assembler accept SDOT even where this is inlined into (or,
        // unoptimized, called from) a function compiled for plain neon.
        // SAFETY: SDOT only reads the three vector registers and writes `acc`'s; it touches no
        // memory or flags. `self` exists only if `Sdot::new` ran, which requires the dotprod
        // target feature, so the instruction is available on this CPU.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
}

/// The 128 six-bit quants (0..64, before Q6_K's −32 offset) of one half of a Q6_K block, from its
/// `ql` (64 bytes) and `qh` (32 bytes) slices: eight groups of 16 elements, in element order.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q6k_groups(ql: &[u8], qh: &[u8]) -> [uint8x16_t; 8] {
    let (m4, m2) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x03));
    let (l0, l1, l2, l3) = (
        ld_u8(ql),
        ld_u8(&ql[16..]),
        ld_u8(&ql[32..]),
        ld_u8(&ql[48..]),
    );
    let (hh0, hh1) = (ld_u8(qh), ld_u8(&qh[16..]));
    [
        vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8::<4>(vandq_u8(hh0, m2))),
        vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8::<4>(vandq_u8(hh1, m2))),
        vorrq_u8(
            vandq_u8(l2, m4),
            vshlq_n_u8::<2>(vandq_u8(hh0, vdupq_n_u8(0x0c))),
        ),
        vorrq_u8(
            vandq_u8(l3, m4),
            vshlq_n_u8::<2>(vandq_u8(hh1, vdupq_n_u8(0x0c))),
        ),
        vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(hh0, vdupq_n_u8(0x30))),
        vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(hh1, vdupq_n_u8(0x30))),
        vorrq_u8(
            vshrq_n_u8::<4>(l2),
            vshrq_n_u8::<2>(vandq_u8(hh0, vdupq_n_u8(0xc0))),
        ),
        vorrq_u8(
            vshrq_n_u8::<4>(l3),
            vshrq_n_u8::<2>(vandq_u8(hh1, vdupq_n_u8(0xc0))),
        ),
    ]
}
