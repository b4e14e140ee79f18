//! Matrix×vector kernels (`MatVec`, `MatVec2`: decode) of the 32-element types, one generic body
//! for both x86 tiers ([`Lanes`]).
//!
//! Direct layout: [`R`] rows at a time, each row's blocks in element order, `BLK` blocks per
//! vector (one on AVX2, two on AVX-512), so that the activation group (and its offset sum) is
//! prepared once for the `R` rows. Per row and group: unpack, one integer dot (`vpdpbusd`, or
//! `vpmaddubsw` + `vpmaddwd`; Q8_0 on AVX2 widened to 16 bits), one conversion and one FMA with the
//! blocks' `d_w·d_y` spread over their lanes (the f16 pairs of all blocks converted in one
//! instruction); Q4_1/Q5_1 also accumulate `m·s`. With the `q8x2` residual the two integer sums of
//! a block are one exact i32, `256·Σ u·q + Σ u·r`, scaled by `d_w·d_q/256` (the residual's scale,
//! by the [`crate::Quantize2`] construction): one conversion and one FMA for both.
//!
//! Memory: the rows of a pass are `rows/R` apart ([`strided_passes`]), so each of the `R` cursors
//! streams through one contiguous quarter of the matrix, and each is prefetched [`LEAD`]`/R` bytes
//! ahead of itself (past a row's end that is the next row of the same stream, which is what the
//! cursor reads next).
use core::arch::x86_64::__m128;
use core::mem::size_of;

use super::lanes::{simd, Avx2, Lanes};
use super::wtypes::*;
use crate::MatShape;

/// Rows per pass.
const R: usize = 4;
/// Bytes of the `R` row streams together prefetched ahead of the cursors.
const LEAD: usize = 8192;

impl Avx2 {
    /// `[d, m]` (or `[d, s]`) of up to two blocks: the f16 pairs at their starts, converted:
    /// `[d0, m0, d1, m1]` (zeros for a missing second block).
    #[inline(always)]
    pub(super) fn heads<T: bytemuck::Pod>(self, b: &[T]) -> __m128 {
        use super::common::{f16_head, f16_heads2};
        match b.len() {
            2 => simd! { f16_heads2(&b[0], &b[1]) },
            _ => simd! { f16_head(&b[0]) },
        }
    }

    #[inline(always)]
    fn zero4(self) -> __m128 {
        simd! { core::arch::x86_64::_mm_setzero_ps() }
    }

    #[inline(always)]
    fn mul4(self, a: __m128, b: __m128) -> __m128 {
        simd! { core::arch::x86_64::_mm_mul_ps(a, b) }
    }

    #[inline(always)]
    fn add4(self, a: __m128, b: __m128) -> __m128 {
        simd! { core::arch::x86_64::_mm_add_ps(a, b) }
    }

    /// `v[1] + v[3]`.
    #[inline(always)]
    fn odd_sum(self, v: __m128) -> f32 {
        simd! {
            use core::arch::x86_64::*;
            let m = _mm_movehdup_ps(v);
            _mm_cvtss_f32(_mm_add_ss(m, _mm_movehl_ps(m, m)))
        }
    }

    /// The activation group's `[dy0, s0, dy1, s1]`: with a residual `[dy0/256, s_q0 + s_r0, …]` (the
    /// residual's scale, and the sum of both blocks' sums).
    #[inline(always)]
    fn act_heads<A: Act32>(self, y: &[A], r: Option<&[A]>) -> __m128 {
        use core::arch::x86_64::*;
        let hq = self.heads(y);
        match r {
            None => hq,
            Some(r) => simd! {
                let hr = self.heads(r);
                let d = _mm_mul_ps(hq, _mm_set1_ps(1.0 / 256.0));
                _mm_blend_ps::<0b1010>(d, _mm_add_ps(hq, hr))
            },
        }
    }
}

/// `MatVec` (`xr == None`) or `MatVec2` for a 32-element block type `B`, after the shape check.
#[inline(always)]
pub(super) fn legacy<L: Lanes, B: Legacy>(
    l: L,
    s: MatShape,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) {
    let rows = out.len();
    let w: &[B] = bytemuck::cast_slice(&w[..rows * s.row_bytes]);
    let x: &[B::Act] = bytemuck::cast_slice(&xq[..s.act_bytes]);
    let z: Option<&[B::Act]> = xr.map(|r| bytemuck::cast_slice(&r[..s.act_bytes]));
    let (passes, tail) = strided_passes::<R>(out.len());
    for rs in passes {
        let o = pass::<L, B, R>(l, w, s.nb, rs, x, z);
        scatter(out, rs, o);
    }
    for r in tail {
        out[r] = pass::<L, B, 1>(l, w, s.nb, [r], x, z)[0];
    }
}

/// The row sets of `RR`-row passes over `rows` rows, each pass's rows `rows/RR` apart: pass `p`
/// takes rows `p, p + q, p + 2q, …` (`q = rows/RR`), so each of its cursors reads one contiguous
/// stretch of the matrix from beginning to end (row `p + 1` follows row `p` in memory), a stream
/// the hardware prefetchers follow; and the last `rows % RR` rows, run one at a time. Adjacent rows
/// in one pass instead make `RR` cursors a few hundred bytes apart that jump at every row end: on
/// Zen 4 that ran rows shorter than ~2 KiB at half the speed or less (Q8_0 at 640 columns: 9
/// against 25 GB/s).
#[inline(always)]
fn strided_passes<const RR: usize>(
    rows: usize,
) -> (impl Iterator<Item = [usize; RR]>, core::ops::Range<usize>) {
    let q = rows / RR;
    let passes = (0..q).map(move |p| core::array::from_fn(|i| p + i * q));
    (passes, q * RR..rows)
}

/// Writes a pass's results to its rows.
#[inline(always)]
fn scatter<const RR: usize>(out: &mut [f32], rs: [usize; RR], o: [f32; RR]) {
    for (r, v) in rs.into_iter().zip(o) {
        out[r] = v;
    }
}

/// The rows `rs`: the whole groups of `BLK` blocks, then the last partial group (one block when
/// `nb` is odd on AVX-512). Each is one call of [`group`] with a constant length, so that the loop
/// body has no length tests.
#[inline(always)]
fn pass<L: Lanes, B: Legacy, const RR: usize>(
    l: L,
    w: &[B],
    nb: usize,
    rs: [usize; RR],
    x: &[B::Act],
    z: Option<&[B::Act]>,
) -> [f32; RR] {
    let rows: [&[B]; RR] = rs.map(|r| &w[r * nb..(r + 1) * nb]);
    let a = l.avx2();
    let mut acc = Acc {
        f: [l.fzero(); RR],
        m: [a.zero4(); RR],
    };
    let step = (64 / (size_of::<B>() * L::BLK)).max(1);
    let whole = nb - nb % L::BLK;
    for (g, b) in (0..whole).step_by(L::BLK).enumerate() {
        if g % step == 0 {
            for row in &rows {
                a.prefetch(&row[b], LEAD / R);
            }
        }
        // One call per activation mode, so that each is inlined with `z` known: the group's body
        // then has no test of the residual left in it.
        match z {
            None => group::<L, B, RR>(l, &rows, b..b + L::BLK, x, None, &mut acc),
            Some(z) => group::<L, B, RR>(l, &rows, b..b + L::BLK, x, Some(z), &mut acc),
        }
    }
    if whole < nb {
        group::<L, B, RR>(l, &rows, whole..nb, x, z, &mut acc);
    }
    let Acc { f: acc, m: accm } = acc;
    let mut out = [0f32; RR];
    for i in 0..RR {
        out[i] = l.hsum(acc[i]);
        if B::MIN {
            out[i] += a.odd_sum(accm[i]);
        }
    }
    out
}

/// The sums of a pass's rows: per row an f32 vector of `Σ d_w·d_y·dot`, and lanes 1 and 3 of `m`
/// for `Σ m·s` (types with a minimum).
struct Acc<L: Lanes, const RR: usize> {
    f: [L::F; RR],
    m: [__m128; RR],
}

/// The blocks `bs` of the rows (one group: at most `BLK` blocks) added to their sums.
#[inline(always)]
fn group<L: Lanes, B: Legacy, const RR: usize>(
    l: L,
    rows: &[&[B]; RR],
    bs: core::ops::Range<usize>,
    x: &[B::Act],
    z: Option<&[B::Act]>,
    acc: &mut Acc<L, RR>,
) {
    let a = l.avx2();
    let (ys, rs) = (&x[bs.clone()], z.map(|z| &z[bs.clone()]));
    let (y, base) = l.grp_act(ys, rs, B::OFF, B::MAXU);
    let dy = a.act_heads(ys, rs);
    for (i, row) in rows.iter().enumerate() {
        let blks = &row[bs.clone()];
        let dot = l.grp_dot(l.grp_u(blks), &y, base, rs.is_some(), B::MAXU);
        // [d0·dy0, m0·s0, d1·dy1, m1·s1]
        let p = a.mul4(a.heads(blks), dy);
        if B::MIN {
            acc.m[i] = a.add4(acc.m[i], p);
        }
        acc.f[i] = l.fmadd(l.cvt(dot), l.grp_spread(p), acc.f[i]);
    }
}

// ---------------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------------

/// Rows per pass of the K-quant kernels.
const RK: usize = 2;

/// `MatVec` / `MatVec2` for a K-quant type `B`: per row and super-block, 4 chunks of 64 elements
/// (`vpmaddubsw` against the activation, `vpmaddwd` with the group scales: two 256-bit halves on
/// AVX2, one 512-bit vector on AVX-512), and the bsum term (`−dmin·Σ m·bsums`, Q6_K's
/// `−32·d·Σ sc·bsums`) by one `vpmaddwd` of the 16 group weights with the 16 bsums. With a
/// residual, its own sums and scale (the K-quant sums could overflow a combined i32).
#[inline(always)]
pub(super) fn kquant<L: Lanes, B: KQuant>(
    l: L,
    s: MatShape,
    w: &[u8],
    xq: &[u8],
    xr: Option<&[u8]>,
    out: &mut [f32],
) {
    use super::common::Q8KBytes;
    let rows = out.len();
    let w: &[B] = bytemuck::cast_slice(&w[..rows * s.row_bytes]);
    let x: &[Q8KBytes] = bytemuck::cast_slice(&xq[..s.act_bytes]);
    let z: Option<&[Q8KBytes]> = xr.map(|r| bytemuck::cast_slice(&r[..s.act_bytes]));
    let (passes, tail) = strided_passes::<RK>(out.len());
    for rs in passes {
        let o = kpass::<L, B, RK>(l, w, s.nb, rs, x, z);
        scatter(out, rs, o);
    }
    for r in tail {
        out[r] = kpass::<L, B, 1>(l, w, s.nb, [r], x, z)[0];
    }
}

/// The rows `rs` (K-quants).
#[inline(always)]
fn kpass<L: Lanes, B: KQuant, const RR: usize>(
    l: L,
    w: &[B],
    nb: usize,
    rs: [usize; RR],
    x: &[super::common::Q8KBytes],
    z: Option<&[super::common::Q8KBytes]>,
) -> [f32; RR] {
    let rows: [&[B]; RR] = rs.map(|r| &w[r * nb..(r + 1) * nb]);
    let a = l.avx2();
    let mut acc = [l.fzero(); RR];
    let mut accc = [a.fzero8(); RR];
    let bs = size_of::<B>();
    let ahead = LEAD / RK;
    for b in 0..nb {
        for row in &rows {
            a.prefetch_span(&row[b], ahead, bs);
        }
        for i in 0..RR {
            let blk = &rows[i][b];
            let (sc, bw) = blk.group_vecs(a);
            let dw = a.h2f(blk.d());
            let cw = a.h2f(blk.cw()) * B::CW;
            let kb = KBlock {
                blk,
                sc,
                bw,
                dw,
                cw,
            };
            kpart(l, &kb, &x[b], z.map(|z| &z[b]), &mut acc[i], &mut accc[i]);
        }
    }
    let mut out = [0f32; RR];
    for i in 0..RR {
        out[i] = l.hsum(acc[i]) + a.hsum8(accc[i]);
    }
    out
}

/// One row's K-quant block with its scales unpacked.
struct KBlock<'a, B> {
    blk: &'a B,
    /// Group scales (16 i16).
    sc: core::arch::x86_64::__m256i,
    /// Group bsum weights (16 i16).
    bw: core::arch::x86_64::__m256i,
    dw: f32,
    /// The bsum term's factor (`CW·cw`).
    cw: f32,
}

/// One block against the activation block `y` (and the residual's `r`): `acc += d·dy·Σ sc·S`,
/// `accc += cw·dy·Σ bw·bsums` for each, the weight quants unpacked once for both.
#[inline(always)]
fn kpart<L: Lanes, B: KQuant>(
    l: L,
    k: &KBlock<'_, B>,
    y: &super::common::Q8KBytes,
    r: Option<&super::common::Q8KBytes>,
    acc: &mut L::F,
    accc: &mut core::arch::x86_64::__m256,
) {
    let ys: &[[i8; 64]; 4] = bytemuck::cast_ref(&y.qs);
    let (mut sq, mut sr) = (l.izero(), l.izero());
    for c in 0..4 {
        let q = [k.blk.quants(l, 2 * c), k.blk.quants(l, 2 * c + 1)];
        sq = l.iadd(sq, l.kdot(q, &ys[c], k.sc, c));
        if let Some(r) = r {
            let rs: &[[i8; 64]; 4] = bytemuck::cast_ref(&r.qs);
            sr = l.iadd(sr, l.kdot(q, &rs[c], k.sc, c));
        }
    }
    let a = l.avx2();
    let dy = f32::from_le_bytes(y.d);
    *acc = l.fmadd(l.cvt(sq), l.fsplat(k.dw * dy), *acc);
    *accc = a.bsum_fma(k.bw, &y.bsums, k.cw * dy, *accc);
    if let Some(r) = r {
        let dr = f32::from_le_bytes(r.d);
        *acc = l.fmadd(l.cvt(sr), l.fsplat(k.dw * dr), *acc);
        *accc = a.bsum_fma(k.bw, &r.bsums, k.cw * dr, *accc);
    }
}
