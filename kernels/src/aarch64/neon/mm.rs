//! Batched products (prefill) for the 32-element formats: `out[t·rows + i] = row_i · x_t`.
//!
//! Tokens go in tiles of eight (two groups of four), blocks in chunks of [`KC`]: for each tile
//! and chunk the activations are prepared once (`act.rs`: token-interleaved quants, f32 scales,
//! the offset start values), then every weight row of the chunk runs against them. Two rows at a
//! time: each weight block is loaded and unpacked once and used for the eight tokens, by the
//! tier's token-lane step ([`IDot::dot4x4`]: SDOT by element, or widening multiplies), whose
//! result already has one token per lane — no horizontal reduction, one conversion and one
//! multiply-add per block, row and four tokens.
//!
//! Fewer than eight tokens left: one group (zero-padded to four tokens, the padding computed and
//! dropped). An odd last row runs alone. The activation rows may have any stride.

use super::act::*;
use super::util::*;
use super::wtypes::*;
use crate::*;
use core::arch::aarch64::*;
use core::mem::size_of;

/// Blocks per chunk (the prepared activations of a tile: `2·KC` [`Act4`], 21.5 KiB).
const KC: usize = 32;

/// See the module documentation; shapes checked by `Kernels::matmul`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matmul<D: IDot, W: Legacy>(
    dd: D,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let nb = n / QK;
    let (yb, _) = act_bytes(W::MIN);
    let xb = nb * yb;
    let mode = match x.r {
        None => Mode::Plain,
        Some(r) => {
            let grid = (0..x.n_tok).all(|t| {
                let at = t * x.stride;
                on_grid16(&x.q[at..at + xb], &r[at..at + xb], yb, nb)
            });
            if grid {
                Mode::Comb
            } else {
                Mode::Sep
            }
        }
    };
    match mode {
        Mode::Plain => run::<D, W, { Mode::Plain as u8 }>(dd, nb, w, x, out),
        Mode::Comb => run::<D, W, { Mode::Comb as u8 }>(dd, nb, w, x, out),
        Mode::Sep => run::<D, W, { Mode::Sep as u8 }>(dd, nb, w, x, out),
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn run<'a, D: IDot, W: Legacy, const M: u8>(
    dd: D,
    nb: usize,
    w: &[u8],
    x: ActRows<'a>,
    out: &mut [f32],
) {
    let (yb, _) = act_bytes(W::MIN);
    let xb = nb * yb;
    let rb = nb * size_of::<W>();
    let rows = out.len() / x.n_tok;
    let row = |i: usize| -> &[W] { bytemuck::cast_slice(&w[i * rb..(i + 1) * rb]) };
    let r = x.r.unwrap_or(x.q);
    let (q, n_tok, stride) = (x.q, x.n_tok, x.stride);
    // A token past the end repeats the last one (computed, not stored).
    let tok = move |s: &'a [u8], t: usize| -> &'a [u8] {
        let t = t.min(n_tok - 1);
        &s[t * stride..t * stride + xb]
    };
    let mut act = [[Act4::default(); KC]; 2];
    for t0 in (0..x.n_tok).step_by(8) {
        let groups = if x.n_tok - t0 > 4 { 2 } else { 1 };
        for b0 in (0..nb).step_by(KC) {
            let kc = KC.min(nb - b0);
            for (g, a) in act.iter_mut().enumerate().take(groups) {
                let t = t0 + 4 * g;
                let qs = [tok(q, t), tok(q, t + 1), tok(q, t + 2), tok(q, t + 3)];
                let rs = [tok(r, t), tok(r, t + 1), tok(r, t + 2), tok(r, t + 3)];
                prep4::<W, M>(qs, rs, b0, &mut a[..kc]);
            }
            let (a0, a1) = (&act[0][..kc], &act[1][..kc]);
            let mut i = 0;
            while i < rows {
                let pair = rows - i >= 2;
                let w0 = &row(i)[b0..b0 + kc];
                let w1 = &row(if pair { i + 1 } else { i })[b0..b0 + kc];
                let f = if groups == 2 {
                    tile::<D, W, M, 2>(dd, [w0, w1], [a0, a1])
                } else {
                    let f = tile::<D, W, M, 1>(dd, [w0, w1], [a0]);
                    [[f[0][0], f[0][0]], [f[1][0], f[1][0]]]
                };
                let nk = if pair { 2 } else { 1 };
                for (g, (f0, f1)) in f[0].iter().zip(&f[1]).enumerate().take(groups) {
                    let (mut a, mut b) = ([0.0f32; 4], [0.0f32; 4]);
                    st_f32(&mut a, *f0);
                    st_f32(&mut b, *f1);
                    let t = t0 + 4 * g;
                    for l in 0..4.min(x.n_tok - t) {
                        let o = &mut out[(t + l) * rows + i..][..nk];
                        let v = [a[l], b[l]];
                        for (o, v) in o.iter_mut().zip(v) {
                            *o = if b0 == 0 { v } else { *o + v };
                        }
                    }
                }
                i += if pair { 2 } else { 1 };
            }
        }
    }
}

/// Two weight rows (block slices of one chunk) against `G` groups of four tokens: `[row][group]`,
/// token `t` of the group in lane `t`.
#[target_feature(enable = "neon")]
#[inline]
fn tile<D: IDot, W: Legacy, const M: u8, const G: usize>(
    dd: D,
    rows: [&[W]; 2],
    act: [&[Act4]; G],
) -> [[float32x4_t; G]; 2] {
    let mode = Mode::of(M);
    let kc = act[0].len();
    let rows = [&rows[0][..kc], &rows[1][..kc]];
    let mut a = [act[0]; G];
    for g in 0..G {
        a[g] = &act[g][..kc];
    }
    let act = a;
    let mut f = [[vdupq_n_f32(0.0); G]; 2];
    for i in 0..kc {
        let w: [&W; 2] = [&rows[0][i], &rows[1][i]];
        let wq = [w[0].quants(dd), w[1].quants(dd)];
        let dw = [f16_f32(w[0].d()), f16_f32(w[1].d())];
        let mw = if W::MIN {
            [f16_f32(w[0].m()), f16_f32(w[1].m())]
        } else {
            [0.0; 2]
        };
        for g in 0..G {
            let a = &act[g][i];
            let p = dots(dd, &a.x, &a.init, wq, W::MAXP);
            let pr = match mode {
                Mode::Plain => p,
                _ => dots(dd, &a.xr, &a.init_r, wq, W::MAXP),
            };
            let dy = ld_f32_bytes(&a.dy.0);
            for k in 0..2 {
                let fk = match mode {
                    Mode::Plain => vmulq_n_f32(vcvtq_n_f32_s32::<8>(p[k]), dw[k]),
                    _ => {
                        if mode == Mode::Comb {
                            // |256·Σq + Σr| <= 257·32·128·128 < 2^31.
                            let c = vaddq_s32(vshlq_n_s32::<8>(p[k]), pr[k]);
                            vmulq_n_f32(vcvtq_n_f32_s32::<8>(c), dw[k])
                        } else {
                            let dr = ld_f32_bytes(&a.dr.0);
                            let t = vmulq_f32(vcvtq_n_f32_s32::<8>(pr[k]), dr);
                            let t = vfmaq_f32(t, vcvtq_n_f32_s32::<8>(p[k]), dy);
                            vmulq_n_f32(t, dw[k])
                        }
                    }
                };
                f[k][g] = if mode == Mode::Sep {
                    vaddq_f32(f[k][g], fk)
                } else {
                    vfmaq_f32(f[k][g], fk, dy)
                };
                if W::MIN {
                    f[k][g] = vfmaq_n_f32(f[k][g], ld_f32_bytes(&a.s.0), mw[k]);
                }
            }
        }
    }
    f
}

/// Both rows' unpacked block (`wq[k]`: elements 0..16, 16..32) against four tokens' interleaved
/// quants `x`, each sum starting at `init`.
#[target_feature(enable = "neon")]
#[inline]
fn dots<D: IDot>(
    dd: D,
    x: &[V16; 8],
    init: &V16,
    wq: [[int8x16_t; 2]; 2],
    maxp: u32,
) -> [int32x4_t; 2] {
    let ld = |j: usize| ld_s8(&x[j].0);
    let lo = [ld(0), ld(1), ld(2), ld(3)];
    let hi = [ld(4), ld(5), ld(6), ld(7)];
    let mut p = [vdupq_n_s32(0); 2];
    for k in 0..2 {
        let a = dd.acc4(dd.load_acc(init));
        let a = dd.dot4x4(a, lo, wq[k][0], maxp);
        p[k] = dd.acc4_sum(dd.dot4x4(a, hi, wq[k][1], maxp));
    }
    p
}
