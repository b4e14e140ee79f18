//! Shared by the kernel crate's integration tests (`tiers.rs`, `matvec2.rs`, `matvec2_neon.rs`, `lora.rs`,
//! `scalar_exact.rs`): the deterministic generator, random weight rows and activations, the
//! magnitude S = Σ|terms| that scales the dot-product tolerances, and the `EDGE_RUN_EXPECT_TIERS` list.
//! Each test binary uses a part of it.
#![allow(dead_code)]
use edge_run_kernels::{dequantize, F16Bits, Kernels, QuantType, QK_K};

pub const EPS: f64 = f32::EPSILON as f64;

// ------------------------------------------------------------------------------------------------
// Deterministic generator for the bulk data (proptest drives sizes and seeds, and shrinks them)
// ------------------------------------------------------------------------------------------------

/// SplitMix64.
pub struct Rng(pub u64);

/// What the 1-in-8 "special" activation block holds (see `Rng::activations`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Special {
    /// ±127 and then only exact rounding ties (amax 127 → scale 1): the quantizers' tie rules.
    Ties,
    /// Small values and one outlier of 40: a block dominated by one element.
    Outlier,
}

impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        box_muller(u, v)
    }
    /// Uniform in [-1, 1), on a 2^-23 grid.
    pub fn uniform(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
    pub fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    /// `n` f16 bit patterns of uniform values in [-amp, amp).
    pub fn halves(&mut self, n: usize, amp: f32) -> Vec<u16> {
        (0..n)
            .map(|_| half::f16::from_f32(self.uniform() * amp).to_bits())
            .collect()
    }
    /// Activations: Gaussian with a random scale (1e-3..1e3) per 32-block, sometimes (1 in 8) a zero
    /// block, sometimes (1 in 8) a `special` block.
    pub fn activations(&mut self, n: usize, special: Special) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        for blk in x.chunks_mut(32) {
            match self.u64() % 8 {
                0 => {}
                1 => match special {
                    Special::Ties => {
                        blk[0] = if self.u64().is_multiple_of(2) {
                            127.0
                        } else {
                            -127.0
                        };
                        for v in &mut blk[1..] {
                            *v = (self.u64() % 250) as f32 - 124.5;
                        }
                    }
                    Special::Outlier => {
                        for v in blk.iter_mut() {
                            *v = self.normal() * 0.1;
                        }
                        blk[(self.u64() % 32) as usize] = 40.0;
                    }
                },
                _ => {
                    let s = (10f64).powf(self.unit() * 6.0 - 3.0) as f32;
                    for v in blk.iter_mut() {
                        *v = self.normal() * s;
                    }
                }
            }
        }
        x
    }
}

/// A standard normal value from two uniform values in (0, 1) (Box–Muller).
pub fn box_muller(u: f64, v: f64) -> f32 {
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

// ------------------------------------------------------------------------------------------------
// Weights and tolerances
// ------------------------------------------------------------------------------------------------

pub fn f16_at(b: &[u8], off: usize) -> f32 {
    F16Bits([b[off], b[off + 1]]).to_f32()
}

pub fn is_k(ty: QuantType) -> bool {
    ty.block_size() == QK_K
}

/// A row length of `nblocks` blocks of `ty` (for K types, 1..=4 super-blocks, cycling).
pub fn n_for(ty: QuantType, nblocks: usize) -> usize {
    if is_k(ty) {
        QK_K * (1 + (nblocks - 1) % 4)
    } else {
        32 * nblocks
    }
}

/// Random weight rows of `ty` (every quant bit pattern; finite f16 scales, ~N(0, 0.02) for the
/// quantized types' d/m/dmin, N(0, 1) values for F16 and F32).
pub fn weights(ty: QuantType, n: usize, rows: usize, g: &mut Rng) -> Vec<u8> {
    use QuantType::*;
    let rb = ty.row_bytes(n).unwrap();
    let mut w = g.bytes(rb * rows);
    let offs: &[usize] = match ty {
        Q4_0 | Q5_0 | Q8_0 | F16 => &[0],
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q6K => &[208],
        F32 => {
            for c in w.chunks_exact_mut(4) {
                c.copy_from_slice(&g.normal().to_le_bytes());
            }
            return w;
        }
        _ => unreachable!("no random weights for {}", ty.name()),
    };
    let scale = if ty == F16 { 1.0 } else { 0.02 };
    for blk in w.chunks_exact_mut(ty.type_size()) {
        for &o in offs {
            let v = F16Bits::from_f32(g.normal() * scale);
            blk[o..o + 2].copy_from_slice(&v.0);
        }
    }
    w
}

/// Per-element magnitude of a weight row's offset term (m for Q4_1/Q5_1, at most 63·dmin for the K
/// types), to scale tolerances where d·q and the offset cancel.
pub fn offset_mag(ty: QuantType, row: &[u8], i: usize) -> f64 {
    match ty {
        QuantType::Q4_1 => f16_at(row, (i / 32) * 20 + 2).abs() as f64,
        QuantType::Q5_1 => f16_at(row, (i / 32) * 24 + 2).abs() as f64,
        QuantType::Q4K => 63.0 * f16_at(row, (i / QK_K) * 144 + 2).abs() as f64,
        QuantType::Q5K => 63.0 * f16_at(row, (i / QK_K) * 176 + 2).abs() as f64,
        _ => 0.0,
    }
}

/// S = Σ (|w_i| + offset_i)·|x̂_i| for one row against the quantized activation `xq`, from scalar
/// dequantization, plus |m·s| per block for Q4_1/Q5_1 (s is the stored f16 sum, not exactly d·Σq).
pub fn magnitude(ty: QuantType, n: usize, row: &[u8], xq: &[u8]) -> f64 {
    let mut wd = vec![0.0f32; n];
    assert!(dequantize(ty, row, &mut wd));
    let mut xd = vec![0.0f32; n];
    assert!(dequantize(ty.vec_dot_type(), xq, &mut xd));
    let mut s = 0.0;
    for i in 0..n {
        s += (wd[i].abs() as f64 + offset_mag(ty, row, i)) * xd[i].abs() as f64;
    }
    if ty == QuantType::Q4_1 || ty == QuantType::Q5_1 {
        let ts = ty.type_size();
        for b in 0..n / 32 {
            s += (f16_at(row, b * ts + 2) * f16_at(xq, b * 36 + 2)).abs() as f64;
        }
    }
    s
}

/// The tolerance of a dot product made of `k` f32 additions with Σ|terms| = `s`: 2·(k + 8)·ε_f32·S
/// (any order of f32 accumulation, SIMD lanes or FMA, stays inside it).
pub fn dot_tol(k: f64, s: f64) -> f64 {
    2.0 * (k + 8.0) * EPS * s + 1e-35
}

/// `got` is within `tol` of `want` (false for NaN).
pub fn within(got: f32, want: f32, tol: f64) -> bool {
    (got as f64 - want as f64).abs() <= tol
}

// ------------------------------------------------------------------------------------------------
// Which tiers must run
// ------------------------------------------------------------------------------------------------

/// The tier names in `EDGE_RUN_EXPECT_TIERS` (comma list; empty when unset).
pub fn expected_tiers() -> Vec<String> {
    std::env::var("EDGE_RUN_EXPECT_TIERS")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs `compare` on every available tier but scalar and prints which ran; fails with every
/// mismatch it returned, and when a tier that `EDGE_RUN_EXPECT_TIERS` names was not compared.
pub fn compare_every_tier(what: &str, compare: impl Fn(&'static Kernels) -> Result<(), String>) {
    let mut compared = vec![];
    let mut failures = vec![];
    for k in Kernels::available().filter(|k| k.tier != edge_run_kernels::Tier::Scalar) {
        match compare(k) {
            Ok(()) => compared.push(k.tier.name()),
            Err(e) => failures.push(e),
        }
    }
    if compared.is_empty() && failures.is_empty() {
        eprintln!(
            "{what} tiers compared: none (only the scalar tier is available on this CPU/build)"
        );
    } else {
        eprintln!("{what} tiers compared: scalar vs {}", compared.join(", "));
    }
    assert!(
        failures.is_empty(),
        "{what} tier mismatches:\n{}",
        failures.join("\n")
    );
    assert_expected_tiers_ran(&compared, "compared");
}

/// Fails when a tier that `EDGE_RUN_EXPECT_TIERS` names is not among `ran` (the tiers `done`).
pub fn assert_expected_tiers_ran(ran: &[&str], done: &str) {
    for t in expected_tiers() {
        assert!(
            ran.contains(&t.as_str()),
            "EDGE_RUN_EXPECT_TIERS names {t}, which was not {done}"
        );
    }
}

/// A proptest runner of `cases` cases that writes no failure-persistence file.
pub fn proptest_runner(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}

/// The activation pattern of test case `case`: ties on even cases, outliers on odd ones.
pub fn ties_or_outliers(case: usize) -> Special {
    if case.is_multiple_of(2) {
        Special::Ties
    } else {
        Special::Outlier
    }
}
