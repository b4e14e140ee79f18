//! The report rendered as text, JSON and SVG
use super::*;

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
            let _ = write!(s, "  adapter {i}: {name} (scale {sc})");
            match self.replaced.get(i) {
                Some(r) if !r.is_empty() => {
                    let _ = writeln!(s, "; replaces {} (modules_to_save)", r.join(", "));
                }
                _ => s.push('\n'),
            }
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
        super::super::sorted_keys(json!({
            "model": self.model,
            "n_tokens": self.n_tokens,
            "adapters": self.adapters.iter().zip(&self.replaced).map(|((n, s), r)| json!({"name": n, "scale": s, "replaces": r})).collect::<Vec<_>>(),
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

pub(super) fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) fn trunc(s: &str, n: usize) -> String {
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
