//! Products of one f32 vector with a run of rows at a fixed stride (attention's keys and values in a
//! cache laid out `[position][kv_dim]`, in f32, f16 or Q8_0): the scalar reference of
//! [`Kernels::dot_rows_f32`](crate::Kernels) and [`Kernels::axpy_rows_f32`](crate::Kernels) and their
//! f16 / Q8_0 twins.
use crate::kv_elem::{row, rows_fit};
use crate::KvElem;

/// `out[j] = Σ_i q[i]·row_j[i]` (summed in order), for `j < out.len()`.
pub fn dot_rows<E: KvElem>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    if !rows_fit(out.len(), q.len(), stride, rows, out) {
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let r = row(rows, j, stride, q.len());
        let mut s = 0.0f32;
        for (i, a) in q.iter().enumerate() {
            s += a * E::value(r, i);
        }
        *o = s;
    }
}

/// `out[i] += Σ_j w[j]·row_j[i]`, row by row in order (as one `axpy` per row), for `j < w.len()`.
pub fn axpy_rows<E: KvElem>(w: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    if !rows_fit(w.len(), out.len(), stride, rows, out) {
        return;
    }
    for (j, &a) in w.iter().enumerate() {
        let r = row(rows, j, stride, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o += a * E::value(r, i);
        }
    }
}
