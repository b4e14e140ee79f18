//! Activation quantizers (ggml `quantize_row_q8_0_ref`, `_q8_1_ref`, `_q8_K_ref`)
use super::*;

/// The largest |v| of a block, folded in element order as ggml's `MAX(amax, fabsf(v))`
/// (`amax > a ? amax : a`).
#[inline(always)]
fn block_amax(xb: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in xb {
        let a = absf(v);
        amax = if amax > a { amax } else { a };
    }
    amax
}

/// Q8_0 scale and reciprocal of a 32-element block, as ggml computes them.
#[inline(always)]
pub(super) fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let amax = block_amax(xb);
    let d = amax / 127.0;
    let id = inverse(d);
    (d, id)
}

#[inline(always)]
pub(super) fn q8_round(v: f32) -> i8 {
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

pub(super) fn quantize_block_q8_k(xb: &[f32], yb: &mut BlockQ8K) {
    let (amax, max) = abs_and_signed_max(xb);
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
    fill_bsums(yb);
    yb.d = 1.0 / iscale;
}

/// `bsums[j]` = the sum of the quants `16j..16j+16`.
#[inline(always)]
fn fill_bsums(b: &mut BlockQ8K) {
    for (j, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
    }
}

pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), y.len() * QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        quantize_block_q8_k(xb, yb);
    }
}

/// Byte-level [`Quantize`] through `row` for a 32-weight block type whose alignment `out` may lack
/// (then nothing is written).
fn quantize_bytes<B: Pod>(ty: QuantType, x: &[f32], out: &mut [u8], row: fn(&[f32], &mut [B])) {
    let nb = crate::quantize_blocks(ty, x, out.len());
    if let Ok(y) = bytemuck::try_cast_slice_mut(&mut out[..nb * size_of::<B>()]) {
        row(&x[..nb * QK], y);
    }
}

/// Byte-level [`Quantize`] for Q8_0.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    quantize_bytes(QuantType::Q8_0, x, out, quantize_row_q8_0);
}

/// Byte-level [`Quantize`] for Q8_1.
pub fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    quantize_bytes(QuantType::Q8_1, x, out, quantize_row_q8_1);
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
pub(super) fn quantize2_block32(
    xb: &[f32],
    ds: F16Bits,
    q: &mut [i8; QK],
    r: &mut [i8; QK],
) -> f32 {
    let d = ds.to_f32();
    let id = inverse(d);
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
        let ds = x2_scale_f16(block_amax(xb));
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
        let ds = x2_scale_f16(block_amax(xb));
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
        fill_bsums(rb);
        rb.d = d / 256.0;
    }
}

/// Byte-level [`Quantize2`] through `row` for a 32-weight block type whose alignment `q` or `r` may
/// lack (then nothing is written).
fn quantize2_bytes<B: Pod>(
    ty: QuantType,
    x: &[f32],
    q: &mut [u8],
    r: &mut [u8],
    row: fn(&[f32], &mut [B], &mut [B]),
) {
    let nb = crate::quantize_blocks(ty, x, q.len().min(r.len()));
    let len = nb * size_of::<B>();
    if let (Ok(qb), Ok(rb)) = (
        bytemuck::try_cast_slice_mut(&mut q[..len]),
        bytemuck::try_cast_slice_mut(&mut r[..len]),
    ) {
        row(&x[..nb * QK], qb, rb);
    }
}

/// Byte-level [`Quantize2`] for Q8_0.
pub fn quantize2_q8_0(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    quantize2_bytes(QuantType::Q8_0, x, q, r, quantize2_row_q8_0);
}

/// Byte-level [`Quantize2`] for Q8_1.
pub fn quantize2_q8_1(x: &[f32], q: &mut [u8], r: &mut [u8]) {
    quantize2_bytes(QuantType::Q8_1, x, q, r, quantize2_row_q8_1);
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
