//! Scalar reference kernels: the definition every SIMD tier is tested against.
//! (Being written: see the kernels helper's task.)
use crate::*;

pub static KERNELS: Kernels = Kernels {
    tier: Tier::Scalar,
    matvec_f32: todo_matvec,
    matvec_f16: todo_matvec,
    matvec_q4_0: todo_matvec,
    matvec_q4_1: todo_matvec,
    matvec_q8_0: todo_matvec,
    matvec_q4_k: todo_matvec,
    matvec_q5_k: todo_matvec,
    matvec_q6_k: todo_matvec,
    quantize_q8_0: quantize_f32,
    quantize_q8_1: quantize_f32,
    quantize_q8_k: quantize_f32,
    dot_f32,
    axpy_f32,
};

fn todo_matvec(_n: usize, _w: &[u8], _xq: &[u8], _out: &mut [f32]) {
    unimplemented!()
}

/// The F32 "quantizer": copies the values' bytes.
pub fn quantize_f32(x: &[f32], out: &mut [u8]) {
    out[..x.len() * 4].copy_from_slice(bytemuck::cast_slice(x));
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
