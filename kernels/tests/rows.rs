//! `dot_rows_f32` / `axpy_rows_f32` (attention over cached keys and values) in every tier against the
//! scalar reference: every row length 0..=70 (all vector tails), 0..=19 rows (the 8-row groups and
//! their remainders), strides equal to and longer than the row; and the shape contract.
//!
//! Tolerances: the tiers sum in another order (and with FMA), so each score is held to the dot-product
//! bound 2·(k + 8)·ε·Σ|terms| (k = row length) and each weighted-sum element to the same bound with
//! k = the number of rows and the output's start value counted among the terms.
mod common;
use common::*;
use edge_run_kernels::*;

struct Case {
    len: usize,
    n: usize,
    stride: usize,
    q: Vec<f32>,
    rows: Vec<f32>,
    out0: Vec<f32>,
}

fn case(len: usize, n: usize, extra: usize, seed: u64) -> Case {
    let mut g = Rng(seed);
    let stride = len + extra;
    let rows_len = if n == 0 { 0 } else { (n - 1) * stride + len };
    Case {
        len,
        n,
        stride,
        q: (0..len.max(n)).map(|_| g.normal()).collect(),
        rows: (0..rows_len).map(|_| g.normal()).collect(),
        out0: (0..len.max(n)).map(|_| g.normal()).collect(),
    }
}

fn check_rows(k: &Kernels, c: &Case) -> Result<(), String> {
    let s = Kernels::scalar();
    let (len, n, stride) = (c.len, c.n, c.stride);
    let row = |j: usize| &c.rows[j * stride..j * stride + len];
    let q = &c.q[..len];
    let (mut want, mut got) = (vec![0.0; n], vec![0.0; n]);
    (s.dot_rows_f32)(q, &c.rows, stride, &mut want);
    (k.dot_rows_f32)(q, &c.rows, stride, &mut got);
    for j in 0..n {
        let mag: f64 = q
            .iter()
            .zip(row(j))
            .map(|(a, b)| (a * b).abs() as f64)
            .sum();
        if !within(got[j], want[j], dot_tol(len as f64, mag)) {
            return Err(format!(
                "{} dot_rows len {len} rows {n} stride {stride}: score {j} {} vs scalar {}",
                k.tier.name(),
                got[j],
                want[j]
            ));
        }
    }
    let w = &c.q[..n];
    let (mut want, mut got) = (c.out0[..len].to_vec(), c.out0[..len].to_vec());
    (s.axpy_rows_f32)(w, &c.rows, stride, &mut want);
    (k.axpy_rows_f32)(w, &c.rows, stride, &mut got);
    for i in 0..len {
        let mag =
            c.out0[i].abs() as f64 + (0..n).map(|j| (w[j] * row(j)[i]).abs() as f64).sum::<f64>();
        if !within(got[i], want[i], dot_tol(n as f64 + 1.0, mag)) {
            return Err(format!(
                "{} axpy_rows len {len} rows {n} stride {stride}: element {i} {} vs scalar {}",
                k.tier.name(),
                got[i],
                want[i]
            ));
        }
    }
    Ok(())
}

fn compare_tier(k: &'static Kernels) -> Result<(), String> {
    for len in 0..=70 {
        for n in 0..=19 {
            for extra in [0, 3] {
                check_rows(k, &case(len, n, extra, (len * 100 + n * 2 + extra) as u64))?;
            }
        }
    }
    // Rows as the attention has them: 64 and 256 wide heads inside wider cache rows.
    for (len, stride) in [(64, 192), (256, 256), (256, 1024)] {
        check_rows(k, &case(len, 300, stride - len, 9))?;
    }
    Ok(())
}

#[test]
fn every_tier_matches_scalar() {
    compare_every_tier("dot_rows/axpy_rows", compare_tier);
}

#[test]
fn the_scalar_rows_are_the_per_row_dot_and_axpy() {
    let c = case(37, 11, 5, 1);
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

/// A score does not depend on how the rows were split into calls (the attention splits the keys at
/// the cache/batch boundary and where the ring wraps, which moves with the batch size), nor does a
/// weighted sum: bit for bit, in every tier.
#[test]
fn splitting_the_rows_changes_no_bit() {
    let c = case(64, 19, 8, 5);
    let stride = c.stride;
    for k in Kernels::available() {
        let mut whole = vec![0.0; 19];
        (k.dot_rows_f32)(&c.q[..64], &c.rows, stride, &mut whole);
        let mut acc_whole = c.out0[..64].to_vec();
        (k.axpy_rows_f32)(&c.q[..19], &c.rows, stride, &mut acc_whole);
        for cut in 1..19 {
            let mut parts = [0.0f32; 19];
            let (a, b) = parts.split_at_mut(cut);
            (k.dot_rows_f32)(&c.q[..64], &c.rows, stride, a);
            (k.dot_rows_f32)(&c.q[..64], &c.rows[cut * stride..], stride, b);
            assert!(
                parts
                    .iter()
                    .zip(&whole)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{}: scores split at {cut}",
                k.tier.name()
            );
            let mut acc = c.out0[..64].to_vec();
            (k.axpy_rows_f32)(&c.q[..cut], &c.rows, stride, &mut acc);
            (k.axpy_rows_f32)(&c.q[cut..19], &c.rows[cut * stride..], stride, &mut acc);
            assert!(
                acc.iter()
                    .zip(&acc_whole)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{}: weighted sum split at {cut}",
                k.tier.name()
            );
        }
    }
}

/// Rows that do not fit: a caller bug, asserted in debug builds, NaN in release builds.
#[test]
fn rows_that_do_not_fit_are_refused() {
    for k in Kernels::available() {
        let rows = vec![1.0f32; 10];
        let q = [1.0f32; 4];
        let mut out = [0.0f32; 3]; // 3 rows of 4 at stride 4 need 12 elements
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (k.dot_rows_f32)(&q, &rows, 4, &mut out)
        }));
        if cfg!(debug_assertions) {
            assert!(r.is_err(), "{}: debug builds assert", k.tier.name());
        } else {
            assert!(out.iter().all(|v| v.is_nan()), "{}: {out:?}", k.tier.name());
        }
    }
}

fn dot_rows_skipping_last(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = out.len().saturating_sub(1);
    scalar::dot_rows_f32(q, rows, stride, &mut out[..n]);
}
fn axpy_rows_first_only(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    scalar::axpy_rows_f32(&w[..w.len().min(1)], rows, stride, out);
}

#[test]
fn comparison_catches_wrong_kernels() {
    let mut wrong = *Kernels::scalar();
    wrong.dot_rows_f32 = dot_rows_skipping_last;
    assert!(check_rows(&wrong, &case(16, 9, 0, 2)).is_err());
    let mut wrong = *Kernels::scalar();
    wrong.axpy_rows_f32 = axpy_rows_first_only;
    assert!(check_rows(&wrong, &case(16, 9, 0, 2)).is_err());
    compare_tier(Kernels::scalar()).unwrap();
}
