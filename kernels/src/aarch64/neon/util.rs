//! Small building blocks shared by the NEON kernels: bounds-checked vector loads/stores, f16 scale
//! conversion, and the integer dot-product step that differs between the two tiers.
//!
//! These functions are safe `#[target_feature(enable = "neon")]` functions, so the value-only intrinsics
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

/// Sixteen bytes at a 16-byte aligned address (one vector of a kernel's scratch buffers).
#[repr(C, align(16))]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct V16(pub(super) [u8; 16]);

/// Loads the first 16 bytes of `s` as four i32 (little-endian target).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_s32(s: &[u8]) -> int32x4_t {
    vreinterpretq_s32_u8(ld_u8(s))
}

/// Stores `v` into `s[0..16]` (little-endian target).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn st_u8(s: &mut [u8], v: uint8x16_t) {
    let s = &mut s[..16];
    // SAFETY: `s` is exactly 16 writable bytes, borrowed mutably (no aliasing).
    unsafe { vst1q_u8(s.as_mut_ptr(), v) }
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

/// The f16 scale at `h` to f32: a scalar LDR into an FP register and FCVT (one load and one
/// vector-unit operation; exact).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn f16_f32(h: &F16Bits) -> f32 {
    let f: f32;
    // SAFETY: LDR (16-bit, no alignment requirement for FP/SIMD loads on aarch64 Linux) reads
    // exactly the two bytes of `h`, a live shared borrow; FCVT works between FP registers. The
    // half→single FCVT is base ARMv8-A floating point (FEAT_FP16 only adds half arithmetic).
    unsafe {
        asm!(
            "ldr {t:h}, [{p}]",
            "fcvt {f:s}, {t:h}",
            p = in(reg) h as *const F16Bits,
            t = out(vreg) _,
            f = lateout(vreg) f,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    f
}

/// Four f16 scales (each given by its bits) to f32 lanes: the halves are combined in a general
/// register and converted with one FCVTL.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn f16x4_f32(h: [F16Bits; 4]) -> float32x4_t {
    let b = |i: usize| u64::from(h[i].bits()) << (16 * i);
    h4_to_f32(vcreate_u16(b(0) | b(1) | b(2) | b(3)))
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
    /// Four tokens' running sums of the token-lane products ([`IDot::dot4x4`]).
    type Acc4: Copy;
    /// An accumulator whose four token sums start at `init`.
    fn acc4(self, init: int32x4_t) -> Self::Acc4;
    /// The four token sums of `a`.
    fn acc4_sum(self, a: Self::Acc4) -> int32x4_t;
    /// `a[t] += Σ_{g<4} Σ_{k<4} x[g][4t+k] · w[4g+k]`: the 16 weights of `w` (four element groups
    /// of four) against four tokens, `x[g]` holding the four tokens' four activation bytes of
    /// group `g` (token-interleaved). Every |product| is at most `maxp`.
    fn dot4x4(self, a: Self::Acc4, x: [int8x16_t; 4], w: int8x16_t, maxp: u32) -> Self::Acc4;
    /// Sixteen bytes as an accumulator value, loaded afresh at every call (a shared value would
    /// cost a register copy before each destructive accumulate).
    fn load_acc(self, s: &V16) -> int32x4_t {
        // SAFETY: `self` is a proof token: its values exist only where NEON was detected.
        unsafe { ld_s32(&s.0) }
    }
}

/// The token-lane dot step of the batched products ([`IDot::dot4x4`]): four tokens' sums in the
/// four i32 lanes, plus whatever partial state the tier keeps (see [`IDot::Acc4`]).
///
/// `maxp` bounds |weight · activation| for every product of a call (a constant wherever it is
/// inlined); the plain-NEON tier picks how many products it may add in 16-bit lanes from it.
pub(super) const MAXP_4095: u32 = 4095;
pub(super) const MAXP_8191: u32 = 8191;

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
    /// (token sums, pair sums of tokens 0 and 1, pair sums of tokens 2 and 3): the last two take
    /// products too large to pair up in 16-bit lanes (see `dot4x4`).
    type Acc4 = (int32x4_t, int32x4_t, int32x4_t);
    #[inline(always)]
    fn acc4(self, init: int32x4_t) -> Self::Acc4 {
        // SAFETY: value-only intrinsic; `self` proves the neon feature.
        let z = unsafe { vdupq_n_s32(0) };
        (init, z, z)
    }
    #[inline(always)]
    fn acc4_sum(self, a: Self::Acc4) -> int32x4_t {
        // SAFETY: value-only intrinsics (neon proven by `self`). A zero pair part (never written)
        // folds away.
        unsafe { vaddq_s32(a.0, vpaddq_s32(a.1, a.2)) }
    }
    #[inline(always)]
    fn dot4x4(self, a: Self::Acc4, x: [int8x16_t; 4], w: int8x16_t, maxp: u32) -> Self::Acc4 {
        // Written in asm: LLVM turns the intrinsic form (widening multiplies of lane-duplicated
        // words, then pairwise adds) into 32-bit multiplies, four times the multiply count.
        // The products of group g are formed in 16-bit lanes against the group's four weight
        // bytes duplicated into every word (DUP): tokens 0, 1 by SMULL/SMLAL (`l`), 2, 3 by
        // SMULL2/SMLAL2 (`h`), one lane per token and element position.
        let (mut s, mut lo, mut hi) = a;
        // SAFETY: all three forms are Advanced SIMD register operations only (no memory, stack or
        // flags); `self` exists only if `Mull::new` ran, which requires the neon feature.
        unsafe {
            if maxp <= MAXP_4095 {
                // Four groups per lane, then pairs of lanes: eight products per i16 lane.
                asm!(
                    "dup {d0:v}.4s, {w:v}.s[0]",
                    "dup {d1:v}.4s, {w:v}.s[1]",
                    "smull {l:v}.8h, {x0:v}.8b, {d0:v}.8b",
                    "smull2 {h:v}.8h, {x0:v}.16b, {d0:v}.16b",
                    "dup {d0:v}.4s, {w:v}.s[2]",
                    "smlal {l:v}.8h, {x1:v}.8b, {d1:v}.8b",
                    "smlal2 {h:v}.8h, {x1:v}.16b, {d1:v}.16b",
                    "dup {d1:v}.4s, {w:v}.s[3]",
                    "smlal {l:v}.8h, {x2:v}.8b, {d0:v}.8b",
                    "smlal2 {h:v}.8h, {x2:v}.16b, {d0:v}.16b",
                    "smlal {l:v}.8h, {x3:v}.8b, {d1:v}.8b",
                    "smlal2 {h:v}.8h, {x3:v}.16b, {d1:v}.16b",
                    "addp {l:v}.8h, {l:v}.8h, {h:v}.8h",
                    "sadalp {s:v}.4s, {l:v}.8h",
                    s = inout(vreg) s,
                    x0 = in(vreg) x[0],
                    x1 = in(vreg) x[1],
                    x2 = in(vreg) x[2],
                    x3 = in(vreg) x[3],
                    w = in(vreg) w,
                    d0 = out(vreg) _,
                    d1 = out(vreg) _,
                    l = out(vreg) _,
                    h = out(vreg) _,
                    options(pure, nomem, nostack, preserves_flags)
                );
            } else if maxp <= MAXP_8191 {
                // Two groups per lane, four products per i16 lane after the pairing.
                asm!(
                    "dup {d0:v}.4s, {w:v}.s[0]",
                    "dup {d1:v}.4s, {w:v}.s[1]",
                    "smull {l:v}.8h, {x0:v}.8b, {d0:v}.8b",
                    "smull2 {h:v}.8h, {x0:v}.16b, {d0:v}.16b",
                    "smlal {l:v}.8h, {x1:v}.8b, {d1:v}.8b",
                    "smlal2 {h:v}.8h, {x1:v}.16b, {d1:v}.16b",
                    "dup {d0:v}.4s, {w:v}.s[2]",
                    "dup {d1:v}.4s, {w:v}.s[3]",
                    "addp {l:v}.8h, {l:v}.8h, {h:v}.8h",
                    "sadalp {s:v}.4s, {l:v}.8h",
                    "smull {l:v}.8h, {x2:v}.8b, {d0:v}.8b",
                    "smull2 {h:v}.8h, {x2:v}.16b, {d0:v}.16b",
                    "smlal {l:v}.8h, {x3:v}.8b, {d1:v}.8b",
                    "smlal2 {h:v}.8h, {x3:v}.16b, {d1:v}.16b",
                    "addp {l:v}.8h, {l:v}.8h, {h:v}.8h",
                    "sadalp {s:v}.4s, {l:v}.8h",
                    s = inout(vreg) s,
                    x0 = in(vreg) x[0],
                    x1 = in(vreg) x[1],
                    x2 = in(vreg) x[2],
                    x3 = in(vreg) x[3],
                    w = in(vreg) w,
                    d0 = out(vreg) _,
                    d1 = out(vreg) _,
                    l = out(vreg) _,
                    h = out(vreg) _,
                    options(pure, nomem, nostack, preserves_flags)
                );
            } else {
                // Any i8 products: widened (SADALP into the pair sums) before any addition.
                asm!(
                    "dup {d0:v}.4s, {w:v}.s[0]",
                    "dup {d1:v}.4s, {w:v}.s[1]",
                    "smull {p:v}.8h, {x0:v}.8b, {d0:v}.8b",
                    "smull2 {q:v}.8h, {x0:v}.16b, {d0:v}.16b",
                    "sadalp {lo:v}.4s, {p:v}.8h",
                    "sadalp {hi:v}.4s, {q:v}.8h",
                    "smull {p:v}.8h, {x1:v}.8b, {d1:v}.8b",
                    "smull2 {q:v}.8h, {x1:v}.16b, {d1:v}.16b",
                    "dup {d0:v}.4s, {w:v}.s[2]",
                    "dup {d1:v}.4s, {w:v}.s[3]",
                    "sadalp {lo:v}.4s, {p:v}.8h",
                    "sadalp {hi:v}.4s, {q:v}.8h",
                    "smull {p:v}.8h, {x2:v}.8b, {d0:v}.8b",
                    "smull2 {q:v}.8h, {x2:v}.16b, {d0:v}.16b",
                    "sadalp {lo:v}.4s, {p:v}.8h",
                    "sadalp {hi:v}.4s, {q:v}.8h",
                    "smull {p:v}.8h, {x3:v}.8b, {d1:v}.8b",
                    "smull2 {q:v}.8h, {x3:v}.16b, {d1:v}.16b",
                    "sadalp {lo:v}.4s, {p:v}.8h",
                    "sadalp {hi:v}.4s, {q:v}.8h",
                    lo = inout(vreg) lo,
                    hi = inout(vreg) hi,
                    x0 = in(vreg) x[0],
                    x1 = in(vreg) x[1],
                    x2 = in(vreg) x[2],
                    x3 = in(vreg) x[3],
                    w = in(vreg) w,
                    d0 = out(vreg) _,
                    d1 = out(vreg) _,
                    p = out(vreg) _,
                    q = out(vreg) _,
                    options(pure, nomem, nostack, preserves_flags)
                );
            }
        }
        (s, lo, hi)
    }

    // The three steps are written in asm: LLVM otherwise reshapes the widening multiplies
    // (e.g. into zero-extensions and narrowings around them, or 32-bit multiplies).
    // Each asm block below is Advanced SIMD register operations only.
    #[inline(always)]
    fn dot(self, mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // A single product is at most 128·128 = 16384, which fits an i16 lane; sums do not.
        // SAFETY: Advanced SIMD register operations only (no memory, stack or flags); `self`
        // exists only if `Mull::new` ran, which requires the neon feature.
        unsafe {
            asm!(
                "smull {p:v}.8h, {a:v}.8b, {b:v}.8b",
                "smull2 {q:v}.8h, {a:v}.16b, {b:v}.16b",
                "sadalp {acc:v}.4s, {p:v}.8h",
                "sadalp {acc:v}.4s, {q:v}.8h",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                p = out(vreg) _,
                q = out(vreg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
    #[inline(always)]
    fn dot_small(self, mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: Advanced SIMD register operations only (no memory, stack or flags); `self`
        // exists only if `Mull::new` ran, which requires the neon feature.
        unsafe {
            asm!(
                "smull {p:v}.8h, {a:v}.8b, {b:v}.8b",
                "smlal2 {p:v}.8h, {a:v}.16b, {b:v}.16b",
                "sadalp {acc:v}.4s, {p:v}.8h",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                p = out(vreg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
    #[inline(always)]
    fn dot2_small(
        self,
        mut acc: int32x4_t,
        a0: int8x16_t,
        b0: int8x16_t,
        a1: int8x16_t,
        b1: int8x16_t,
    ) -> int32x4_t {
        // SAFETY: Advanced SIMD register operations only (no memory, stack or flags); `self`
        // exists only if `Mull::new` ran, which requires the neon feature.
        unsafe {
            asm!(
                "smull {p:v}.8h, {a0:v}.8b, {b0:v}.8b",
                "smlal2 {p:v}.8h, {a0:v}.16b, {b0:v}.16b",
                "smlal {p:v}.8h, {a1:v}.8b, {b1:v}.8b",
                "smlal2 {p:v}.8h, {a1:v}.16b, {b1:v}.16b",
                "sadalp {acc:v}.4s, {p:v}.8h",
                acc = inout(vreg) acc,
                a0 = in(vreg) a0,
                b0 = in(vreg) b0,
                a1 = in(vreg) a1,
                b1 = in(vreg) b1,
                p = out(vreg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
    #[inline(always)]
    fn load_acc(self, s: &V16) -> int32x4_t {
        // As `Sdot::load_acc`: a fresh load per accumulator chain instead of a register copy.
        // SAFETY: `s` is 16 readable bytes, 16-aligned (`V16`); every bit pattern is a valid
        // `int32x4_t`.
        unsafe { core::ptr::read_volatile(s as *const V16 as *const int32x4_t) }
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
    type Acc4 = int32x4_t;
    #[inline(always)]
    fn acc4(self, init: int32x4_t) -> int32x4_t {
        init
    }
    #[inline(always)]
    fn acc4_sum(self, a: int32x4_t) -> int32x4_t {
        a
    }
    #[inline(always)]
    fn dot4x4(self, mut a: int32x4_t, x: [int8x16_t; 4], w: int8x16_t, _maxp: u32) -> int32x4_t {
        // SDOT (by element): lane t += x[g] bytes 4t..4t+4 · w bytes 4g..4g+4. Products of any
        // i8 values are summed in i32.
        // SAFETY: as in `dot` (SDOT reads three vector registers and writes `a`'s; `self` proves
        // the dotprod feature).
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {a:v}.4s, {x0:v}.16b, {w:v}.4b[0]",
                "sdot {a:v}.4s, {x1:v}.16b, {w:v}.4b[1]",
                "sdot {a:v}.4s, {x2:v}.16b, {w:v}.4b[2]",
                "sdot {a:v}.4s, {x3:v}.16b, {w:v}.4b[3]",
                a = inout(vreg) a,
                x0 = in(vreg) x[0],
                x1 = in(vreg) x[1],
                x2 = in(vreg) x[2],
                x3 = in(vreg) x[3],
                w = in(vreg) w,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        a
    }
    #[inline(always)]
    fn load_acc(self, s: &V16) -> int32x4_t {
        // A volatile read is never merged with another read of the same bytes, so every
        // accumulator chain gets its own load instead of a register copy.
        // SAFETY: `s` is 16 readable bytes, 16-aligned (`V16`), and every bit pattern is a valid
        // `int32x4_t`.
        unsafe { core::ptr::read_volatile(s as *const V16 as *const int32x4_t) }
    }
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

/// The 4×4 transpose of the 32-bit words of `v` (token `t`'s word `g` to vector `g`, lane `t`).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn transpose4_s32(v: [int32x4_t; 4]) -> [int32x4_t; 4] {
    let (a, b) = (vtrn1q_s32(v[0], v[1]), vtrn2q_s32(v[0], v[1]));
    let (c, d) = (vtrn1q_s32(v[2], v[3]), vtrn2q_s32(v[2], v[3]));
    let (a, b, c, d) = (
        vreinterpretq_s64_s32(a),
        vreinterpretq_s64_s32(b),
        vreinterpretq_s64_s32(c),
        vreinterpretq_s64_s32(d),
    );
    [
        vreinterpretq_s32_s64(vtrn1q_s64(a, c)),
        vreinterpretq_s32_s64(vtrn1q_s64(b, d)),
        vreinterpretq_s32_s64(vtrn2q_s64(a, c)),
        vreinterpretq_s32_s64(vtrn2q_s64(b, d)),
    ]
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
