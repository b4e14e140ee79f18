//! The row kernels (attention over cached keys and values) in every tier against the scalar
//! reference, for every KV item type — f32, f16 and Q8_0 blocks: every row length 0..=70 (all vector
//! tails; whole blocks up to 160 for Q8_0), 0..=19 rows (the 8-row groups and their remainders),
//! strides equal to and longer than the row; and the shape contract.
//!
//! Tolerances: the tiers sum in another order (and with FMA), so each score is held to the dot-product
//! bound 2·(k + 8)·ε·Σ|terms| (k = row length) and each weighted-sum element to the same bound with
//! k = the number of rows and the output's start value counted among the terms. The terms are those
//! of the rows' decoded values ([`KvElem::value`]).
mod common;
use common::*;
use edge_run_kernels::*;

type RowKernel<E> = fn(&[f32], &[E], usize, &mut [f32]);

/// One KV item type: how test rows are encoded in it and which table entries read it.
trait RowType: KvElem {
    const NAME: &'static str;
    /// `values` (a whole number of items) encoded.
    fn encode(values: &[f32]) -> Vec<Self>;
    /// The table's scores (`dot_rows_*`) and weighted-sum (`axpy_rows_*`) entries for this type.
    fn kernels(k: &Kernels) -> [RowKernel<Self>; 2];
    fn dot(k: &Kernels) -> RowKernel<Self> {
        Self::kernels(k)[0]
    }
    fn axpy(k: &Kernels) -> RowKernel<Self> {
        Self::kernels(k)[1]
    }
}

impl RowType for f32 {
    const NAME: &'static str = "f32";
    fn encode(values: &[f32]) -> Vec<f32> {
        values.to_vec()
    }
    fn kernels(k: &Kernels) -> [RowKernel<f32>; 2] {
        [k.dot_rows_f32, k.axpy_rows_f32]
    }
}

impl RowType for F16Bits {
    const NAME: &'static str = "f16";
    fn encode(values: &[f32]) -> Vec<F16Bits> {
        values.iter().map(|&v| F16Bits::from_f32(v)).collect()
    }
    fn kernels(k: &Kernels) -> [RowKernel<F16Bits>; 2] {
        [k.dot_rows_f16, k.axpy_rows_f16]
    }
}

impl RowType for BlockQ8_0 {
    const NAME: &'static str = "q8_0";
    fn encode(values: &[f32]) -> Vec<BlockQ8_0> {
        let mut bytes = vec![0u8; values.len() / QK * std::mem::size_of::<BlockQ8_0>()];
        scalar::quantize_q8_0(values, &mut bytes);
        bytemuck::cast_slice(&bytes).to_vec()
    }
    fn kernels(k: &Kernels) -> [RowKernel<BlockQ8_0>; 2] {
        [k.dot_rows_q8_0, k.axpy_rows_q8_0]
    }
}

struct Case<E> {
    len: usize,
    n: usize,
    stride: usize,
    q: Vec<f32>,
    rows: Vec<E>,
    /// The rows' values as the kernels read them.
    values: Vec<f32>,
    out0: Vec<f32>,
}

fn case<E: RowType>(len: usize, n: usize, extra: usize, seed: u64) -> Case<E> {
    let mut g = Rng(seed);
    let stride = len + extra;
    let rows_len = if n == 0 { 0 } else { (n - 1) * stride + len };
    let rows = E::encode(&(0..rows_len).map(|_| g.normal()).collect::<Vec<_>>());
    Case {
        len,
        n,
        stride,
        q: (0..len.max(n)).map(|_| g.normal()).collect(),
        values: (0..rows_len).map(|i| E::value(&rows, i)).collect(),
        rows,
        out0: (0..len.max(n)).map(|_| g.normal()).collect(),
    }
}

fn check_rows<E: RowType>(k: &Kernels, c: &Case<E>) -> Result<(), String> {
    let s = Kernels::scalar();
    let (len, n, stride) = (c.len, c.n, c.stride);
    let row = |j: usize| &c.values[j * stride..j * stride + len];
    let q = &c.q[..len];
    let what = format!("{} {}", k.tier.name(), E::NAME);
    let (mut want, mut got) = (vec![0.0; n], vec![0.0; n]);
    E::dot(s)(q, &c.rows, stride, &mut want);
    E::dot(k)(q, &c.rows, stride, &mut got);
    for j in 0..n {
        let mag: f64 = q
            .iter()
            .zip(row(j))
            .map(|(a, b)| (a * b).abs() as f64)
            .sum();
        if !within(got[j], want[j], dot_tol(len as f64, mag)) {
            return Err(format!(
                "{what} dot_rows len {len} rows {n} stride {stride}: score {j} {} vs scalar {}",
                got[j], want[j]
            ));
        }
    }
    let w = &c.q[..n];
    let (mut want, mut got) = (c.out0[..len].to_vec(), c.out0[..len].to_vec());
    E::axpy(s)(w, &c.rows, stride, &mut want);
    E::axpy(k)(w, &c.rows, stride, &mut got);
    for i in 0..len {
        let mag =
            c.out0[i].abs() as f64 + (0..n).map(|j| (w[j] * row(j)[i]).abs() as f64).sum::<f64>();
        if !within(got[i], want[i], dot_tol(n as f64 + 1.0, mag)) {
            return Err(format!(
                "{what} axpy_rows len {len} rows {n} stride {stride}: element {i} {} vs scalar {}",
                got[i], want[i]
            ));
        }
    }
    Ok(())
}

/// Every shape of the module documentation, for item type `E` (row lengths and strides in whole
/// items).
fn compare_type<E: RowType>(k: &'static Kernels) -> Result<(), String> {
    let lens: Vec<usize> = (0..=70).filter(|l| l % E::PER == 0).collect();
    let lens = if E::PER > 1 {
        (0..=5).map(|b| b * E::PER).collect()
    } else {
        lens
    };
    for &len in &lens {
        for n in 0..=19 {
            for extra in [0, 3 * E::PER] {
                check_rows(
                    k,
                    &case::<E>(len, n, extra, (len * 100 + n * 2 + extra) as u64),
                )?;
            }
        }
    }
    // Rows as the attention has them: 64 and 256 wide heads inside wider cache rows.
    for (len, stride) in [(64, 192), (256, 256), (256, 1024)] {
        check_rows(k, &case::<E>(len, 300, stride - len, 9))?;
    }
    Ok(())
}

fn compare_tier(k: &'static Kernels) -> Result<(), String> {
    compare_type::<f32>(k)?;
    compare_type::<F16Bits>(k)?;
    compare_type::<BlockQ8_0>(k)
}

#[test]
fn every_tier_matches_scalar() {
    compare_every_tier("dot_rows/axpy_rows (f32, f16, q8_0)", compare_tier);
}

#[test]
fn the_scalar_rows_are_the_per_row_dot_and_axpy() {
    let c = case::<f32>(37, 11, 5, 1);
    let s = Kernels::scalar();
    let mut scores = vec![0.0; 11];
    (s.dot_rows_f32)(&c.q[..37], &c.rows, c.stride, &mut scores);
    let mut out = c.out0[..37].to_vec();
    let mut want_out = out.clone();
    (s.axpy_rows_f32)(&c.q[..11], &c.rows, c.stride, &mut out);
    for (j, &score) in scores.iter().enumerate() {
        let r = &c.rows[j * c.stride..j * c.stride + 37];
        assert_eq!(score, (s.dot_f32)(&c.q[..37], r), "score {j}");
        (s.axpy_f32)(c.q[j], r, &mut want_out);
    }
    assert_eq!(out, want_out);
}

/// The scalar f16 and Q8_0 kernels compute exactly what the f32 one does on the decoded rows (f16 →
/// f32 is exact; a Q8_0 value is `d·q` rounded once), and the decoded rows are the encoded values
/// to within the type's rounding.
fn scalar_type_is_f32_on_decoded<E: RowType>(rel_err: f32) {
    let s = Kernels::scalar();
    let c = case::<E>(64, 13, 32, 3);
    let (mut typed, mut plain) = (vec![0.0; 13], vec![0.0; 13]);
    E::dot(s)(&c.q[..64], &c.rows, c.stride, &mut typed);
    (s.dot_rows_f32)(&c.q[..64], &c.values, c.stride, &mut plain);
    assert_eq!(typed, plain, "{} scores", E::NAME);
    let (mut typed, mut plain) = (c.out0[..64].to_vec(), c.out0[..64].to_vec());
    E::axpy(s)(&c.q[..13], &c.rows, c.stride, &mut typed);
    (s.axpy_rows_f32)(&c.q[..13], &c.values, c.stride, &mut plain);
    assert_eq!(typed, plain, "{} weighted sums", E::NAME);
    // Same seed, same draws: the values the case encoded.
    let mut g = Rng(3);
    let original: Vec<f32> = (0..c.values.len()).map(|_| g.normal()).collect();
    for (block, (o, d)) in original.chunks(32).zip(c.values.chunks(32)).enumerate() {
        let amax = o.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (o, d) in o.iter().zip(d) {
            assert!(
                (o - d).abs() <= rel_err * amax,
                "{} block {block}: {o} decoded as {d}",
                E::NAME
            );
        }
    }
}

#[test]
fn the_scalar_f16_and_q8_0_rows_are_the_f32_rows_decoded() {
    scalar_type_is_f32_on_decoded::<F16Bits>(1.0 / 1024.0);
    scalar_type_is_f32_on_decoded::<BlockQ8_0>(1.0 / 127.0);
}

/// A score does not depend on how the rows were split into calls (the attention splits the keys at
/// the cache/batch boundary and where the ring wraps, which moves with the batch size), nor does a
/// weighted sum: bit for bit, in every tier and item type.
fn splitting_changes_no_bit<E: RowType>() {
    let c = case::<E>(64, 19, 32, 5);
    let stride = c.stride;
    let items = |cut: usize| &c.rows[cut * stride / E::PER..];
    for k in Kernels::available() {
        let what = format!("{} {}", k.tier.name(), E::NAME);
        let mut whole = vec![0.0; 19];
        E::dot(k)(&c.q[..64], &c.rows, stride, &mut whole);
        let mut acc_whole = c.out0[..64].to_vec();
        E::axpy(k)(&c.q[..19], &c.rows, stride, &mut acc_whole);
        for cut in 1..19 {
            let mut parts = [0.0f32; 19];
            let (a, b) = parts.split_at_mut(cut);
            E::dot(k)(&c.q[..64], &c.rows, stride, a);
            E::dot(k)(&c.q[..64], items(cut), stride, b);
            assert!(
                parts
                    .iter()
                    .zip(&whole)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what}: scores split at {cut}"
            );
            let mut acc = c.out0[..64].to_vec();
            E::axpy(k)(&c.q[..cut], &c.rows, stride, &mut acc);
            E::axpy(k)(&c.q[cut..19], items(cut), stride, &mut acc);
            assert!(
                acc.iter()
                    .zip(&acc_whole)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what}: weighted sum split at {cut}"
            );
        }
    }
}

#[test]
fn splitting_the_rows_changes_no_bit() {
    splitting_changes_no_bit::<f32>();
    splitting_changes_no_bit::<F16Bits>();
    splitting_changes_no_bit::<BlockQ8_0>();
}

/// Calls outside the shape contract: a caller bug, asserted in debug builds, NaN in release builds.
fn assert_refused(what: &str, call: impl FnOnce(&mut [f32])) {
    let mut out = [0.0f32; 3];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&mut out)));
    if cfg!(debug_assertions) {
        assert!(r.is_err(), "{what}: debug builds assert");
    } else {
        assert!(out.iter().all(|v| v.is_nan()), "{what}: {out:?}");
    }
}

#[test]
fn rows_that_do_not_fit_are_refused() {
    for k in Kernels::available() {
        let name = k.tier.name();
        // 3 rows of 4 at stride 4 need 12 values.
        let rows = vec![1.0f32; 10];
        assert_refused(&format!("{name} f32"), |o| {
            (k.dot_rows_f32)(&[1.0; 4], &rows, 4, o)
        });
        let halves = vec![F16Bits::from_f32(1.0); 10];
        assert_refused(&format!("{name} f16"), |o| {
            (k.dot_rows_f16)(&[1.0; 4], &halves, 4, o)
        });
        // Q8_0 rows must start and end on whole blocks.
        let blocks = BlockQ8_0::encode(&[1.0; 128]);
        assert_refused(&format!("{name} q8_0 partial block"), |o| {
            (k.dot_rows_q8_0)(&[1.0; 16], &blocks, 32, o)
        });
        assert_refused(&format!("{name} q8_0 stride"), |o| {
            (k.dot_rows_q8_0)(&[1.0; 32], &blocks, 40, o)
        });
        assert_refused(&format!("{name} q8_0 too few blocks"), |o| {
            (k.dot_rows_q8_0)(&[1.0; 64], &blocks, 64, o)
        });
    }
}

fn dot_rows_skipping_last(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = out.len().saturating_sub(1);
    scalar::dot_rows(q, rows, stride, &mut out[..n]);
}
fn axpy_rows_first_only(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    scalar::axpy_rows(&w[..w.len().min(1)], rows, stride, out);
}
fn q8_rows_as_halves(q: &[f32], rows: &[BlockQ8_0], stride: usize, out: &mut [f32]) {
    let values: Vec<F16Bits> = (0..rows.len() * QK)
        .map(|i| F16Bits::from_f32(BlockQ8_0::value(rows, i)))
        .collect();
    scalar::dot_rows(q, &values, stride, out);
}

#[test]
fn comparison_catches_wrong_kernels() {
    let mut wrong = *Kernels::scalar();
    wrong.dot_rows_f32 = dot_rows_skipping_last;
    assert!(check_rows(&wrong, &case::<f32>(16, 9, 0, 2)).is_err());
    let mut wrong = *Kernels::scalar();
    wrong.axpy_rows_f32 = axpy_rows_first_only;
    assert!(check_rows(&wrong, &case::<f32>(16, 9, 0, 2)).is_err());
    let mut wrong = *Kernels::scalar();
    wrong.dot_rows_q8_0 = q8_rows_as_halves;
    assert!(check_rows(&wrong, &case::<BlockQ8_0>(64, 9, 0, 2)).is_err());
    compare_tier(Kernels::scalar()).unwrap();
}
