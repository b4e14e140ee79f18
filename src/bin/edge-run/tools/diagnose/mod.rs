//! `edge-run diagnose`: what a stack of LoRA adapters does to a model.
//!
//! Behaviour, over a probe text (a built-in mix of prose, ChatML chat and code, or the user's):
//! for the base, each adapter alone and each prefix of the stack (1+2, 1+2+3, …, the whole stack), the
//! next-token distributions at every position are compared:
//! - mean (and max) `KL(P_base ‖ P_run)`, and `KL(P_i ‖ P_run)` against each adapter `i` alone;
//! - the perplexity of the text under the run, and the top-1 agreement with the base.
//!
//! All runs are evaluated in lockstep, one batch of positions at a time (one [`Session`] per run), so
//! only one batch of log-probabilities per run is held at any time.
//!
//! Weights: per adapted tensor, `‖s·B·A‖_F / ‖W0‖_F` for each adapter and for the whole stack, from the
//! `r×r` Gram matrices (`‖BA‖² = tr((BᵀB)(AAᵀ))`, cross terms `tr((B_iᵀB_j)(A_jA_iᵀ))`), with `‖W0‖_F`
//! from the dequantized rows. Subspace overlap: for every pair of adapters on the same weight, the cosines
//! of the principal angles between the column spaces of `B_i` and `B_j` (orthonormalized by modified
//! Gram-Schmidt in f64, then the singular values of `Q_iᵀQ_j` by a one-sided Jacobi SVD).

mod render;
mod weights;
pub use weights::*;

use std::fmt::Write as _;
use std::sync::Arc;

use edge_run::adapter::{Adapter, LoraKind, LoraTensor};
use edge_run::kernels::scalar;
use edge_run::{Error, Model, Result, Session, SessionConfig};

/// The built-in probe text.
pub const PROBE: &str = include_str!("probe.txt");

/// Options of [`diagnose`].
#[derive(Clone, Debug)]
pub struct DiagnoseOptions {
    pub n_threads: usize,
    /// Use at most this many tokens of the text.
    pub max_tokens: Option<usize>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        DiagnoseOptions {
            n_threads: 1,
            max_tokens: None,
            progress: false,
        }
    }
}

/// What a run applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    Base,
    /// Adapter `i` alone.
    Single(usize),
    /// Adapters `0..k` stacked (k ≥ 2).
    Prefix(usize),
}

/// Metrics of one run over the probe text.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub kind: RunKind,
    pub label: String,
    /// Indices of the applied adapters.
    pub adapters: Vec<usize>,
    /// Mean and max over positions of KL(P_base ‖ P_run), nats.
    pub kl_base: f64,
    pub kl_base_max: f64,
    /// Mean KL(P_i ‖ P_run) for each adapter i alone.
    pub kl_vs_single: Vec<f64>,
    /// Perplexity of the text (positions 0..T-1 predicting the next token).
    pub ppl: f64,
    /// Share of positions whose argmax equals the base's.
    pub top1_base: f64,
}

/// `‖s·B·A‖_F / ‖W0‖_F` of one adapted tensor.
#[derive(Clone, Debug)]
pub struct NormReport {
    pub tensor: String,
    pub layer: Option<usize>,
    /// The name without `blk.N.` (e.g. `attn_q.weight`).
    pub target: String,
    pub norm_w0: f64,
    /// Per adapter (`None` if it does not touch this tensor).
    pub rel: Vec<Option<f64>>,
    /// The whole stack's `‖Σ s_i B_i A_i‖ / ‖W0‖`.
    pub stack_rel: f64,
}

/// Principal angles between the column spaces of two adapters' `B` on one tensor.
#[derive(Clone, Debug)]
pub struct OverlapReport {
    pub tensor: String,
    pub a: usize,
    pub b: usize,
    /// Cosines of the principal angles, largest first (min(rank_a, rank_b) of them).
    pub cosines: Vec<f64>,
    pub mean: f64,
    pub max: f64,
}

#[derive(Clone, Debug)]
pub struct DiagnoseReport {
    pub model: String,
    /// (name, user scale) of each adapter, in stack order.
    pub adapters: Vec<(String, f32)>,
    /// The base tensors each adapter replaces (PEFT `modules_to_save`), in stack order.
    pub replaced: Vec<Vec<String>>,
    pub n_tokens: usize,
    pub runs: Vec<RunReport>,
    pub norms: Vec<NormReport>,
    pub overlaps: Vec<OverlapReport>,
}

/// Runs the diagnosis. `adapters` are (adapter, user scale, display name) in stack order.
pub fn diagnose(
    model: &Arc<Model>,
    adapters: &[(&Arc<Adapter>, f32, &str)],
    text: Option<&str>,
    opts: &DiagnoseOptions,
) -> Result<DiagnoseReport> {
    if adapters.is_empty() {
        return Err(Error::invalid(
            "diagnose: no adapters given (use --adapter PATH[:SCALE])",
        ));
    }
    if opts.n_threads == 0 {
        return Err(Error::invalid("diagnose: threads must be at least 1"));
    }
    for (_, s, name) in adapters {
        if !s.is_finite() {
            return Err(Error::invalid(format!(
                "diagnose: adapter {name}: scale {s} is not finite"
            )));
        }
    }
    let text = text.unwrap_or(PROBE);
    let tok = &model.tokenizer;
    let mut ids: Vec<u32> = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(tok.encode(text, true));
    if let Some(m) = opts.max_tokens {
        ids.truncate(m);
    }
    if ids.len() < 2 {
        return Err(Error::invalid(format!(
            "diagnose: the probe text has {} tokens; at least 2 are needed",
            ids.len()
        )));
    }
    let n = adapters.len();
    let mut kinds = vec![RunKind::Base];
    kinds.extend((0..n).map(RunKind::Single));
    kinds.extend((2..=n).map(RunKind::Prefix));
    let members = |k: RunKind| -> Vec<usize> {
        match k {
            RunKind::Base => vec![],
            RunKind::Single(i) => vec![i],
            RunKind::Prefix(k) => (0..k).collect(),
        }
    };
    let label = |k: RunKind| -> String {
        match k {
            RunKind::Base => "base".into(),
            _ => members(k)
                .iter()
                .map(|&i| format!("{}:{}", adapters[i].2, adapters[i].1))
                .collect::<Vec<_>>()
                .join(" + "),
        }
    };
    let runs = eval_runs(model, adapters, &ids, &kinds, &members, opts)?;
    let runs = runs
        .into_iter()
        .zip(&kinds)
        .map(|(m, &k)| RunReport {
            kind: k,
            label: label(k),
            adapters: members(k),
            kl_base: m.kl_base,
            kl_base_max: m.kl_base_max,
            kl_vs_single: m.kl_single,
            ppl: m.ppl,
            top1_base: m.top1,
        })
        .collect();
    let set: Vec<(&Adapter, f32)> = adapters.iter().map(|(a, s, _)| (&***a, *s)).collect();
    let norms = delta_norms(model, &set)?;
    let overlaps = subspace_overlaps(&set);
    Ok(DiagnoseReport {
        model: model.path().display().to_string(),
        adapters: adapters
            .iter()
            .map(|(_, s, n)| (n.to_string(), *s))
            .collect(),
        replaced: adapters
            .iter()
            .map(|(a, _, _)| a.saved().iter().map(|m| m.target.clone()).collect())
            .collect(),
        n_tokens: ids.len(),
        runs,
        norms,
        overlaps,
    })
}

struct RunMetrics {
    kl_base: f64,
    kl_base_max: f64,
    kl_single: Vec<f64>,
    ppl: f64,
    top1: f64,
}

/// Natural-log softmax of `row` into `out` (f64 accumulation).
fn log_softmax(row: &[f32], out: &mut [f32]) {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
    let lse = mx as f64 + sum.ln();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v as f64 - lse) as f32;
    }
}

/// KL(P ‖ Q) from log-probabilities, f64 accumulation. Exactly 0 for identical rows.
fn kl(lp: &[f32], lq: &[f32]) -> f64 {
    lp.iter()
        .zip(lq)
        .map(|(&p, &q)| {
            if p == q {
                0.0
            } else {
                (p as f64).exp() * (p as f64 - q as f64)
            }
        })
        .sum()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

fn eval_runs(
    model: &Arc<Model>,
    adapters: &[(&Arc<Adapter>, f32, &str)],
    ids: &[u32],
    kinds: &[RunKind],
    members: &dyn Fn(RunKind) -> Vec<usize>,
    opts: &DiagnoseOptions,
) -> Result<Vec<RunMetrics>> {
    const CHUNK: usize = 64;
    let nv = model.hp.n_vocab;
    let t_all = ids.len();
    let n = adapters.len();
    let mut sessions = Vec::with_capacity(kinds.len());
    for &k in kinds {
        let cfg = SessionConfig {
            n_ctx: t_all,
            n_batch: CHUNK,
            n_threads: opts.n_threads,
            logits_all: true,
            max_rank: 4096.min(max_rank(adapters)),
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), cfg)?;
        let set: Vec<(&Arc<Adapter>, f32)> = members(k)
            .iter()
            .map(|&i| (adapters[i].0, adapters[i].1))
            .collect();
        s.set_adapters(&set)?;
        sessions.push(s);
    }
    let nr = kinds.len();
    // Log-probabilities of the current chunk, per run: [run][pos][vocab].
    let mut lp = vec![vec![0f32; CHUNK * nv]; nr];
    let mut acc: Vec<(f64, f64, Vec<f64>, f64, usize)> =
        (0..nr).map(|_| (0.0, 0.0, vec![0.0; n], 0.0, 0)).collect();
    let t0 = std::time::Instant::now();
    for (ci, chunk) in ids.chunks(CHUNK).enumerate() {
        let p0 = ci * CHUNK;
        for (r, s) in sessions.iter_mut().enumerate() {
            let buf = &mut lp[r];
            s.eval_each(chunk, |i, row| {
                log_softmax(row, &mut buf[i * nv..(i + 1) * nv])
            })?;
        }
        for i in 0..chunk.len() {
            let pos = p0 + i;
            let row = |r: usize| &lp[r][i * nv..(i + 1) * nv];
            let base = row(0);
            let base_top = argmax(base);
            for (r, a) in acc.iter_mut().enumerate() {
                let me = row(r);
                let k = kl(base, me);
                a.0 += k;
                a.1 = a.1.max(k);
                for j in 0..n {
                    a.2[j] += kl(row(1 + j), me);
                }
                if pos + 1 < t_all {
                    a.3 -= me[ids[pos + 1] as usize] as f64;
                }
                a.4 += usize::from(argmax(me) == base_top);
            }
        }
        if opts.progress {
            eprintln!(
                "diagnose: {}/{} tokens × {} runs ({:.1} s)",
                (p0 + chunk.len()).min(t_all),
                t_all,
                nr,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let tf = t_all as f64;
    Ok(acc
        .into_iter()
        .map(|(k, kmax, ks, nll, top)| RunMetrics {
            kl_base: k / tf,
            kl_base_max: kmax,
            kl_single: ks.into_iter().map(|v| v / tf).collect(),
            ppl: (nll / (tf - 1.0)).exp(),
            top1: top as f64 / tf,
        })
        .collect())
}

fn max_rank(adapters: &[(&Arc<Adapter>, f32, &str)]) -> usize {
    adapters
        .iter()
        .flat_map(|(a, _, _)| a.tensors().iter().map(|t| t.rank))
        .max()
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_svd_of_a_known_matrix() {
        // diag(3, 2) rotated on both sides keeps singular values 3 and 2.
        let (c, s) = (0.6f64, 0.8f64);
        let u = [c, -s, s, c];
        let d = [3.0, 0.0, 0.0, 2.0];
        let mut ud = [0.0; 4];
        for i in 0..2 {
            for j in 0..2 {
                ud[i * 2 + j] = (0..2).map(|k| u[i * 2 + k] * d[k * 2 + j]).sum();
            }
        }
        let v = [0.28, 0.96, -0.96, 0.28];
        let mut m = [0.0; 4];
        for i in 0..2 {
            for j in 0..2 {
                m[i * 2 + j] = (0..2).map(|k| ud[i * 2 + k] * v[k * 2 + j]).sum();
            }
        }
        let sv = singular_values(&m, 2, 2);
        assert!(
            (sv[0] - 3.0).abs() < 1e-12 && (sv[1] - 2.0).abs() < 1e-12,
            "{sv:?}"
        );
        // A wide 1×3 matrix: one singular value, its norm.
        let sv = singular_values(&[1.0, 2.0, 2.0], 1, 3);
        assert!((sv[0] - 3.0).abs() < 1e-12, "{sv:?}");
    }

    #[test]
    fn principal_angles_of_coordinate_planes() {
        // span(e0, e1) vs span(e1, e2) in R^3: one shared direction (cos 1), one orthogonal (cos 0).
        let x = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let y = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let c = principal_cosines(&x, 2, &y, 2, 3);
        assert!((c[0] - 1.0).abs() < 1e-12 && c[1].abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn kl_of_identical_rows_is_exactly_zero() {
        let mut a = vec![0f32; 5];
        log_softmax(&[0.5, -1.0, 2.0, 0.0, 3.5], &mut a);
        assert_eq!(kl(&a, &a), 0.0);
        let mut b = vec![0f32; 5];
        log_softmax(&[0.4, -1.0, 2.0, 0.1, 3.5], &mut b);
        assert!(kl(&a, &b) > 0.0);
    }
}
