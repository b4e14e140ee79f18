//! Weight quantizers (ggml `quantize_row_*_ref`)
use super::*;

/// `(amax, max)`: the largest magnitude and the value that has it (the first one on ties), ggml's
/// `amax`/`max` scan.
#[inline(always)]
pub(super) fn abs_and_signed_max(xb: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        let ax = absf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// Value of largest magnitude (first one on ties), ggml's `amax`/`max` scan.
#[inline(always)]
pub(super) fn signed_absmax(xb: &[f32]) -> f32 {
    abs_and_signed_max(xb).1
}

#[inline(always)]
pub(super) fn min_max(xb: &[f32]) -> (f32, f32) {
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
pub(super) fn trunc_i8(v: f32) -> i32 {
    (v as i32).clamp(-128, 127)
}

/// Packs the 4-bit levels of a 32-weight block: byte `j` holds `level(xb[j])` in its low nibble and
/// `level(xb[j + 16])` in its high nibble.
#[inline(always)]
fn pack_q4(xb: &[f32], qs: &mut [u8; QK / 2], level: impl Fn(f32) -> u8) {
    for j in 0..QK / 2 {
        let q0 = level(xb[j]);
        let q1 = level(xb[j + QK / 2]);
        qs[j] = q0 | (q1 << 4);
    }
}

/// Packs the 5-bit levels of a 32-weight block as [`pack_q4`] does, the fifth bits going to the
/// returned `qh` (bit `j` for weight `j`).
#[inline(always)]
fn pack_q5(xb: &[f32], qs: &mut [u8; QK / 2], level: impl Fn(f32) -> u8) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let q0 = level(xb[j]);
        let q1 = level(xb[j + QK / 2]);
        qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

/// Runs `f(weights, block)` for each block of `y` and its `block_len` weights in `x`.
#[inline(always)]
fn for_each_block_mut<B>(
    x: &[f32],
    y: &mut [B],
    block_len: usize,
    mut f: impl FnMut(&[f32], &mut B),
) {
    debug_assert_eq!(x.len(), y.len() * block_len);
    for (xb, yb) in x.chunks_exact(block_len).zip(y.iter_mut()) {
        f(xb, yb);
    }
}

/// Stores the scale `(max - min) / levels` and the offset `min` of an asymmetric block in `d` and `m`
/// (f16); returns `min` and the scale's [`inverse`].
#[inline(always)]
fn min_scale(xb: &[f32], levels: f32, d: &mut F16Bits, m: &mut F16Bits) -> (f32, f32) {
    let (min, max) = min_max(xb);
    let scale = (max - min) / levels;
    *d = fp16(scale);
    *m = fp16(min);
    (min, inverse(scale))
}

pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    for_each_block_mut(x, y, QK, |xb, yb| {
        let d = signed_absmax(xb) / -8.0;
        yb.d = fp16(d);
        let id = inverse(d);
        pack_q4(xb, &mut yb.qs, |v| trunc_i8(v * id + 8.5).min(15) as u8);
    });
}

pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    for_each_block_mut(x, y, QK, |xb, yb| {
        let (min, id) = min_scale(xb, 15.0, &mut yb.d, &mut yb.m);
        pack_q4(xb, &mut yb.qs, |v| {
            trunc_i8((v - min) * id + 0.5).min(15) as u8
        });
    });
}

pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    for_each_block_mut(x, y, QK, |xb, yb| {
        let d = signed_absmax(xb) / -16.0;
        yb.d = fp16(d);
        let id = inverse(d);
        yb.qh = pack_q5(xb, &mut yb.qs, |v| trunc_i8(v * id + 16.5).min(31) as u8);
    });
}

pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    for_each_block_mut(x, y, QK, |xb, yb| {
        let (min, id) = min_scale(xb, 31.0, &mut yb.d, &mut yb.m);
        // ggml: (uint8_t)(x + 0.5f), no clamp (the value is at most 31.5 by construction).
        yb.qh = pack_q5(xb, &mut yb.qs, |v| {
            (((v - min) * id + 0.5) as i32).clamp(0, 255) as u8
        });
    });
}

/// ggml `make_qkx2_quants` (use_mad = false): fits `x ≈ scale*L + min` with L in 0..=nmax, min ≤ 0.
/// Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx2_quants(
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
pub(super) fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15;
    let (amax, max) = abs_and_signed_max(x);
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
pub(super) fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
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
pub(super) fn quantize_k4_common(
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
    let mut l = [0u8; QK_K];
    for_each_block_mut(x, y, QK_K, |xb, yb| {
        (yb.d, yb.dmin, yb.scales) = quantize_k4_common(xb, 15, -1.0, 0.1, 20, &mut l);
        for c in 0..QK_K / 64 {
            for i in 0..32 {
                yb.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    });
}

/// Q5_K quantizer following ggml's `quantize_row_q5_K_ref` (no importance matrix).
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    let mut l = [0u8; QK_K];
    for_each_block_mut(x, y, QK_K, |xb, yb| {
        (yb.d, yb.dmin, yb.scales) = quantize_k4_common(xb, 31, -0.5, 0.1, 15, &mut l);
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
    });
}

/// Q6_K quantizer following ggml's `quantize_row_q6_K_ref` (no importance matrix).
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    const GROUP_MAX_EPS: f32 = 1e-15;
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for_each_block_mut(x, y, QK_K, |xb, yb| {
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
            return;
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
    });
}
