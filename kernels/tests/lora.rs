//! LoRA kernels: the scalar reference against an independent f64 computation, and every tier this CPU
//! can run against the scalar reference, on random inputs (ranks 1..=64 including odd ones, widths that
//! are not multiples of any vector width, several adapters per call, row sub-ranges, strided batches).
//!
//! `EDGE_RUN_EXPECT_TIERS=scalar,avx2,...` makes the run fail if one of the named tiers cannot run here
//! (names as in `Tier::name`; `neon-dotprod` is served by the NEON LoRA tier on a CPU with dotprod).
mod common;
use common::{expected_tiers, Rng};
use edge_run_kernels::lora::{total_rank, LoraKernels, LoraRef};
use half::f16;

fn h(b: u16) -> f64 {
    f16::from_bits(b).to_f64()
}

struct Owned {
    rank: usize,
    a: Vec<u16>,
    b: Vec<u16>,
    scale: f32,
}

fn refs(v: &[Owned], n: usize, m: usize) -> Vec<LoraRef<'_>> {
    v.iter()
        .map(|o| LoraRef {
            rank: o.rank,
            n_in: n,
            n_out: m,
            a: &o.a,
            b: &o.b,
            scale: o.scale,
        })
        .collect()
}

fn make(rng: &mut Rng, ranks: &[usize], n: usize, m: usize) -> Vec<Owned> {
    ranks
        .iter()
        .map(|&r| Owned {
            rank: r,
            a: rng.halves(r * n, 0.5),
            b: rng.halves(m * r, 0.5),
            scale: 0.25 + 2.0 * rng.uniform().abs(),
        })
        .collect()
}

/// f64 reference of the shrink for one token: (values, Σ|terms| per value).
fn ref_shrink(ads: &[Owned], n: usize, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut t = vec![];
    let mut mag = vec![];
    for ad in ads {
        for k in 0..ad.rank {
            let row = &ad.a[k * n..(k + 1) * n];
            t.push(row.iter().zip(x).map(|(&w, &x)| h(w) * x).sum());
            mag.push(row.iter().zip(x).map(|(&w, &x)| (h(w) * x).abs()).sum());
        }
    }
    (t, mag)
}

/// f64 reference of the expand for one token and row `j`: (delta, Σ|terms|).
fn ref_expand_row(ads: &[Owned], t: &[f64], j: usize) -> (f64, f64) {
    let (mut d, mut mag, mut off) = (0.0, 0.0, 0);
    for ad in ads {
        let r = ad.rank;
        for k in 0..r {
            let term = ad.scale as f64 * h(ad.b[j * r + k]) * t[off + k];
            d += term;
            mag += term.abs();
        }
        off += r;
    }
    (d, mag)
}

fn close(got: f32, want: f64, mag: f64, what: &str) {
    // f32 accumulation of up to ~1600 terms in any order: well within 1e-5 of the sum of magnitudes.
    let tol = 1e-5 * mag + 1e-6;
    assert!(
        ((got as f64) - want).abs() <= tol,
        "{what}: got {got}, want {want} (|diff| {} > tol {tol})",
        ((got as f64) - want).abs()
    );
}

fn tiers() -> Vec<&'static LoraKernels> {
    let v: Vec<_> = LoraKernels::available().collect();
    let names: Vec<_> = v.iter().map(|k| k.tier.name()).collect();
    println!("LoRA tiers run: {}", names.join(", "));
    v
}

/// One decode step (shrink then expand over `[r0, r1)` in chunks) for every tier, against the f64 reference.
fn check_decode(rng: &mut Rng, ranks: &[usize], n: usize, m: usize) {
    let ads = make(rng, ranks, n, m);
    let lr = refs(&ads, n, m);
    let r = total_rank(&lr);
    let x = rng.floats(n);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (t_ref, t_mag) = ref_shrink(&ads, n, &x64);
    let y0 = rng.floats(m);
    let r0 = rng.below(m / 2 + 1);
    let r1 = r0 + rng.below(m - r0 + 1);
    let chunk = 1 + rng.below(40);
    for k in LoraKernels::available() {
        let tier = k.tier.name();
        let mut t = vec![f32::NAN; r];
        (k.shrink)(&lr, &x, &mut t);
        for i in 0..r {
            close(
                t[i],
                t_ref[i],
                t_mag[i],
                &format!("{tier} shrink ranks {ranks:?} n {n} t[{i}]"),
            );
        }
        // Expand on the reference t (f32-rounded) so that the check isolates the expand.
        let t32: Vec<f32> = t_ref.iter().map(|&v| v as f32).collect();
        let t32_64: Vec<f64> = t32.iter().map(|&v| v as f64).collect();
        let mut y = y0.clone();
        let mut j = r0;
        while j < r1 {
            let e = (j + chunk).min(r1);
            (k.expand)(&lr, &t32, j, &mut y[j..e]);
            j = e;
        }
        for jj in 0..m {
            if jj < r0 || jj >= r1 {
                assert_eq!(
                    y[jj].to_bits(),
                    y0[jj].to_bits(),
                    "{tier} expand touched row {jj} outside {r0}..{r1}"
                );
            } else {
                let (d, mag) = ref_expand_row(&ads, &t32_64, jj);
                close(
                    y[jj],
                    y0[jj] as f64 + d,
                    mag + (y0[jj] as f64).abs(),
                    &format!("{tier} expand ranks {ranks:?} m {m} row {jj}"),
                );
            }
        }
    }
}

/// A prompt batch for every tier against the scalar tier (which `check_decode` ties to the f64 reference),
/// plus the batch kernels against the decode kernels of the same tier.
fn check_batch(rng: &mut Rng, ranks: &[usize], n: usize, m: usize, n_tok: usize) {
    let ads = make(rng, ranks, n, m);
    let lr = refs(&ads, n, m);
    let r = total_rank(&lr);
    let x = rng.floats(n_tok * n);
    let r0 = rng.below(m / 2 + 1);
    let r1 = r0 + rng.below(m - r0 + 1);
    let w = r1 - r0;
    let ldy = w + rng.below(5);
    let sentinel = 12345.0f32;
    let y0: Vec<f32> = (0..n_tok * ldy)
        .map(|i| if i % ldy < w { rng.uniform() } else { sentinel })
        .collect();
    let y0 = if n_tok > 0 {
        y0[..(n_tok - 1) * ldy + w].to_vec()
    } else {
        y0
    };

    let s = LoraKernels::scalar();
    let mut t_s = vec![f32::NAN; n_tok * r];
    (s.shrink_batch)(&lr, n_tok, &x, &mut t_s);
    let mut y_s = y0.clone();
    (s.expand_batch)(&lr, n_tok, &t_s, r0, r1, &mut y_s, ldy);

    for k in LoraKernels::available() {
        let tier = k.tier.name();
        let mut t = vec![f32::NAN; n_tok * r];
        (k.shrink_batch)(&lr, n_tok, &x, &mut t);
        for tok in 0..n_tok {
            // Batch == decode, per token.
            let mut t1 = vec![f32::NAN; r];
            (k.shrink)(&lr, &x[tok * n..(tok + 1) * n], &mut t1);
            for i in 0..r {
                let (b, s1, sc) = (t[tok * r + i], t1[i], t_s[tok * r + i]);
                let mag: f64 = {
                    let (ad, kk) = locate(&ads, i);
                    ad.a[kk * n..(kk + 1) * n]
                        .iter()
                        .zip(&x[tok * n..])
                        .map(|(&w, &x)| (h(w) * x as f64).abs())
                        .sum()
                };
                close(
                    b,
                    sc as f64,
                    mag,
                    &format!("{tier} shrink_batch T {n_tok} tok {tok} t[{i}] vs scalar"),
                );
                close(
                    b,
                    s1 as f64,
                    mag,
                    &format!("{tier} shrink_batch vs shrink tok {tok} t[{i}]"),
                );
            }
        }
        let mut y = y0.clone();
        (k.expand_batch)(&lr, n_tok, &t_s, r0, r1, &mut y, ldy);
        for tok in 0..n_tok {
            let t64: Vec<f64> = t_s[tok * r..(tok + 1) * r]
                .iter()
                .map(|&v| v as f64)
                .collect();
            for col in 0..ldy {
                let idx = tok * ldy + col;
                if idx >= y.len() {
                    break;
                }
                if col >= w {
                    assert_eq!(
                        y[idx], sentinel,
                        "{tier} expand_batch wrote into the stride gap at tok {tok} col {col}"
                    );
                    continue;
                }
                let (_, mag) = ref_expand_row(&ads, &t64, r0 + col);
                let mag = mag + (y0[idx] as f64).abs();
                close(
                    y[idx],
                    y_s[idx] as f64,
                    mag,
                    &format!(
                        "{tier} expand_batch T {n_tok} tok {tok} row {} vs scalar",
                        r0 + col
                    ),
                );
            }
        }
    }
}

fn locate(ads: &[Owned], mut i: usize) -> (&Owned, usize) {
    for ad in ads {
        if i < ad.rank {
            return (ad, i);
        }
        i -= ad.rank;
    }
    unreachable!()
}

const WIDTHS: [usize; 14] = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 577];

/// A random (n_in, n_out) from `WIDTHS`.
fn shape(rng: &mut Rng) -> (usize, usize) {
    let n = WIDTHS[rng.below(WIDTHS.len())];
    (n, WIDTHS[rng.below(WIDTHS.len())])
}

/// The ranks of 1..=`max_adapters` adapters, each in 1..=64.
fn ranks(rng: &mut Rng, max_adapters: usize) -> Vec<usize> {
    let na = 1 + rng.below(max_adapters);
    (0..na).map(|_| 1 + rng.below(64)).collect()
}

#[test]
fn decode_every_rank_one_adapter() {
    tiers();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for rank in 1..=64 {
        let (n, m) = shape(&mut rng);
        check_decode(&mut rng, &[rank], n, m);
    }
    // The real model's shapes.
    check_decode(&mut rng, &[8], 576, 576);
    check_decode(&mut rng, &[8], 576, 1536);
    check_decode(&mut rng, &[16], 1536, 576);
    check_decode(&mut rng, &[4], 576, 192);
}

#[test]
fn decode_several_adapters() {
    tiers();
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..60 {
        let ranks = ranks(&mut rng, 4);
        let (n, m) = shape(&mut rng);
        check_decode(&mut rng, &ranks, n, m);
    }
    check_decode(&mut rng, &[8, 4], 576, 1536);
    check_decode(&mut rng, &[8, 16, 4], 576, 576);
}

#[test]
fn batch_every_tier() {
    tiers();
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for rank in 1..=64 {
        let (n, m) = shape(&mut rng);
        let n_tok = 1 + rng.below(9);
        check_batch(&mut rng, &[rank], n, m, n_tok);
    }
    for _ in 0..40 {
        let ranks = ranks(&mut rng, 3);
        let (n, m) = shape(&mut rng);
        let n_tok = rng.below(10);
        check_batch(&mut rng, &ranks, n, m, n_tok);
    }
    check_batch(&mut rng, &[8, 4], 576, 1536, 13);
    check_batch(&mut rng, &[40, 8, 1], 100, 577, 37);
}

#[test]
fn no_adapters_is_a_no_op() {
    for k in LoraKernels::available() {
        let x = [1.0f32; 7];
        let mut t: [f32; 0] = [];
        (k.shrink)(&[], &x, &mut t);
        let mut y = [3.0f32; 5];
        (k.expand)(&[], &t, 0, &mut y);
        assert_eq!(y, [3.0; 5], "{}", k.tier.name());
    }
}

#[test]
fn shape_mismatch_panics_in_every_tier() {
    let a = vec![0u16; 8 * 10];
    let b = vec![0u16; 12 * 8];
    for k in LoraKernels::available() {
        let bad_a = [LoraRef {
            rank: 8,
            n_in: 11,
            n_out: 12,
            a: &a,
            b: &b,
            scale: 1.0,
        }];
        let good = [LoraRef {
            rank: 8,
            n_in: 10,
            n_out: 12,
            a: &a,
            b: &b,
            scale: 1.0,
        }];
        let x = [0f32; 10];
        let r = std::panic::catch_unwind(|| {
            let mut t = vec![0f32; 8];
            (k.shrink)(&bad_a, &x[..], &mut t)
        });
        assert!(
            r.is_err(),
            "{}: A of the wrong size accepted",
            k.tier.name()
        );
        let r = std::panic::catch_unwind(|| {
            let mut t = vec![0f32; 7];
            (k.shrink)(&good, &x[..], &mut t)
        });
        assert!(r.is_err(), "{}: short t accepted", k.tier.name());
        let r = std::panic::catch_unwind(|| {
            let t = vec![0f32; 8];
            let mut y = vec![0f32; 5];
            (k.expand)(&good, &t, 10, &mut y)
        });
        assert!(r.is_err(), "{}: rows 10..15 of 12 accepted", k.tier.name());
        let r = std::panic::catch_unwind(|| {
            let t = vec![0f32; 16];
            let mut y = vec![0f32; 12 + 11];
            (k.expand_batch)(&good, 2, &t, 0, 12, &mut y, 12)
        });
        assert!(
            r.is_err(),
            "{}: y too short for the batch accepted",
            k.tier.name()
        );
    }
}

#[test]
fn expected_tiers_present() {
    let ran: Vec<&str> = tiers().iter().map(|k| k.tier.name()).collect();
    let want = expected_tiers();
    if want.is_empty() {
        println!("EDGE_RUN_EXPECT_TIERS not set; tiers that ran: {ran:?}");
    }
    for name in &want {
        let k = LoraKernels::by_name(name);
        assert!(k.is_some(), "EDGE_RUN_EXPECT_TIERS names `{name}` but this CPU/build has no such LoRA tier (ran: {ran:?})");
        println!(
            "expected tier {name}: served by LoRA tier {}",
            k.unwrap().tier.name()
        );
    }
}

#[test]
fn for_tier_pairs_with_kernel_tiers() {
    use edge_run_kernels::Tier;
    assert_eq!(LoraKernels::for_tier(Tier::Scalar).tier, Tier::Scalar);
    let best = LoraKernels::best().tier;
    for t in [
        Tier::Scalar,
        Tier::Avx2,
        Tier::Avx512,
        Tier::Neon,
        Tier::NeonDotprod,
    ] {
        let k = LoraKernels::for_tier(t);
        assert!(
            LoraKernels::available().any(|a| a.tier == k.tier),
            "for_tier({t:?}) gave an unavailable tier"
        );
        if LoraKernels::by_name(t.name()).is_some() {
            // A tier this CPU runs maps to itself (or, for neon-dotprod, to neon).
            let want = if t == Tier::NeonDotprod {
                Tier::Neon
            } else {
                t
            };
            assert_eq!(k.tier, want, "for_tier({t:?})");
        }
    }
    println!("best LoRA tier: {}", best.name());
}
