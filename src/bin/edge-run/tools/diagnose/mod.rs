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

// ---------------------------------------------------------------------------------------------------
// Weight-space measures

/// `A` as an `r × n_in` f64 matrix (row-major) whatever the storage, and `B` as `n_out × r`.
fn factors(t: &LoraTensor) -> (Vec<f64>, Vec<f64>) {
    let h = |v: u16| half::f16::from_bits(v).to_f64();
    let (r, n_in) = (t.rank, t.n_in);
    let a = match t.kind {
        LoraKind::Linear => t.a().iter().map(|&v| h(v)).collect(),
        LoraKind::Embedding => {
            // stored token-major n_in × r: transpose
            let src = t.a();
            let mut a = vec![0f64; r * n_in];
            for tok in 0..n_in {
                for k in 0..r {
                    a[k * n_in + tok] = h(src[tok * r + k]);
                }
            }
            a
        }
    };
    (a, t.b().iter().map(|&v| h(v)).collect())
}

/// `X Yᵀ` for `X` (`p × n`) and `Y` (`q × n`) row-major: a `p × q` matrix.
fn gram_rows(x: &[f64], p: usize, y: &[f64], q: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0f64; p * q];
    for i in 0..p {
        for j in 0..q {
            g[i * q + j] = x[i * n..(i + 1) * n]
                .iter()
                .zip(&y[j * n..(j + 1) * n])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    g
}

/// `Xᵀ Y` for `X` (`n × p`) and `Y` (`n × q`) row-major: a `p × q` matrix.
fn gram_cols(x: &[f64], p: usize, y: &[f64], q: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0f64; p * q];
    for row in 0..n {
        let (xr, yr) = (&x[row * p..(row + 1) * p], &y[row * q..(row + 1) * q]);
        for i in 0..p {
            for j in 0..q {
                g[i * q + j] += xr[i] * yr[j];
            }
        }
    }
    g
}

/// `tr(M N)` for `M` (`p × q`) and `N` (`q × p`).
fn trace_prod(m: &[f64], n_: &[f64], p: usize, q: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..p {
        for j in 0..q {
            s += m[i * q + j] * n_[j * p + i];
        }
    }
    s
}

/// One adapter's LoRA on one tensor in f64: full scale `s`, `A` (`r × n_in`), `B` (`n_out × r`).
struct Factors {
    s: f64,
    a: Vec<f64>,
    b: Vec<f64>,
    r: usize,
}

/// `tr(X_iᵀ X_j)` for `X = B A` (unscaled): `tr((B_iᵀ B_j)(A_j A_iᵀ))`.
fn frob_inner(x: &Factors, y: &Factors, n_in: usize, n_out: usize) -> f64 {
    let bb = gram_cols(&x.b, x.r, &y.b, y.r, n_out); // r_x × r_y
    let aa = gram_rows(&y.a, y.r, &x.a, x.r, n_in); // r_y × r_x
    trace_prod(&bb, &aa, x.r, y.r)
}

/// `‖W0‖_F` of the base tensor an adapter targets (dequantized row by row).
fn base_norm(model: &Model, target: &str) -> Result<f64> {
    let w = model.lora_target(target).ok_or_else(|| {
        Error::invalid(format!(
            "{}: no weight slot for adapter target {target}",
            model.path().display()
        ))
    })?;
    let rb = w.row_bytes();
    let bytes = model.bytes(w);
    let mut row = vec![0f32; w.n_in];
    let mut s = 0f64;
    for r in 0..w.n_out {
        if !scalar::dequantize(w.ty, &bytes[r * rb..(r + 1) * rb], &mut row) {
            return Err(Error::unsupported(
                model.path().display().to_string(),
                format!("cannot dequantize {} ({})", w.name, w.ty.name()),
            ));
        }
        s += row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    }
    Ok(s.sqrt())
}

fn split_block(name: &str) -> (Option<usize>, String) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((n, tail)) = rest.split_once('.') {
            if let Ok(n) = n.parse() {
                return (Some(n), tail.to_string());
            }
        }
    }
    (None, name.to_string())
}

/// The adapted tensors of a set, sorted by (layer, target name).
fn targets(set: &[(&Adapter, f32)]) -> Vec<String> {
    let mut names: Vec<String> = set
        .iter()
        .flat_map(|(a, _)| a.tensors().iter().map(|t| t.target.clone()))
        .collect();
    names.sort_by_key(|n| {
        let (l, t) = split_block(n);
        (l.map_or(usize::MAX, |v| v), t)
    });
    names.dedup();
    names
}

/// `‖s·B·A‖_F / ‖W0‖_F` per tensor, per adapter and for the whole stack (with its cross terms).
pub fn delta_norms(model: &Model, set: &[(&Adapter, f32)]) -> Result<Vec<NormReport>> {
    let mut out = Vec::new();
    for name in targets(set) {
        let w0 = base_norm(model, &name)?;
        let Some(first) = set.iter().find_map(|(a, _)| a.get(&name)) else {
            continue;
        };
        let (n_in, n_out) = (first.n_in, first.n_out);
        let parts: Vec<Option<Factors>> = set
            .iter()
            .map(|(a, s)| {
                a.get(&name).map(|t| {
                    let (a, b) = factors(t);
                    Factors {
                        s: (*s * t.scale) as f64,
                        a,
                        b,
                        r: t.rank,
                    }
                })
            })
            .collect();
        let mut rel = Vec::new();
        let mut stack2 = 0f64;
        for (i, pi) in parts.iter().enumerate() {
            let Some(x) = pi else {
                rel.push(None);
                continue;
            };
            let self2 = x.s * x.s * frob_inner(x, x, n_in, n_out);
            rel.push(Some(self2.max(0.0).sqrt() / w0));
            stack2 += self2;
            for y in parts.iter().skip(i + 1).flatten() {
                stack2 += 2.0 * x.s * y.s * frob_inner(x, y, n_in, n_out);
            }
        }
        let (layer, target) = split_block(&name);
        out.push(NormReport {
            tensor: name,
            layer,
            target,
            norm_w0: w0,
            rel,
            stack_rel: stack2.max(0.0).sqrt() / w0,
        });
    }
    Ok(out)
}

/// Orthonormal basis (modified Gram-Schmidt, applied twice) of the column space of `m` (`n × r`,
/// row-major), returned as `k` columns stored column-major (`k × n`); columns that are (numerically)
/// dependent on the previous ones are dropped.
pub fn orthonormal_columns(m: &[f64], n: usize, r: usize) -> Vec<Vec<f64>> {
    let mut q: Vec<Vec<f64>> = Vec::new();
    for c in 0..r {
        let mut v: Vec<f64> = (0..n).map(|i| m[i * r + c]).collect();
        let norm0 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm0 == 0.0 {
            continue;
        }
        for _ in 0..2 {
            for u in &q {
                let d: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                for (x, &y) in v.iter_mut().zip(u) {
                    *x -= d * y;
                }
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-10 * norm0 {
            v.iter_mut().for_each(|x| *x /= norm);
            q.push(v);
        }
    }
    q
}

/// Singular values (descending) of a `rows × cols` row-major matrix by one-sided Jacobi rotations on its
/// columns (applied to the transpose when it is wider than tall).
pub fn singular_values(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    // Work on column vectors of the taller orientation.
    let mut c: Vec<Vec<f64>> = if rows >= cols {
        (0..cols)
            .map(|j| (0..rows).map(|i| m[i * cols + j]).collect())
            .collect()
    } else {
        (0..rows)
            .map(|i| m[i * cols..(i + 1) * cols].to_vec())
            .collect()
    };
    let nc = c.len();
    for _sweep in 0..60 {
        let mut off = 0.0f64;
        for p in 0..nc {
            for q in p + 1..nc {
                let alpha: f64 = c[p].iter().map(|x| x * x).sum();
                let beta: f64 = c[q].iter().map(|x| x * x).sum();
                let gamma: f64 = c[p].iter().zip(&c[q]).map(|(x, y)| x * y).sum();
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (1.0 + t * t).sqrt();
                let sn = cs * t;
                let (lo, hi) = c.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (a, b) = (*x, *y);
                    *x = cs * a - sn * b;
                    *y = sn * a + cs * b;
                }
            }
        }
        if off < 1e-14 {
            break;
        }
    }
    let mut s: Vec<f64> = c
        .iter()
        .map(|v| v.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// Cosines of the principal angles between the column spaces of `x` (`n × rx`) and `y` (`n × ry`),
/// both row-major; largest first, min(rank x, rank y) of them, clamped to [0, 1].
pub fn principal_cosines(x: &[f64], rx: usize, y: &[f64], ry: usize, n: usize) -> Vec<f64> {
    let qx = orthonormal_columns(x, n, rx);
    let qy = orthonormal_columns(y, n, ry);
    if qx.is_empty() || qy.is_empty() {
        return Vec::new();
    }
    let m: Vec<f64> = qx
        .iter()
        .flat_map(|u| {
            qy.iter()
                .map(move |v| u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>())
        })
        .collect();
    let mut s = singular_values(&m, qx.len(), qy.len());
    s.truncate(qx.len().min(qy.len()));
    s.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    s
}

/// Principal-angle cosines between `B_i` and `B_j` for every pair of adapters on every shared tensor.
pub fn subspace_overlaps(set: &[(&Adapter, f32)]) -> Vec<OverlapReport> {
    let mut out = Vec::new();
    for name in targets(set) {
        for i in 0..set.len() {
            for j in i + 1..set.len() {
                let (Some(ti), Some(tj)) = (set[i].0.get(&name), set[j].0.get(&name)) else {
                    continue;
                };
                let (_, bi) = factors(ti);
                let (_, bj) = factors(tj);
                let cos = principal_cosines(&bi, ti.rank, &bj, tj.rank, ti.n_out);
                let mean = if cos.is_empty() {
                    0.0
                } else {
                    cos.iter().sum::<f64>() / cos.len() as f64
                };
                let max = cos.iter().copied().fold(0.0, f64::max);
                out.push(OverlapReport {
                    tensor: name.clone(),
                    a: i,
                    b: j,
                    cosines: cos,
                    mean,
                    max,
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Output

impl DiagnoseReport {
    /// The run of a kind.
    pub fn run(&self, k: RunKind) -> Option<&RunReport> {
        self.runs.iter().find(|r| r.kind == k)
    }

    /// (number of stacked adapters, mean KL vs the base) for 0, 1, …, n.
    pub fn stack_curve(&self) -> Vec<(usize, f64)> {
        let mut v = vec![(0, 0.0)];
        for k in 1..=self.adapters.len() {
            let kind = if k == 1 {
                RunKind::Single(0)
            } else {
                RunKind::Prefix(k)
            };
            if let Some(r) = self.run(kind) {
                v.push((k, r.kl_base));
            }
        }
        v
    }

    /// Terminal tables: runs, per-tensor delta norms, subspace overlaps.
    pub fn tables(&self) -> String {
        let mut s = String::new();
        let n = self.adapters.len();
        let _ = writeln!(
            s,
            "model {}; probe text {} tokens",
            self.model, self.n_tokens
        );
        for (i, (name, sc)) in self.adapters.iter().enumerate() {
            let _ = writeln!(s, "  adapter {i}: {name} (scale {sc})");
        }
        let _ = writeln!(
            s,
            "\nnext-token distributions (KL in nats, KL(P_ref || P_run)):"
        );
        let mut h = format!("{:<40} {:>10} {:>10}", "run", "KL(base)", "max");
        for i in 0..n {
            h += &format!(" {:>10}", format!("KL(#{i})"));
        }
        h += &format!(" {:>9} {:>8}", "ppl", "top1=base");
        let _ = writeln!(s, "{h}");
        for r in &self.runs {
            let mut l = format!(
                "{:<40} {:>10.5} {:>10.4}",
                trunc(&r.label, 40),
                r.kl_base,
                r.kl_base_max
            );
            for v in &r.kl_vs_single {
                l += &format!(" {v:>10.5}");
            }
            l += &format!(" {:>9.3} {:>8.1}%", r.ppl, 100.0 * r.top1_base);
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "\nweight deltas |s*B*A|_F / |W0|_F:");
        let mut h = format!("{:<28}", "tensor");
        for i in 0..n {
            h += &format!(" {:>10}", format!("#{i}"));
        }
        h += &format!(" {:>10}", "stack");
        let _ = writeln!(s, "{h}");
        for r in &self.norms {
            let mut l = format!("{:<28}", r.tensor);
            for v in &r.rel {
                l += &match v {
                    Some(v) => format!(" {v:>10.4e}"),
                    None => format!(" {:>10}", "-"),
                };
            }
            l += &format!(" {:>10.4e}", r.stack_rel);
            let _ = writeln!(s, "{l}");
        }
        if !self.overlaps.is_empty() {
            let _ = writeln!(s, "\nsubspace overlap of B column spaces (cosines of principal angles; 1 = same direction, 0 = orthogonal):");
            let _ = writeln!(
                s,
                "{:<28} {:>6} {:>8} {:>8}  cosines",
                "tensor", "pair", "mean", "max"
            );
            for o in &self.overlaps {
                let c: Vec<String> = o.cosines.iter().map(|v| format!("{v:.3}")).collect();
                let _ = writeln!(
                    s,
                    "{:<28} {:>6} {:>8.4} {:>8.4}  {}",
                    o.tensor,
                    format!("{}-{}", o.a, o.b),
                    o.mean,
                    o.max,
                    c.join(" ")
                );
            }
            for (a, b, mean, max, k) in self.overlap_summary() {
                let _ = writeln!(
                    s,
                    "pair {a}-{b}: {k} shared tensors, mean cosine {mean:.4}, max {max:.4}"
                );
            }
        }
        s
    }

    /// Per pair of adapters: (a, b, mean of the per-tensor mean cosines, max cosine, shared tensors).
    pub fn overlap_summary(&self) -> Vec<(usize, usize, f64, f64, usize)> {
        let n = self.adapters.len();
        let mut out = Vec::new();
        for a in 0..n {
            for b in a + 1..n {
                let v: Vec<&OverlapReport> = self
                    .overlaps
                    .iter()
                    .filter(|o| o.a == a && o.b == b)
                    .collect();
                if v.is_empty() {
                    continue;
                }
                let mean = v.iter().map(|o| o.mean).sum::<f64>() / v.len() as f64;
                let max = v.iter().map(|o| o.max).fold(0.0, f64::max);
                out.push((a, b, mean, max, v.len()));
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let fin = |v: f64| {
            if v.is_finite() {
                json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                let kind = match r.kind {
                    RunKind::Base => "base",
                    RunKind::Single(_) => "single",
                    RunKind::Prefix(_) => "prefix",
                };
                json!({
                    "kind": kind, "label": r.label, "adapters": r.adapters,
                    "kl_base_mean": fin(r.kl_base), "kl_base_max": fin(r.kl_base_max),
                    "kl_vs_single": r.kl_vs_single.iter().map(|&v| fin(v)).collect::<Vec<_>>(),
                    "ppl": fin(r.ppl), "top1_base": r.top1_base,
                })
            })
            .collect();
        let norms: Vec<_> = self
            .norms
            .iter()
            .map(|r| {
                json!({
                    "tensor": r.tensor, "layer": r.layer, "target": r.target, "norm_w0": r.norm_w0,
                    "rel": r.rel.iter().map(|v| v.map(fin)).collect::<Vec<_>>(), "stack_rel": fin(r.stack_rel),
                })
            })
            .collect();
        let overlaps: Vec<_> = self
            .overlaps
            .iter()
            .map(|o| json!({"tensor": o.tensor, "a": o.a, "b": o.b, "cosines": o.cosines, "mean": o.mean, "max": o.max}))
            .collect();
        let summary: Vec<_> = self
            .overlap_summary()
            .into_iter()
            .map(|(a, b, mean, max, k)| json!({"a": a, "b": b, "mean": mean, "max": max, "tensors": k}))
            .collect();
        super::sorted_keys(json!({
            "model": self.model,
            "n_tokens": self.n_tokens,
            "adapters": self.adapters.iter().map(|(n, s)| json!({"name": n, "scale": s})).collect::<Vec<_>>(),
            "runs": runs,
            "stack_curve": self.stack_curve().iter().map(|&(k, v)| json!({"n_adapters": k, "kl_base_mean": fin(v)})).collect::<Vec<_>>(),
            "norms": norms,
            "overlaps": overlaps,
            "overlap_summary": summary,
        }))
    }

    /// An SVG line plot of mean KL vs the base against the number of stacked adapters, with each
    /// adapter alone marked at its own position for contrast.
    pub fn svg(&self) -> String {
        let (w, h, ml, mr, mt, mb) = (640.0, 400.0, 70.0, 20.0, 40.0, 60.0);
        let curve = self.stack_curve();
        let n = self.adapters.len().max(1);
        let singles: Vec<(usize, f64)> = (0..self.adapters.len())
            .filter_map(|i| self.run(RunKind::Single(i)).map(|r| (i, r.kl_base)))
            .collect();
        let ymax = curve
            .iter()
            .map(|p| p.1)
            .chain(singles.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 && ymax.is_finite() {
            nice_ceil(ymax)
        } else {
            1.0
        };
        let x = |k: f64| ml + (w - ml - mr) * k / n as f64;
        let y = |v: f64| h - mb - (h - mt - mb) * (v / ymax).clamp(0.0, 1.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">mean KL(base || run) vs number of stacked adapters ({} tokens)</text>"#,
            w / 2.0,
            self.n_tokens
        );
        let _ = writeln!(
            s,
            r#"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            h - mb,
            w - mr,
            h - mb
        );
        let _ = writeln!(
            s,
            r#"<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="black"/>"#,
            h - mb
        );
        for k in 0..=n {
            let _ = writeln!(
                s,
                r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="black"/><text x="{0}" y="{3}" text-anchor="middle">{k}</text>"#,
                x(k as f64),
                h - mb,
                h - mb + 5.0,
                h - mb + 20.0
            );
        }
        for i in 0..=4 {
            let v = ymax * i as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{1}" x2="{ml}" y2="{1}" stroke="black"/><line x1="{ml}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{v:.3}</text>"##,
                ml - 5.0,
                y(v),
                w - mr,
                ml - 8.0,
                y(v) + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">adapters stacked (in the order given)</text>"#,
            (ml + w - mr) / 2.0,
            h - 15.0
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">mean KL (nats)</text>"#,
            (mt + h - mb) / 2.0,
            (mt + h - mb) / 2.0
        );
        let pts: Vec<String> = curve
            .iter()
            .map(|&(k, v)| format!("{:.1},{:.1}", x(k as f64), y(v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            pts.join(" ")
        );
        for &(k, v) in &curve {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f77b4"><title>{k} stacked: {v:.5}</title></circle>"##,
                x(k as f64),
                y(v)
            );
        }
        for &(i, v) in &singles {
            let name = xml_escape(&self.adapters[i].0);
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="#ff7f0e"><title>{name} alone: {v:.5}</title></rect><text x="{:.1}" y="{:.1}" fill="#ff7f0e">#{i} alone</text>"##,
                x(1.0) - 4.0 + 12.0 * i as f64,
                y(v) - 4.0,
                x(1.0) + 8.0 + 12.0 * i as f64,
                y(v) + 4.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#1f77b4">stack (line)</text>"##,
            w - mr - 110.0,
            mt + 10.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{t}")
    }
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
