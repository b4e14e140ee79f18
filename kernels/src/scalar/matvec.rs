//! Matrix × vector wrappers with the `MatVec` signature
use super::*;

/// The `MatVec` length check ([`crate::check_matvec`], shared by every tier): returns (bytes per
/// weight row, bytes of the activation), or None after writing zeros (`n == 0`) or NaN (inconsistent
/// lengths) to `out`.
#[inline]
pub(super) fn matvec_geometry(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
) -> Option<(usize, usize)> {
    crate::check_matvec(ty, n, w, xq, None, out).map(|s| (s.row_bytes, s.act_bytes))
}

/// `out[r] = dot(n, row_r, x)` for block types of alignment 1 (weights) and activations `Y`.
pub(super) fn matvec_blocks<B: Pod, Y: Pod>(
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
pub(super) fn matvec_k<B: Pod>(
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

/// `out[r] = Σ_i weight(row_r[i]) * x[i]` for float weights of `WEIGHT_BYTES` bytes each and f32
/// activations (bytes at any alignment), sequential f32 accumulation per row.
fn matvec_float<const WEIGHT_BYTES: usize>(
    ty: QuantType,
    n: usize,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
    weight: fn([u8; WEIGHT_BYTES]) -> f32,
) {
    let Some((rb, xb)) = matvec_geometry(ty, n, w, xq, out) else {
        return;
    };
    let x = &xq[..xb];
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        let mut sum = 0.0f32;
        for (a, b) in row.chunks_exact(WEIGHT_BYTES).zip(x.chunks_exact(4)) {
            let a: [u8; WEIGHT_BYTES] = a.try_into().unwrap_or([0; WEIGHT_BYTES]);
            sum += weight(a) * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        *o = sum;
    }
}

/// F32 weights × F32 activations (bytes at any alignment), sequential f32 accumulation per row.
pub fn matvec_f32(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_float(QuantType::F32, n, w, xq, out, f32::from_le_bytes);
}

/// F16 weights × F32 activations (activation bytes at any alignment); same order as [`vec_dot_f16_f32`].
pub fn matvec_f16(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    matvec_float(QuantType::F16, n, w, xq, out, |a| F16Bits(a).to_f32());
}

/// Defines `MatVec` entries `$name` for weights of type `$ty` as `$matvec($ty, .., $dot)`
/// ([`matvec_blocks`] with a row dot product, [`matvec_k`] with a super-block one).
macro_rules! matvec_entries {
    ($($(#[$m:meta])* $vis:vis fn $name:ident => $matvec:ident($ty:ident, $dot:path);)*) => {$(
        $(#[$m])*
        $vis fn $name(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
            $matvec(QuantType::$ty, n, w, xq, out, $dot);
        }
    )*};
}
matvec_entries! {
    /// Q4_0 weights × Q8_0 activations ([`vec_dot_q4_0_q8_0`] per row).
    pub fn matvec_q4_0 => matvec_blocks(Q4_0, vec_dot_q4_0_q8_0);
    /// Q4_1 weights × Q8_1 activations ([`vec_dot_q4_1_q8_1`] per row).
    pub fn matvec_q4_1 => matvec_blocks(Q4_1, vec_dot_q4_1_q8_1);
    /// Q5_0 weights × Q8_0 activations ([`vec_dot_q5_0_q8_0`] per row).
    pub fn matvec_q5_0 => matvec_blocks(Q5_0, vec_dot_q5_0_q8_0);
    /// Q5_1 weights × Q8_1 activations ([`vec_dot_q5_1_q8_1`] per row; the weight's minimum meets
    /// the activation block's stored sum `s`, as in Q4_1).
    pub fn matvec_q5_1 => matvec_blocks(Q5_1, vec_dot_q5_1_q8_1);
    /// Q8_0 weights × Q8_0 activations ([`vec_dot_q8_0_q8_0`] per row).
    pub fn matvec_q8_0 => matvec_blocks(Q8_0, vec_dot_q8_0_q8_0);
    /// Q4_K weights × Q8_K activations ([`dot_block_q4_k_q8_k`] per super-block).
    pub fn matvec_q4_k => matvec_k(Q4K, dot_block_q4_k_q8_k);
    /// Q5_K weights × Q8_K activations ([`dot_block_q5_k_q8_k`] per super-block).
    pub fn matvec_q5_k => matvec_k(Q5K, dot_block_q5_k_q8_k);
    /// Q6_K weights × Q8_K activations ([`dot_block_q6_k_q8_k`] per super-block).
    pub fn matvec_q6_k => matvec_k(Q6K, dot_block_q6_k_q8_k);
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
