//! The two-activation matvec (`MatVec2`, the `q8x2` activation mode) of every tier this CPU runs.
//!
//! - The scalar tier's `matvec2` must equal, bit for bit, the scalar `matvec` against `xq` plus the
//!   scalar `matvec` against `xr` (it is defined as that; the sum is one f32 add per row).
//! - Every SIMD tier's `matvec2` is compared with the scalar `matvec2` for every quantized type, on
//!   random shapes (proptest: sizes, seeds) and on every (block count, row count) combination of
//!   n = 1..=9 blocks (1..=4 super-blocks for K types) × rows 1..=9 plus 31..=33, 64, 65 (the
//!   composed two-pass entries work in 32-row sub-chunks). The activations are the `q8x2` pair the
//!   `Quantize2` reference writes (the `MatVec2` contract: `xr` is `xq`'s residual row, its block
//!   scales exactly `xq`'s / 256, which the SIMD tiers rely on to add the two integer sums in one
//!   i32), of two activation patterns (`pair` = outliers, else exact rounding ties). Activations sit
//!   at odd addresses.
//! - Tolerance (per output), the matvec tier test's scheme for a sum of two dot products:
//!   |tier − scalar| ≤ 2·(k + 8)·ε_f32·(S_q + S_r), with S_x = Σ|terms| of the dot with activation x
//!   (offset terms counted at full size, m·s per block for Q4_1/Q5_1) and k = 4 f32 additions per
//!   block + 1.
//! - F32/F16 have no `matvec2` (None) in any tier; every quantized type has one in every tier.
//! - Length contract: zeros for n = 0; NaN (release builds) when `xr` or `w` is too short.
//! - The comparison can fail: deliberately wrong `matvec2`s (residual ignored, `xq` used twice, last
//!   block of the residual dropped) are caught.
//!
//! `EDGE_RUN_EXPECT_TIERS=avx2,avx512vnni` (comma list) makes the run fail if a named tier was not
//! compared, as in tests/tiers.rs.
mod common;
use common::*;
use edge_run_kernels::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// `x` quantized to `vdt` by the scalar quantizer, at byte offset 1 of the returned buffer.
fn quantize(vdt: QuantType, x: &[f32]) -> Vec<u8> {
    let len = vdt.row_bytes(x.len()).unwrap();
    let mut buf = vec![0u8; len + 1];
    (Kernels::scalar().quantize(vdt).unwrap())(x, &mut buf[1..]);
    buf
}

/// The `q8x2` pair for `x` from the scalar `Quantize2` (the reference): (xq, xr), each at byte
/// offset 1 of its buffer.
fn q8x2_pair(vdt: QuantType, x: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let len = vdt.row_bytes(x.len()).unwrap();
    let (mut q, mut r) = (vec![0u8; len + 1], vec![0u8; len + 1]);
    (Kernels::scalar().quantize2(vdt).unwrap())(x, &mut q[1..], &mut r[1..]);
    (q, r)
}

/// Compare `mv2` (a tier's entry for `ty`, named `name`) with the scalar `matvec2` on `rows` random
/// rows of `n` elements; `pair` picks the activation pattern of the q8x2 pair (outliers, or ties).
fn check(
    name: &str,
    mv2: MatVec2,
    ty: QuantType,
    n: usize,
    rows: usize,
    seed: u64,
    pair: bool,
) -> Result<(), String> {
    let mut g = Rng(seed);
    let w = weights(ty, n, rows, &mut g);
    let vdt = ty.vec_dot_type();
    let special = if pair {
        Special::Outlier
    } else {
        Special::Ties
    };
    let (xq, xr) = q8x2_pair(vdt, &g.activations(n, special));
    let (xq, xr) = (&xq[1..], &xr[1..]);
    let mut want = vec![0.0f32; rows];
    (Kernels::scalar().matvec2(ty).unwrap())(n, &w, xq, xr, &mut want);
    let mut got = vec![f32::NAN; rows];
    mv2(n, &w, xq, xr, &mut got);
    let rb = ty.row_bytes(n).unwrap();
    let k = (4 * (n / ty.block_size()) + 1) as f64;
    for r in 0..rows {
        let row = &w[r * rb..(r + 1) * rb];
        let tol = dot_tol(k, magnitude(ty, n, row, xq) + magnitude(ty, n, row, xr));
        if !within(got[r], want[r], tol) {
            let d = (got[r] as f64 - want[r] as f64).abs();
            return Err(format!(
                "{name} matvec2_{}: n={n} rows={rows} seed={seed:#x} pair={pair} row {r}: tier {:e}, scalar {:e}, |diff| {d:e} > tol {tol:e}",
                ty.name(),
                got[r],
                want[r]
            ));
        }
    }
    Ok(())
}

fn compare_tier(tier: &'static Kernels, cases: u32) -> Result<(), String> {
    let name = tier.tier.name();
    let mut runner = proptest_runner(cases);
    let strat = (
        0usize..QuantType::QUANTIZED.len(),
        1usize..=9,
        1usize..=70,
        any::<u64>(),
        any::<bool>(),
    );
    runner
        .run(&strat, |(ti, nblocks, rows, seed, pair)| {
            let ty = QuantType::QUANTIZED[ti];
            let mv2 = tier
                .matvec2(ty)
                .expect("every quantized type has a matvec2");
            check(name, mv2, ty, n_for(ty, nblocks), rows, seed, pair).map_err(TestCaseError::fail)
        })
        .map_err(|e| e.to_string())?;
    for (ti, &ty) in QuantType::QUANTIZED.iter().enumerate() {
        let mv2 = tier.matvec2(ty).unwrap();
        let max_blocks = if is_k(ty) { 4 } else { 9 };
        for nblocks in 1..=max_blocks {
            let n = n_for(ty, nblocks);
            for rows in (1..=9).chain([31, 32, 33, 64, 65]) {
                let seed = (ti * 100_000 + n * 100 + rows) as u64;
                check(name, mv2, ty, n, rows, seed, true)?;
                check(name, mv2, ty, n, rows, seed ^ 0x5555, false)?;
            }
        }
    }
    // The model's row widths (SmolLM2-135M: 576, 1536; Gemma 3 1B: 1152, 6912).
    for &ty in QuantType::QUANTIZED {
        let mv2 = tier.matvec2(ty).unwrap();
        for n in [576usize, 1536, 1152, 6912] {
            if n % ty.block_size() == 0 {
                check(name, mv2, ty, n, 37, n as u64, true)?;
            }
        }
    }
    Ok(())
}

#[test]
fn every_tier_matvec2_matches_scalar() {
    compare_every_tier("matvec2", |k| {
        let fused: Vec<&str> = QuantType::QUANTIZED
            .iter()
            .filter(|&&t| k.matvec2_fused(t))
            .map(|t| t.name())
            .collect();
        eprintln!(
            "{}: matvec2 fused for [{}], two passes for the rest",
            k.tier.name(),
            fused.join(", ")
        );
        compare_tier(k, 300)
    });
}

#[test]
fn scalar_matvec2_is_two_matvecs_added() {
    let s = Kernels::scalar();
    let mut checked = 0;
    for (ti, &ty) in QuantType::QUANTIZED.iter().enumerate() {
        for nblocks in 1..=4 {
            let n = n_for(ty, nblocks);
            for rows in [1usize, 5, 32, 33, 70] {
                let mut g = Rng((ti * 1000 + nblocks * 100 + rows) as u64);
                let w = weights(ty, n, rows, &mut g);
                let (xq, xr) = q8x2_pair(ty.vec_dot_type(), &g.activations(n, Special::Outlier));
                let (xq, xr) = (&xq[1..], &xr[1..]);
                let mut a = vec![0.0f32; rows];
                let mut b = vec![0.0f32; rows];
                (s.matvec(ty).unwrap())(n, &w, xq, &mut a);
                (s.matvec(ty).unwrap())(n, &w, xr, &mut b);
                let mut got = vec![f32::NAN; rows];
                (s.matvec2(ty).unwrap())(n, &w, xq, xr, &mut got);
                for r in 0..rows {
                    assert_eq!(
                        got[r].to_bits(),
                        (a[r] + b[r]).to_bits(),
                        "{} n={n} rows={rows} row {r}",
                        ty.name()
                    );
                    checked += 1;
                }
                // The residual contributes (so the pair is not degenerate).
                assert!(
                    b.iter().any(|&v| v != 0.0),
                    "{} residual product all zero",
                    ty.name()
                );
            }
        }
    }
    eprintln!("{checked} scalar rows checked");
}

#[test]
fn q8x2_pair_is_closer_to_float_than_q8() {
    // The point of the mode: W·xq + W·xr approximates W·x much better than W·xq alone.
    let s = Kernels::scalar();
    for &ty in QuantType::QUANTIZED {
        let n = if is_k(ty) { 512 } else { 576 };
        let rows = 16;
        let mut g = Rng(ty as u64 + 7);
        let w = weights(ty, n, rows, &mut g);
        let x: Vec<f32> = (0..n).map(|_| g.normal()).collect();
        let (xq, xr) = q8x2_pair(ty.vec_dot_type(), &x);
        let mut one = vec![0.0f32; rows];
        let mut two = vec![0.0f32; rows];
        (s.matvec(ty).unwrap())(n, &w, &xq[1..], &mut one);
        (s.matvec2(ty).unwrap())(n, &w, &xq[1..], &xr[1..], &mut two);
        let rb = ty.row_bytes(n).unwrap();
        let (mut e1, mut e2) = (0.0f64, 0.0f64);
        for r in 0..rows {
            let mut wd = vec![0.0f32; n];
            assert!(dequantize(ty, &w[r * rb..(r + 1) * rb], &mut wd));
            let exact: f64 = wd.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            e1 += (one[r] as f64 - exact).powi(2);
            e2 += (two[r] as f64 - exact).powi(2);
        }
        assert!(
            e2 * 100.0 < e1,
            "{}: q8x2 error {e2:e} vs q8 error {e1:e}",
            ty.name()
        );
    }
}

#[test]
fn entries_exist_where_they_should() {
    for k in Kernels::available() {
        for ty in [
            QuantType::F32,
            QuantType::F16,
            QuantType::Q8_1,
            QuantType::Q8K,
        ] {
            assert!(k.matvec2(ty).is_none(), "{} {}", k.tier.name(), ty.name());
        }
        for &ty in QuantType::QUANTIZED {
            assert!(k.matvec2(ty).is_some(), "{} {}", k.tier.name(), ty.name());
        }
        assert!(!Kernels::scalar().matvec2_fused(QuantType::Q4_1));
    }
}

#[test]
fn length_contract() {
    for k in Kernels::available() {
        for &ty in QuantType::QUANTIZED {
            let mv2 = k.matvec2(ty).unwrap();
            let n = ty.block_size() * 2;
            let rows = 3;
            let mut g = Rng(1);
            let w = weights(ty, n, rows, &mut g);
            let vdt = ty.vec_dot_type();
            let x = g.activations(n, Special::Outlier);
            let xq = quantize(vdt, &x);
            let xq = &xq[1..];
            let mut out = [1.0f32; 3];
            mv2(0, &w, xq, xq, &mut out);
            assert_eq!(out, [0.0; 3], "{} {} n=0", k.tier.name(), ty.name());
            if cfg!(debug_assertions) {
                continue; // inconsistent lengths are debug assertions
            }
            let mut out = [0.0f32; 3];
            mv2(n, &w, xq, &xq[..xq.len() - 1], &mut out);
            assert!(
                out.iter().all(|v| v.is_nan()),
                "{} {} short xr: {out:?}",
                k.tier.name(),
                ty.name()
            );
            let mut out = [0.0f32; 3];
            mv2(n, &w[..w.len() - 1], xq, xq, &mut out);
            assert!(
                out.iter().all(|v| v.is_nan()),
                "{} {} short w: {out:?}",
                k.tier.name(),
                ty.name()
            );
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("debug build: length mismatches are debug assertions; only n = 0 checked");
    }
}

// Deliberately wrong entries: the comparison must catch them.
fn ignores_residual(n: usize, w: &[u8], xq: &[u8], _xr: &[u8], out: &mut [f32]) {
    scalar::matvec_q4_1(n, w, xq, out);
}
fn quant_twice(n: usize, w: &[u8], xq: &[u8], _xr: &[u8], out: &mut [f32]) {
    scalar::matvec2_q8_0(n, w, xq, xq, out);
}
fn residual_drops_last_block(n: usize, w: &[u8], xq: &[u8], xr: &[u8], out: &mut [f32]) {
    let mut z = xr.to_vec();
    let l = QuantType::Q8K.row_bytes(n).unwrap();
    z[l - 292..l].fill(0);
    scalar::matvec2_q6_k(n, w, xq, &z, out);
}

#[test]
fn comparison_catches_wrong_kernels() {
    for (name, f, ty) in [
        (
            "ignores_residual",
            ignores_residual as MatVec2,
            QuantType::Q4_1,
        ),
        ("quant_twice", quant_twice, QuantType::Q8_0),
        (
            "residual_drops_last_block",
            residual_drops_last_block,
            QuantType::Q6K,
        ),
    ] {
        let mut caught = 0;
        for seed in 0..16 {
            caught += check(name, f, ty, n_for(ty, 2), 4, seed, true).is_err() as u32;
        }
        assert!(caught >= 12, "{name}: only {caught} of 16 caught");
    }
    // The scalar table passes against itself (the check is not failing everything).
    for &ty in QuantType::QUANTIZED {
        check(
            "scalar",
            Kernels::scalar().matvec2(ty).unwrap(),
            ty,
            n_for(ty, 3),
            5,
            9,
            true,
        )
        .unwrap();
    }
}
