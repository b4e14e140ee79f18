//! Every SIMD tier this CPU can run against the scalar reference, entry by entry of the `Kernels`
//! table, on random inputs whose lengths exercise every tail: n = 1..=9 blocks (1..=4 super-blocks
//! for K types, any n in 1..=300 for f32/f16), 1..=9 rows.
//!
//! Tolerances (per output):
//! - matvec / dot: |tier − scalar| ≤ 2·(k + 8)·ε_f32·S, where S = Σ|terms| of the dot (weights'
//!   offset terms m / 63·dmin counted at full size, since d·q and the offset can cancel) and k the
//!   number of f32 additions a straightforward implementation makes (n for f32/f16, 2 per block for
//!   quantized types, whose within-block sums are exact integers). Any order of f32 accumulation
//!   (SIMD lanes, FMA) stays inside this bound.
//! - axpy: per element ≤ 2·ε·(|y| + |a·x|) (FMA or not).
//! - quantizers: the scale must be bit-identical for Q8_0/Q8_1 (f16 of amax/127) and within 2 ulp for
//!   Q8_K (f32 1/iscale); each quant may differ by at most 1, and only where the scalar's scaled value
//!   is within 1e-4 of a rounding tie (ggml's reference rounds ties away from zero, SIMD
//!   round-to-nearest instructions round them to even, both are accepted); Q8_1's `s` within the
//!   implied Σq difference · d plus one f16 ulp; Q8_K's bsums must be the sums of the tier's own quants.
//!
//! `EDGE_RUN_EXPECT_TIERS=avx2,avx512vnni` (comma list) makes the run fail if a named tier is not
//! available here, so a CI machine that lost a CPU feature cannot pass silently.
mod common;
use common::*;
use edge_run_kernels::scalar;
use edge_run_kernels::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// An 8-byte-aligned byte buffer of `len` bytes (so Q8_K blocks can be viewed in place).
fn aligned(len: usize) -> Vec<u64> {
    vec![0u64; len.div_ceil(8)]
}

fn quantize_act(ty: QuantType, x: &[f32]) -> (Vec<u64>, usize) {
    let vdt = ty.vec_dot_type();
    let len = vdt.row_bytes(x.len()).unwrap();
    let mut buf = aligned(len);
    let q = Kernels::scalar().quantize(vdt).unwrap();
    q(x, &mut bytemuck::cast_slice_mut(&mut buf)[..len]);
    (buf, len)
}

/// Compare `tier`'s matvec for `ty` with scalar's on `rows` random rows of `n` elements.
fn check_matvec(
    tier: &Kernels,
    ty: QuantType,
    n: usize,
    rows: usize,
    seed: u64,
) -> Result<(), String> {
    let mut g = Rng(seed);
    let w = weights(ty, n, rows, &mut g);
    let x = g.activations(n, Special::Ties);
    let (buf, len) = quantize_act(ty, &x);
    let xq = &bytemuck::cast_slice::<u64, u8>(&buf)[..len];
    let mut want = vec![0.0f32; rows];
    (Kernels::scalar().matvec(ty).unwrap())(n, &w, xq, &mut want);
    let mut got = vec![f32::NAN; rows];
    (tier.matvec(ty).unwrap())(n, &w, xq, &mut got);
    let rb = ty.row_bytes(n).unwrap();
    let k = match ty {
        QuantType::F32 | QuantType::F16 => n,
        _ => 2 * (n / ty.block_size()),
    } as f64;
    for r in 0..rows {
        let tol = dot_tol(k, magnitude(ty, n, &w[r * rb..(r + 1) * rb], xq));
        if !within(got[r], want[r], tol) {
            let d = (got[r] as f64 - want[r] as f64).abs();
            return Err(format!(
                "{} matvec_{}: n={n} rows={rows} seed={seed:#x} row {r}: tier {:e}, scalar {:e}, |diff| {d:e} > tol {tol:e}",
                tier.tier.name(),
                ty.name(),
                got[r],
                want[r]
            ));
        }
    }
    Ok(())
}

fn near_tie(v: f32) -> bool {
    let a = v.abs() as f64;
    ((a - a.floor()) - 0.5).abs() < 1e-4
}

/// Compare `tier`'s quantizer for `vdt` with scalar's on `nb` blocks.
fn check_quantizer(tier: &Kernels, vdt: QuantType, nb: usize, seed: u64) -> Result<(), String> {
    let mut g = Rng(seed);
    let bs = vdt.block_size();
    let x = g.activations(nb * bs, Special::Ties);
    let len = vdt.row_bytes(x.len()).unwrap();
    let mut a = aligned(len);
    let mut b = aligned(len);
    (Kernels::scalar().quantize(vdt).unwrap())(&x, &mut bytemuck::cast_slice_mut(&mut a)[..len]);
    (tier.quantize(vdt).unwrap())(&x, &mut bytemuck::cast_slice_mut(&mut b)[..len]);
    let (want, got) = (
        &bytemuck::cast_slice::<u64, u8>(&a)[..len],
        &bytemuck::cast_slice::<u64, u8>(&b)[..len],
    );
    let name = tier.tier.name();
    let ts = vdt.type_size();
    for blk in 0..nb {
        let (wb, gb) = (
            &want[blk * ts..(blk + 1) * ts],
            &got[blk * ts..(blk + 1) * ts],
        );
        let xb = &x[blk * bs..(blk + 1) * bs];
        let ctx = |what: &str| {
            format!(
                "{name} quantize_{}: nb={nb} seed={seed:#x} block {blk}: {what}",
                vdt.name()
            )
        };
        // scaled values as the scalar reference computes them, for the tie rule
        let (qoff, scaled): (usize, Vec<f32>) = match vdt {
            QuantType::Q8_0 | QuantType::Q8_1 => {
                if wb[..2] != gb[..2] {
                    return Err(ctx(&format!("d {} vs {}", f16_at(gb, 0), f16_at(wb, 0))));
                }
                let amax = xb
                    .iter()
                    .fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                (
                    if vdt == QuantType::Q8_0 { 2 } else { 4 },
                    xb.iter().map(|v| v * id).collect(),
                )
            }
            _ => {
                let dw = f32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]);
                let dg = f32::from_le_bytes([gb[0], gb[1], gb[2], gb[3]]);
                if (dw.to_bits() as i64 - dg.to_bits() as i64).abs() > 2 {
                    return Err(ctx(&format!("d {dg:e} vs {dw:e}")));
                }
                let mut max = 0.0f32;
                let mut amax = 0.0f32;
                for &v in xb {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let is = if amax == 0.0 { 0.0 } else { -127.0 / max };
                (4, xb.iter().map(|v| is * v).collect())
            }
        };
        let mut sum_diff = 0i64;
        for i in 0..bs {
            let (qw, qg) = (wb[qoff + i] as i8 as i64, gb[qoff + i] as i8 as i64);
            if qw != qg {
                if (qw - qg).abs() > 1 || !near_tie(scaled[i]) {
                    return Err(ctx(&format!(
                        "q[{i}] {qg} vs {qw} (x = {:e}, scaled {})",
                        xb[i], scaled[i]
                    )));
                }
                sum_diff += qg - qw;
            }
        }
        match vdt {
            QuantType::Q8_1 => {
                let (sw, sg) = (f16_at(wb, 2) as f64, f16_at(gb, 2) as f64);
                let d = f16_at(wb, 0) as f64;
                let tol = (sum_diff.abs() as f64) * d * 1.01 + sw.abs() * 2f64.powi(-10) + 1e-7 * d;
                if (sw - sg).abs() > tol {
                    return Err(ctx(&format!("s {sg} vs {sw}")));
                }
            }
            QuantType::Q8K => {
                for j in 0..16 {
                    let bsum = i16::from_le_bytes([gb[4 + 256 + 2 * j], gb[4 + 256 + 2 * j + 1]]);
                    let own: i16 = (0..16).map(|i| gb[4 + 16 * j + i] as i8 as i16).sum();
                    if bsum != own {
                        return Err(ctx(&format!(
                            "bsums[{j}] = {bsum}, its quants sum to {own}"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_dot_axpy(tier: &Kernels, n: usize, seed: u64) -> Result<(), String> {
    let mut g = Rng(seed);
    let a: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let b = g.activations(n.div_ceil(32) * 32, Special::Ties)[..n].to_vec();
    let want = (Kernels::scalar().dot_f32)(&a, &b);
    let got = (tier.dot_f32)(&a, &b);
    let s: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs() as f64).sum();
    if !within(got, want, dot_tol(n as f64, s)) {
        return Err(format!(
            "{} dot_f32 n={n} seed={seed:#x}: {got:e} vs {want:e}",
            tier.tier.name()
        ));
    }
    let alpha = g.normal();
    let mut yw: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let mut yg = yw.clone();
    let y0 = yw.clone();
    (Kernels::scalar().axpy_f32)(alpha, &a, &mut yw);
    (tier.axpy_f32)(alpha, &a, &mut yg);
    for i in 0..n {
        let tol = 2.0 * EPS * (y0[i].abs() as f64 + (alpha * a[i]).abs() as f64) + 1e-40;
        if !within(yg[i], yw[i], tol) {
            return Err(format!(
                "{} axpy_f32 n={n} seed={seed:#x} element {i}: {} vs {}",
                tier.tier.name(),
                yg[i],
                yw[i]
            ));
        }
    }
    Ok(())
}

/// Run every comparison for one tier with proptest-generated sizes and seeds.
fn compare_tier(tier: &'static Kernels, cases: u32) -> Result<(), String> {
    let mut runner = proptest_runner(cases);
    let strat = (
        0usize..QuantType::WEIGHTS.len(),
        1usize..=9,
        1usize..=300,
        1usize..=9,
        any::<u64>(),
    );
    runner
        .run(&strat, |(ti, nblocks, nfloat, rows, seed)| {
            let ty = QuantType::WEIGHTS[ti];
            let n = match ty {
                QuantType::F32 | QuantType::F16 => nfloat,
                _ => n_for(ty, nblocks),
            };
            check_matvec(tier, ty, n, rows, seed).map_err(TestCaseError::fail)?;
            let vdt = QuantType::ACTIVATIONS[ti % 3];
            let nb = if vdt == QuantType::Q8K {
                1 + (nblocks - 1) % 4
            } else {
                nblocks
            };
            check_quantizer(tier, vdt, nb, seed).map_err(TestCaseError::fail)?;
            check_dot_axpy(tier, nfloat - 1, seed).map_err(TestCaseError::fail)?;
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    // Plus every (type, block count, row count) combination once, so no tail is left to chance.
    for (ti, &ty) in QuantType::WEIGHTS.iter().enumerate() {
        let counts: Vec<usize> = match ty {
            QuantType::F32 | QuantType::F16 => (1..=67).collect(),
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => (1..=4).map(|k| 256 * k).collect(),
            _ => (1..=9).map(|k| 32 * k).collect(),
        };
        for n in counts {
            for rows in 1..=9 {
                check_matvec(tier, ty, n, rows, (ti * 1000 + n * 10 + rows) as u64)?;
            }
        }
    }
    for (vi, &vdt) in QuantType::ACTIVATIONS.iter().enumerate() {
        for nb in 1..=9 {
            for s in 0..4u64 {
                check_quantizer(tier, vdt, nb, s * 100 + vi as u64 * 10 + nb as u64)?;
            }
        }
    }
    for n in 0..=70 {
        check_dot_axpy(tier, n, n as u64)?;
    }
    Ok(())
}

#[test]
fn expected_tiers_are_available() {
    let avail: Vec<&str> = Kernels::available().map(|k| k.tier.name()).collect();
    eprintln!("available tiers: {}", avail.join(", "));
    assert_eq!(avail.first(), Some(&"scalar"), "scalar must be first");
    let missing: Vec<String> = expected_tiers()
        .into_iter()
        .filter(|t| !avail.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "EDGE_RUN_EXPECT_TIERS names tiers that are not available on this machine: {missing:?} (available: {avail:?})"
    );
}

#[test]
fn every_tier_matches_scalar() {
    compare_every_tier("matvec/quantize/dot/axpy", |k| compare_tier(k, 256));
}

// ------------------------------------------------------------------------------------------------
// The comparison itself must be able to fail: feed it deliberately wrong tables.
// ------------------------------------------------------------------------------------------------

fn drop_last_block_q4_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    // Wrong on purpose: skips the last block of each row.
    let rb = QuantType::Q4_0.row_bytes(n).unwrap();
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb - 18];
        let mut t = [0.0f32];
        scalar::matvec_q4_0(n - 32, row, xq, &mut t);
        *o = t[0];
    }
}

fn no_fifth_bit_q5_0(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    // Wrong on purpose: clears every block's qh (drops the fifth bits) before the scalar product.
    let mut w = w.to_vec();
    for blk in w.chunks_exact_mut(22) {
        blk[2..6].fill(0);
    }
    scalar::matvec_q5_0(n, &w, xq, out);
}

fn no_min_q5_1(n: usize, w: &[u8], xq: &[u8], out: &mut [f32]) {
    // Wrong on purpose: forgets the m·s term of every block.
    let mut w = w.to_vec();
    for blk in w.chunks_exact_mut(24) {
        blk[2..4].fill(0);
    }
    scalar::matvec_q5_1(n, &w, xq, out);
}

fn round_all_half_up_q8_0(x: &[f32], out: &mut [u8]) {
    // Wrong on purpose: rounds every quant of the scalar result up by one when it is below 127.
    scalar::quantize_q8_0(x, out);
    for blk in out.chunks_exact_mut(34) {
        for q in &mut blk[2..] {
            if (*q as i8) < 127 && (*q as i8) > -127 {
                *q = ((*q as i8) + 1) as u8;
            }
        }
    }
}

fn bad_bsums_q8_k(x: &[f32], out: &mut [u8]) {
    scalar::quantize_q8_k(x, out);
    for blk in out.chunks_exact_mut(292) {
        blk[4 + 256] ^= 1;
    }
}

fn sloppy_dot(a: &[f32], b: &[f32]) -> f32 {
    // Wrong on purpose: a remainder-loop bug that ignores the last n % 8 elements.
    let n = a.len() - a.len() % 8;
    scalar::dot_f32(&a[..n], &b[..n])
}

fn broken() -> Kernels {
    Kernels {
        tier: Tier::Avx2,
        matvec_q4_0: drop_last_block_q4_0,
        matvec_q5_0: no_fifth_bit_q5_0,
        matvec_q5_1: no_min_q5_1,
        quantize_q8_0: round_all_half_up_q8_0,
        quantize_q8_k: bad_bsums_q8_k,
        dot_f32: sloppy_dot,
        ..*Kernels::scalar()
    }
}

#[test]
fn comparison_catches_wrong_kernels() {
    let broken = broken();
    assert!(check_matvec(&broken, QuantType::Q4_0, 64, 3, 1).is_err());
    assert!(
        check_matvec(&broken, QuantType::Q4_1, 64, 3, 1).is_ok(),
        "unchanged entries pass"
    );
    assert!(check_matvec(&broken, QuantType::Q5_0, 64, 3, 1).is_err());
    assert!(check_matvec(&broken, QuantType::Q5_1, 64, 3, 1).is_err());
    assert!(check_quantizer(&broken, QuantType::Q8_0, 3, 5).is_err());
    assert!(check_quantizer(&broken, QuantType::Q8K, 1, 5).is_err());
    assert!(check_quantizer(&broken, QuantType::Q8_1, 3, 5).is_ok());
    let mut caught = 0;
    for seed in 0..16 {
        // 13 elements: the broken dot drops 5 of them; only an all-zero activation block hides that.
        let mut g = Rng(seed);
        let a: Vec<f32> = (0..13).map(|_| g.normal()).collect();
        let b = g.activations(32, Special::Ties);
        let hidden = b[8..13].iter().all(|&v| v == 0.0);
        let r = check_dot_axpy(&broken, 13, seed);
        assert!(
            r.is_err() || hidden,
            "seed {seed}: the dot tail bug went unnoticed"
        );
        caught += r.is_err() as u32;
        let _ = a;
    }
    assert!(caught >= 8, "only {caught} of 16 caught");
    // And the scalar table agrees with itself everywhere (the tolerances are not vacuous-failing).
    compare_tier(Kernels::scalar(), 16).unwrap();
}
