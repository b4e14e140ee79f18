//! Scalar reference kernels: the definition every SIMD tier is tested against.
//!
//! Plain safe Rust, `no_std`, no floating-point library calls (rounding and square roots are done
//! with exact integer/IEEE arithmetic so that the results are the same with and without `std`).
//!
//! What "bit-exact with ggml" means here:
//! - Dequantization (`dequantize_row_*`) evaluates ggml's reference formulas in f32 in ggml's order
//!   (`q*d`, `q*d + m`, `(d*sc)*q - dmin*m`, `(d*sc)*q`), each operation rounded separately (no fused
//!   multiply-add).
//! - `quantize_row_q4_0/q4_1/q5_0/q5_1/q8_0/q8_1/q8_K` follow ggml's `quantize_row_*_ref`: the same
//!   scale, the same reciprocal, `roundf` (ties away from zero) for Q8_0/Q8_1, truncation after `+ 8.5`
//!   style offsets for the 4/5-bit formats, and `nearest_int` (ties to even) for Q8_K.
//! - `quantize_row_q4_k/q5_k/q6_k` follow `quantize_row_q4_K_ref`/`q5_K_ref`/`q6_K_ref` (the
//!   `make_qkx2_quants` / `make_qx_quants` searches) operation by operation without FMA contraction; a C
//!   build that contracts `a*b + c` into FMA may differ from it (and from itself across compilers).
//! - Dot products multiply integers within a block like ggml and accumulate f32 across blocks; they are
//!   not bit-identical to any particular ggml build (ggml's own SIMD paths differ from each other), but
//!   their order is fixed and documented per function so SIMD tiers can be compared with a tolerance.
//!
//! Slice-length contract: the typed functions process as many whole blocks as both sides hold
//! (`debug_assert!`s flag a mismatch in debug builds); the byte-level [`MatVec`] / [`Quantize`] functions
//! write NaN to `out` (matvec) or leave the tail untouched (quantize) on inconsistent lengths. Nothing
//! here panics in release builds on any input.
use crate::*;
use bytemuck::{Pod, Zeroable};
use core::mem::size_of;

/// The scalar tier's table; every other tier's table starts from it and states what it overrides.
pub const TABLE: Kernels = Kernels {
    tier: Tier::Scalar,
    matvec_f32,
    matvec_f16,
    matvec_q4_0,
    matvec_q4_1,
    matvec_q5_0,
    matvec_q5_1,
    matvec_q8_0,
    matvec_q4_k,
    matvec_q5_k,
    matvec_q6_k,
    matvec2_q4_0,
    matvec2_q4_1,
    matvec2_q5_0,
    matvec2_q5_1,
    matvec2_q8_0,
    matvec2_q4_k,
    matvec2_q5_k,
    matvec2_q6_k,
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_k,
    quantize2_q8_0,
    quantize2_q8_1,
    quantize2_q8_k,
    matmul_f32: None,
    matmul_f16: None,
    matmul_q4_0: None,
    matmul_q4_1: None,
    matmul_q5_0: None,
    matmul_q5_1: None,
    matmul_q8_0: None,
    matmul_q4_k: None,
    matmul_q5_k: None,
    matmul_q6_k: None,
    dot_f32,
    axpy_f32,
};

/// The scalar tier ([`TABLE`]) at a fixed address.
pub static KERNELS: Kernels = TABLE;

// ---------------------------------------------------------------------------------------------------
// Exact arithmetic (no libm in core)
// ---------------------------------------------------------------------------------------------------

#[inline(always)]
fn absf(v: f32) -> f32 {
    f32::from_bits(v.to_bits() & 0x7fff_ffff)
}

/// ggml's `nearest_int`: `v + 1.5·2^23`, then read the mantissa. Rounds to nearest, ties to even, for
/// |v| ≤ 4194303; other inputs give some integer (never a panic), as in ggml.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let t = v + 12582912.0f32;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C `roundf` (ties away from zero) as an integer, for |v| < 2^31; NaN gives 0.
#[inline(always)]
pub fn round_away(v: f32) -> i32 {
    if v.is_nan() || absf(v) >= 8388608.0 {
        // |v| ≥ 2^23 is already integral (or NaN/inf): saturating conversion.
        return v as i32;
    }
    let t = v as i32; // truncation toward zero, exact here
    let frac = v - t as f32; // exact for |v| < 2^23
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Correctly rounded f32 square root (IEEE `sqrtf`) without libm: Newton in f64, then a fix-up with
/// exact midpoint comparisons.
pub fn sqrtf(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    let xd = x as f64;
    // Initial guess: halve the f64 exponent.
    let mut y = f64::from_bits((xd.to_bits() >> 1) + (0x3ff0_0000_0000_0000u64 >> 1));
    for _ in 0..6 {
        y = 0.5 * (y + xd / y);
    }
    let mut r = y as f32;
    // r and its neighbours have 24-bit significands: midpoints have 25 bits and their squares fit
    // exactly in an f64, so the comparisons below are exact.
    loop {
        let up = f32::from_bits(r.to_bits() + 1);
        let mid = (r as f64 + up as f64) * 0.5;
        if mid * mid < xd {
            r = up;
            continue;
        }
        if r.to_bits() > 1 {
            let down = f32::from_bits(r.to_bits() - 1);
            let mid = (r as f64 + down as f64) * 0.5;
            if mid * mid > xd {
                r = down;
                continue;
            }
        }
        return r;
    }
}

#[inline(always)]
fn fp16(v: f32) -> F16Bits {
    F16Bits::from_f32(v)
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// ---------------------------------------------------------------------------------------------------
// Dequantization (ggml `dequantize_row_*`)
// ---------------------------------------------------------------------------------------------------

pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            let x0 = (b.qs[j] & 0x0f) as i32 - 8;
            let x1 = (b.qs[j] >> 4) as i32 - 8;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for j in 0..QK / 2 {
            let x0 = (b.qs[j] & 0x0f) as i32;
            let x1 = (b.qs[j] >> 4) as i32;
            out[j] = x0 as f32 * d + m;
            out[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((b.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
            let x1 = ((b.qs[j] >> 4) as u32 | h1) as i32 - 16;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((b.qs[j] & 0x0f) as u32 | h0) as i32;
            let x1 = ((b.qs[j] >> 4) as u32 | h1) as i32;
            out[j] = x0 as f32 * d + m;
            out[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Q8_1 values are `d * q` (the `s` field is redundant).
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK_K);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for c in 0..QK_K / 64 {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let d1 = d * sc1 as f32;
            let m1 = min * m1 as f32;
            let d2 = d * sc2 as f32;
            let m2 = min * m2 as f32;
            let q = &b.qs[32 * c..32 * c + 32];
            let o = &mut out[64 * c..64 * c + 64];
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK_K);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for c in 0..QK_K / 64 {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let d1 = d * sc1 as f32;
            let m1 = min * m1 as f32;
            let d2 = d * sc2 as f32;
            let m2 = min * m2 as f32;
            let u1 = 1u8 << (2 * c);
            let u2 = 2u8 << (2 * c);
            let ql = &b.qs[32 * c..32 * c + 32];
            let o = &mut out[64 * c..64 * c + 64];
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                o[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                o[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// The 256 signed 6-bit quants (q - 32) of a Q6_K block, in element order.
#[inline(always)]
fn unpack_q6_k(b: &BlockQ6K, q: &mut [i8; QK_K]) {
    for n in 0..QK_K / 128 {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let o = &mut q[128 * n..128 * n + 128];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK_K);
    let mut q = [0i8; QK_K];
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        unpack_q6_k(b, &mut q);
        for (i, o) in out.iter_mut().enumerate() {
            // ggml: d * sc[is] * q, evaluated left to right.
            *o = d * b.scales[i / 16] as f32 * q[i] as f32;
        }
    }
}

pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK_K);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    }
}

/// f16 row from raw little-endian bytes (2 per element).
pub fn dequantize_row_f16(x: &[u8], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len() * 2);
    for (c, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = F16Bits([c[0], c[1]]).to_f32();
    }
}

/// bf16 row from raw little-endian bytes (2 per element).
pub fn dequantize_row_bf16(x: &[u8], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len() * 2);
    for (c, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// f32 row from raw little-endian bytes (any alignment).
pub fn dequantize_row_f32(x: &[u8], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len() * 4);
    for (c, o) in x.chunks_exact(4).zip(y.iter_mut()) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn deq_blocks<B: Pod>(bytes: &[u8], out: &mut [f32], f: fn(&[B], &mut [f32])) -> bool {
    match bytemuck::try_cast_slice::<u8, B>(bytes) {
        Ok(blocks) => {
            f(blocks, out);
            true
        }
        Err(_) => false,
    }
}

/// Dequantize `bytes` (a whole number of blocks of type `ty`, any alignment) into `out`.
///
/// Returns false, leaving `out` untouched, if the type has no dequantizer here or if
/// `bytes.len() != ty.row_bytes(out.len())`. Never panics.
pub fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) -> bool {
    use QuantType::*;
    if ty.row_bytes(out.len()) != Some(bytes.len()) {
        return false;
    }
    match ty {
        F32 => {
            dequantize_row_f32(bytes, out);
            true
        }
        F16 => {
            dequantize_row_f16(bytes, out);
            true
        }
        BF16 => {
            dequantize_row_bf16(bytes, out);
            true
        }
        Q4_0 => deq_blocks(bytes, out, dequantize_row_q4_0),
        Q4_1 => deq_blocks(bytes, out, dequantize_row_q4_1),
        Q5_0 => deq_blocks(bytes, out, dequantize_row_q5_0),
        Q5_1 => deq_blocks(bytes, out, dequantize_row_q5_1),
        Q8_0 => deq_blocks(bytes, out, dequantize_row_q8_0),
        Q8_1 => deq_blocks(bytes, out, dequantize_row_q8_1),
        Q4K => deq_blocks(bytes, out, dequantize_row_q4_k),
        Q5K => deq_blocks(bytes, out, dequantize_row_q5_k),
        Q6K => deq_blocks(bytes, out, dequantize_row_q6_k),
        Q8K => {
            // BlockQ8K has alignment 4: read each block unaligned.
            let ts = size_of::<BlockQ8K>();
            for (c, o) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(QK_K)) {
                let b: BlockQ8K = bytemuck::pod_read_unaligned(c);
                dequantize_row_q8_k(core::slice::from_ref(&b), o);
            }
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Activation quantizers (ggml `quantize_row_q8_0_ref`, `_q8_1_ref`, `_q8_K_ref`)
// ---------------------------------------------------------------------------------------------------

/// Q8_0 scale and reciprocal of a 32-element block, as ggml computes them.
#[inline(always)]
fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in xb {
        let a = absf(v);
        // ggml's MAX(amax, fabsf(v)) = amax > a ? amax : a
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

#[inline(always)]
fn q8_round(v: f32) -> i8 {
    round_away(v).clamp(-128, 127) as i8
}

pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = fp16(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = q8_round(v * id);
        }
    }
}

pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = fp16(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = q8_round(v * id);
            sum += *q as i32;
        }
        // ggml: s = FP32_TO_FP16(sum*d) with the unrounded f32 d.
        yb.s = fp16(sum as f32 * d);
    }
}

fn quantize_block_q8_k(xb: &[f32], yb: &mut BlockQ8K) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in xb {
        let ax = absf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax == 0.0 {
        // ggml leaves bsums unwritten here; we zero them (they are the sums of the zero quants).
        yb.d = 0.0;
        yb.qs = [0; QK_K];
        yb.bsums = [0; QK_K / 16];
        return;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in yb.qs.iter_mut().zip(xb) {
        *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
    }
    for (j, s) in yb.bsums.iter_mut().enumerate() {
        *s = yb.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
    }
    yb.d = 1.0 / iscale;
}

pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), y.len() * QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        quantize_block_q8_k(xb, yb);
    }
}

/// Byte-level [`Quantize`] for Q8_0.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_0, x, out.len());
    if let Ok(y) = bytemuck::try_cast_slice_mut(&mut out[..nb * size_of::<BlockQ8_0>()]) {
        quantize_row_q8_0(&x[..nb * QK], y);
    }
}

/// Byte-level [`Quantize`] for Q8_1.
pub fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_1, x, out.len());
    if let Ok(y) = bytemuck::try_cast_slice_mut(&mut out[..nb * size_of::<BlockQ8_1>()]) {
        quantize_row_q8_1(&x[..nb * QK], y);
    }
}

/// Byte-level [`Quantize`] for Q8_K (any alignment of `out`).
pub fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    let ts = size_of::<BlockQ8K>();
    let nb = crate::quantize_blocks(QuantType::Q8K, x, out.len());
    let out = &mut out[..nb * ts];
    let x = &x[..nb * QK_K];
    match bytemuck::try_cast_slice_mut::<u8, BlockQ8K>(out) {
        Ok(y) => quantize_row_q8_k(x, y),
        Err(_) => {
            let mut b = BlockQ8K::zeroed();
            for (xb, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(ts)) {
                quantize_block_q8_k(xb, &mut b);
                o.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Activation quantizers of the `q8x2` mode (`Quantize2`): 8 bits plus the residual on the grid d/256
// ---------------------------------------------------------------------------------------------------

/// The f16 scale of a `q8x2` Q8_0/Q8_1 block: `f16(amax / 127)`, rounded up to a multiple of 2⁻¹⁶
/// when it is below 2⁻⁶, so that `scale / 256` is an f16 too (exactly: the residual block's scale).
pub fn x2_scale_f16(amax: f32) -> F16Bits {
    let d = fp16(amax / 127.0);
    let bits = d.bits();
    let e = (bits >> 10) & 0x1f;
    if e >= 9 {
        return d;
    }
    // Spacing of f16 values with exponent field e (subnormals: as e = 1) is 2^(max(e,1) − 25).
    let mask = (1u16 << (9 - e.max(1))) - 1;
    F16Bits(((bits + mask) & !mask).to_le_bytes())
}

/// One `q8x2` block of 32: `q = nearest(x/d)`, `r = nearest((x − d·q)·256/d)` with `d` from
/// [`x2_scale_f16`] (each step rounded in f32 as written: `id = 1/d`, `x·id`, `d·q`, `x − d·q`,
/// `res·(256·id)`; no fused multiply-add). Returns `d` (f32).
fn quantize2_block32(xb: &[f32], ds: F16Bits, q: &mut [i8; QK], r: &mut [i8; QK]) -> f32 {
    let d = ds.to_f32();
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let id256 = id * 256.0;
    for ((&v, q), r) in xb.iter().zip(q.iter_mut()).zip(r.iter_mut()) {
        let qi = nearest_int(v * id).clamp(-127, 127);
        let res = v - d * qi as f32;
        *q = qi as i8;
        *r = nearest_int(res * id256).clamp(-128, 127) as i8;
    }
    d
}

/// `q8x2` quantization to Q8_0 blocks (the [`Quantize2`] reference). Per block of 32: the scale
/// `d` = [`x2_scale_f16`]`(amax)`, `q` and `r` as `quantize2_block32` computes them, and the residual
/// block's scale `d/256` (exact). `x ≈ d·(q + r/256)` to within `d/512` (plus the clamp of a
/// residual tie at +128).
pub fn quantize2_row_q8_0(x: &[f32], q: &mut [BlockQ8_0], r: &mut [BlockQ8_0]) {
    for ((xb, qb), rb) in x.chunks_exact(QK).zip(q.iter_mut()).zip(r.iter_mut()) {
        let amax = xb
            .iter()
            .fold(0.0f32, |m, &v| if m > absf(v) { m } else { absf(v) });
        let ds = x2_scale_f16(amax);
        let d = quantize2_block32(xb, ds, &mut qb.qs, &mut rb.qs);
        qb.d = ds;
        rb.d = fp16(d / 256.0);
    }
}

/// `q8x2` quantization to Q8_1 blocks: as [`quantize2_row_q8_0`], and the sums: `s` of the `q` block
/// is `f16(d·Σq)`, `s` of the `r` block `f16(Σx − s_q)` (Σx summed in element order), so that the two
/// add up to the block's true sum to f16 precision of the small remainder.
pub fn quantize2_row_q8_1(x: &[f32], q: &mut [BlockQ8_1], r: &mut [BlockQ8_1]) {
    for ((xb, qb), rb) in x.chunks_exact(QK).zip(q.iter_mut()).zip(r.iter_mut()) {
        let amax = xb
            .iter()
            .fold(0.0f32, |m, &v| if m > absf(v) { m } else { absf(v) });
        let ds = x2_scale_f16(amax);
        let d = quantize2_block32(xb, ds, &mut qb.qs, &mut rb.qs);
        let sum_q: i32 = qb.qs.iter().map(|&v| v as i32).sum();
        let sum_x: f32 = xb.iter().sum();
        qb.d = ds;
        qb.s = fp16(sum_q as f32 * d);
        rb.d = fp16(d / 256.0);
        rb.s = fp16(sum_x - qb.s.to_f32());
    }
}

/// `q8x2` quantization to Q8_K blocks: the `q` block is exactly [`quantize_row_q8_k`]'s (scale
/// `d = 1/iscale`), the residual `r = nearest((x − d·q)·(256·iscale))` clamped to i8 with scale
/// `d/256` and its own `bsums`.
pub fn quantize2_row_q8_k(x: &[f32], q: &mut [BlockQ8K], r: &mut [BlockQ8K]) {
    for ((xb, qb), rb) in x.chunks_exact(QK_K).zip(q.iter_mut()).zip(r.iter_mut()) {
        quantize_block_q8_k(xb, qb);
        let d = qb.d;
        let is256 = if d != 0.0 { 256.0 / d } else { 0.0 };
        for ((&v, &qi), ri) in xb.iter().zip(qb.qs.iter()).zip(rb.qs.iter_mut()) {
            let res = v - d * qi as f32;
            *ri = nearest_int(res * is256).clamp(-128, 127) as i8;
        }
        for (j, s) in rb.bsums.iter_mut().enumerate() {
            *s = rb.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        rb.d = d / 256.0;
    }
}

/// Byte-level [`Quantize2`] for Q8_0.
pub fn quantize2_q8_0(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_0, x, q.len().min(r.len()));
    let len = nb * size_of::<BlockQ8_0>();
    if let (Ok(qb), Ok(rb)) = (
        bytemuck::try_cast_slice_mut(&mut q[..len]),
        bytemuck::try_cast_slice_mut(&mut r[..len]),
    ) {
        quantize2_row_q8_0(&x[..nb * QK], qb, rb);
    }
}

/// Byte-level [`Quantize2`] for Q8_1.
pub fn quantize2_q8_1(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let nb = crate::quantize_blocks(QuantType::Q8_1, x, q.len().min(r.len()));
    let len = nb * size_of::<BlockQ8_1>();
    if let (Ok(qb), Ok(rb)) = (
        bytemuck::try_cast_slice_mut(&mut q[..len]),
        bytemuck::try_cast_slice_mut(&mut r[..len]),
    ) {
        quantize2_row_q8_1(&x[..nb * QK], qb, rb);
    }
}

/// Byte-level [`Quantize2`] for Q8_K (any alignment of `q` and `r`).
pub fn quantize2_q8_k(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    let ts = size_of::<BlockQ8K>();
    let nb = crate::quantize_blocks(QuantType::Q8K, x, q.len().min(r.len()));
    let (mut bq, mut br) = (BlockQ8K::zeroed(), BlockQ8K::zeroed());
    let blocks = x[..nb * QK_K].chunks_exact(QK_K);
    for ((xb, qo), ro) in blocks
        .zip(q.chunks_exact_mut(ts))
        .zip(r.chunks_exact_mut(ts))
    {
        quantize2_row_q8_k(
            xb,
            core::slice::from_mut(&mut bq),
            core::slice::from_mut(&mut br),
        );
        qo.copy_from_slice(bytemuck::bytes_of(&bq));
        ro.copy_from_slice(bytemuck::bytes_of(&br));
    }
}

/// The F32 "quantizer": copies the values' bytes (as many as fit).
pub fn quantize_f32(x: &[f32], out: &mut [u8]) {
    debug_assert!(out.len() >= x.len() * 4);
    for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------------
// Weight quantizers (ggml `quantize_row_*_ref`)
// ---------------------------------------------------------------------------------------------------

/// Value of largest magnitude (first one on ties), ggml's `amax`/`max` scan.
#[inline(always)]
fn signed_absmax(xb: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if amax < absf(v) {
            amax = absf(v);
            max = v;
        }
    }
    max
}

#[inline(always)]
fn min_max(xb: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in xb {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's `(int8_t)f` for the in-range values these quantizers produce (truncation toward zero).
#[inline(always)]
fn trunc_i8(v: f32) -> i32 {
    (v as i32).clamp(-128, 127)
}

pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = fp16(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[j + QK / 2] * id;
            let q0 = trunc_i8(x0 + 8.5).min(15) as u8;
            let q1 = trunc_i8(x1 + 8.5).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = fp16(d);
        yb.m = fp16(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + QK / 2] - min) * id;
            let q0 = trunc_i8(x0 + 0.5).min(15) as u8;
            let q1 = trunc_i8(x1 + 0.5).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = fp16(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[j + QK / 2] * id;
            let q0 = trunc_i8(x0 + 16.5).min(31) as u8;
            let q1 = trunc_i8(x1 + 16.5).min(31) as u8;
            yb.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    debug_assert_eq!(x.len(), y.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = fp16(d);
        yb.m = fp16(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + QK / 2] - min) * id;
            // ggml: (uint8_t)(x + 0.5f), no clamp (the value is at most 31.5 by construction).
            let q0 = ((x0 + 0.5) as i32).clamp(0, 255) as u8;
            let q1 = ((x1 + 0.5) as i32).clamp(0, 255) as u8;
            yb.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

/// ggml `make_qkx2_quants` (use_mad = false): fits `x ≈ scale*L + min` with L in 0..=nmax, min ≤ 0.
/// Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qx_quants` with rmse_type = 1 and no importance weights (weights x²): symmetric fit
/// `x ≈ scale * (L - nmax)`, L in 0..2*nmax. Returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15;
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = absf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            let w = xi * xi;
            let lf = l as f32;
            sumlx += w * xi * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &xi) in x.iter().enumerate() {
                let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
                l_out[i] = (l + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Pack 8 six-bit scales and mins into the 12-byte Q4_K/Q5_K layout.
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Shared part of `quantize_row_q4_K_ref` / `q5_K_ref`: returns (d, dmin, scales, L[256]).
fn quantize_k4_common(
    xb: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> (F16Bits, F16Bits, [u8; K_SCALE_SIZE]) {
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut weights = [0.0f32; 32];
    let mut laux = [0u8; 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &xb[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = sqrtf(sum_x2 / 32.0);
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + absf(v);
        }
        let (sc, mn) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            rdelta,
            nstep,
        );
        scales[j] = sc;
        mins[j] = mn;
        if sc > max_scale {
            max_scale = sc;
        }
        if mn > max_min {
            max_min = mn;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // C assigns the int to uint8_t (mod 256) before MIN(63, ·).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scales_k4(&ls, &lm);
    let d = fp16(max_scale / 63.0);
    let dmin = fp16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            let q = nearest_int((xb[32 * j + ii] + dm) / dd).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
    (d, dmin, packed)
}

/// Q4_K quantizer following ggml's `quantize_row_q4_K_ref` (no importance matrix).
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    debug_assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales) = quantize_k4_common(xb, 15, -1.0, 0.1, 20, &mut l);
        yb.d = d;
        yb.dmin = dmin;
        yb.scales = scales;
        for c in 0..QK_K / 64 {
            for i in 0..32 {
                yb.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    }
}

/// Q5_K quantizer following ggml's `quantize_row_q5_K_ref` (no importance matrix).
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    debug_assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales) = quantize_k4_common(xb, 31, -0.5, 0.1, 15, &mut l);
        yb.d = d;
        yb.dmin = dmin;
        yb.scales = scales;
        yb.qh = [0; QK_K / 8];
        for c in 0..QK_K / 64 {
            let m1 = 1u8 << (2 * c);
            let m2 = 2u8 << (2 * c);
            for j in 0..32 {
                let mut l1 = l[64 * c + j];
                if l1 > 15 {
                    l1 -= 16;
                    yb.qh[j] |= m1;
                }
                let mut l2 = l[64 * c + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    yb.qh[j] |= m2;
                }
                yb.qs[32 * c + j] = l1 | (l2 << 4);
            }
        }
    }
}

/// Q6_K quantizer following ggml's `quantize_row_q6_K_ref` (no importance matrix).
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    const GROUP_MAX_EPS: f32 = 1e-15;
    debug_assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let s = make_qx_quants_rmse1(
                32,
                &xb[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
            );
            scales[ib] = s;
            if absf(s) > max_abs_scale {
                max_abs_scale = absf(s);
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *yb = BlockQ6K::zeroed();
            yb.d = fp16(0.0);
            continue;
        }
        let iscale = -128.0f32 / max_scale;
        yb.d = fp16(1.0 / iscale);
        for (ys, &s) in yb.scales.iter_mut().zip(&scales) {
            *ys = nearest_int(iscale * s).clamp(-128, 127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = yb.d.to_f32() * yb.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(xb[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for n in 0..QK_K / 128 {
            let lb = &l[128 * n..128 * n + 128];
            for i in 0..32 {
                let q1 = lb[i] as u8;
                let q2 = lb[i + 32] as u8;
                let q3 = lb[i + 64] as u8;
                let q4 = lb[i + 96] as u8;
                yb.ql[64 * n + i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                yb.ql[64 * n + i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                yb.qh[32 * n + i] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Dot products: integer products within a block, f32 accumulation across blocks.
// ---------------------------------------------------------------------------------------------------

/// Σ over `n/32` blocks of `(dx*dy) * Σ (q4-8)*q8`.
pub fn vec_dot_q4_0_q8_0(n: usize, x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0f) as i32 - 8;
            let v1 = (a.qs[j] >> 4) as i32 - 8;
            sumi += v0 * b.qs[j] as i32 + v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// Σ over blocks of `(dx*dy) * Σ q4*q8 + m*s`.
pub fn vec_dot_q4_1_q8_1(n: usize, x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0f) as i32;
            let v1 = (a.qs[j] >> 4) as i32;
            sumi += v0 * b.qs[j] as i32 + v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * sumi as f32 + a.m.to_f32() * b.s.to_f32();
    }
    sumf
}

/// Σ over blocks of `(dx*dy) * Σ (q5-16)*q8`.
pub fn vec_dot_q5_0_q8_0(n: usize, x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK) {
        let qh = u32::from_le_bytes(a.qh);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let v0 = ((a.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
            let v1 = ((a.qs[j] >> 4) as u32 | h1) as i32 - 16;
            sumi += v0 * b.qs[j] as i32 + v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// Σ over blocks of `(dx*dy) * Σ q5*q8 + m*s`.
pub fn vec_dot_q5_1_q8_1(n: usize, x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK) {
        let qh = u32::from_le_bytes(a.qh);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let v0 = ((a.qs[j] & 0x0f) as u32 | h0) as i32;
            let v1 = ((a.qs[j] >> 4) as u32 | h1) as i32;
            sumi += v0 * b.qs[j] as i32 + v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * sumi as f32 + a.m.to_f32() * b.s.to_f32();
    }
    sumf
}

/// Σ over blocks of `(dx*dy) * Σ qx*qy`.
pub fn vec_dot_q8_0_q8_0(n: usize, x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK) {
        let mut sumi = 0i32;
        for (&p, &q) in a.qs.iter().zip(&b.qs) {
            sumi += p as i32 * q as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// One Q4_K × Q8_K super-block:
/// `(d*dy) * Σ_j sc_j Σ q4*q8  -  (dmin*dy) * Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[inline]
pub fn dot_block_q4_k_q8_k(a: &BlockQ4K, b: &BlockQ8K) -> f32 {
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for c in 0..QK_K / 64 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &a.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &a.scales);
        let q = &a.qs[32 * c..32 * c + 32];
        let y = &b.qs[64 * c..64 * c + 64];
        let mut s1 = 0i32;
        let mut s2 = 0i32;
        for l in 0..32 {
            s1 += (q[l] & 0x0f) as i32 * y[l] as i32;
            s2 += (q[l] >> 4) as i32 * y[l + 32] as i32;
        }
        sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
        summ += m1 as i32 * (b.bsums[4 * c] as i32 + b.bsums[4 * c + 1] as i32);
        summ += m2 as i32 * (b.bsums[4 * c + 2] as i32 + b.bsums[4 * c + 3] as i32);
    }
    (a.d.to_f32() * b.d) * sumi as f32 - (a.dmin.to_f32() * b.d) * summ as f32
}

/// One Q5_K × Q8_K super-block (as Q4_K with q in 0..32).
#[inline]
pub fn dot_block_q5_k_q8_k(a: &BlockQ5K, b: &BlockQ8K) -> f32 {
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for c in 0..QK_K / 64 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &a.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &a.scales);
        let u1 = 1u8 << (2 * c);
        let u2 = 2u8 << (2 * c);
        let q = &a.qs[32 * c..32 * c + 32];
        let y = &b.qs[64 * c..64 * c + 64];
        let mut s1 = 0i32;
        let mut s2 = 0i32;
        for l in 0..32 {
            let h1 = if a.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if a.qh[l] & u2 != 0 { 16 } else { 0 };
            s1 += ((q[l] & 0x0f) as i32 + h1) * y[l] as i32;
            s2 += ((q[l] >> 4) as i32 + h2) * y[l + 32] as i32;
        }
        sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
        summ += m1 as i32 * (b.bsums[4 * c] as i32 + b.bsums[4 * c + 1] as i32);
        summ += m2 as i32 * (b.bsums[4 * c + 2] as i32 + b.bsums[4 * c + 3] as i32);
    }
    (a.d.to_f32() * b.d) * sumi as f32 - (a.dmin.to_f32() * b.d) * summ as f32
}

/// One Q6_K × Q8_K super-block: `(d*dy) * Σ_g sc_g Σ (q6-32)*q8` over 16 groups of 16.
#[inline]
pub fn dot_block_q6_k_q8_k(a: &BlockQ6K, b: &BlockQ8K) -> f32 {
    let mut q = [0i8; QK_K];
    unpack_q6_k(a, &mut q);
    let mut sumi = 0i32;
    for g in 0..QK_K / 16 {
        let group = 16 * g..16 * g + 16;
        let s: i32 = q[group.clone()]
            .iter()
            .zip(&b.qs[group])
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        sumi += a.scales[g] as i32 * s;
    }
    (a.d.to_f32() * b.d) * sumi as f32
}

pub fn vec_dot_q4_k_q8_k(n: usize, x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK_K) {
        sumf += dot_block_q4_k_q8_k(a, b);
    }
    sumf
}

pub fn vec_dot_q5_k_q8_k(n: usize, x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK_K) {
        sumf += dot_block_q5_k_q8_k(a, b);
    }
    sumf
}

pub fn vec_dot_q6_k_q8_k(n: usize, x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(n / QK_K) {
        sumf += dot_block_q6_k_q8_k(a, b);
    }
    sumf
}

/// f16 weights · f32 activations, exact f16→f32 conversion, sequential f32 accumulation.
pub fn vec_dot_f16_f32(n: usize, x: &[F16Bits], y: &[f32]) -> f32 {
    debug_assert!(x.len() >= n && y.len() >= n);
    let mut sum = 0.0f32;
    for (w, &v) in x.iter().zip(y).take(n) {
        sum += w.to_f32() * v;
    }
    sum
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut sum = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

// ---------------------------------------------------------------------------------------------------
// Matrix × vector wrappers with the `MatVec` signature
// ---------------------------------------------------------------------------------------------------

/// The `MatVec` length check ([`crate::check_matvec`], shared by every tier): returns (bytes per
/// weight row, bytes of the activation), or None after writing zeros (`n == 0`) or NaN (inconsistent
/// lengths) to `out`.
#[inline]
fn matvec_geometry(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
) -> Option<(usize, usize)> {
    crate::check_matvec(ty, n, w, xq, None, out).map(|s| (s.row_bytes, s.act_bytes))
}

/// `out[r] = dot(n, row_r, x)` for block types of alignment 1 (weights) and activations `Y`.
fn matvec_blocks<B: Pod, Y: Pod>(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
    dot: fn(usize, &[B], &[Y]) -> f32,
) {
    let Some((rb, xb)) = matvec_geometry(ty, n, w, xq, out) else {
        return;
    };
    let Ok(x) = bytemuck::try_cast_slice::<u8, Y>(&xq[..xb]) else {
        debug_assert!(false, "matvec: misaligned activation");
        out.iter_mut().for_each(|o| *o = f32::NAN);
        return;
    };
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        *o = match bytemuck::try_cast_slice::<u8, B>(row) {
            Ok(blocks) => dot(n, blocks, x),
            Err(_) => f32::NAN,
        };
    }
}

/// As [`matvec_blocks`] for K-quant weights against Q8_K activations, which may lie at any alignment
/// (then each Q8_K block is read unaligned; the sum order is the same).
fn matvec_k<B: Pod>(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
    dot_block: fn(&B, &BlockQ8K) -> f32,
) {
    let yts = size_of::<BlockQ8K>();
    let Some((rb, xb)) = matvec_geometry(ty, n, w, xq, out) else {
        return;
    };
    let xq = &xq[..xb];
    let aligned = bytemuck::try_cast_slice::<u8, BlockQ8K>(xq).ok();
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        let Ok(blocks) = bytemuck::try_cast_slice::<u8, B>(row) else {
            *o = f32::NAN;
            continue;
        };
        let mut sumf = 0.0f32;
        match aligned {
            Some(y) => {
                for (a, b) in blocks.iter().zip(y) {
                    sumf += dot_block(a, b);
                }
            }
            None => {
                for (a, c) in blocks.iter().zip(xq.chunks_exact(yts)) {
                    let b: BlockQ8K = bytemuck::pod_read_unaligned(c);
                    sumf += dot_block(a, &b);
                }
            }
        }
        *o = sumf;
    }
}

/// F32 weights × F32 activations (bytes at any alignment), sequential f32 accumulation per row.
pub fn matvec_f32(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let Some((rb, xb)) = matvec_geometry(QuantType::F32, n, w, xq, out) else {
        return;
    };
    let x = &xq[..xb];
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        let mut sum = 0.0f32;
        for (a, b) in row.chunks_exact(4).zip(x.chunks_exact(4)) {
            sum += f32::from_le_bytes([a[0], a[1], a[2], a[3]])
                * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        *o = sum;
    }
}

/// F16 weights × F32 activations (activation bytes at any alignment); same order as [`vec_dot_f16_f32`].
pub fn matvec_f16(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    let Some((rb, xb)) = matvec_geometry(QuantType::F16, n, w, xq, out) else {
        return;
    };
    let x = &xq[..xb];
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        let mut sum = 0.0f32;
        for (a, b) in row.chunks_exact(2).zip(x.chunks_exact(4)) {
            sum += F16Bits([a[0], a[1]]).to_f32() * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        *o = sum;
    }
}

pub fn matvec_q4_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_blocks(QuantType::Q4_0, n, w, xq, out, vec_dot_q4_0_q8_0);
}

pub fn matvec_q4_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_blocks(QuantType::Q4_1, n, w, xq, out, vec_dot_q4_1_q8_1);
}

/// Q5_0 weights × Q8_0 activations ([`vec_dot_q5_0_q8_0`] per row).
pub fn matvec_q5_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_blocks(QuantType::Q5_0, n, w, xq, out, vec_dot_q5_0_q8_0);
}

/// Q5_1 weights × Q8_1 activations ([`vec_dot_q5_1_q8_1`] per row; the weight's minimum meets the
/// activation block's stored sum `s`, as in Q4_1).
pub fn matvec_q5_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_blocks(QuantType::Q5_1, n, w, xq, out, vec_dot_q5_1_q8_1);
}

pub fn matvec_q8_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_blocks(QuantType::Q8_0, n, w, xq, out, vec_dot_q8_0_q8_0);
}

pub fn matvec_q4_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_k(QuantType::Q4K, n, w, xq, out, dot_block_q4_k_q8_k);
}

pub fn matvec_q5_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_k(QuantType::Q5K, n, w, xq, out, dot_block_q5_k_q8_k);
}

pub fn matvec_q6_k(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_k(QuantType::Q6K, n, w, xq, out, dot_block_q6_k_q8_k);
}

// ---------------------------------------------------------------------------------------------------
// Two activations at once (`MatVec2`): the reference is two `MatVec` passes and an add
// ---------------------------------------------------------------------------------------------------

/// Rows per sub-chunk of [`matvec2_two_pass`] (the weights of a sub-chunk stay in L1 between passes).
pub const TWO_PASS_ROWS: usize = 32;

/// `out = mv(w, xq) + mv(w, xr)` for weights of type `ty`: per sub-chunk of [`TWO_PASS_ROWS`] rows,
/// one `mv` into `out`, one into a stack buffer, then an f32 add. The [`MatVec2`] reference (and the
/// entry of a tier that has no fused kernel for a type). Lengths as `mv` checks them: zeros for
/// `n == 0`, NaN rows (and a debug assertion) on inconsistent lengths.
pub fn matvec2_two_pass(
    ty: QuantType,
    mv: MatVec,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: &[u8],
    out: &mut [f32],
) {
    let rb = ty.row_bytes(n);
    let fits = rb
        .and_then(|rb| rb.checked_mul(out.len()))
        .is_some_and(|l| l <= w.len());
    let (Some(rb), true) = (rb, fits) else {
        // Let `mv` report the inconsistency (NaN rows / debug assertion) as it would alone.
        mv(n, w, xq, out);
        return;
    };
    let mut tmp = [0f32; TWO_PASS_ROWS];
    for (c, o) in out.chunks_mut(TWO_PASS_ROWS).enumerate() {
        let r0 = c * TWO_PASS_ROWS;
        let wr = &w[r0 * rb..(r0 + o.len()) * rb];
        let t = &mut tmp[..o.len()];
        mv(n, wr, xq, o);
        mv(n, wr, xr, t);
        for (a, b) in o.iter_mut().zip(t.iter()) {
            *a += *b;
        }
    }
}

/// Defines `MatVec2` entries `$name` as [`matvec2_two_pass`] over the `MatVec` `$mv` for type `$ty`.
macro_rules! two_pass_entries {
    ($($(#[$m:meta])* $vis:vis fn $name:ident => $ty:ident, $mv:path;)*) => {$(
        $(#[$m])*
        $vis fn $name(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
            $crate::scalar::matvec2_two_pass($crate::QuantType::$ty, $mv, n, w, xq, xr, out)
        }
    )*};
}
two_pass_entries! {
    /// Q4_0 weights × two Q8_0 activations: [`matvec_q4_0`] twice, added.
    pub fn matvec2_q4_0 => Q4_0, matvec_q4_0;
    /// Q4_1 weights × two Q8_1 activations: [`matvec_q4_1`] twice, added.
    pub fn matvec2_q4_1 => Q4_1, matvec_q4_1;
    /// Q5_0 weights × two Q8_0 activations: [`matvec_q5_0`] twice, added.
    pub fn matvec2_q5_0 => Q5_0, matvec_q5_0;
    /// Q5_1 weights × two Q8_1 activations: [`matvec_q5_1`] twice, added.
    pub fn matvec2_q5_1 => Q5_1, matvec_q5_1;
    /// Q8_0 weights × two Q8_0 activations: [`matvec_q8_0`] twice, added.
    pub fn matvec2_q8_0 => Q8_0, matvec_q8_0;
    /// Q4_K weights × two Q8_K activations: [`matvec_q4_k`] twice, added.
    pub fn matvec2_q4_k => Q4K, matvec_q4_k;
    /// Q5_K weights × two Q8_K activations: [`matvec_q5_k`] twice, added.
    pub fn matvec2_q5_k => Q5K, matvec_q5_k;
    /// Q6_K weights × two Q8_K activations: [`matvec_q6_k`] twice, added.
    pub fn matvec2_q6_k => Q6K, matvec_q6_k;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even_and_round_away() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
        assert_eq!(round_away(2.5), 3);
        assert_eq!(round_away(-2.5), -3);
        assert_eq!(round_away(0.49999997), 0);
        assert_eq!(round_away(-126.5), -127);
        assert_eq!(round_away(f32::NAN), 0);
    }

    #[test]
    fn sqrt_is_correctly_rounded() {
        // Exact squares, and a check of the rounding property on a spread of values.
        for i in 1u32..2000 {
            let v = (i * i) as f32;
            assert_eq!(sqrtf(v), i as f32);
        }
        let mut state = 0x1234_5678u32;
        for _ in 0..200_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let bits = (state % 0x7f7f_ffff) + 1; // positive finite, not the largest
            let x = f32::from_bits(bits);
            let r = sqrtf(x);
            let rd = r as f64;
            let up = f32::from_bits(r.to_bits() + 1) as f64;
            let down = f32::from_bits(r.to_bits() - 1) as f64;
            let xd = x as f64;
            let (mu, md) = ((rd + up) / 2.0, (rd + down) / 2.0);
            assert!(mu * mu > xd && md * md < xd, "sqrt({x}) = {r}");
        }
        assert!(sqrtf(-1.0).is_nan());
        assert_eq!(sqrtf(0.0), 0.0);
    }
}
