//! Decode (matrix × one activation, and × the `q8x2` pair) for the 32-element formats.
//!
//! Four rows at a time, a quarter of the matrix apart ([`row_quads`]). Per block: each row's quants are unpacked once and dotted (the tier's
//! vector-form [`IDot`] step) with the activation block — and the residual block — into an i32
//! accumulator that starts at the activation's `OFFSET·Σy` (loaded, see `act.rs`); one pairwise-add
//! tree turns the four rows' accumulators into one vector, lane `k` = row `k`'s block sum, which is
//! converted once and scaled by the four rows' f16 scales (combined in a general register and
//! converted with one FCVTL) times the block's activation scale. Rows are never reduced
//! horizontally at the end: the f32 accumulator's lanes are the four rows' outputs.
//!
//! The activation's per-block values are prepared once per call, in chunks of [`KC`] blocks (a
//! stack buffer), and shared by all rows.

use super::act::*;
use super::util::*;
use super::wtypes::*;
use crate::*;
use core::arch::aarch64::*;
use core::mem::size_of;

/// Blocks per chunk of prepared activation values.
const KC: usize = 64;

/// `out[r] = row_r · xq` (`xr`: `+ row_r · xr`, the `q8x2` pair); sizes checked by the caller
/// (`w` holds `out.len()` rows of `n/32` blocks, the activations `n/32` blocks each, `n > 0`).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn matvec<D: IDot, W: Legacy>(
    dd: D,
    n: usize,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) {
    let nb = n / QK;
    let (yb, _) = act_bytes(W::MIN);
    let mode = match xr {
        None => Mode::Plain,
        Some(r) if on_grid16(xq, r, yb, nb) => Mode::Comb,
        Some(_) => Mode::Sep,
    };
    // Written out per mode, so that each copy of the loop is specialized for it.
    match mode {
        Mode::Plain => run::<D, W, { Mode::Plain as u8 }>(dd, nb, w, xq, xq, out),
        Mode::Comb => run::<D, W, { Mode::Comb as u8 }>(dd, nb, w, xq, xr.unwrap_or(xq), out),
        Mode::Sep => run::<D, W, { Mode::Sep as u8 }>(dd, nb, w, xq, xr.unwrap_or(xq), out),
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn run<D: IDot, W: Legacy, const M: u8>(
    dd: D,
    nb: usize,
    w: &[u8],
    q: &[u8],
    r: &[u8],
    out: &mut [f32],
) {
    let (yb, _) = act_bytes(W::MIN);
    let nrows = out.len();
    let ws: &[W] = bytemuck::cast_slice(&w[..nrows * nb * size_of::<W>()]);
    let mut act = [Act1::default(); KC];
    for b0 in (0..nb).step_by(KC) {
        let kc = KC.min(nb - b0);
        let act = &mut act[..kc];
        prep1::<W, M>(q, r, b0, act);
        let (qc, rc) = (&q[b0 * yb..(b0 + kc) * yb], &r[b0 * yb..(b0 + kc) * yb]);
        for idx in row_quads(nrows) {
            let at = |k: usize| idx[k] * nb + b0;
            let rows = [
                &ws[at(0)..at(0) + kc],
                &ws[at(1)..at(1) + kc],
                &ws[at(2)..at(2) + kc],
                &ws[at(3)..at(3) + kc],
            ];
            let f = rows4::<D, W, M>(dd, rows, qc, rc, act);
            let mut v = [0.0f32; 4];
            st_f32(&mut v, f);
            store_quad(out, idx, v, b0 == 0);
        }
    }
}

/// The row quads of a pass over `rows` rows: quad `g` takes rows `g, g + q, g + 2q, g + 3q`
/// (`q = rows/4`), so each of the four row cursors reads one contiguous stretch of the matrix
/// (row `g + 1` follows row `g` in memory), a stream the hardware prefetcher follows, rather than
/// four cursors a row apart that jump at every row end. The last `rows % 4` rows form one more
/// quad that repeats its last row (computed, not stored: see [`store_quad`]).
pub(super) fn row_quads(rows: usize) -> impl Iterator<Item = [usize; 4]> {
    let q = rows / 4;
    let full = (0..q).map(move |g| [g, g + q, g + 2 * q, g + 3 * q]);
    let tail =
        (!rows.is_multiple_of(4)).then(|| core::array::from_fn(|k| (4 * q + k).min(rows - 1)));
    full.chain(tail)
}

/// Writes (`first`) or adds a quad's four results to its rows; a repeated row is written once.
#[inline(always)]
pub(super) fn store_quad(out: &mut [f32], idx: [usize; 4], v: [f32; 4], first: bool) {
    for k in 0..4 {
        if k > 0 && idx[k] == idx[k - 1] {
            break;
        }
        let o = &mut out[idx[k]];
        *o = if first { v[k] } else { *o + v[k] };
    }
}

/// Four rows' i32 accumulators to one vector of their lane sums (row `k` in lane `k`).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn addp4(p: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]))
}

/// `acc + w·y` for one block: the unpacked weights `q` against the activation quants `y`.
#[inline(always)]
fn dot32<D: IDot>(
    dd: D,
    acc: int32x4_t,
    q: [int8x16_t; 2],
    y: [int8x16_t; 2],
    qmax: u32,
) -> int32x4_t {
    if qmax * 128 <= MAXP_8191 {
        dd.dot2_small(acc, q[0], y[0], q[1], y[1])
    } else {
        dd.dot(dd.dot(acc, q[0], y[0]), q[1], y[1])
    }
}

/// The integer block sums of a quad: the four rows' running sums (`run`, wrapping, one per row)
/// and their pairwise-add tree at the previous block (`tree`).
///
/// For the formats without an offset (`OFFSET == 0`) the rows' dot products accumulate across
/// the blocks of a chunk, and a block's sums are the difference of two consecutive trees (exact:
/// every step wraps modulo 2^32 and a block's sum fits an i32); this spares a fresh accumulator
/// start per row and block. With an offset, every row starts each block at `OFFSET·Σy`.
#[derive(Clone, Copy)]
struct Sums {
    run: [int32x4_t; 4],
    tree: int32x4_t,
}

impl Sums {
    #[target_feature(enable = "neon")]
    #[inline]
    fn new() -> Self {
        let z = vdupq_n_s32(0);
        Sums {
            run: [z; 4],
            tree: z,
        }
    }

    /// The four rows' block sums (row `k` in lane `k`) of the unpacked weights `wq` against the
    /// activation quants `y` (`init`: the block's `OFFSET·Σy`, used when `OFFSET != 0`).
    #[target_feature(enable = "neon")]
    #[inline]
    fn block<D: IDot, W: Legacy>(
        &mut self,
        dd: D,
        wq: &[[int8x16_t; 2]; 4],
        y: [int8x16_t; 2],
        init: &V16,
    ) -> int32x4_t {
        if W::OFFSET == 0 {
            for (r, &wq) in self.run.iter_mut().zip(wq) {
                *r = dot32(dd, *r, wq, y, W::QMAX);
            }
            let t = addp4(self.run);
            let b = vsubq_s32(t, self.tree);
            self.tree = t;
            b
        } else {
            let mut p = [vdupq_n_s32(0); 4];
            for (p, &wq) in p.iter_mut().zip(wq) {
                *p = dot32(dd, dd.load_acc(init), wq, y, W::QMAX);
            }
            addp4(p)
        }
    }
}

/// The activation quants of one block (`yb` bytes, quants at `qo`).
#[target_feature(enable = "neon")]
#[inline]
fn act32(y: &[u8], qo: usize) -> [int8x16_t; 2] {
    [ld_s8(&y[qo..]), ld_s8(&y[qo + 16..])]
}

/// The running state of [`rows4`]: the integer sums, the f32 result, and (`Plain`/`Comb`) the
/// previous block's integer sums, scales, mins and activation sum, folded into `f` one block later
/// so that their conversion overlaps the next block's loads and dots.
struct Quad {
    sq: Sums,
    sr: Sums,
    f: float32x4_t,
    c0: int32x4_t,
    d0: float32x4_t,
    m0: float32x4_t,
    s0: f32,
}

impl Quad {
    #[target_feature(enable = "neon")]
    #[inline]
    fn new() -> Self {
        let z = vdupq_n_f32(0.0);
        Quad {
            sq: Sums::new(),
            sr: Sums::new(),
            f: z,
            c0: vdupq_n_s32(0),
            d0: z,
            m0: z,
            s0: 0.0,
        }
    }

    /// One block of the four rows `w` against the activation block `a` (quants `yq`, residual
    /// quants `yr`).
    #[target_feature(enable = "neon")]
    #[inline]
    fn step<D: IDot, W: Legacy, const M: u8>(
        &mut self,
        dd: D,
        w: [&W; 4],
        a: &Act1,
        yq: &[u8],
        yr: &[u8],
    ) {
        let mode = Mode::of(M);
        let (_, qo) = act_bytes(W::MIN);
        let mut wq = [[vdupq_n_s8(0); 2]; 4];
        for (q, w) in wq.iter_mut().zip(w) {
            *q = w.quants(dd);
        }
        if mode != Mode::Sep {
            self.fold_previous::<W>();
        }
        let pq = self.sq.block::<D, W>(dd, &wq, act32(yq, qo), &a.init);
        let dw = f16x4_f32([*w[0].d(), *w[1].d(), *w[2].d(), *w[3].d()]);
        if W::MIN {
            self.m0 = f16x4_f32([*w[0].m(), *w[1].m(), *w[2].m(), *w[3].m()]);
            self.s0 = a.s;
        }
        if mode == Mode::Plain {
            (self.c0, self.d0) = (pq, vmulq_n_f32(dw, a.dy));
        } else {
            let pr = self.sr.block::<D, W>(dd, &wq, act32(yr, qo), &a.init_r);
            if mode == Mode::Comb {
                // |256·Σq + Σr| <= 257·32·128·128 < 2^31.
                let c = vaddq_s32(vshlq_n_s32::<8>(pq), pr);
                (self.c0, self.d0) = (c, vmulq_n_f32(dw, a.dy));
            } else {
                let t = vmulq_n_f32(vcvtq_n_f32_s32::<8>(pq), a.dy);
                let t = vfmaq_n_f32(t, vcvtq_n_f32_s32::<8>(pr), a.dr);
                self.f = vfmaq_f32(self.f, t, dw);
                if W::MIN {
                    self.f = vfmaq_n_f32(self.f, self.m0, self.s0);
                }
            }
        }
    }

    /// `Plain`/`Comb`: the previous block's integer sums times its scales, and its minima times its
    /// activation sum, added to `f` (zeros before the first block).
    #[target_feature(enable = "neon")]
    #[inline]
    fn fold_previous<W: Legacy>(&mut self) {
        self.f = vfmaq_f32(self.f, vcvtq_n_f32_s32::<8>(self.c0), self.d0);
        if W::MIN {
            self.f = vfmaq_n_f32(self.f, self.m0, self.s0);
        }
    }

    /// The result after the last block: the deferred fold of that block.
    #[target_feature(enable = "neon")]
    #[inline]
    fn finish<W: Legacy, const M: u8>(mut self) -> float32x4_t {
        if Mode::of(M) != Mode::Sep {
            self.fold_previous::<W>();
        }
        self.f
    }
}

/// Four rows (block slices of one chunk) against the chunk's activation blocks: lane `k` of the
/// result is row `k`'s partial dot product.
///
/// `Plain`: two blocks per loop iteration; the running sums' tree of one block is the previous
/// tree of the next, so the two alternate between registers instead of being copied at every
/// block. (With the residual's sums as well, the unrolled body runs out of vector registers.)
#[target_feature(enable = "neon")]
#[inline]
fn rows4<D: IDot, W: Legacy, const M: u8>(
    dd: D,
    rows: [&[W]; 4],
    q: &[u8],
    r: &[u8],
    act: &[Act1],
) -> float32x4_t {
    let (yb, _) = act_bytes(W::MIN);
    let kc = act.len();
    let rows = [
        &rows[0][..kc],
        &rows[1][..kc],
        &rows[2][..kc],
        &rows[3][..kc],
    ];
    let mut st = Quad::new();
    let w4 = rows[0].iter().zip(rows[1]).zip(rows[2]).zip(rows[3]);
    let mut blocks = w4.zip(act).zip(q.chunks_exact(yb)).zip(r.chunks_exact(yb));
    while let Some(((((((w0, w1), w2), w3), a), yq), yr)) = blocks.next() {
        st.step::<D, W, M>(dd, [w0, w1, w2, w3], a, yq, yr);
        if Mode::of(M) != Mode::Plain {
            continue;
        }
        if let Some(((((((w0, w1), w2), w3), a), yq), yr)) = blocks.next() {
            st.step::<D, W, M>(dd, [w0, w1, w2, w3], a, yq, yr);
        }
    }
    st.finish::<W, M>()
}
