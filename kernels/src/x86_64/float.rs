//! F32 and F16 weights against f32 activations, generic over the lane width ([`Lanes`]).
//!
//! The batched product is a register-blocked dot-product GEMM: an `RM × RN` tile of (row, token)
//! accumulators, each a vector of partial sums along `k`; per step of `N` elements the tile loads
//! `RM` weight vectors (F16: converted once) and `RN` activation vectors and does `RM·RN` FMAs, and
//! each accumulator is summed across its lanes once at the end. Row lengths that are not a multiple
//! of `N` finish with one zero-padded step.
use super::lanes::Lanes;
use crate::{ActRows, MatShape};

/// Bytes of the row streams of a decode tile together prefetched ahead.
const LEAD: usize = 8192;

/// A weight element type of `BYTES` bytes.
pub(super) trait FloatW {
    const BYTES: usize;
    /// `N` weights from `row` at byte `at`, as f32.
    fn load<L: Lanes>(l: L, row: &[u8], at: usize) -> L::F;
}

pub(super) struct F32W;
pub(super) struct F16W;

impl FloatW for F32W {
    const BYTES: usize = 4;
    #[inline(always)]
    fn load<L: Lanes>(l: L, row: &[u8], at: usize) -> L::F {
        l.f32_at(row, at)
    }
}

impl FloatW for F16W {
    const BYTES: usize = 2;
    #[inline(always)]
    fn load<L: Lanes>(l: L, row: &[u8], at: usize) -> L::F {
        l.f16_at(row, at)
    }
}

/// `row` from byte `at` on, zero-padded to 64 bytes (the last, partial step of a row).
#[inline(always)]
fn padded(row: &[u8], at: usize) -> [u8; 64] {
    let mut pad = [0u8; 64];
    let rest = &row[at.min(row.len())..];
    let len = rest.len().min(64);
    pad[..len].copy_from_slice(&rest[..len]);
    pad
}

/// The `RM × RN` tile of rows `i0..` and tokens `t0..` (both whole).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<L: Lanes, W: FloatW, const RM: usize, const RN: usize>(
    l: L,
    n: usize,
    w: &[u8],
    rb: usize,
    x: &ActRows<'_>,
    i0: usize,
    t0: usize,
    rows: usize,
    out: &mut [f32],
) {
    let mut acc = [[l.fzero(); RN]; RM];
    let wrow: [&[u8]; RM] = core::array::from_fn(|i| &w[(i0 + i) * rb..(i0 + i + 1) * rb]);
    let xrow: [&[u8]; RN] =
        core::array::from_fn(|t| &x.q[(t0 + t) * x.stride..(t0 + t) * x.stride + 4 * n]);
    let full = n / L::N * L::N;
    // Decode (one token) streams the rows: prefetch each `LEAD / RM` bytes ahead, and past its end
    // into the row `RM` further down (the next tile's).
    let ahead = if RN == 1 { LEAD / RM } else { 0 };
    let mut k = 0;
    while k < full {
        let mut wv = [l.fzero(); RM];
        for i in 0..RM {
            wv[i] = W::load(l, wrow[i], k * W::BYTES);
        }
        if ahead > 0 && (k / L::N) % 2 == 0 {
            let next = if k * W::BYTES + ahead >= rb {
                (RM - 1) * rb
            } else {
                0
            };
            for row in &wrow {
                l.avx2().prefetch(&row[0], k * W::BYTES + ahead + next);
            }
        }
        for t in 0..RN {
            let xv = l.f32_at(xrow[t], 4 * k);
            for i in 0..RM {
                acc[i][t] = l.fmadd(wv[i], xv, acc[i][t]);
            }
        }
        k += L::N;
    }
    if full < n {
        let mut wv = [l.fzero(); RM];
        for i in 0..RM {
            wv[i] = W::load(l, &padded(wrow[i], full * W::BYTES), 0);
        }
        for t in 0..RN {
            let xv = l.f32_at(&padded(xrow[t], 4 * full), 0);
            for i in 0..RM {
                acc[i][t] = l.fmadd(wv[i], xv, acc[i][t]);
            }
        }
    }
    for i in 0..RM {
        for t in 0..RN {
            out[(t0 + t) * rows + i0 + i] = l.hsum(acc[i][t]);
        }
    }
}

/// [`crate::MatMul`] for F32 / F16 weights (`W`) with `RM × RN` tiles (and `RM × 1`, `1 × RN`,
/// `1 × 1` ones for the edges).
#[inline(always)]
pub(super) fn matmul<L: Lanes, W: FloatW, const RM: usize, const RN: usize>(
    l: L,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let rows = out.len() / x.n_tok;
    let rb = n * W::BYTES;
    let (fr, ft) = (rows / RM * RM, x.n_tok / RN * RN);
    for i0 in (0..fr).step_by(RM) {
        for t0 in (0..ft).step_by(RN) {
            tile::<L, W, RM, RN>(l, n, w, rb, &x, i0, t0, rows, out);
        }
        for t0 in ft..x.n_tok {
            tile::<L, W, RM, 1>(l, n, w, rb, &x, i0, t0, rows, out);
        }
    }
    for i0 in fr..rows {
        for t0 in (0..ft).step_by(RN) {
            tile::<L, W, 1, RN>(l, n, w, rb, &x, i0, t0, rows, out);
        }
        for t0 in ft..x.n_tok {
            tile::<L, W, 1, 1>(l, n, w, rb, &x, i0, t0, rows, out);
        }
    }
}

/// `MatVec` for F32 / F16 weights: the batched product's `RM × 1` tiles (rows streamed with a
/// prefetch).
#[inline(always)]
pub(super) fn matvec<L: Lanes, W: FloatW, const RM: usize>(
    l: L,
    s: MatShape,
    w: &[u8],
    xq: &[u8],
    out: &mut [f32],
) {
    let x = ActRows {
        q: &xq[..s.act_bytes],
        r: None,
        stride: s.act_bytes,
        n_tok: 1,
    };
    matmul::<L, W, RM, 1>(l, s.nb, w, x, out);
}

/// Σ a·b over the common length: four vector accumulators, then the tail in order.
#[inline(always)]
pub(super) fn dot<L: Lanes>(l: L, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ab, bb): (&[u8], &[u8]) = (bytemuck::cast_slice(&a[..n]), bytemuck::cast_slice(&b[..n]));
    let mut acc = [l.fzero(); 4];
    let step = 4 * L::N;
    let mut k = 0;
    while k + step <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let at = 4 * (k + j * L::N);
            *acc = l.fmadd(l.f32_at(ab, at), l.f32_at(bb, at), *acc);
        }
        k += step;
    }
    while k + L::N <= n {
        acc[0] = l.fmadd(l.f32_at(ab, 4 * k), l.f32_at(bb, 4 * k), acc[0]);
        k += L::N;
    }
    let mut s = l.hsum(l.fadd(l.fadd(acc[0], acc[1]), l.fadd(acc[2], acc[3])));
    for (x, y) in a[k..n].iter().zip(&b[k..n]) {
        s += x * y;
    }
    s
}

/// `y += a·x` with a separate multiply and add (bit-exact with the scalar tier).
#[inline(always)]
pub(super) fn axpy<L: Lanes>(l: L, a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let av = l.fsplat(a);
    let full = n / L::N * L::N;
    let xb: &[u8] = bytemuck::cast_slice(&x[..full]);
    for (k, yc) in y[..full].chunks_exact_mut(L::N).enumerate() {
        let v = l.fadd(
            l.f32_at(bytemuck::cast_slice(yc), 0),
            l.fmul(av, l.f32_at(xb, 4 * L::N * k)),
        );
        l.store_to(yc, v);
    }
    for (yv, xv) in y[full..].iter_mut().zip(&x[full..]) {
        *yv += a * xv;
    }
}
