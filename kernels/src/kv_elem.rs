//! The element types of the rows attention reads from a KV cache — f32, f16 and Q8_0 blocks — as the
//! row kernels ([`crate::Kernels::dot_rows_f32`] and its f16 / Q8_0 twins) take them, and the shape
//! contract those kernels share.
use crate::{BlockQ8_0, F16Bits, QK};

/// One item of a cached row: a value (f32, f16) or a block of [`KvElem::PER`] values (Q8_0). Rows are
/// slices of items; lengths and strides are counted in values.
pub trait KvElem: bytemuck::Pod {
    /// Values per item.
    const PER: usize;
    /// Value `i` of the items `row` (laid one after the other).
    fn value(row: &[Self], i: usize) -> f32;
}

impl KvElem for f32 {
    const PER: usize = 1;
    #[inline(always)]
    fn value(row: &[f32], i: usize) -> f32 {
        row[i]
    }
}

impl KvElem for F16Bits {
    const PER: usize = 1;
    #[inline(always)]
    fn value(row: &[F16Bits], i: usize) -> f32 {
        row[i].to_f32()
    }
}

impl KvElem for BlockQ8_0 {
    const PER: usize = QK;
    /// `d · q` (one f32 multiply), the value every tier's loads produce.
    #[inline(always)]
    fn value(row: &[BlockQ8_0], i: usize) -> f32 {
        let b = &row[i / QK];
        b.d.to_f32() * b.qs[i % QK] as f32
    }
}

/// The items of row `j` of `rows` (`len` values from value `j·stride`); the caller checked the shape
/// with [`rows_fit`].
#[inline(always)]
pub(crate) fn row<E: KvElem>(rows: &[E], j: usize, stride: usize, len: usize) -> &[E] {
    let at = j * stride / E::PER;
    &rows[at..at + len / E::PER]
}

/// Whether `n` rows of `len` values at `stride` values fit in `rows` (and, for block items, start and
/// end on whole blocks) — the shape contract of the row kernels. A caller bug otherwise: a debug
/// assertion, and `out` filled with NaN in release builds.
pub(crate) fn rows_fit<E: KvElem>(
    n: usize,
    len: usize,
    stride: usize,
    rows: &[E],
    out: &mut [f32],
) -> bool {
    let need = match n {
        0 => Some(0),
        n => (n - 1).checked_mul(stride).and_then(|a| a.checked_add(len)),
    };
    let whole = len.is_multiple_of(E::PER) && (n <= 1 || stride.is_multiple_of(E::PER));
    let avail = rows.len().checked_mul(E::PER);
    let fits = whole && need.zip(avail).is_some_and(|(need, avail)| need <= avail);
    debug_assert!(
        fits,
        "KV rows: {n} rows of {len} at stride {stride} do not fit in {} items of {} values",
        rows.len(),
        E::PER
    );
    if !fits {
        out.fill(f32::NAN);
    }
    fits
}
