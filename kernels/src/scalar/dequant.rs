//! Dequantization (ggml `dequantize_row_*`)
use super::*;

/// Runs `f(block, out)` for each block of `x` and its `block_len` outputs in `y`.
#[inline(always)]
fn for_each_block<B>(x: &[B], y: &mut [f32], block_len: usize, mut f: impl FnMut(&B, &mut [f32])) {
    debug_assert_eq!(y.len(), x.len() * block_len);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(block_len)) {
        f(b, out);
    }
}

/// For the 16 bytes of a 32-weight block: `out[j] = value(v0)`, `out[j + 16] = value(v1)` where
/// `(v0, v1) = pair(j)` are the low- and high-nibble weights of byte `j`.
#[inline(always)]
fn dequant_nibble_pairs(
    out: &mut [f32],
    pair: impl Fn(usize) -> (i32, i32),
    value: impl Fn(i32) -> f32,
) {
    for j in 0..QK / 2 {
        let (x0, x1) = pair(j);
        out[j] = value(x0);
        out[j + QK / 2] = value(x1);
    }
}

pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| {
        let d = b.d.to_f32();
        let pair = |j: usize| ((b.qs[j] & 0x0f) as i32 - 8, (b.qs[j] >> 4) as i32 - 8);
        dequant_nibble_pairs(out, pair, |x| x as f32 * d);
    });
}

pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let pair = |j: usize| ((b.qs[j] & 0x0f) as i32, (b.qs[j] >> 4) as i32);
        dequant_nibble_pairs(out, pair, |x| x as f32 * d + m);
    });
}

pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        dequant_nibble_pairs(out, |j| q5_pair(&b.qs, qh, j, 16), |x| x as f32 * d);
    });
}

pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        dequant_nibble_pairs(out, |j| q5_pair(&b.qs, qh, j, 0), |x| x as f32 * d + m);
    });
}

/// `out[i] = qs[i] * d`.
#[inline(always)]
fn dequant_q8(qs: &[i8; QK], d: f32, out: &mut [f32]) {
    for (o, &q) in out.iter_mut().zip(qs) {
        *o = q as f32 * d;
    }
}

pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| dequant_q8(&b.qs, b.d.to_f32(), out));
}

/// Q8_1 values are `d * q` (the `s` field is redundant).
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    for_each_block(x, y, QK, |b, out| dequant_q8(&b.qs, b.d.to_f32(), out));
}

/// One 4/5-bit K-quant super-block: `(d*sc)*q - dmin*m` per sub-block, where q is the nibble plus
/// `fifth_bits(c, l)` (the 16s of chunk `c`'s byte `l`, low nibble then high nibble).
#[inline(always)]
fn dequant_k4_block(
    scales: &[u8; K_SCALE_SIZE],
    qs: &[u8; QK_K / 2],
    (d, min): (f32, f32),
    out: &mut [f32],
    fifth_bits: impl Fn(usize, usize) -> (u8, u8),
) {
    for c in 0..QK_K / 64 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let d1 = d * sc1 as f32;
        let m1 = min * m1 as f32;
        let d2 = d * sc2 as f32;
        let m2 = min * m2 as f32;
        let q = &qs[32 * c..32 * c + 32];
        let o = &mut out[64 * c..64 * c + 64];
        for l in 0..32 {
            let (h1, h2) = fifth_bits(c, l);
            o[l] = d1 * ((q[l] & 0x0f) + h1) as f32 - m1;
            o[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    for_each_block(x, y, QK_K, |b, out| {
        let d = (b.d.to_f32(), b.dmin.to_f32());
        dequant_k4_block(&b.scales, &b.qs, d, out, |_, _| (0, 0));
    });
}

pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    for_each_block(x, y, QK_K, |b, out| {
        let d = (b.d.to_f32(), b.dmin.to_f32());
        dequant_k4_block(&b.scales, &b.qs, d, out, |c, l| b.fifth_bits(c, l));
    });
}

/// The 256 signed 6-bit quants (q - 32) of a Q6_K block, in element order.
#[inline(always)]
pub(super) fn unpack_q6_k(b: &BlockQ6K, q: &mut [i8; QK_K]) {
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
    let mut q = [0i8; QK_K];
    for_each_block(x, y, QK_K, |b, out| {
        let d = b.d.to_f32();
        unpack_q6_k(b, &mut q);
        for (i, o) in out.iter_mut().enumerate() {
            // ggml: d * sc[is] * q, evaluated left to right.
            *o = d * b.scales[i / 16] as f32 * q[i] as f32;
        }
    });
}

pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    for_each_block(x, y, QK_K, |b, out| {
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    });
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

pub(super) fn deq_blocks<B: Pod>(bytes: &[u8], out: &mut [f32], f: fn(&[B], &mut [f32])) -> bool {
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
