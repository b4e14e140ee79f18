//! [`crate::Kernels::dot_rows_f32`] and [`crate::Kernels::axpy_rows_f32`] in NEON: scores four
//! rows at a time against one load of the query, weighted sums in panels of up to eight vectors
//! held in registers while every row adds its weighted piece. Elements past the last whole vector
//! are added in scalar code, in order.
use super::util::{ld_f32, st_f32};
use crate::rows_fit;
use core::arch::aarch64::*;

/// `out[j] = q · row_j` (see the module documentation).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_rows_f32(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(out.len(), q.len(), stride, rows.len(), out) {
        return;
    }
    let (len, full) = (q.len(), q.len() / 4 * 4);
    let row = |j: usize| &rows[j * stride..j * stride + len];
    for (c, o) in out.chunks_mut(4).enumerate() {
        let j0 = 4 * c;
        let mut acc = [vdupq_n_f32(0.0); 4];
        for k in (0..full).step_by(4) {
            let qv = ld_f32(&q[k..]);
            for (i, a) in acc[..o.len()].iter_mut().enumerate() {
                *a = vfmaq_f32(*a, qv, ld_f32(&row(j0 + i)[k..]));
            }
        }
        for (i, o) in o.iter_mut().enumerate() {
            let mut s = vaddvq_f32(acc[i]);
            for (a, b) in q[full..].iter().zip(&row(j0 + i)[full..]) {
                s += a * b;
            }
            *o = s;
        }
    }
}

/// Adds `Σ_j w[j]·row_j[at..at + 4P]` to `out[at..]`: a panel of `P` vectors in registers.
#[target_feature(enable = "neon")]
#[inline]
fn axpy_panel<const P: usize>(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32], at: usize) {
    let mut acc: [float32x4_t; P] = core::array::from_fn(|p| ld_f32(&out[at + 4 * p..]));
    for (j, &a) in w.iter().enumerate() {
        let r = &rows[j * stride + at..j * stride + at + 4 * P];
        for (p, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_n_f32(*acc, ld_f32(&r[4 * p..]), a);
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        st_f32(&mut out[at + 4 * p..], *acc);
    }
}

/// `out += Σ_j w[j]·row_j` (see the module documentation).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn axpy_rows_f32(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(w.len(), out.len(), stride, rows.len(), out) {
        return;
    }
    let (len, full) = (out.len(), out.len() / 4 * 4);
    let mut at = 0;
    while at + 32 <= full {
        axpy_panel::<8>(w, rows, stride, out, at);
        at += 32;
    }
    while at < full {
        axpy_panel::<1>(w, rows, stride, out, at);
        at += 4;
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
