//! Row tiles shared by the batched products (`matmul`) and the matrix×vector kernels (`matvec`):
//! `N` weight rows unpacked block by block into rows-in-lanes vectors ([`Lanes::tile`]), and the
//! per-(token, block) activation header of the 32-element types.
use core::arch::x86_64::__m256i;
use core::mem::size_of;

use super::lanes::Lanes;
use super::wtypes::*;
use crate::ActRows;

/// One (token, block) of the activation header: `scale` = the activation's f32 scale (over 256
/// with a residual), `corr` = `−off·Σ y` (symmetric types; `−off·(256·Σ q + Σ r)` with a residual),
/// `s` = the block sum `s` (min types; `s_q + s_r` with a residual).
#[derive(Clone, Copy, Default)]
pub(super) struct Hdr {
    pub scale: f32,
    pub corr: i32,
    pub s: f32,
}

/// The activation block of type `A` at byte offset `off` of `q`.
#[inline(always)]
pub(super) fn act<A: bytemuck::Pod>(q: &[u8], off: usize) -> &A {
    bytemuck::from_bytes(&q[off..off + size_of::<A>()])
}

/// Byte offset of block `b` of token `tok`'s activation row.
#[inline(always)]
pub(super) fn act_off<A>(x: &ActRows<'_>, tok: usize, b: usize) -> usize {
    tok * x.stride + b * size_of::<A>()
}

/// The rows of one tile: `N` rows from `i0` (`nr` of them real, the rest read as zero blocks).
pub(super) struct Tile<'a, B> {
    pub w: &'a [B],
    pub nb: usize,
    pub i0: usize,
    pub nr: usize,
    pub zero: B,
}

impl<B> Tile<'_, B> {
    #[inline(always)]
    pub(super) fn blk(&self, i: usize, b: usize) -> &B {
        if i < self.nr {
            &self.w[(self.i0 + i) * self.nb + b]
        } else {
            &self.zero
        }
    }
}

/// Σ of the block's quants (0 for the types with a minimum, which do not need it).
#[inline(always)]
fn sum<L: Lanes, B: Legacy>(l: L, y: &B::Act) -> i32 {
    if B::MIN {
        0
    } else {
        l.sum_i8(y.qs())
    }
}

/// The header entry of one activation block `y` (and its residual `z`).
#[inline(always)]
pub(super) fn header<L: Lanes, B: Legacy>(l: L, y: &B::Act, z: Option<&B::Act>) -> Hdr {
    let a = l.avx2();
    match z {
        None => Hdr {
            scale: a.h2f(y.d()),
            corr: -B::OFF * sum::<L, B>(l, y),
            s: if B::MIN { a.h2f(y.s()) } else { 0.0 },
        },
        Some(z) => Hdr {
            scale: a.h2f(y.d()) / 256.0,
            corr: -B::OFF * (256 * sum::<L, B>(l, y) + sum::<L, B>(l, z)),
            s: if B::MIN {
                a.h2f(y.s()) + a.h2f(z.s())
            } else {
                0.0
            },
        },
    }
}

/// Block `b` of a full tile (`N` rows from `i0`, of `rb` bytes each, in the weight bytes `wb`): its
/// weight tile, `d` and `m` (zero unless the type has a minimum), with the type's fastest
/// unpacking ([`Layout`]) and the scales gathered in one instruction.
#[inline(always)]
pub(super) fn full_tile<L: Lanes, B: Legacy>(
    l: L,
    tile: &Tile<'_, B>,
    wb: &[u8],
    rb: usize,
    b: usize,
) -> (Wt<L>, L::F, L::F) {
    let at = tile.i0 * rb + b * size_of::<B>();
    let (d, m) = l.f16_pairs(wb, at, rb);
    let m = if B::MIN { m } else { l.fzero() };
    let wt = match B::LAYOUT {
        Layout::Nibbles => Wt::Small(l.tile_nib(wb, at + B::QS, rb)),
        Layout::Bytes => Wt::U8(l.tile_q8(wb, at + B::QS, rb)),
        Layout::Rows => {
            let mut q = [l.avx2().zero(); 16];
            for (i, q) in q[..L::N].iter_mut().enumerate() {
                *q = tile.w[(tile.i0 + i) * tile.nb + b].quants(l);
            }
            wtile::<L, B>(l, &q)
        }
    };
    (wt, d, m)
}

/// Block `b` of the tile's `N` rows: their unpacked quants (rows past `nr` are zero blocks), `d`
/// and `m` (zero unless the type has a minimum).
#[inline(always)]
pub(super) fn unpack<L: Lanes, B: Legacy>(
    l: L,
    tile: &Tile<'_, B>,
    b: usize,
) -> ([__m256i; 16], L::F, L::F) {
    let (mut dh, mut mh, mut q) = ([0u16; 16], [0u16; 16], [l.avx2().zero(); 16]);
    for i in 0..L::N {
        let blk = tile.blk(i, b);
        dh[i] = blk.d().bits();
        mh[i] = blk.m().bits();
        q[i] = blk.quants(l);
    }
    let mw = if B::MIN { l.f16s(&mh) } else { l.fzero() };
    (q, l.f16s(&dh), mw)
}

/// The tile's integer sums for one activation block: `Σ u·y + corr` (`yr`: `256·Σ u·y + Σ u·yr +
/// corr`), through the 8-bit tile for `MAXU > 127`.
#[inline(always)]
pub(super) fn dot<L: Lanes, B: Legacy>(
    l: L,
    wt: &Wt<L>,
    y: &[i8; 32],
    yr: Option<&[i8; 32]>,
    corr: i32,
) -> L::I {
    match (wt, yr) {
        (Wt::U8(w), None) => l.dot8_q(w, y, corr),
        (Wt::U8(w), Some(r)) => l.dot8_qr(w, y, r, corr),
        (Wt::Small(w), None) => l.dot_q(w, y, corr, B::MAXU),
        (Wt::Small(w), Some(r)) => l.dot_qr(w, y, r, corr, B::MAXU),
    }
}

/// A weight tile: 8-bit weights ([`Lanes::tile8`]) or narrower ([`Lanes::tile`]).
pub(super) enum Wt<L: Lanes> {
    U8(L::W8),
    Small([L::I; 8]),
}

/// The tile of unpacked rows `q` for the type's range.
#[inline(always)]
pub(super) fn wtile<L: Lanes, B: Legacy>(l: L, q: &[__m256i; 16]) -> Wt<L> {
    if B::MAXU > 127 {
        Wt::U8(l.tile8(q))
    } else {
        Wt::Small(l.tile(q))
    }
}

/// `v + cvt(acc)·d_w·scale (+ m_w·s)`: one token's block added to its sums.
#[inline(always)]
pub(super) fn legacy_acc<L: Lanes, B: Legacy>(
    l: L,
    acc: L::I,
    h: &Hdr,
    dw: L::F,
    mw: L::F,
    v: L::F,
) -> L::F {
    let v = l.fmadd(l.cvt(acc), l.fmul(dw, l.fsplat(h.scale)), v);
    if B::MIN {
        l.fmadd(mw, l.fsplat(h.s), v)
    } else {
        v
    }
}
