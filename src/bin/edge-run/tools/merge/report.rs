//! What `edge-run merge` reports: per merged tensor and overall, how large the LoRA delta is and what
//! the requantization adds, as a table and as JSON.
use std::fmt::Write as _;
use std::path::PathBuf;

use edge_run::kernels::QuantType;

/// What happened to one adapted tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    /// The tensor written (e.g. `blk.3.attn_q.weight`, or a new `output.weight`).
    pub name: String,
    /// Row length and number of rows.
    pub n_in: usize,
    pub n_rows: usize,
    pub from: QuantType,
    pub to: QuantType,
    /// Fallback, copy or new-tensor explanation.
    pub note: Option<String>,
    /// ‖W0‖, ‖ΣsBA‖, ‖W‖ = ‖W0 + ΣsBA‖ and ‖Q(W) − W‖ (Frobenius, f64).
    pub norm_w0: f64,
    pub norm_delta: f64,
    pub norm_w: f64,
    pub norm_qerr: f64,
    /// ⟨Q(W) − W0, ΣsBA⟩: with `norm_delta`, how much of the delta survives the requantization.
    pub dot_kept: f64,
    /// Written unchanged (zero delta, same type).
    pub copied: bool,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

impl TensorReport {
    /// ‖ΣsBA‖ / ‖W0‖.
    pub fn delta_rel(&self) -> f64 {
        ratio(self.norm_delta, self.norm_w0)
    }
    /// ‖Q(W) − W‖ / ‖W‖: what the requantization adds.
    pub fn quant_rel(&self) -> f64 {
        ratio(self.norm_qerr, self.norm_w)
    }
    /// ‖Q(W) − W‖ / ‖ΣsBA‖: the requantization error in units of the LoRA delta.
    pub fn quant_over_delta(&self) -> f64 {
        ratio(self.norm_qerr, self.norm_delta)
    }
    /// ⟨Q(W) − W0, ΔW⟩ / ‖ΔW‖²: the share of the LoRA delta the written weights keep (1 = all of it;
    /// requantizing onto the base's own coarse grid rounds part of a small delta away).
    pub fn kept(&self) -> f64 {
        ratio(self.dot_kept, self.norm_delta * self.norm_delta)
    }
}

/// What [`merge`] did.
#[derive(Clone, Debug)]
pub struct MergeReport {
    pub output: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// `NAME:SCALE` of every adapter, as recorded in [`MERGED_KEY`].
    pub adapters: Vec<String>,
    /// Every tensor an adapter targets (and any new `output.weight`), in file order.
    pub tensors: Vec<TensorReport>,
    /// Tensors copied byte for byte (not targeted).
    pub copied: usize,
    /// `general.file_type` before and after, when it changed.
    pub file_type: Option<(u32, u32)>,
    /// Fallbacks and other facts worth telling the user.
    pub notes: Vec<String>,
}

impl MergeReport {
    fn sum(&self, f: impl Fn(&TensorReport) -> f64) -> f64 {
        self.tensors.iter().map(|t| f(t) * f(t)).sum::<f64>().sqrt()
    }
    /// Overall ‖ΣsBA‖ / ‖W0‖ over all merged tensors.
    pub fn delta_rel(&self) -> f64 {
        ratio(self.sum(|t| t.norm_delta), self.sum(|t| t.norm_w0))
    }
    /// Overall ‖Q(W) − W‖ / ‖W‖ over all merged tensors.
    pub fn quant_rel(&self) -> f64 {
        ratio(self.sum(|t| t.norm_qerr), self.sum(|t| t.norm_w))
    }
    /// Overall share of the LoRA delta kept (see [`TensorReport::kept`]).
    pub fn kept(&self) -> f64 {
        let d2: f64 = self
            .tensors
            .iter()
            .map(|t| t.norm_delta * t.norm_delta)
            .sum();
        ratio(self.tensors.iter().map(|t| t.dot_kept).sum(), d2)
    }
    /// Overall ‖Q(W) − W‖ / ‖ΣsBA‖.
    pub fn quant_over_delta(&self) -> f64 {
        ratio(self.sum(|t| t.norm_qerr), self.sum(|t| t.norm_delta))
    }

    /// A fixed-width table: one line per merged tensor and a total.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:>11} {:>13} {:>12} {:>12} {:>8} {:>7}  note",
            "tensor", "rows x cols", "type", "|sBA|/|W0|", "|Q(W)-W|/|W|", "/|sBA|", "kept"
        );
        for t in &self.tensors {
            let _ = writeln!(
                s,
                "{:<28} {:>11} {:>13} {:>12.4e} {:>12.4e} {:>8.4} {:>6.1}%  {}",
                t.name,
                format!("{}x{}", t.n_rows, t.n_in),
                format!("{}->{}", t.from.name(), t.to.name()),
                t.delta_rel(),
                t.quant_rel(),
                t.quant_over_delta(),
                100.0 * t.kept(),
                t.note.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            s,
            "{:<28} {:>11} {:>13} {:>12.4e} {:>12.4e} {:>8.4} {:>6.1}%  {} tensors merged, {} copied",
            "overall",
            "",
            "",
            self.delta_rel(),
            self.quant_rel(),
            self.quant_over_delta(),
            100.0 * self.kept(),
            self.tensors.len(),
            self.copied
        );
        s
    }

    /// One JSON object with everything in the report.
    pub fn to_json(&self) -> serde_json::Value {
        let fin = |v: f64| {
            if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        let tensors: Vec<serde_json::Value> = self
            .tensors
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "n_in": t.n_in, "n_rows": t.n_rows,
                    "from": t.from.name(), "to": t.to.name(), "note": t.note, "copied": t.copied,
                    "norm_w0": t.norm_w0, "norm_delta": t.norm_delta, "norm_w": t.norm_w, "norm_qerr": t.norm_qerr,
                    "delta_rel": fin(t.delta_rel()), "quant_rel": fin(t.quant_rel()),
                    "quant_over_delta": fin(t.quant_over_delta()), "kept": fin(t.kept()),
                })
            })
            .collect();
        super::super::sorted_keys(serde_json::json!({
            "output": self.output.display().to_string(),
            "bytes": self.bytes,
            "adapters": self.adapters,
            "merged": self.tensors.len(),
            "copied": self.copied,
            "file_type": self.file_type.map(|(a, b)| serde_json::json!({"from": a, "to": b})),
            "delta_rel": fin(self.delta_rel()),
            "quant_rel": fin(self.quant_rel()),
            "quant_over_delta": fin(self.quant_over_delta()),
            "kept": fin(self.kept()),
            "notes": self.notes,
            "tensors": tensors,
        }))
    }
}
