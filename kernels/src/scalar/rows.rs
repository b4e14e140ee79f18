//! Products of one f32 vector with a run of f32 rows at a fixed stride (attention's keys and values
//! in a cache laid out `[position][kv_dim]`): the scalar reference of
//! [`Kernels::dot_rows_f32`](crate::Kernels) and [`Kernels::axpy_rows_f32`](crate::Kernels).
use crate::rows_fit;

/// `out[j] = Σ_i q[i]·rows[j·stride + i]` (summed in order), for `j < out.len()`.
pub fn dot_rows_f32(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(out.len(), q.len(), stride, rows.len(), out) {
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * stride..j * stride + q.len()];
        let mut s = 0.0f32;
        for (a, b) in q.iter().zip(row) {
            s += a * b;
        }
        *o = s;
    }
}

/// `out[i] += Σ_j w[j]·rows[j·stride + i]`, row by row in order (as one `axpy` per row), for
/// `j < w.len()`.
pub fn axpy_rows_f32(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if !rows_fit(w.len(), out.len(), stride, rows.len(), out) {
        return;
    }
    for (j, &a) in w.iter().enumerate() {
        let row = &rows[j * stride..j * stride + out.len()];
        for (o, x) in out.iter_mut().zip(row) {
            *o += a * x;
        }
    }
}
