//! [`crate::Kernels::dot_rows_f32`] and [`crate::Kernels::axpy_rows_f32`] for both x86 tiers.
//!
//! - Scores: eight rows at a time, each with its own vector of partial sums along the row, the
//!   eight reduced together ([`Lanes::hsums8`]: one horizontal-add tree for eight scores).
//! - Weighted sums: the output in panels of up to eight vectors held in registers while every row
//!   adds its weighted piece (one FMA per vector), so the output is loaded and stored once per
//!   panel instead of once per row.
//!
//! Elements past the last whole vector of a row are added in scalar code, in order.
use super::lanes::Lanes;
use crate::rows_fit;

/// [`crate::scalar::dot_rows_f32`] (see the module documentation). A last group of fewer than
/// eight rows repeats its last row to fill the group, so every score is summed the same way
/// wherever its row falls (a key's score does not depend on how the keys were split into calls).
#[inline(always)]
pub(super) fn dot_rows<L: Lanes>(l: L, q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(out.len(), q.len(), stride, rows.len(), out) {
        return;
    }
    let (len, full) = (q.len(), q.len() / L::N * L::N);
    let qb: &[u8] = bytemuck::cast_slice(q);
    let row = |j: usize| &rows[j * stride..j * stride + len];
    for (c, o) in out.chunks_mut(8).enumerate() {
        let j0 = 8 * c;
        let last = o.len() - 1;
        let r: [&[u8]; 8] = core::array::from_fn(|i| bytemuck::cast_slice(row(j0 + i.min(last))));
        let mut acc = [l.fzero(); 8];
        for k in (0..full).step_by(L::N) {
            let qv = l.f32_at(qb, 4 * k);
            for (a, r) in acc.iter_mut().zip(&r) {
                *a = l.fmadd(qv, l.f32_at(r, 4 * k), *a);
            }
        }
        let mut sums = [0.0f32; 8];
        l.avx2().store_to(&mut sums, l.hsums8(&acc));
        for (i, o) in o.iter_mut().enumerate() {
            let mut s = sums[i];
            for (a, b) in q[full..].iter().zip(&row(j0 + i)[full..]) {
                s += a * b;
            }
            *o = s;
        }
    }
}

/// Adds `Σ_j w[j]·row_j[at..at + P·N]` to `out[at..]`: a panel of `P` vectors in registers.
#[inline(always)]
fn axpy_panel<L: Lanes, const P: usize>(
    l: L,
    w: &[f32],
    rows: &[f32],
    stride: usize,
    out: &mut [f32],
    at: usize,
) {
    let ob: &[u8] = bytemuck::cast_slice(&out[at..at + P * L::N]);
    let mut acc: [L::F; P] = core::array::from_fn(|p| l.f32_at(ob, 4 * p * L::N));
    for (j, &a) in w.iter().enumerate() {
        let rb: &[u8] = bytemuck::cast_slice(&rows[j * stride + at..j * stride + at + P * L::N]);
        let av = l.fsplat(a);
        for (p, acc) in acc.iter_mut().enumerate() {
            *acc = l.fmadd(av, l.f32_at(rb, 4 * p * L::N), *acc);
        }
    }
    for (p, o) in out[at..at + P * L::N].chunks_exact_mut(L::N).enumerate() {
        l.store_to(o, acc[p]);
    }
}

/// [`crate::scalar::axpy_rows_f32`] (see the module documentation).
#[inline(always)]
pub(super) fn axpy_rows<L: Lanes>(l: L, w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(w.len(), out.len(), stride, rows.len(), out) {
        return;
    }
    let (len, full) = (out.len(), out.len() / L::N * L::N);
    let mut at = 0;
    while at + 8 * L::N <= full {
        axpy_panel::<L, 8>(l, w, rows, stride, out, at);
        at += 8 * L::N;
    }
    while at < full {
        axpy_panel::<L, 1>(l, w, rows, stride, out, at);
        at += L::N;
    }
    for (j, &a) in w.iter().enumerate() {
        for (o, x) in out[full..]
            .iter_mut()
            .zip(&rows[j * stride + full..j * stride + len])
        {
            *o += a * x;
        }
    }
}
