//! `edge-run merge`: fold LoRA adapters into a model's weights and write a new GGUF.
//!
//! For every weight an adapter targets, the merged weight is `W = deq(W0) + Σ_i s_i · B_i A_i` with
//! `s_i` = the adapter's resolved per-tensor scale (`alpha/r`, rsLoRA `alpha/√r`, patterns) × the user
//! scale — exactly the term the runtime adds (`crate::session`), using the adapter's tensors as
//! loaded (so `q`/`k` rows of PEFT adapters are already in the GGUF base's permuted row order). `W` is
//! then quantized with the ggml-compatible quantizers of `edge-run-kernels` to the requested type
//! (`same` = the tensor's own type). K-quant targets on rows whose length is not a multiple of 256 fall
//! back as llama.cpp's quantizer does (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0); legacy targets on rows not a
//! multiple of 32 fall back to F16. Every fallback is reported.
//!
//! Every other tensor is copied byte for byte, every metadata entry is copied byte for byte (except
//! `general.file_type`, updated when `--type` changes it) and `edge_run.merged_adapters` (a string
//! array `NAME:SCALE`) records the merge. Embedding LoRAs on a tied-embedding model would otherwise also
//! change the output head: then the original `token_embd` is kept as a separate `output.weight` (the
//! runtime applies an embedding LoRA to the input side only), and a LoRA on the tied head becomes a new
//! `output.weight`.
//!
//! The output is streamed: the header first (all sizes are known up front), then each tensor, the
//! merged ones in blocks of rows; the base is memory-mapped, so the process holds at most one block of
//! f32 rows besides the adapters. It is written to `OUT.partial` and renamed at the end; on any error
//! the partial file is removed. The output may not be the model or an adapter.
//!
//! The report gives, per merged tensor and overall, the relative Frobenius error the requantization
//! adds, `‖Q(W) − W‖ / ‖W‖`, and for contrast the size of the LoRA delta, `‖ΣsBA‖ / ‖W0‖`.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use edge_run::adapter::{Adapter, BaseInfo, LoraKind, LoraTensor};
use edge_run::gguf::{Gguf, MetaEntry, TensorInfo, Value, ValueType};
use edge_run::kernels::{scalar, QuantType};
use edge_run::{Error, Result};

/// Metadata key recording the merged adapters (`NAME:SCALE` strings, in order).
pub const MERGED_KEY: &str = "edge_run.merged_adapters";

/// The type merged weights are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    /// Each tensor's original type.
    Same,
    To(QuantType),
}

impl TargetType {
    /// `same`, `f32`, `f16`, `bf16`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `q4_k`, `q5_k`, `q6_k`
    /// (case-insensitive).
    pub fn parse(s: &str) -> Option<TargetType> {
        use QuantType::*;
        Some(match s.to_ascii_lowercase().as_str() {
            "same" => TargetType::Same,
            "f32" => TargetType::To(F32),
            "f16" => TargetType::To(F16),
            "bf16" => TargetType::To(BF16),
            "q4_0" => TargetType::To(Q4_0),
            "q4_1" => TargetType::To(Q4_1),
            "q5_0" => TargetType::To(Q5_0),
            "q5_1" => TargetType::To(Q5_1),
            "q8_0" => TargetType::To(Q8_0),
            "q4_k" => TargetType::To(Q4K),
            "q5_k" => TargetType::To(Q5K),
            "q6_k" => TargetType::To(Q6K),
            _ => return None,
        })
    }
    pub const NAMES: &'static str =
        "same, f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k";
}

/// Options of [`merge`].
#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub target: TargetType,
    /// Threads for the merge arithmetic (≥ 1).
    pub n_threads: usize,
    /// Print one progress line per merged tensor on stderr.
    pub progress: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            target: TargetType::Same,
            n_threads: 1,
            progress: false,
        }
    }
}

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
        serde_json::json!({
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
        })
    }
}

/// llama.cpp's `llama_ftype` for a file whose weights are mostly of type `t`.
fn ftype_of(t: QuantType) -> Option<u32> {
    use QuantType::*;
    Some(match t {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q4K => 14, // Q4_K_S: every weight Q4_K
        Q5K => 16, // Q5_K_S
        Q6K => 18,
        BF16 => 32,
        Q8_1 | Q8K => return None,
    })
}

/// Whether edge-run can write weights of type `t`.
fn can_quantize(t: QuantType) -> bool {
    !matches!(t, QuantType::Q8_1 | QuantType::Q8K)
}

/// The type a merged tensor of row length `n_in` gets for target `to`, and the fallback note.
fn resolve_type(to: QuantType, n_in: usize) -> (QuantType, Option<String>) {
    use QuantType::*;
    if n_in.is_multiple_of(to.block_size()) {
        return (to, None);
    }
    let fb = match to {
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K => Q8_0,
        _ => F16,
    };
    let fb = if n_in.is_multiple_of(fb.block_size()) {
        fb
    } else {
        F16
    };
    (
        fb,
        Some(format!(
            "{}→{} fallback: row length {n_in} is not a multiple of {}",
            to.name(),
            fb.name(),
            to.block_size()
        )),
    )
}

/// ggml's f32 → bf16 (round to nearest even, NaN kept quiet).
fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Quantizes one row `x` into `out` (exactly `ty.row_bytes(x.len())` bytes). Returns the index of a
/// value that does not fit (F16 overflow), if any.
fn quantize_row(ty: QuantType, x: &[f32], out: &mut [u8]) -> std::result::Result<(), usize> {
    use QuantType::*;
    match ty {
        F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (i, (c, &v)) in out.chunks_exact_mut(2).zip(x).enumerate() {
                let h = half::f16::from_f32(v);
                if !h.is_finite() {
                    return Err(i);
                }
                c.copy_from_slice(&h.to_bits().to_le_bytes());
            }
        }
        BF16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        Q4_0 => scalar::quantize_row_q4_0(x, bytemuck::cast_slice_mut(out)),
        Q4_1 => scalar::quantize_row_q4_1(x, bytemuck::cast_slice_mut(out)),
        Q5_0 => scalar::quantize_row_q5_0(x, bytemuck::cast_slice_mut(out)),
        Q5_1 => scalar::quantize_row_q5_1(x, bytemuck::cast_slice_mut(out)),
        Q8_0 => scalar::quantize_row_q8_0(x, bytemuck::cast_slice_mut(out)),
        Q4K => scalar::quantize_row_q4_k(x, bytemuck::cast_slice_mut(out)),
        Q5K => scalar::quantize_row_q5_k(x, bytemuck::cast_slice_mut(out)),
        Q6K => scalar::quantize_row_q6_k(x, bytemuck::cast_slice_mut(out)),
        Q8_1 | Q8K => unreachable!("refused by can_quantize"),
    }
    Ok(())
}

/// One LoRA term of a merged tensor, with A and B in f32 and the full scale.
struct Term {
    kind: LoraKind,
    rank: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    scale: f32,
}

impl Term {
    fn new(t: &LoraTensor, scale: f32) -> Term {
        let f = |v: &[u16]| {
            v.iter()
                .map(|&h| half::f16::from_bits(h).to_f32())
                .collect()
        };
        Term {
            kind: t.kind,
            rank: t.rank,
            a: f(t.a()),
            b: f(t.b()),
            scale: t.scale * scale,
        }
    }

    /// `delta += s · (B·A)[row]` for GGUF row `row` (length `delta.len()`).
    fn add_row(&self, row: usize, delta: &mut [f32]) {
        let r = self.rank;
        match self.kind {
            // Row `row` of the n_out × n_in product: Σ_k B[row, k] · A[k, :].
            LoraKind::Linear => {
                let n = delta.len();
                for (k, &bk) in self.b[row * r..(row + 1) * r].iter().enumerate() {
                    let c = self.scale * bk;
                    for (d, &a) in delta.iter_mut().zip(&self.a[k * n..(k + 1) * n]) {
                        *d += c * a;
                    }
                }
            }
            // Token `row`'s embedding: element j += Σ_k B[j, k] · A[row, k] (A token-major).
            LoraKind::Embedding => {
                let a = &self.a[row * r..(row + 1) * r];
                for (d, bj) in delta.iter_mut().zip(self.b.chunks_exact(r)) {
                    let dot: f32 = bj.iter().zip(a).map(|(x, y)| x * y).sum();
                    *d += self.scale * dot;
                }
            }
        }
    }
}

/// Where an output tensor's bytes come from.
enum Source {
    /// Copy `size` bytes at file offset `offset`.
    Copy { offset: usize },
    /// Merge: base bytes at `offset` of type `from`, plus `terms`.
    Merge {
        offset: usize,
        from: QuantType,
        terms: Vec<(usize, usize, f32)>,
        report: usize,
    },
}

struct OutTensor {
    name: String,
    dims: Vec<u64>,
    ty: QuantType,
    size: u64,
    src: Source,
}

/// Merges `adapters` (path, user scale) into the model at `model` and writes `out`.
pub fn merge(
    model: &Path,
    adapters: &[(PathBuf, f32)],
    out: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    let mname = model.display().to_string();
    let oname = out.display().to_string();
    if adapters.is_empty() {
        return Err(Error::invalid(
            "merge: no adapters given (use --adapter PATH[:SCALE])",
        ));
    }
    if opts.n_threads == 0 || opts.n_threads > 256 {
        return Err(Error::invalid(format!(
            "merge: threads must be in 1..=256, got {}",
            opts.n_threads
        )));
    }
    if let TargetType::To(t) = opts.target {
        if !can_quantize(t) {
            return Err(Error::invalid(format!(
                "merge: cannot write weights of type {}",
                t.name()
            )));
        }
    }
    for (p, s) in adapters {
        if !s.is_finite() {
            return Err(Error::invalid(format!(
                "merge: adapter {}: scale {s} is not finite",
                p.display()
            )));
        }
    }
    // The output must not be any of the inputs.
    // (A PEFT adapter is its directory's two files, or a safetensors file and the config beside it.)
    let mut inputs: Vec<PathBuf> = vec![model.to_path_buf()];
    for (p, _) in adapters {
        inputs.push(p.clone());
        if p.is_dir() {
            inputs.push(p.join("adapter_model.safetensors"));
            inputs.push(p.join("adapter_config.json"));
        } else {
            inputs.push(p.with_file_name("adapter_config.json"));
        }
    }
    let partial = partial_path(out)?;
    for p in [out, partial.as_path()] {
        for i in &inputs {
            if same_file(p, i) {
                return Err(Error::invalid(format!(
                    "merge: output {} is the same file as the input {}; refusing to overwrite an input",
                    p.display(),
                    i.display()
                )));
            }
        }
    }

    let map = edge_run::mmap::MappedFile::open(model)?;
    let g = Gguf::parse_named(&map, &mname)?;
    let base = BaseInfo::from_gguf(&g).map_err(|e| e.in_file(&mname))?;
    let loaded: Vec<Adapter> = adapters
        .iter()
        .map(|(p, _)| Adapter::load(p, &base))
        .collect::<Result<_>>()?;
    let labels: Vec<String> = adapters
        .iter()
        .map(|(p, s)| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            format!("{n}:{s}")
        })
        .collect();

    // target name → [(adapter index, tensor index, user scale)]
    let mut targets: HashMap<&str, Vec<(usize, usize, f32)>> = HashMap::new();
    for (ai, (a, (_, s))) in loaded.iter().zip(adapters).enumerate() {
        for (ti, t) in a.tensors().iter().enumerate() {
            targets
                .entry(t.target.as_str())
                .or_default()
                .push((ai, ti, *s));
        }
    }
    let tied = g.tensor("output.weight").is_none();
    let mut reports: Vec<TensorReport> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut outs: Vec<OutTensor> = Vec::new();
    let mut copied = 0usize;

    let mut plan = |name: &str,
                    t: &TensorInfo<'_>,
                    terms: &[(usize, usize, f32)],
                    extra_note: Option<String>,
                    outs: &mut Vec<OutTensor>|
     -> Result<()> {
        let dims = t.shape().to_vec();
        if t.n_dims != 2 {
            return Err(Error::format(
                &mname,
                format!("tensor_infos[{:?}].dims", t.name),
                None,
                format!("an adapted tensor must be 2-D, got {:?}", dims),
            ));
        }
        let (n_in, n_rows) = (t.row_len(), t.n_rows());
        let (to, fb) = match opts.target {
            TargetType::Same => (t.ty, None),
            TargetType::To(x) => resolve_type(x, n_in),
        };
        if !can_quantize(t.ty) {
            return Err(Error::unsupported(
                &mname,
                format!(
                    "tensor `{}` has type {} which merge cannot read",
                    t.name,
                    t.ty.name()
                ),
            ));
        }
        let zero = terms
            .iter()
            .all(|&(ai, ti, s)| s * loaded[ai].tensors()[ti].scale == 0.0);
        let mut note: Vec<String> = extra_note.into_iter().collect();
        if let Some(f) = &fb {
            note.push(f.clone());
        }
        let copy = zero && to == t.ty;
        if copy {
            note.push("zero delta: copied unchanged".into());
        }
        let size = to
            .row_bytes(n_in)
            .and_then(|rb| rb.checked_mul(n_rows))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{mname}: tensor {name}: {} rows of {n_in} do not fit {}",
                    n_rows,
                    to.name()
                ))
            })? as u64;
        reports.push(TensorReport {
            name: name.to_string(),
            n_in,
            n_rows,
            from: t.ty,
            to,
            note: (!note.is_empty()).then(|| note.join("; ")),
            norm_w0: 0.0,
            norm_delta: 0.0,
            norm_w: 0.0,
            norm_qerr: 0.0,
            dot_kept: 0.0,
            copied: copy,
        });
        let src = if copy {
            Source::Copy {
                offset: t.offset as usize,
            }
        } else {
            Source::Merge {
                offset: t.offset as usize,
                from: t.ty,
                terms: terms.to_vec(),
                report: reports.len() - 1,
            }
        };
        outs.push(OutTensor {
            name: name.to_string(),
            dims,
            ty: to,
            size,
            src,
        });
        Ok(())
    };

    for t in g.tensors() {
        match targets.get(t.name) {
            Some(terms) => plan(t.name, t, terms, None, &mut outs)?,
            None => {
                copied += 1;
                outs.push(OutTensor {
                    name: t.name.to_string(),
                    dims: t.shape().to_vec(),
                    ty: t.ty,
                    size: t.size as u64,
                    src: Source::Copy {
                        offset: t.offset as usize,
                    },
                });
            }
        }
        if t.name == "token_embd.weight" && tied {
            let embd_changed = targets.get(t.name).is_some_and(|v| {
                v.iter()
                    .any(|&(ai, ti, s)| s * loaded[ai].tensors()[ti].scale != 0.0)
            });
            match targets.get("output.weight") {
                Some(terms) => plan(
                    "output.weight",
                    t,
                    terms,
                    Some("new tensor: the tied output head with its LoRA".into()),
                    &mut outs,
                )?,
                None if embd_changed => {
                    notes.push(
                        "token_embd.weight has an embedding LoRA and the output head is tied to it: the original \
                         token_embd is written as output.weight so the head stays unchanged, as at run time"
                            .into(),
                    );
                    outs.push(OutTensor {
                        name: "output.weight".into(),
                        dims: t.shape().to_vec(),
                        ty: t.ty,
                        size: t.size as u64,
                        src: Source::Copy {
                            offset: t.offset as usize,
                        },
                    });
                }
                None => {}
            }
        }
    }

    notes.splice(
        0..0,
        reports
            .iter()
            .filter(|r| r.note.as_deref().is_some_and(|n| n.contains("fallback")))
            .map(|r| format!("{}: {}", r.name, r.note.as_deref().unwrap_or(""))),
    );

    // Metadata: every entry byte for byte, general.file_type updated, the merge recorded.
    let old_ft = g.get("general.file_type").and_then(Value::as_u32);
    let new_ft = match opts.target {
        TargetType::To(t) => ftype_of(t).filter(|&f| old_ft.is_some_and(|o| o != f)),
        TargetType::Same => None,
    };
    let mut prev_merged: Vec<String> = Vec::new();
    if let Some(Value::Array(a)) = g.get(MERGED_KEY) {
        prev_merged = a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    let mut meta = Vec::new();
    let mut n_kv = 0u64;
    for e in g.metadata() {
        if e.key == MERGED_KEY {
            continue;
        }
        put_str(&mut meta, e.key);
        n_kv += 1;
        if e.key == "general.file_type" {
            if let Some(f) = new_ft {
                meta.extend_from_slice(&(ValueType::U32 as u32).to_le_bytes());
                meta.extend_from_slice(&f.to_le_bytes());
                continue;
            }
        }
        meta.extend_from_slice(&(e.value.value_type() as u32).to_le_bytes());
        meta.extend_from_slice(raw_value(&g, e, &mname)?);
    }
    put_str(&mut meta, MERGED_KEY);
    n_kv += 1;
    meta.extend_from_slice(&(ValueType::Array as u32).to_le_bytes());
    meta.extend_from_slice(&(ValueType::String as u32).to_le_bytes());
    let all_merged: Vec<&String> = prev_merged.iter().chain(&labels).collect();
    meta.extend_from_slice(&(all_merged.len() as u64).to_le_bytes());
    for l in &all_merged {
        put_str(&mut meta, l);
    }

    // Header: magic, version 3, counts, metadata, tensor infos, padding.
    let align = g.alignment() as u64;
    let pad = |n: u64| (align - n % align) % align;
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(outs.len() as u64).to_le_bytes());
    head.extend_from_slice(&n_kv.to_le_bytes());
    head.extend_from_slice(&meta);
    let mut off = 0u64;
    for o in &outs {
        put_str(&mut head, &o.name);
        head.extend_from_slice(&(o.dims.len() as u32).to_le_bytes());
        for d in &o.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&(o.ty as u32).to_le_bytes());
        head.extend_from_slice(&off.to_le_bytes());
        off += o.size + pad(o.size);
    }
    let hp = pad(head.len() as u64) as usize;
    head.resize(head.len() + hp, 0);

    // Write to OUT.partial, rename at the end; remove the partial file on any error.
    let io = |e: std::io::Error| Error::Io {
        path: partial.clone(),
        source: e,
    };
    let f = std::fs::File::create(&partial).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let total_merge = outs
        .iter()
        .filter(|o| matches!(o.src, Source::Merge { .. }))
        .count();
    let result = (|| -> Result<u64> {
        w.write_all(&head).map_err(io)?;
        let mut written = head.len() as u64;
        let zeros = vec![0u8; align as usize];
        let mut done = 0usize;
        for o in &outs {
            match &o.src {
                Source::Copy { offset } => {
                    let bytes = map.get(*offset..*offset + o.size as usize).ok_or_else(|| {
                        Error::format(
                            &mname,
                            format!("tensor_infos[{:?}].offset", o.name),
                            Some(*offset as u64),
                            "data range outside the file",
                        )
                    })?;
                    w.write_all(bytes).map_err(io)?;
                }
                Source::Merge {
                    offset,
                    from,
                    terms,
                    report,
                } => {
                    let t0 = std::time::Instant::now();
                    let terms: Vec<Term> = terms
                        .iter()
                        .filter(|&&(ai, ti, s)| s * loaded[ai].tensors()[ti].scale != 0.0)
                        .map(|&(ai, ti, s)| Term::new(&loaded[ai].tensors()[ti], s))
                        .collect();
                    let n_in = o.dims[0] as usize;
                    let n_rows = reports[*report].n_rows;
                    let src_rb = from.row_bytes(n_in).unwrap_or(0);
                    let src = map.get(*offset..*offset + src_rb * n_rows).ok_or_else(|| {
                        Error::format(
                            &mname,
                            format!("tensor_infos[{:?}].offset", o.name),
                            Some(*offset as u64),
                            "data range outside the file",
                        )
                    })?;
                    let sums = merge_tensor(src, *from, o.ty, n_in, n_rows, &terms, opts.n_threads, &mut w)
                        .map_err(|e| match e {
                            MergeErr::Io(e) => io(e),
                            MergeErr::Value { row, col, value } => Error::invalid(format!(
                                "{oname}: tensor {}: merged value {value} at row {row}, column {col} does not fit {}",
                                o.name,
                                o.ty.name()
                            )),
                        })?;
                    let r = &mut reports[*report];
                    r.norm_w0 = sums[0].sqrt();
                    r.norm_delta = sums[1].sqrt();
                    r.norm_w = sums[2].sqrt();
                    r.norm_qerr = sums[3].sqrt();
                    r.dot_kept = sums[4];
                    done += 1;
                    if opts.progress {
                        eprintln!(
                            "merge: [{done}/{total_merge}] {} {}→{} in {:.0} ms: |sBA|/|W0| {:.3e}, |Q(W)-W|/|W| {:.3e}",
                            o.name,
                            r.from.name(),
                            r.to.name(),
                            t0.elapsed().as_secs_f64() * 1e3,
                            r.delta_rel(),
                            r.quant_rel()
                        );
                    }
                }
            }
            let p = pad(o.size) as usize;
            w.write_all(&zeros[..p]).map_err(io)?;
            written += o.size + p as u64;
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(written)
    })();
    drop(w);
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let Err(source) = std::fs::rename(&partial, out) {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Io {
            path: out.to_path_buf(),
            source,
        });
    }
    let adapters_all = all_merged.into_iter().cloned().collect();
    let mut rep = MergeReport {
        output: out.to_path_buf(),
        bytes,
        adapters: adapters_all,
        tensors: reports,
        copied,
        file_type: new_ft.map(|f| (old_ft.unwrap_or(0), f)),
        notes,
    };
    let (kept, qd) = (rep.kept(), rep.quant_over_delta());
    if rep.tensors.iter().any(|t| !t.copied && t.norm_delta > 0.0) && (kept < 0.9 || qd > 0.5) {
        rep.notes.push(format!(
            "the requantization keeps {:.0}% of the LoRA delta and adds an error {qd:.2}x the delta's size: \
             the merged model may behave much less like the adapter than the adapter at run time does; a finer \
             --type (q8_0, f16) keeps its effect",
            100.0 * kept
        ));
    }
    Ok(rep)
}

enum MergeErr {
    Io(std::io::Error),
    Value { row: usize, col: usize, value: f32 },
}

/// Rows per block of the streamed merge: about 4 Mi f32 values of scratch.
fn block_rows(n_in: usize) -> usize {
    ((4 << 20) / n_in.max(1)).max(1)
}

/// Merges one tensor block by block and writes its bytes; returns Σ of squares of W0, ΔW, W, Q(W)−W
/// and ⟨Q(W) − W0, ΔW⟩.
#[allow(clippy::too_many_arguments)]
fn merge_tensor(
    src: &[u8],
    from: QuantType,
    to: QuantType,
    n_in: usize,
    n_rows: usize,
    terms: &[Term],
    n_threads: usize,
    w: &mut impl Write,
) -> std::result::Result<[f64; 5], MergeErr> {
    let (src_rb, dst_rb) = (
        from.row_bytes(n_in).unwrap_or(0),
        to.row_bytes(n_in).unwrap_or(0),
    );
    let step = block_rows(n_in);
    let mut sums = [0f64; 5];
    let mut buf = vec![0u8; step.min(n_rows) * dst_rb];
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = step.min(n_rows - r0);
        let out = &mut buf[..rows * dst_rb];
        let per = rows.div_ceil(n_threads.max(1));
        let parts: Vec<std::result::Result<[f64; 5], MergeErr>> = std::thread::scope(|s| {
            let handles: Vec<_> = out
                .chunks_mut(per * dst_rb)
                .enumerate()
                .map(|(i, chunk)| {
                    let first = r0 + i * per;
                    s.spawn(move || {
                        merge_rows(src, from, to, n_in, src_rb, dst_rb, first, chunk, terms)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for p in parts {
            let p = p?;
            for (s, v) in sums.iter_mut().zip(p) {
                *s += v;
            }
        }
        w.write_all(out).map_err(MergeErr::Io)?;
        r0 += rows;
    }
    Ok(sums)
}

/// Merges rows `first..first + out.len()/dst_rb` into `out`.
#[allow(clippy::too_many_arguments)]
fn merge_rows(
    src: &[u8],
    from: QuantType,
    to: QuantType,
    n_in: usize,
    src_rb: usize,
    dst_rb: usize,
    first: usize,
    out: &mut [u8],
    terms: &[Term],
) -> std::result::Result<[f64; 5], MergeErr> {
    let mut w0 = vec![0f32; n_in];
    let mut d = vec![0f32; n_in];
    let mut q = vec![0f32; n_in];
    let mut sums = [0f64; 5];
    for (i, dst) in out.chunks_exact_mut(dst_rb).enumerate() {
        let row = first + i;
        let ok = scalar::dequantize(from, &src[row * src_rb..(row + 1) * src_rb], &mut w0);
        debug_assert!(ok);
        d.fill(0.0);
        for t in terms {
            t.add_row(row, &mut d);
        }
        let (mut s0, mut s1, mut s2) = (0f64, 0f64, 0f64);
        for (x, &dv) in w0.iter_mut().zip(&d) {
            s0 += (*x as f64) * (*x as f64);
            s1 += (dv as f64) * (dv as f64);
            *x += dv;
            s2 += (*x as f64) * (*x as f64);
        }
        if let Some(col) = w0.iter().position(|v| !v.is_finite()) {
            return Err(MergeErr::Value {
                row,
                col,
                value: w0[col],
            });
        }
        quantize_row(to, &w0, dst).map_err(|col| MergeErr::Value {
            row,
            col,
            value: w0[col],
        })?;
        let ok = scalar::dequantize(to, dst, &mut q);
        debug_assert!(ok);
        let s3: f64 = q
            .iter()
            .zip(&w0)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        // ⟨Q(W) − W0, ΔW⟩ with W0 = W − ΔW
        let s4: f64 = q
            .iter()
            .zip(&w0)
            .zip(&d)
            .map(|((&qv, &wv), &dv)| (qv as f64 - (wv as f64 - dv as f64)) * dv as f64)
            .sum();
        sums[4] += s4;
        sums[0] += s0;
        sums[1] += s1;
        sums[2] += s2;
        sums[3] += s3;
    }
    Ok(sums)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The encoded bytes of a metadata value, as they are in the file.
fn raw_value<'a>(g: &Gguf<'a>, e: &MetaEntry<'a>, file: &str) -> Result<&'a [u8]> {
    let start = e.offset as usize;
    let end = match &e.value {
        Value::String(s) => start + 8 + s.len(),
        Value::Array(a) => a.offset() as usize + a.raw_bytes().len(),
        v => start + v.value_type().fixed_size().unwrap_or(0),
    };
    g.bytes().get(start..end).ok_or_else(|| {
        Error::format(
            file,
            format!("metadata[{:?}]", e.key),
            Some(e.offset),
            "value bytes outside the file",
        )
    })
}

/// `OUT.partial` beside `out`.
fn partial_path(out: &Path) -> Result<PathBuf> {
    let mut name = out
        .file_name()
        .ok_or_else(|| {
            Error::invalid(format!(
                "merge: output path {:?} has no file name",
                out.display().to_string()
            ))
        })?
        .to_os_string();
    name.push(".partial");
    Ok(out.with_file_name(name))
}

/// Whether `a` and `b` name the same existing file (same path after resolving links, or same inode).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ca), Ok(cb)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) else {
        return false;
    };
    if ca == cb {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(&ca), std::fs::metadata(&cb)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quant_fallback_follows_llama_cpp() {
        assert_eq!(resolve_type(QuantType::Q4K, 576).0, QuantType::Q5_0);
        assert_eq!(resolve_type(QuantType::Q6K, 576).0, QuantType::Q8_0);
        assert_eq!(resolve_type(QuantType::Q5K, 576).0, QuantType::Q5_1);
        assert_eq!(resolve_type(QuantType::Q4K, 1536), (QuantType::Q4K, None));
        assert_eq!(resolve_type(QuantType::Q8_0, 48).0, QuantType::F16);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    }

    #[test]
    fn target_names_parse() {
        for n in TargetType::NAMES.split(", ") {
            assert!(TargetType::parse(n).is_some(), "{n}");
        }
        assert_eq!(
            TargetType::parse("Q4_K"),
            Some(TargetType::To(QuantType::Q4K))
        );
        assert_eq!(TargetType::parse("q3_k"), None);
    }
}
