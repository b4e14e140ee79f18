//! F32 and F16 weights against f32 activations, generic over the lane width ([`Lanes`]).
//!
//! The batched product is a register-blocked dot-product GEMM: an `RM × RN` tile of (row, token)
//! accumulators, each a vector of partial sums along `k`; per step of `N` elements the tile loads
//! `RM` weight vectors (F16: converted once) and `RN` activation vectors and does `RM·RN` FMAs, and
//! each accumulator is summed across its lanes once at the end. Row lengths that are not a multiple
//! of `N` finish with one zero-padded step.
use super::lanes::Lanes;
use crate::ActRows;

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
    let mut k = 0;
    while k < full {
        let mut wv = [l.fzero(); RM];
        for i in 0..RM {
            wv[i] = W::load(l, wrow[i], k * W::BYTES);
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
