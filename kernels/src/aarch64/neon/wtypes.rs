//! The weight formats as the NEON kernels see them: how a block's quants are unpacked into signed
//! bytes, where its scales are, and which bound holds for the products with an activation byte.
//!
//! * [`Legacy`]: the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0). A block's weights are
//!   `d·(q + OFFSET)` (+ `m` for the formats with a min) with `q` the unpacked bytes; the offset is
//!   not applied to the bytes but folded into the activation side (`OFFSET·Σy` per block, see
//!   `act.rs`), so a 4-bit block unpacks with one AND and one shift.
//! * K-quant building blocks: the Q8_K activation view, the Q4_K/Q5_K 6-bit scale decode.

use super::util::*;
use crate::*;
use bytemuck::Pod;
use core::arch::aarch64::*;
use core::arch::asm;

/// A 32-element ggml weight block.
pub(super) trait Legacy: Pod {
    /// Activations are Q8_1 (with the block sum `s`, for the `m` term) rather than Q8_0.
    const MIN: bool;
    /// The weights are `d·(q + OFFSET)` (+ `m`) for the unpacked `q`.
    const OFFSET: i32;
    /// Largest |q| of the unpacked bytes (a product with an activation byte is at most
    /// `QMAX·128` in magnitude).
    const QMAX: u32;
    fn d(&self) -> &F16Bits;
    /// The min `m` (formats with `MIN` only; the others return `d`).
    fn m(&self) -> &F16Bits;
    /// The quants of elements 0..16 and 16..32 (before the offset). `dd` proves NEON.
    fn quants<D: IDot>(&self, dd: D) -> [int8x16_t; 2];
    /// Bound on |q·y| for the tier's token-lane step ([`IDot::dot4x4`]).
    const MAXP: u32 = Self::QMAX * 128;
}

/// Low and high nibbles of 16 bytes as values 0..16.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn nibbles(q: uint8x16_t) -> [int8x16_t; 2] {
    let lo = vandq_u8(q, vdupq_n_u8(0x0f));
    let hi = vshrq_n_u8::<4>(q);
    [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
}

/// The fifth bits of a Q5 block (`qh`, bit j = element j) as bytes in element order, 0x10 where the
/// bit is set: elements 0..16 (under the low nibbles) and 16..32 (under the high nibbles).
///
/// The word is duplicated into every 32-bit lane; TBL gives byte j a copy of `qh` byte j/8, and
/// CMTST against `[1, 2, 4, …, 128]` turns bit j%8 into 0xff/0.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn fifth_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let v = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    let sel_lo = vcombine_u8(vdup_n_u8(0), vdup_n_u8(1));
    let sel_hi = vcombine_u8(vdup_n_u8(2), vdup_n_u8(3));
    let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    let b16 = vdupq_n_u8(0x10);
    let lo = vandq_u8(vtstq_u8(vqtbl1q_u8(v, sel_lo), bit), b16);
    let hi = vandq_u8(vtstq_u8(vqtbl1q_u8(v, sel_hi), bit), b16);
    (lo, hi)
}

/// The 32 quants (0..32) of a Q5 block: elements 0..16 and 16..32.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn q5_quants(qs: &[u8; 16], qh: [u8; 4]) -> [int8x16_t; 2] {
    let q = ld_u8(qs);
    let (h0, h1) = fifth_bits(qh);
    [
        vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), h0)),
        vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(q), h1)),
    ]
}

/// `impl Legacy` for a 32-element block: its min field (`m`, or `_` for none: `MIN` is false and
/// `m()` gives `d`), `OFFSET`, `QMAX`, and its quants `|block| …` (calls of `neon` functions).
macro_rules! legacy {
    ($b:ty, $m:tt, $off:literal, $qmax:literal, |$x:ident| $quants:expr) => {
        impl Legacy for $b {
            const MIN: bool = legacy!(@min $m);
            const OFFSET: i32 = $off;
            const QMAX: u32 = $qmax;
            fn d(&self) -> &F16Bits {
                &self.d
            }
            fn m(&self) -> &F16Bits {
                legacy!(@m self, $m)
            }
            #[inline(always)]
            fn quants<D: IDot>(&self, _dd: D) -> [int8x16_t; 2] {
                let $x = self;
                // SAFETY: the functions called are `#[target_feature(enable = "neon")]` functions;
                // `_dd` is an `IDot` proof token, whose values exist only where NEON was detected.
                unsafe { $quants }
            }
        }
    };
    (@min _) => {
        false
    };
    (@min m) => {
        true
    };
    (@m $v:ident, _) => {
        &$v.d
    };
    (@m $v:ident, m) => {
        &$v.m
    };
}

legacy!(BlockQ4_0, _, -8, 15, |b| nibbles(ld_u8(&b.qs)));
legacy!(BlockQ4_1, m, 0, 15, |b| nibbles(ld_u8(&b.qs)));
legacy!(BlockQ5_0, _, -16, 31, |b| q5_quants(&b.qs, b.qh));
legacy!(BlockQ5_1, m, 0, 31, |b| q5_quants(&b.qs, b.qh));
legacy!(BlockQ8_0, _, 0, 128, |b| {
    let q: &[u8] = bytemuck::cast_slice(&b.qs);
    [ld_s8(q), ld_s8(&q[16..])]
});

// ---------------------------------------------------------------- K-quants

/// A Q8_K block read in place from bytes (the in-memory struct is 4-aligned, the byte slice may not
/// be).
pub(super) struct Q8K<'a> {
    pub(super) d: f32,
    pub(super) qs: &'a [u8],
    pub(super) bsums: &'a [u8],
}

impl<'a> Q8K<'a> {
    #[inline(always)]
    pub(super) fn new(b: &'a [u8]) -> Self {
        Q8K {
            d: f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            qs: &b[4..4 + QK_K],
            bsums: &b[4 + QK_K..super::quant::Q8K_BYTES],
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`, done on
/// the three little-endian words of `s`) as bytes: (scales, mins), sub-block `j` in byte `j`.
#[inline(always)]
pub(super) fn k4_scale_bytes(s: &[u8; K_SCALE_SIZE]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    // Sub-blocks 0..4: the low six bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8:
    // the nibbles of bytes 8..12 with the top two bits of bytes 0..4 / 4..8 above them.
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    let sc = (w0 & 0x3f3f_3f3f) as u64 | (sc_hi as u64) << 32;
    let mn = (w1 & 0x3f3f_3f3f) as u64 | (mn_hi as u64) << 32;
    (sc, mn)
}

/// The eight 6-bit scales of a Q4_K/Q5_K super-block as i32 lanes (sub-blocks 0..4, 4..8) and the
/// mins as i16 lanes.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn k4_scales(s: &[u8; K_SCALE_SIZE]) -> ([int32x4_t; 2], int16x8_t) {
    let (sc, mn) = k4_scale_bytes(s);
    let sc16 = vmovl_u8(vcreate_u8(sc));
    let sc32 = [
        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc16))),
        vreinterpretq_s32_u32(vmovl_high_u16(sc16)),
    ];
    (sc32, vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mn))))
}

/// `acc + p·v[lane]` (by-element MLA; `lane` is a constant wherever this is inlined).
///
/// In asm: for scales LLVM knows to be zero- or sign-extended bytes it otherwise rebuilds the
/// lane from the narrow value (DUP and widenings before a vector multiply), three operations
/// for one.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn mla_lane(mut acc: int32x4_t, p: int32x4_t, v: int32x4_t, lane: usize) -> int32x4_t {
    macro_rules! mla {
        ($l:literal) => {
            // SAFETY: MLA (by element) reads three vector registers and writes `acc`'s; no memory,
            // stack or flags. This function requires the neon feature.
            unsafe {
                asm!(
                    concat!("mla {a:v}.4s, {p:v}.4s, {v:v}.s[", $l, "]"),
                    a = inout(vreg) acc,
                    p = in(vreg) p,
                    v = in(vreg) v,
                    options(pure, nomem, nostack, preserves_flags)
                )
            }
        };
    }
    match lane & 3 {
        0 => mla!(0),
        1 => mla!(1),
        2 => mla!(2),
        _ => mla!(3),
    }
    acc
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and mins, `d·sc·q − dmin·m`.
pub(super) trait K4: Pod {
    /// The state a super-block's unpacking carries from one 64-element chunk to the next.
    type State: Copy;
    fn dm(&self) -> [F16Bits; 2];
    fn scales(&self) -> &[u8; K_SCALE_SIZE];
    fn start<D: IDot>(&self, dd: D) -> Self::State;
    /// The unsigned quants of chunk `j` (elements `64j..64j+64`): sub-block `2j` (elements 0..16,
    /// 16..32), then sub-block `2j+1`. Chunks are asked for in order 0, 1, 2, 3.
    fn chunk<D: IDot>(&self, dd: D, j: usize, st: &mut Self::State) -> [int8x16_t; 4];
}

/// [`K4::dm`] and [`K4::scales`] of a Q4_K/Q5_K block: its fields.
macro_rules! k4_fields {
    () => {
        fn dm(&self) -> [F16Bits; 2] {
            [self.d, self.dmin]
        }
        fn scales(&self) -> &[u8; K_SCALE_SIZE] {
            &self.scales
        }
    };
}

impl K4 for BlockQ4K {
    type State = ();
    k4_fields!();
    #[inline(always)]
    fn start<D: IDot>(&self, _dd: D) {}
    #[inline(always)]
    fn chunk<D: IDot>(&self, _dd: D, j: usize, _st: &mut ()) -> [int8x16_t; 4] {
        let q = &self.qs[32 * j..32 * j + 32];
        // SAFETY: the functions called are neon functions; `_dd` proves NEON (see `Legacy`).
        let ([l0, h0], [l1, h1]) = unsafe { (nibbles(ld_u8(q)), nibbles(ld_u8(&q[16..]))) };
        [l0, l1, h0, h1]
    }
}

impl K4 for BlockQ5K {
    /// `qh` shifted right by `2j` before chunk `j`: bit 0 is the fifth bit of sub-block `2j`,
    /// bit 1 that of sub-block `2j+1` (elements 0..16, 16..32).
    type State = [uint8x16_t; 2];
    k4_fields!();
    #[inline(always)]
    fn start<D: IDot>(&self, _dd: D) -> [uint8x16_t; 2] {
        // SAFETY: neon functions; `_dd` proves NEON.
        unsafe { [ld_u8(&self.qh), ld_u8(&self.qh[16..])] }
    }
    #[inline(always)]
    fn chunk<D: IDot>(&self, _dd: D, j: usize, st: &mut [uint8x16_t; 2]) -> [int8x16_t; 4] {
        let q = &self.qs[32 * j..32 * j + 32];
        // SAFETY: value-only intrinsics and 16-byte loads of `q`; `_dd` proves NEON.
        unsafe {
            let m5 = vdupq_n_u8(0x1f);
            let (q0, q1) = (ld_u8(q), ld_u8(&q[16..]));
            // Low nibble | fifth bit (bit 0 of qh) << 4: SLI keeps the nibble, inserts qh << 4.
            let l0 = vandq_u8(vsliq_n_u8::<4>(q0, st[0]), m5);
            let l1 = vandq_u8(vsliq_n_u8::<4>(q1, st[1]), m5);
            // High nibble | fifth bit (bit 1 of qh) << 4: SRI inserts q >> 4 under qh << 3.
            let h0 = vandq_u8(vsriq_n_u8::<4>(vshlq_n_u8::<3>(st[0]), q0), m5);
            let h1 = vandq_u8(vsriq_n_u8::<4>(vshlq_n_u8::<3>(st[1]), q1), m5);
            *st = [vshrq_n_u8::<2>(st[0]), vshrq_n_u8::<2>(st[1])];
            let s = |v| vreinterpretq_s8_u8(v);
            [s(l0), s(l1), s(h0), s(h1)]
        }
    }
}

/// An all-zero accumulator start (the source of [`IDot::load_acc`] for sums starting at zero).
pub(super) static ZERO: V16 = V16([0; 16]);
