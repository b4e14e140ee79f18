//! [`crate::Kernels::dot_rows_f32`] and [`crate::Kernels::axpy_rows_f32`] (and their f16 / Q8_0
//! twins) for both x86 tiers: one generic body per kernel, the row's item type supplying only how
//! `N` values are loaded ([`LaneElem`]).
//!
//! - Scores: eight rows at a time, each with its own vector of partial sums along the row, the
//!   eight reduced together ([`Lanes::hsums8`]: one horizontal-add tree for eight scores).
//! - Weighted sums: the output in panels of up to eight vectors held in registers while every row
//!   adds its weighted piece (one FMA per vector), so the output is loaded and stored once per
//!   panel instead of once per row.
//!
//! Values past the last whole vector of a row are added in scalar code, in order.
use super::common::f16;
use super::lanes::{simd, Lanes};
use crate::kv_elem::{row, rows_fit};
use crate::{BlockQ8_0, F16Bits, KvElem, QK};

/// A KV item type as the x86 lanes load it.
pub(super) trait LaneElem: KvElem {
    /// `L::N` values of `row` from value `i` (a multiple of `L::N`; zeros past the row's end, a
    /// caller bug).
    fn lanes<L: Lanes>(l: L, row: &[Self], i: usize) -> L::F;
}

impl LaneElem for f32 {
    #[inline(always)]
    fn lanes<L: Lanes>(l: L, row: &[f32], i: usize) -> L::F {
        l.f32_at(bytemuck::cast_slice(row), 4 * i)
    }
}

impl LaneElem for F16Bits {
    #[inline(always)]
    fn lanes<L: Lanes>(l: L, row: &[F16Bits], i: usize) -> L::F {
        l.f16_at(bytemuck::cast_slice(row), 2 * i)
    }
}

impl LaneElem for BlockQ8_0 {
    /// `d · q` per lane (`N` divides the block, so the lanes share one scale).
    #[inline(always)]
    fn lanes<L: Lanes>(l: L, row: &[BlockQ8_0], i: usize) -> L::F {
        match row.get(i / QK) {
            Some(b) => {
                let d = simd! { f16(b.d) };
                l.fmul(l.fsplat(d), l.i8_at(bytemuck::bytes_of(&b.qs), i % QK))
            }
            None => l.fzero(),
        }
    }
}

/// [`crate::scalar::dot_rows`] (see the module documentation). A last group of fewer than eight
/// rows repeats its last row to fill the group, so every score is summed the same way wherever its
/// row falls (a key's score does not depend on how the keys were split into calls).
#[inline(always)]
pub(super) fn dot_rows<L: Lanes, E: LaneElem>(
    l: L,
    q: &[f32],
    rows: &[E],
    stride: usize,
    out: &mut [f32],
) {
    if !rows_fit(out.len(), q.len(), stride, rows, out) {
        return;
    }
    let (len, full) = (q.len(), q.len() / L::N * L::N);
    let qb: &[u8] = bytemuck::cast_slice(q);
    for (c, o) in out.chunks_mut(8).enumerate() {
        let j0 = 8 * c;
        let last = o.len() - 1;
        let r: [&[E]; 8] = core::array::from_fn(|i| row(rows, j0 + i.min(last), stride, len));
        let mut acc = [l.fzero(); 8];
        for k in (0..full).step_by(L::N) {
            let qv = l.f32_at(qb, 4 * k);
            for (a, r) in acc.iter_mut().zip(&r) {
                *a = l.fmadd(qv, E::lanes(l, r, k), *a);
            }
        }
        let mut sums = [0.0f32; 8];
        l.avx2().store_to(&mut sums, l.hsums8(&acc));
        for (i, o) in o.iter_mut().enumerate() {
            let mut s = sums[i];
            for (k, a) in q.iter().enumerate().skip(full) {
                s += a * E::value(r[i], k);
            }
            *o = s;
        }
    }
}

/// Adds `Σ_j w[j]·row_j[at..at + P·N]` to `out[at..]`: a panel of `P` vectors in registers.
#[inline(always)]
fn axpy_panel<L: Lanes, E: LaneElem, const P: usize>(
    l: L,
    w: &[f32],
    rows: &[E],
    stride: usize,
    out: &mut [f32],
    at: usize,
) {
    let len = out.len();
    let ob: &[u8] = bytemuck::cast_slice(&out[at..at + P * L::N]);
    let mut acc: [L::F; P] = core::array::from_fn(|p| l.f32_at(ob, 4 * p * L::N));
    for (j, &a) in w.iter().enumerate() {
        let r = row(rows, j, stride, len);
        let av = l.fsplat(a);
        for (p, acc) in acc.iter_mut().enumerate() {
            *acc = l.fmadd(av, E::lanes(l, r, at + p * L::N), *acc);
        }
    }
    for (p, o) in out[at..at + P * L::N].chunks_exact_mut(L::N).enumerate() {
        l.store_to(o, acc[p]);
    }
}

/// [`crate::scalar::axpy_rows`] (see the module documentation).
#[inline(always)]
pub(super) fn axpy_rows<L: Lanes, E: LaneElem>(
    l: L,
    w: &[f32],
    rows: &[E],
    stride: usize,
    out: &mut [f32],
) {
    if !rows_fit(w.len(), out.len(), stride, rows, out) {
        return;
    }
    let (len, full) = (out.len(), out.len() / L::N * L::N);
    let mut at = 0;
    while at + 8 * L::N <= full {
        axpy_panel::<L, E, 8>(l, w, rows, stride, out, at);
        at += 8 * L::N;
    }
    while at < full {
        axpy_panel::<L, E, 1>(l, w, rows, stride, out, at);
        at += L::N;
    }
    for (j, &a) in w.iter().enumerate() {
        let r = row(rows, j, stride, len);
        for (i, o) in out.iter_mut().enumerate().skip(full) {
            *o += a * E::value(r, i);
        }
    }
}
