//! f32 / f16 kernels: dot product, axpy, and matrix×vector for F32 and F16 weights.

use super::util::*;
use crate::F16Bits;
use core::arch::aarch64::*;

/// Σ a[i]·b[i] over the common length of `a` and `b`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..4 {
            acc[k] = vfmaq_f32(acc[k], ld_f32(&x[4 * k..]), ld_f32(&y[4 * k..]));
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut ca4 = ra.chunks_exact(4);
    let mut cb4 = rb.chunks_exact(4);
    for (x, y) in (&mut ca4).zip(&mut cb4) {
        acc[0] = vfmaq_f32(acc[0], ld_f32(x), ld_f32(y));
    }
    let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut s = vaddvq_f32(v);
    for (x, y) in ca4.remainder().iter().zip(cb4.remainder()) {
        s += x * y;
    }
    s
}

/// y[i] += a·x[i] over the common length.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let mut cx = x.chunks_exact(4);
    let mut cy = y.chunks_exact_mut(4);
    for (xs, ys) in (&mut cx).zip(&mut cy) {
        let r = vfmaq_n_f32(ld_f32(ys), ld_f32(xs), a);
        st_f32(ys, r);
    }
    for (xs, ys) in cx.remainder().iter().zip(cy.into_remainder()) {
        *ys += a * xs;
    }
}

/// One row of f32 weights (as bytes, `4n`) times the f32 activation (as bytes, `4n`).
#[target_feature(enable = "neon")]
#[inline]
fn row_f32(w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut cw = w.chunks_exact(64);
    let mut cx = x.chunks_exact(64);
    for (a, b) in (&mut cw).zip(&mut cx) {
        for k in 0..4 {
            acc[k] = vfmaq_f32(
                acc[k],
                ld_f32_bytes(&a[16 * k..]),
                ld_f32_bytes(&b[16 * k..]),
            );
        }
    }
    let mut cw4 = cw.remainder().chunks_exact(16);
    let mut cx4 = cx.remainder().chunks_exact(16);
    for (a, b) in (&mut cw4).zip(&mut cx4) {
        acc[0] = vfmaq_f32(acc[0], ld_f32_bytes(a), ld_f32_bytes(b));
    }
    let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut s = vaddvq_f32(v);
    for (a, b) in cw4
        .remainder()
        .chunks_exact(4)
        .zip(cx4.remainder().chunks_exact(4))
    {
        s += f32::from_le_bytes([a[0], a[1], a[2], a[3]])
            * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    s
}

/// `out[r] = row_r · x` for F32 weights; sizes already checked (`w` holds `out.len()` rows of `4n`
/// bytes, `x` at least `4n` bytes, `n > 0`).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_f32(n: usize, w: &[u8], x: &[u8], out: &mut [f32]) {
    let x = &x[..4 * n];
    for (row, o) in w.chunks_exact(4 * n).zip(out.iter_mut()) {
        *o = row_f32(row, x);
    }
}

/// Eight halves (16 bytes) to two f32 vectors.
#[target_feature(enable = "neon")]
#[inline]
fn h8_to_f32(b: &[u8]) -> (float32x4_t, float32x4_t) {
    let h = vreinterpretq_u16_u8(ld_u8(b));
    (h4_to_f32(vget_low_u16(h)), h4_to_f32(vget_high_u16(h)))
}

/// One row of f16 weights (as bytes, `2n`) times the f32 activation (as bytes, `4n`).
#[target_feature(enable = "neon")]
#[inline]
fn row_f16(w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut cw = w.chunks_exact(32);
    let mut cx = x.chunks_exact(64);
    for (a, b) in (&mut cw).zip(&mut cx) {
        let (w0, w1) = h8_to_f32(a);
        let (w2, w3) = h8_to_f32(&a[16..]);
        acc[0] = vfmaq_f32(acc[0], w0, ld_f32_bytes(b));
        acc[1] = vfmaq_f32(acc[1], w1, ld_f32_bytes(&b[16..]));
        acc[2] = vfmaq_f32(acc[2], w2, ld_f32_bytes(&b[32..]));
        acc[3] = vfmaq_f32(acc[3], w3, ld_f32_bytes(&b[48..]));
    }
    let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut s = vaddvq_f32(v);
    for (a, b) in cw
        .remainder()
        .chunks_exact(2)
        .zip(cx.remainder().chunks_exact(4))
    {
        s += h2f(F16Bits([a[0], a[1]])) * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    s
}

/// `out[r] = row_r · x` for F16 weights and an f32 activation; sizes already checked.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec_f16(n: usize, w: &[u8], x: &[u8], out: &mut [f32]) {
    let x = &x[..4 * n];
    for (row, o) in w.chunks_exact(2 * n).zip(out.iter_mut()) {
        *o = row_f16(row, x);
    }
}

/// Four lanes' worth of one row of F32 (`H` false) or F16 (`H` true) weights at element `e`, as
/// f32 (`w` the row's bytes).
#[target_feature(enable = "neon")]
#[inline]
fn w4<const H: bool>(w: &[u8], e: usize) -> float32x4_t {
    if H {
        let b = &w[2 * e..2 * e + 8];
        h4_to_f32(vcreate_u16(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])))
    } else {
        ld_f32_bytes(&w[4 * e..])
    }
}

/// One weight at element `e` as f32.
#[inline(always)]
fn w1<const H: bool>(w: &[u8], e: usize) -> f32 {
    if H {
        F16Bits([w[2 * e], w[2 * e + 1]]).to_f32()
    } else {
        f32::from_le_bytes([w[4 * e], w[4 * e + 1], w[4 * e + 2], w[4 * e + 3]])
    }
}

/// Four rows (`w[k]`, bytes) against four tokens (`x[t]`, f32 bytes) over `n` elements:
/// `[token][row]` lane sums in `[t]` lane `k`.
#[target_feature(enable = "neon")]
#[inline]
fn tile4x4<const H: bool>(n: usize, w: [&[u8]; 4], x: [&[u8]; 4]) -> [float32x4_t; 4] {
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    let n4 = n / 4 * 4;
    for e in (0..n4).step_by(4) {
        let wv = [
            w4::<H>(w[0], e),
            w4::<H>(w[1], e),
            w4::<H>(w[2], e),
            w4::<H>(w[3], e),
        ];
        for t in 0..4 {
            let xv = ld_f32_bytes(&x[t][4 * e..]);
            for k in 0..4 {
                acc[t][k] = vfmaq_f32(acc[t][k], wv[k], xv);
            }
        }
    }
    let mut out = [vdupq_n_f32(0.0); 4];
    for t in 0..4 {
        let a = &acc[t];
        let mut v = vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
        if n4 < n {
            let mut tail = [0.0f32; 4];
            for (k, s) in tail.iter_mut().enumerate() {
                for e in n4..n {
                    let xe = f32::from_le_bytes([
                        x[t][4 * e],
                        x[t][4 * e + 1],
                        x[t][4 * e + 2],
                        x[t][4 * e + 3],
                    ]);
                    *s += w1::<H>(w[k], e) * xe;
                }
            }
            v = vaddq_f32(v, ld_f32(&tail));
        }
        out[t] = v;
    }
    out
}

/// The batched product for F32 (`H` false) or F16 (`H` true) weights against f32 activation rows;
/// shapes checked by the caller. Four rows × four tokens at a time (a last group repeats its last
/// row or token, computed and not stored).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matmul<const H: bool>(n: usize, w: &[u8], x: crate::ActRows<'_>, out: &mut [f32]) {
    let rb = if H { 2 * n } else { 4 * n };
    let rows = out.len() / x.n_tok;
    let row = |i: usize| -> &[u8] {
        let i = i.min(rows - 1);
        &w[i * rb..(i + 1) * rb]
    };
    let tok = |t: usize| -> &[u8] {
        let t = t.min(x.n_tok - 1);
        &x.q[t * x.stride..t * x.stride + 4 * n]
    };
    for t0 in (0..x.n_tok).step_by(4) {
        let xs = [tok(t0), tok(t0 + 1), tok(t0 + 2), tok(t0 + 3)];
        for r0 in (0..rows).step_by(4) {
            let ws = [row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)];
            let f = tile4x4::<H>(n, ws, xs);
            for (t, v) in f.iter().enumerate().take(x.n_tok - t0) {
                let mut s = [0.0f32; 4];
                st_f32(&mut s, *v);
                let o = &mut out[(t0 + t) * rows + r0..];
                let k = (rows - r0).min(4);
                o[..k].copy_from_slice(&s[..k]);
            }
        }
    }
}
