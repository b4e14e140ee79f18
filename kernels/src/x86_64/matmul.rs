//! Batched products ([`crate::MatMul`]) of the quantized types, one generic body per type family
//! for both x86 tiers ([`Lanes`]).
//!
//! Layout: rows in lanes. A tile is `N` weight rows (8 on AVX2, 16 on AVX-512). For each
//! 32-element block (K-quants: sub-block) the tile's quants are unpacked once and transposed
//! ([`Lanes::tile`]) so that vector `s` holds bytes `4s..4s+4` of every row; each token's
//! activation block then costs 8 broadcast dwords against those 8 vectors (`vpdpbusd`, or
//! `vpmaddubsw` pairs summed in i16), one conversion and one FMA with the `N` rows' scales, and the
//! result is the `N` outputs of that token, contiguous in `out`. Nothing is copied: the weights are
//! read in place, the activations are broadcast straight from the caller's rows.
//!
//! - Symmetric types (Q4_0, Q5_0, Q8_0: value `u − off`): `Σ (u − off)·y = Σ u·y − off·Σ y`, with
//!   `off·Σ y` from a per-(token, block) header computed once per call chunk and shared by every
//!   row tile.
//! - Q4_1 / Q5_1 (value `d·u + m`): the minimum meets the activation block sum `s`: one more FMA
//!   per token and block with the rows' minima.
//! - `q8x2` (a residual row): the residual's scale is exactly the main scale / 256 (what
//!   [`crate::Quantize2`] writes), so for the 32-element types `256·Σ u·q + Σ u·r` is one exact
//!   i32 (at most 2^29) with one conversion and one FMA; the K-quants (whose sums would not fit)
//!   keep two i32 sums and each block's own scales.
//! - K-quants: each sub-block's integer sum is multiplied by its rows' scales in the integer unit
//!   (`vpmaddwd` on AVX2, `vpmulld` on AVX-512), the mins (Q4_K/Q5_K) and Q6_K's `−32` offset meet
//!   the activation's 16-element sums (`bsums`) through one more pairwise product.
//!
//! Rows are processed in blocks of [`RB`] and tokens in passes of [`TS`]; the header for the
//! symmetric and min types is built per [`KC`] blocks. The f32 sums of a row block and pass are
//! kept in a stack buffer tile by tile ([`Facc`]: one tile's tokens are contiguous, so its stores
//! and the next block's loads of the same sums never alias modulo 4 KiB, as the rows of `out` did
//! at a 256-byte stride), and written to `out` once.
use core::mem::size_of;

use super::common::Q8KBytes;
use super::lanes::Lanes;
use super::tiles::*;
use super::wtypes::*;
use crate::{ActRows, QK, QK_K};

/// Tokens per pass: every weight tile is unpacked once per pass and used for this many tokens.
const TS: usize = 64;
/// Blocks per header chunk (32-element types).
const KC: usize = 32;
/// Rows per block of rows (a multiple of every tile height).
const RB: usize = 64;

/// The f32 sums of one row block and token pass: tile `k`'s token `t` at `(k·TS + t)·N`.
struct Facc([f32; RB * TS]);

impl Facc {
    /// Token `t` of tile `k` (`n` = the tile height).
    #[inline(always)]
    fn at(&mut self, k: usize, t: usize, n: usize) -> &mut [f32] {
        let o = (k * TS + t) * n;
        &mut self.0[o..o + n]
    }

    /// Writes the sums of `nrows` rows from `r0` and `ts` tokens from `tok0` into `out`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        n: usize,
        out: &mut [f32],
        rows: usize,
        r0: usize,
        nrows: usize,
        tok0: usize,
        ts: usize,
    ) {
        for t in 0..ts {
            for k in 0..nrows.div_ceil(n) {
                let nr = n.min(nrows - k * n);
                let o = (tok0 + t) * rows + r0 + k * n;
                out[o..o + nr].copy_from_slice(&self.at(k, t, n)[..nr]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
// ---------------------------------------------------------------------------------------------------

/// The header entry of token `tok`, block `b`.
#[inline(always)]
fn header_at<L: Lanes, B: Legacy>(l: L, x: &ActRows<'_>, tok: usize, b: usize) -> Hdr {
    let off = act_off::<B::Act>(x, tok, b);
    header::<L, B>(l, act(x.q, off), x.r.map(|r| act(r, off)))
}

/// [`crate::MatMul`] for a 32-element block type `B` (shapes already checked by
/// [`crate::Kernels::matmul`]).
#[inline(always)]
pub(super) fn legacy<L: Lanes, B: Legacy>(
    l: L,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let nb = n / QK;
    let rows = out.len() / x.n_tok;
    let w: &[B] = bytemuck::cast_slice(&w[..rows * nb * size_of::<B>()]);
    let mut hdr = [[Hdr::default(); TS]; KC];
    let mut acc = Facc([0.0; RB * TS]);
    for r0 in (0..rows).step_by(RB) {
        let nrows = RB.min(rows - r0);
        for tok0 in (0..x.n_tok).step_by(TS) {
            let ts = TS.min(x.n_tok - tok0);
            acc.0.fill(0.0);
            for kc0 in (0..nb).step_by(KC) {
                let kc = KC.min(nb - kc0);
                for (j, h) in hdr[..kc].iter_mut().enumerate() {
                    for (t, e) in h[..ts].iter_mut().enumerate() {
                        *e = header_at::<L, B>(l, &x, tok0 + t, kc0 + j);
                    }
                }
                let (ya, yr) = (
                    act_rows::<B>(x.q, &x, nb, tok0, ts),
                    x.r.map(|r| act_rows::<B>(r, &x, nb, tok0, ts)),
                );
                for (k, i0) in (r0..r0 + nrows).step_by(L::N).enumerate() {
                    let tile = Tile {
                        w,
                        nb,
                        i0,
                        nr: L::N.min(r0 + nrows - i0),
                        zero: B::zero(),
                    };
                    for (j, h) in hdr[..kc].iter().enumerate() {
                        let ys = (&ya[..ts], yr.as_ref().map(|r| &r[..ts]));
                        legacy_block(l, &tile, kc0 + j, ys, &h[..ts], &mut acc, k);
                    }
                }
            }
            acc.store(L::N, out, rows, r0, nrows, tok0, ts);
        }
    }
}

/// The activation rows of tokens `tok0..tok0 + ts` in `q` as blocks (the rest empty).
#[inline(always)]
fn act_rows<'a, B: Legacy>(
    q: &'a [u8],
    x: &ActRows<'_>,
    nb: usize,
    tok0: usize,
    ts: usize,
) -> [&'a [B::Act]; TS] {
    core::array::from_fn(|t| {
        if t < ts {
            let o = (tok0 + t) * x.stride;
            bytemuck::cast_slice(&q[o..o + nb * size_of::<B::Act>()])
        } else {
            &[][..]
        }
    })
}

/// One block `b` of one tile against the tokens `tok0..tok0 + hdr.len()`.
/// One activation row per token of the tile (the first `q8x2` operand, or its residual).
type TokRows<'a, A> = &'a [&'a [A]];

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn legacy_block<L: Lanes, B: Legacy>(
    l: L,
    tile: &Tile<'_, B>,
    b: usize,
    (ya, yr): (TokRows<'_, B::Act>, Option<TokRows<'_, B::Act>>),
    hdr: &[Hdr],
    acc: &mut Facc,
    k: usize,
) {
    let (wt, dw, mw) = if tile.nr == L::N {
        full_tile(
            l,
            tile,
            bytemuck::cast_slice(tile.w),
            size_of::<B>() * tile.nb,
            b,
        )
    } else {
        let (q, dw, mw) = unpack(l, tile, b);
        (wtile::<L, B>(l, &q), dw, mw)
    };
    for (t, h) in hdr.iter().enumerate() {
        let r = yr.map(|r| r[t][b].qs());
        let i = dot::<L, B>(l, &wt, ya[t][b].qs(), r, h.corr);
        let o = acc.at(k, t, L::N);
        let v = legacy_acc::<L, B>(l, i, h, dw, mw, l.fload(o));
        l.store_to(o, v);
    }
}

// ---------------------------------------------------------------------------------------------------
// K-quants: Q4_K, Q5_K, Q6_K
// ---------------------------------------------------------------------------------------------------

/// Per row tile and super-block: the rows' scales as the dot products want them.
struct KRows<L: Lanes> {
    /// `d` of every row.
    dw: L::F,
    /// The weight of the bsum term per row: `−dmin` (Q4_K/Q5_K) or `−32·d` (Q6_K).
    cw: L::F,
    /// Scale of each group of 16 elements.
    sc: [L::Sc; 16],
    /// Pairs of the bsum weights of groups `2p`, `2p + 1` (mins, or Q6_K's scales).
    cp: [L::I; 8],
}

#[inline(always)]
fn k_rows<L: Lanes, B: KQuant>(l: L, tile: &Tile<'_, B>, b: usize) -> KRows<L> {
    let mut sc = [[0i16; 16]; 16];
    let mut bw = [[[0i16; 2]; 16]; 8];
    let mut d = [0u16; 16];
    let mut c = [0u16; 16];
    for i in 0..L::N {
        let blk = tile.blk(i, b);
        let (s, m) = blk.group_scales();
        for g in 0..16 {
            sc[g][i] = s[g];
            bw[g / 2][i][g % 2] = m[g];
        }
        d[i] = blk.d().bits();
        c[i] = blk.cw().bits();
    }
    // Plain loops, not `array::map`: a closure does not carry the caller's target features, so the
    // intrinsics inside it would be called out of line.
    let mut k = KRows {
        dw: l.f16s(&d),
        cw: l.fmul(l.f16s(&c), l.fsplat(B::CW)),
        sc: [l.scales(&[0; 16]); 16],
        cp: [l.izero(); 8],
    };
    for (v, s) in k.sc.iter_mut().zip(&sc) {
        *v = l.scales(s);
    }
    for (v, p) in k.cp.iter_mut().zip(&bw) {
        *v = l.pairs(p);
    }
    k
}

/// [`crate::MatMul`] for a K-quant type `B`.
#[inline(always)]
pub(super) fn kquant<L: Lanes, B: KQuant>(
    l: L,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let nb = n / QK_K;
    let rows = out.len() / x.n_tok;
    let w: &[B] = bytemuck::cast_slice(&w[..rows * nb * size_of::<B>()]);
    let mut acc = Facc([0.0; RB * TS]);
    for r0 in (0..rows).step_by(RB) {
        let nrows = RB.min(rows - r0);
        for tok0 in (0..x.n_tok).step_by(TS) {
            let ts = TS.min(x.n_tok - tok0);
            acc.0.fill(0.0);
            for (k, i0) in (r0..r0 + nrows).step_by(L::N).enumerate() {
                let tile = Tile {
                    w,
                    nb,
                    i0,
                    nr: L::N.min(r0 + nrows - i0),
                    zero: B::zero(),
                };
                for b in 0..nb {
                    k_block(l, &tile, b, &x, tok0, ts, &mut acc, k);
                }
            }
            acc.store(L::N, out, rows, r0, nrows, tok0, ts);
        }
    }
}

/// Token `tok`'s activation block `b` in the rows `q`.
#[inline(always)]
fn k_act<'a>(q: &'a [u8], x: &ActRows<'_>, tok: usize, b: usize) -> &'a Q8KBytes {
    act(q, act_off::<Q8KBytes>(x, tok, b))
}

/// `Σ sc·u·y` of sub-block `j` of the tile against the activation block `y`.
#[inline(always)]
fn k_dot<L: Lanes, B: KQuant>(
    l: L,
    wt: &[L::I; 8],
    y: &Q8KBytes,
    j: usize,
    sc: [L::Sc; 2],
) -> L::I {
    let ys: &[[i8; 32]; 8] = bytemuck::cast_ref(&y.qs);
    if B::ONE_SCALE {
        l.dot_sc1(wt, &ys[j], sc[0], B::MAXU)
    } else {
        l.dot_sc(wt, &ys[j], sc, B::MAXU)
    }
}

/// One activation's share of a super-block: `(d·Σ sc·S + cw·Σ bw·bsums)·dy` per row.
#[inline(always)]
fn k_part<L: Lanes>(l: L, kr: &KRows<L>, acc: L::I, y: &Q8KBytes) -> L::F {
    let bs: [u32; 8] = core::array::from_fn(|p| {
        u32::from_le_bytes([
            y.bsums[4 * p],
            y.bsums[4 * p + 1],
            y.bsums[4 * p + 2],
            y.bsums[4 * p + 3],
        ])
    });
    let c = l.dot_pairs(&kr.cp, &bs);
    let f = l.fmadd(l.cvt(c), kr.cw, l.fmul(l.cvt(acc), kr.dw));
    l.fmul(f, l.fsplat(f32::from_le_bytes(y.d)))
}

/// One super-block `b` of one tile against the tokens `tok0..tok0 + ts`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn k_block<L: Lanes, B: KQuant>(
    l: L,
    tile: &Tile<'_, B>,
    b: usize,
    x: &ActRows<'_>,
    tok0: usize,
    ts: usize,
    acc: &mut Facc,
    k: usize,
) {
    let kr = k_rows::<L, B>(l, tile, b);
    let mut accq = [l.izero(); TS];
    let mut accr = [l.izero(); TS];
    for j in 0..8 {
        let mut q = [l.avx2().zero(); 16];
        for (i, q) in q[..L::N].iter_mut().enumerate() {
            *q = tile.blk(i, b).quants(l, j);
        }
        let wt = l.tile(&q);
        let sc = [kr.sc[2 * j], kr.sc[2 * j + 1]];
        for t in 0..ts {
            accq[t] = l.iadd(
                accq[t],
                k_dot::<L, B>(l, &wt, k_act(x.q, x, tok0 + t, b), j, sc),
            );
            if let Some(r) = x.r {
                accr[t] = l.iadd(
                    accr[t],
                    k_dot::<L, B>(l, &wt, k_act(r, x, tok0 + t, b), j, sc),
                );
            }
        }
    }
    for t in 0..ts {
        let mut f = k_part(l, &kr, accq[t], k_act(x.q, x, tok0 + t, b));
        if let Some(r) = x.r {
            f = l.fadd(f, k_part(l, &kr, accr[t], k_act(r, x, tok0 + t, b)));
        }
        l.add_to(acc.at(k, t, L::N), f);
    }
}
