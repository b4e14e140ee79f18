//! Products of one f32 vector with a run of rows at a fixed stride (attention's keys and values in a
//! cache laid out `[position][kv_dim]`, in f32, f16 or Q8_0): the scalar reference of
//! [`Kernels::dot_rows_f32`](crate::Kernels) and [`Kernels::axpy_rows_f32`](crate::Kernels) and their
//! f16 / Q8_0 twins.
use crate::kv_elem::{row, rows_fit};
use crate::{BlockQ8_0, F16Bits, KvElem};

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

/// [`dot_rows`] over f32 rows.
pub fn dot_rows_f32(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    dot_rows(q, rows, stride, out)
}

/// [`axpy_rows`] over f32 rows.
pub fn axpy_rows_f32(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    axpy_rows(w, rows, stride, out)
}

/// [`dot_rows`] over f16 rows.
pub fn dot_rows_f16(q: &[f32], rows: &[F16Bits], stride: usize, out: &mut [f32]) {
    dot_rows(q, rows, stride, out)
}

/// [`axpy_rows`] over f16 rows.
pub fn axpy_rows_f16(w: &[f32], rows: &[F16Bits], stride: usize, out: &mut [f32]) {
    axpy_rows(w, rows, stride, out)
}

/// [`dot_rows`] over rows of Q8_0 blocks.
pub fn dot_rows_q8_0(q: &[f32], rows: &[BlockQ8_0], stride: usize, out: &mut [f32]) {
    dot_rows(q, rows, stride, out)
}

/// [`axpy_rows`] over rows of Q8_0 blocks.
pub fn axpy_rows_q8_0(w: &[f32], rows: &[BlockQ8_0], stride: usize, out: &mut [f32]) {
    axpy_rows(w, rows, stride, out)
}
