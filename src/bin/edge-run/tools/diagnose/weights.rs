//! Weight-space measures: delta norms and subspace overlaps
use super::*;

// ---------------------------------------------------------------------------------------------------
// Weight-space measures

/// `A` as an `r × n_in` f64 matrix (row-major) whatever the storage, and `B` as `n_out × r`.
pub(super) fn factors(t: &LoraTensor) -> (Vec<f64>, Vec<f64>) {
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
pub(super) fn gram_rows(x: &[f64], p: usize, y: &[f64], q: usize, n: usize) -> Vec<f64> {
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
pub(super) fn gram_cols(x: &[f64], p: usize, y: &[f64], q: usize, n: usize) -> Vec<f64> {
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
pub(super) fn trace_prod(m: &[f64], n_: &[f64], p: usize, q: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..p {
        for j in 0..q {
            s += m[i * q + j] * n_[j * p + i];
        }
    }
    s
}

/// One adapter's LoRA on one tensor in f64: full scale `s`, `A` (`r × n_in`), `B` (`n_out × r`).
pub(super) struct Factors {
    s: f64,
    a: Vec<f64>,
    b: Vec<f64>,
    r: usize,
}

/// `tr(X_iᵀ X_j)` for `X = B A` (unscaled): `tr((B_iᵀ B_j)(A_j A_iᵀ))`.
pub(super) fn frob_inner(x: &Factors, y: &Factors, n_in: usize, n_out: usize) -> f64 {
    let bb = gram_cols(&x.b, x.r, &y.b, y.r, n_out); // r_x × r_y
    let aa = gram_rows(&y.a, y.r, &x.a, x.r, n_in); // r_y × r_x
    trace_prod(&bb, &aa, x.r, y.r)
}

/// `‖W0‖_F` of the base tensor an adapter targets (dequantized row by row).
pub(super) fn base_norm(model: &Model, target: &str) -> Result<f64> {
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

pub(super) fn split_block(name: &str) -> (Option<usize>, String) {
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
pub(super) fn targets(set: &[(&Adapter, f32)]) -> Vec<String> {
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
