//! [`crate::Kernels::dot_rows_f32`] and [`crate::Kernels::axpy_rows_f32`] (and their f16 / Q8_0
//! twins) in NEON, one generic body per kernel, the row's item type supplying only how four values
//! are loaded ([`NeonElem`]): scores four rows at a time against one load of the query, weighted
//! sums in panels of up to eight vectors held in registers while every row adds its weighted piece.
//! Values past the last whole vector are added in scalar code, in order.
use super::util::{f16_f32, h4_to_f32, ld_f32, st_f32};
use crate::kv_elem::{row, rows_fit};
use crate::{BlockQ8_0, F16Bits, KvElem, QK};
use core::arch::aarch64::*;

/// Proof that the CPU has Advanced SIMD: made only by [`Neon::new`], a `#[target_feature(enable =
/// "neon")]` function, so the item loads below may use NEON wherever a value exists.
#[derive(Clone, Copy)]
pub(super) struct Neon(());

impl Neon {
    #[target_feature(enable = "neon")]
    #[inline]
    fn new() -> Self {
        Neon(())
    }
}

/// A KV item type as the NEON kernels load it.
pub(super) trait NeonElem: KvElem {
    /// Four values of `row` from value `i` (a multiple of 4 inside the row).
    fn ld4(n: Neon, row: &[Self], i: usize) -> float32x4_t;
}

impl NeonElem for f32 {
    #[inline(always)]
    fn ld4(_: Neon, row: &[f32], i: usize) -> float32x4_t {
        // SAFETY: `ld_f32` checks its slice; the token proves the neon feature.
        unsafe { ld_f32(&row[i..]) }
    }
}

impl NeonElem for F16Bits {
    #[inline(always)]
    fn ld4(_: Neon, row: &[F16Bits], i: usize) -> float32x4_t {
        let h: [F16Bits; 4] = row[i..i + 4].try_into().expect("four halves");
        // SAFETY: value-only intrinsics; the token proves the neon feature.
        unsafe { h4_to_f32(vcreate_u16(u64::from_le_bytes(bytemuck::cast(h)))) }
    }
}

impl NeonElem for BlockQ8_0 {
    /// `d · q` per lane (the four values share their block's scale).
    #[inline(always)]
    fn ld4(_: Neon, row: &[BlockQ8_0], i: usize) -> float32x4_t {
        let b = &row[i / QK];
        let at = i % QK;
        let q: [i8; 4] = b.qs[at..at + 4].try_into().expect("four quants");
        let q = u64::from(u32::from_le_bytes(bytemuck::cast(q)));
        // SAFETY: value-only intrinsics and `f16_f32`, which reads exactly the borrowed scale; the
        // token proves the neon feature.
        unsafe {
            let q32 = vmovl_s16(vget_low_s16(vmovl_s8(vcreate_s8(q))));
            vmulq_n_f32(vcvtq_f32_s32(q32), f16_f32(&b.d))
        }
    }
}

/// `out[j] = q · row_j` (see the module documentation).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn dot_rows<E: NeonElem>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    if !rows_fit(out.len(), q.len(), stride, rows, out) {
        return;
    }
    let (n, len, full) = (Neon::new(), q.len(), q.len() / 4 * 4);
    for (c, o) in out.chunks_mut(4).enumerate() {
        let j0 = 4 * c;
        let r: [&[E]; 4] =
            core::array::from_fn(|i| row(rows, j0 + i.min(o.len() - 1), stride, len));
        let mut acc = [vdupq_n_f32(0.0); 4];
        for k in (0..full).step_by(4) {
            let qv = ld_f32(&q[k..]);
            for (i, a) in acc[..o.len()].iter_mut().enumerate() {
                *a = vfmaq_f32(*a, qv, E::ld4(n, r[i], k));
            }
        }
        for (i, o) in o.iter_mut().enumerate() {
            let mut s = vaddvq_f32(acc[i]);
            for (k, a) in q.iter().enumerate().skip(full) {
                s += a * E::value(r[i], k);
            }
            *o = s;
        }
    }
}

/// Adds `Σ_j w[j]·row_j[at..at + 4P]` to `out[at..]`: a panel of `P` vectors in registers.
#[target_feature(enable = "neon")]
#[inline]
fn axpy_panel<E: NeonElem, const P: usize>(
    w: &[f32],
    rows: &[E],
    stride: usize,
    out: &mut [f32],
    at: usize,
) {
    let (n, len) = (Neon::new(), out.len());
    let mut acc: [float32x4_t; P] = core::array::from_fn(|p| ld_f32(&out[at + 4 * p..]));
    for (j, &a) in w.iter().enumerate() {
        let r = row(rows, j, stride, len);
        for (p, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_n_f32(*acc, E::ld4(n, r, at + 4 * p), a);
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        st_f32(&mut out[at + 4 * p..], *acc);
    }
}

/// `out += Σ_j w[j]·row_j` (see the module documentation).
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn axpy_rows<E: NeonElem>(w: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    if !rows_fit(w.len(), out.len(), stride, rows, out) {
        return;
    }
    let (len, full) = (out.len(), out.len() / 4 * 4);
    let mut at = 0;
    while at + 32 <= full {
        axpy_panel::<E, 8>(w, rows, stride, out, at);
        at += 32;
    }
    while at < full {
        axpy_panel::<E, 1>(w, rows, stride, out, at);
        at += 4;
    }
    for (j, &a) in w.iter().enumerate() {
        let r = row(rows, j, stride, len);
        for (i, o) in out.iter_mut().enumerate().skip(full) {
            *o += a * E::value(r, i);
        }
    }
}
