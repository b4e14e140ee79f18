//! Activation preparation for the 32-element formats: what the decode and batched kernels read per
//! block instead of the raw Q8_0/Q8_1 blocks, computed once per call (decode) or once per tile of
//! tokens (batched), so that it is paid once for all weight rows.
//!
//! * [`Act1`] (decode): the block's f32 scale(s), the Q8_1 sum, and the accumulator start values
//!   `OFFSET·Σy` that fold the weight format's offset (`q − 8`, `q − 16`) into the integer sum.
//! * [`Act4`] (batched): the same for four tokens in the four lanes, and the quants
//!   token-interleaved — vector `g` holds bytes `4g..4g+4` of the four tokens — for the token-lane
//!   step [`super::util::IDot::dot4x4`].
//!
//! With a residual (`q8x2`), [`Mode`] says how the two integer sums are turned into a float:
//! `Comb` when every residual block has the scale `d/256` of its main block (what
//! [`crate::Quantize2`] produces): `256·Σw·q + Σw·r` in i32 (at most 2^27 in magnitude) and one
//! conversion; `Sep` otherwise (the [`crate::MatVec2`] contract holds for any two activations):
//! two conversions, each with its own scale. Every conversion is the fixed-point SCVTF `#8`
//! (`sum/256`), so the `Plain` and `Sep` scales carry the factor 256 (exact).

use super::util::*;
use super::wtypes::Legacy;
use bytemuck::{Pod, Zeroable};
use core::arch::aarch64::*;

/// How the integer sums of a call become floats (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Mode {
    /// One activation: `sum/256 · (256·d)`.
    Plain = 0,
    /// Residual on the grid `d/256`: `(256·Σq + Σr)/256 · d`.
    Comb = 1,
    /// Any residual: `Σq/256 · (256·d_q) + Σr/256 · (256·d_r)`.
    Sep = 2,
}

impl Mode {
    /// The mode a kernel body was instantiated for (`M` = `Mode as u8`), so that each
    /// instantiation is compiled for one mode.
    pub(super) const fn of(m: u8) -> Mode {
        match m {
            0 => Mode::Plain,
            1 => Mode::Comb,
            _ => Mode::Sep,
        }
    }
}

/// Per-block values of one activation row (decode).
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(super) struct Act1 {
    /// i32 `[OFFSET·Σq, 0, 0, 0]`: the start of each row's integer sum against `q`.
    pub(super) init: V16,
    /// The same for the residual.
    pub(super) init_r: V16,
    /// `Plain`/`Sep`: `256·d_q`; `Comb`: `d_q`.
    pub(super) dy: f32,
    /// `Sep`: `256·d_r`.
    pub(super) dr: f32,
    /// Q8_1: `s_q` (+ `s_r`), the f32 block sum(s).
    pub(super) s: f32,
    _pad: f32,
}

/// Per-block values of four tokens (batched), token `t` in lane `t`.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(super) struct Act4 {
    /// Token-interleaved quants: vector `g` = bytes `4g..4g+4` of tokens 0, 1, 2, 3.
    pub(super) x: [V16; 8],
    /// The same for the residual.
    pub(super) xr: [V16; 8],
    /// i32 `OFFSET·Σq` per token.
    pub(super) init: V16,
    pub(super) init_r: V16,
    /// f32 per token, as [`Act1::dy`], [`Act1::dr`], [`Act1::s`].
    pub(super) dy: V16,
    pub(super) dr: V16,
    pub(super) s: V16,
}

/// Bytes of a Q8_0 (`MIN` false) or Q8_1 activation block, and the offset of its quants.
pub(super) const fn act_bytes(min: bool) -> (usize, usize) {
    if min {
        (36, 4)
    } else {
        (34, 2)
    }
}

/// Whether every residual block of `r` has exactly the scale `d/256` of its block in `q` (blocks
/// of `yb` bytes with the f16 scale first; `nb` blocks).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn on_grid16(q: &[u8], r: &[u8], yb: usize, nb: usize) -> bool {
    q.chunks_exact(yb)
        .zip(r.chunks_exact(yb))
        .take(nb)
        .all(|(a, b)| f16_at(b, 0) * 256.0 == f16_at(a, 0))
}

/// The f16 at `y[at..at + 2]` (an activation block's scale or sum) to f32.
#[target_feature(enable = "neon")]
#[inline]
fn f16_at(y: &[u8], at: usize) -> f32 {
    let b: &[u8; 2] = y[at..at + 2].try_into().unwrap_or(&[0; 2]);
    f16_f32(bytemuck::cast_ref(b))
}

/// Four activation blocks' f16 at byte `at` of each block, as f32 lanes (the halves are gathered
/// in a general register, then one FCVTL).
#[target_feature(enable = "neon")]
#[inline]
fn f16x4_at(y: [&[u8]; 4], at: usize) -> float32x4_t {
    h4_to_f32(vcreate_u16(h4_bits(y, at)))
}

/// The four halves at `y[t][at..at + 2]` packed into a u64 (token `t` in bits `16t..16t+16`).
#[inline(always)]
fn h4_bits(y: [&[u8]; 4], at: usize) -> u64 {
    let h = |t: usize| u64::from(u16::from_le_bytes([y[t][at], y[t][at + 1]])) << (16 * t);
    h(0) | h(1) | h(2) | h(3)
}

/// `[v, 0, 0, 0]` as i32 bytes.
fn lane0(v: i32) -> V16 {
    let mut b = V16::default();
    b.0[..4].copy_from_slice(&v.to_le_bytes());
    b
}

/// Fills `out[i]` for blocks `b0 + i` of the activation row `q` (and residual `r`, read unless
/// `mode` is `Plain`), the activation format and offset of the weight format `W`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn prep1<W: Legacy, const M: u8>(q: &[u8], r: &[u8], b0: usize, out: &mut [Act1]) {
    let mode = Mode::of(M);
    let (yb, qo) = act_bytes(W::MIN);
    let sum = |y: &[u8]| -> i32 {
        if W::OFFSET == 0 {
            return 0;
        }
        let (a, b) = (ld_s8(&y[qo..]), ld_s8(&y[qo + 16..]));
        W::OFFSET * vaddlvq_s16(vpadalq_s8(vpaddlq_s8(a), b))
    };
    for (i, o) in out.iter_mut().enumerate() {
        let at = (b0 + i) * yb;
        let y = &q[at..at + yb];
        o.init = lane0(sum(y));
        let dq = f16_at(y, 0);
        o.dy = if mode == Mode::Comb { dq } else { 256.0 * dq };
        o.s = if W::MIN { f16_at(y, 2) } else { 0.0 };
        if mode != Mode::Plain {
            let z = &r[at..at + yb];
            o.init_r = lane0(sum(z));
            o.dr = 256.0 * f16_at(z, 0);
            if W::MIN {
                o.s += f16_at(z, 2);
            }
        }
    }
}

/// The 4×4 transpose of 32-bit words: token `t`'s word `g` of `v` goes to vector `g`, lane `t`.
#[target_feature(enable = "neon")]
#[inline]
fn transpose4(v: [int8x16_t; 4]) -> [int8x16_t; 4] {
    transpose4_s32(v.map(|v| vreinterpretq_s32_s8(v))).map(|v| vreinterpretq_s8_s32(v))
}

/// Four tokens' activation blocks (`y[t]`, each `yb` bytes) token-interleaved into `x`; returns
/// `OFFSET·Σq` per token (zeros when the format has no offset).
#[target_feature(enable = "neon")]
#[inline]
fn side4<W: Legacy>(y: [&[u8]; 4], x: &mut [V16; 8]) -> int32x4_t {
    let (_, qo) = act_bytes(W::MIN);
    let ld = |t: usize, h: usize| ld_s8(&y[t][qo + 16 * h..]);
    let lo = transpose4([ld(0, 0), ld(1, 0), ld(2, 0), ld(3, 0)]);
    let hi = transpose4([ld(0, 1), ld(1, 1), ld(2, 1), ld(3, 1)]);
    for g in 0..4 {
        st_u8(&mut x[g].0, vreinterpretq_u8_s8(lo[g]));
        st_u8(&mut x[4 + g].0, vreinterpretq_u8_s8(hi[g]));
    }
    if W::OFFSET == 0 {
        return vdupq_n_s32(0);
    }
    // Lane pairs (2t, 2t+1) of the i16 sums belong to token t: |Σ| <= 16·128.
    let mut s = vpaddlq_s8(lo[0]);
    for v in &lo[1..] {
        s = vpadalq_s8(s, *v);
    }
    for v in &hi {
        s = vpadalq_s8(s, *v);
    }
    vmulq_n_s32(vpaddlq_s16(s), W::OFFSET)
}

/// Fills `out[i]` for blocks `b0 + i` of four tokens (`q[t]`, `r[t]` their activation rows; a group
/// of fewer tokens repeats one, whose results the caller drops), for the weight format `W`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn prep4<W: Legacy, const M: u8>(
    q: [&[u8]; 4],
    r: [&[u8]; 4],
    b0: usize,
    out: &mut [Act4],
) {
    let mode = Mode::of(M);
    let (yb, _) = act_bytes(W::MIN);
    let st = |o: &mut V16, v: float32x4_t| st_u8(&mut o.0, vreinterpretq_u8_f32(v));
    let sti = |o: &mut V16, v: int32x4_t| st_u8(&mut o.0, vreinterpretq_u8_s32(v));
    for (i, o) in out.iter_mut().enumerate() {
        let at = (b0 + i) * yb;
        let y = q.map(|q| &q[at..at + yb]);
        sti(&mut o.init, side4::<W>(y, &mut o.x));
        let dq = f16x4_at(y, 0);
        st(
            &mut o.dy,
            if mode == Mode::Comb {
                dq
            } else {
                vmulq_n_f32(dq, 256.0)
            },
        );
        let sq = if W::MIN {
            f16x4_at(y, 2)
        } else {
            vdupq_n_f32(0.0)
        };
        st(&mut o.s, sq);
        if mode != Mode::Plain {
            let z = r.map(|r| &r[at..at + yb]);
            sti(&mut o.init_r, side4::<W>(z, &mut o.xr));
            st(&mut o.dr, vmulq_n_f32(f16x4_at(z, 0), 256.0));
            if W::MIN {
                st(&mut o.s, vaddq_f32(sq, f16x4_at(z, 2)));
            }
        }
    }
}
