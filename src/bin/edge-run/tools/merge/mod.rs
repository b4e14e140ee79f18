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
use std::io::Write;
use std::path::{Path, PathBuf};

use edge_run::adapter::{Adapter, BaseInfo};
use edge_run::gguf::{Gguf, GgufWriter, MetaValue, TensorInfo, Value};
use edge_run::kernels::QuantType;
use edge_run::{Error, Result};

mod report;
mod rows;

pub use report::{MergeReport, TensorReport};
use rows::{can_quantize, merge_tensor, resolve_type, MergeErr, Term};

/// Metadata key recording the merged adapters (`NAME:SCALE` strings, in order).
pub const MERGED_KEY: &str = "edge_run.merged_adapters";

/// The type merged weights are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    /// Each tensor's original type.
    Same,
    To(QuantType),
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

/// Where an output tensor's bytes come from.
enum Source {
    /// The base tensor's bytes, unchanged.
    Copy,
    /// Merged: the base tensor of type `from`, plus `terms` (adapter index, tensor index, user scale);
    /// its line in the report is `report`.
    Merge {
        from: QuantType,
        terms: Vec<(usize, usize, f32)>,
        report: usize,
    },
}

/// One tensor of the output file, in file order.
struct OutTensor<'m> {
    name: String,
    dims: Vec<u64>,
    ty: QuantType,
    /// The base tensor's bytes in the mapped model.
    base: &'m [u8],
    src: Source,
}

/// What the output will hold, decided before anything is written.
struct Plan<'m> {
    outs: Vec<OutTensor<'m>>,
    reports: Vec<TensorReport>,
    notes: Vec<String>,
    /// Base tensors copied because no adapter targets them.
    copied: usize,
}

/// The model and adapters a merge reads.
struct Inputs<'a> {
    g: &'a Gguf<'a>,
    mname: &'a str,
    /// The output, as errors name it.
    oname: &'a str,
    loaded: &'a [Adapter],
    opts: &'a MergeOptions,
}

/// Merges `adapters` (path, user scale) into the model at `model` and writes `out`: check the
/// arguments, load the model and adapters, plan every output tensor, build the header (metadata
/// copied, the merge recorded), stream the tensors to `OUT.partial`, rename.
pub fn merge(
    model: &Path,
    adapters: &[(PathBuf, f32)],
    out: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    let (mname, oname) = (model.display().to_string(), out.display().to_string());
    check_args(adapters, opts)?;
    let partial = check_output(model, adapters, out)?;
    let map = edge_run::mmap::MappedFile::open(model)?;
    let g = Gguf::parse_named(&map, &mname)?;
    let base = BaseInfo::from_gguf(&g).map_err(|e| e.in_file(&mname))?;
    let loaded: Vec<Adapter> = adapters
        .iter()
        .map(|(p, _)| Adapter::load(p, &base))
        .collect::<Result<_>>()?;
    if let Some(a) = loaded.iter().find(|a| !a.saved().is_empty()) {
        return Err(Error::unsupported(
            a.path().display().to_string(),
            format!(
                "replaces {} (modules_to_save); merge folds only LoRA deltas, run this adapter unmerged",
                a.saved()[0].target
            ),
        ));
    }
    let inputs = Inputs {
        g: &g,
        mname: &mname,
        oname: &oname,
        loaded: &loaded,
        opts,
    };
    let mut plan = inputs.plan(adapters)?;
    let mut merged = previously_merged(&g);
    merged.extend(adapters.iter().map(|(p, s)| adapter_label(p, *s)));
    let (mut w, file_type) = inputs.header(&merged)?;
    for o in &plan.outs {
        match o.src {
            Source::Copy => w.add_tensor(&o.name, &o.dims, o.ty, o.base)?,
            Source::Merge { .. } => w.add_tensor_streamed(&o.name, &o.dims, o.ty)?,
        };
    }
    let bytes = write_then_rename(&partial, out, |f| inputs.stream(&w, &mut plan, f, &partial))?;
    let mut rep = MergeReport {
        output: out.to_path_buf(),
        bytes,
        adapters: merged,
        tensors: plan.reports,
        copied: plan.copied,
        file_type,
        notes: plan.notes,
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

/// Adapters given, thread count, target type and scales usable.
fn check_args(adapters: &[(PathBuf, f32)], opts: &MergeOptions) -> Result<()> {
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
    Ok(())
}

/// The output (and its `.partial`) must not be any of the inputs. (A PEFT adapter is its directory's
/// two files, or a safetensors file and the config beside it.) Returns the `.partial` path.
fn check_output(model: &Path, adapters: &[(PathBuf, f32)], out: &Path) -> Result<PathBuf> {
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
    Ok(partial)
}

/// `NAME:SCALE`, as recorded in [`MERGED_KEY`].
fn adapter_label(p: &Path, scale: f32) -> String {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string());
    format!("{n}:{scale}")
}

/// The adapters an earlier merge recorded in the base.
fn previously_merged(g: &Gguf<'_>) -> Vec<String> {
    match g.get(MERGED_KEY) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

impl<'a> Inputs<'a> {
    /// Every base tensor in file order: copied, or merged with the adapters that target it; on a tied
    /// embedding, the head as its own `output.weight` when the embedding's LoRA would change it.
    fn plan(&self, adapters: &[(PathBuf, f32)]) -> Result<Plan<'a>> {
        // target name → [(adapter index, tensor index, user scale)]
        let mut targets: HashMap<&str, Vec<(usize, usize, f32)>> = HashMap::new();
        for (ai, (a, (_, s))) in self.loaded.iter().zip(adapters).enumerate() {
            for (ti, t) in a.tensors().iter().enumerate() {
                targets
                    .entry(t.target.as_str())
                    .or_default()
                    .push((ai, ti, *s));
            }
        }
        let tied = self.g.tensor("output.weight").is_none();
        let mut plan = Plan {
            outs: Vec::new(),
            reports: Vec::new(),
            notes: Vec::new(),
            copied: 0,
        };
        for t in self.g.tensors() {
            match targets.get(t.name) {
                Some(terms) => self.plan_merged(&mut plan, t.name, t, terms, None)?,
                None => {
                    plan.copied += 1;
                    self.plan_copy(&mut plan, t.name, t)?;
                }
            }
            if t.name == "token_embd.weight" && tied {
                self.plan_tied_head(&mut plan, t, &targets)?;
            }
        }
        let fallbacks: Vec<String> = plan
            .reports
            .iter()
            .filter(|r| r.note.as_deref().is_some_and(|n| n.contains("fallback")))
            .map(|r| format!("{}: {}", r.name, r.note.as_deref().unwrap_or("")))
            .collect();
        plan.notes.splice(0..0, fallbacks);
        Ok(plan)
    }

    /// A tied head: merged with the head's own LoRA as a new `output.weight`, or, when only the
    /// embedding changes, the original embedding copied as `output.weight` so the head stays as at run
    /// time (where an embedding LoRA touches the input side only).
    fn plan_tied_head(
        &self,
        plan: &mut Plan<'a>,
        t: &TensorInfo<'a>,
        targets: &HashMap<&str, Vec<(usize, usize, f32)>>,
    ) -> Result<()> {
        let embd_changed = targets
            .get(t.name)
            .is_some_and(|v| v.iter().any(|&term| self.term_scale(term) != 0.0));
        match targets.get("output.weight") {
            Some(terms) => self.plan_merged(
                plan,
                "output.weight",
                t,
                terms,
                Some("new tensor: the tied output head with its LoRA".into()),
            ),
            None if embd_changed => {
                plan.notes.push(
                    "token_embd.weight has an embedding LoRA and the output head is tied to it: the original \
                     token_embd is written as output.weight so the head stays unchanged, as at run time"
                        .into(),
                );
                self.plan_copy(plan, "output.weight", t)
            }
            None => Ok(()),
        }
    }

    /// The full scale of one term: the adapter tensor's own times the user's.
    fn term_scale(&self, (ai, ti, s): (usize, usize, f32)) -> f32 {
        s * self.loaded[ai].tensors()[ti].scale
    }

    /// The bytes of `t` in the mapped base.
    fn base_bytes(&self, t: &TensorInfo<'a>, len: usize) -> Result<&'a [u8]> {
        let offset = t.offset as usize;
        self.g.bytes().get(offset..offset + len).ok_or_else(|| {
            Error::format(
                self.mname,
                format!("tensor_infos[{:?}].offset", t.name),
                Some(offset as u64),
                "data range outside the file",
            )
        })
    }

    fn plan_copy(&self, plan: &mut Plan<'a>, name: &str, t: &TensorInfo<'a>) -> Result<()> {
        plan.outs.push(OutTensor {
            name: name.to_string(),
            dims: t.shape().to_vec(),
            ty: t.ty,
            base: self.base_bytes(t, t.size)?,
            src: Source::Copy,
        });
        Ok(())
    }

    /// An adapted tensor: its output type (with any fallback), its report line, and whether it is
    /// merged or (zero delta, same type) copied.
    fn plan_merged(
        &self,
        plan: &mut Plan<'a>,
        name: &str,
        t: &TensorInfo<'a>,
        terms: &[(usize, usize, f32)],
        extra_note: Option<String>,
    ) -> Result<()> {
        let mname = self.mname;
        let dims = t.shape().to_vec();
        if t.n_dims != 2 {
            return Err(Error::format(
                mname,
                format!("tensor_infos[{:?}].dims", t.name),
                None,
                format!("an adapted tensor must be 2-D, got {:?}", dims),
            ));
        }
        let (n_in, n_rows) = (t.row_len(), t.n_rows());
        let (to, fb) = match self.opts.target {
            TargetType::Same => (t.ty, None),
            TargetType::To(x) => resolve_type(x, n_in),
        };
        if !can_quantize(t.ty) {
            return Err(Error::unsupported(
                mname,
                format!(
                    "tensor `{}` has type {} which merge cannot read",
                    t.name,
                    t.ty.name()
                ),
            ));
        }
        let zero = terms.iter().all(|&term| self.term_scale(term) == 0.0);
        let mut note: Vec<String> = extra_note.into_iter().chain(fb).collect();
        let copy = zero && to == t.ty;
        if copy {
            note.push("zero delta: copied unchanged".into());
        }
        to.row_bytes(n_in)
            .and_then(|rb| rb.checked_mul(n_rows))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{mname}: tensor {name}: {} rows of {n_in} do not fit {}",
                    n_rows,
                    to.name()
                ))
            })?;
        plan.reports.push(TensorReport {
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
        let src_len = t.ty.row_bytes(n_in).unwrap_or(0) * n_rows;
        plan.outs.push(OutTensor {
            name: name.to_string(),
            dims,
            ty: to,
            base: self.base_bytes(t, if copy { t.size } else { src_len })?,
            src: if copy {
                Source::Copy
            } else {
                Source::Merge {
                    from: t.ty,
                    terms: terms.to_vec(),
                    report: plan.reports.len() - 1,
                }
            },
        });
        Ok(())
    }

    /// A writer holding the base's metadata — every entry as it is, `general.file_type` updated
    /// when `--type` changes it — and `merged` recorded under [`MERGED_KEY`]. Also returns the file
    /// type change.
    fn header(&self, merged: &[String]) -> Result<(GgufWriter<'a>, Option<(u32, u32)>)> {
        let g = self.g;
        let old_ft = g.get("general.file_type").and_then(Value::as_u32);
        let new_ft = match self.opts.target {
            TargetType::To(t) => ftype_of(t).filter(|&f| old_ft.is_some_and(|o| o != f)),
            TargetType::Same => None,
        };
        let mut w = GgufWriter::new();
        for e in g.metadata() {
            let v = match (e.key, new_ft) {
                (MERGED_KEY, _) => continue,
                ("general.file_type", Some(f)) => MetaValue::U32(f),
                // The writer takes the alignment as the u32 the format defines (the reader also accepts
                // any integer type holding it).
                ("general.alignment", _) => MetaValue::U32(g.alignment()),
                _ => MetaValue::from_value(&e.value),
            };
            w.add(e.key, v)?;
        }
        let merged: Vec<&str> = merged.iter().map(String::as_str).collect();
        w.add(MERGED_KEY, merged)?;
        Ok((w, new_ft.map(|f| (old_ft.unwrap_or(0), f))))
    }

    /// Writes the file: copied tensors straight from the map, merged ones computed block by block
    /// (their report lines filled in on the way).
    fn stream(
        &self,
        w: &GgufWriter<'_>,
        plan: &mut Plan<'a>,
        f: &mut impl Write,
        path: &Path,
    ) -> Result<u64> {
        let total = plan
            .outs
            .iter()
            .filter(|o| matches!(o.src, Source::Merge { .. }))
            .count();
        let mut done = 0usize;
        let (outs, reports) = (&plan.outs, &mut plan.reports);
        w.write_streaming(f, |i, out| -> std::result::Result<(), StreamErr> {
            let o = &outs[i];
            let Source::Merge {
                from,
                ref terms,
                report,
            } = o.src
            else {
                unreachable!("only merged tensors are streamed");
            };
            let t0 = std::time::Instant::now();
            let r = &mut reports[report];
            self.merge_one(o, from, terms, r, out)?;
            done += 1;
            if self.opts.progress {
                eprintln!(
                    "merge: [{done}/{total}] {} {}→{} in {:.0} ms: |sBA|/|W0| {:.3e}, |Q(W)-W|/|W| {:.3e}",
                    o.name,
                    r.from.name(),
                    r.to.name(),
                    t0.elapsed().as_secs_f64() * 1e3,
                    r.delta_rel(),
                    r.quant_rel()
                );
            }
            Ok(())
        })
        .map_err(|e| match e {
            StreamErr::Io(e) => Error::Io {
                path: path.to_path_buf(),
                source: e,
            },
            StreamErr::Merge(e) => e,
        })
    }

    /// One merged tensor: `terms` with a non-zero scale applied to the base rows, written to `out`,
    /// the norms into `r`.
    fn merge_one(
        &self,
        o: &OutTensor<'_>,
        from: QuantType,
        terms: &[(usize, usize, f32)],
        r: &mut TensorReport,
        out: &mut impl Write,
    ) -> std::result::Result<(), StreamErr> {
        let terms: Vec<Term> = terms
            .iter()
            .filter(|&&term| self.term_scale(term) != 0.0)
            .map(|&(ai, ti, s)| Term::new(&self.loaded[ai].tensors()[ti], s))
            .collect();
        let sums = merge_tensor(
            o.base,
            from,
            o.ty,
            r.n_in,
            r.n_rows,
            &terms,
            self.opts.n_threads,
            out,
        )
        .map_err(|e| match e {
            MergeErr::Io(e) => StreamErr::Io(e),
            MergeErr::Value { row, col, value } => StreamErr::Merge(Error::invalid(format!(
                "{}: tensor {}: merged value {value} at row {row}, column {col} does not fit {}",
                self.oname,
                o.name,
                o.ty.name()
            ))),
        })?;
        r.norm_w0 = sums[0].sqrt();
        r.norm_delta = sums[1].sqrt();
        r.norm_w = sums[2].sqrt();
        r.norm_qerr = sums[3].sqrt();
        r.dot_kept = sums[4];
        Ok(())
    }
}

/// An error while streaming the output: of the file, or of a merged value.
enum StreamErr {
    Io(std::io::Error),
    Merge(Error),
}

impl From<std::io::Error> for StreamErr {
    fn from(e: std::io::Error) -> Self {
        StreamErr::Io(e)
    }
}

/// Writes `partial` with `write`, then renames it to `out`; on any error the partial file is removed.
fn write_then_rename(
    partial: &Path,
    out: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<u64>,
) -> Result<u64> {
    let io = |e: std::io::Error| Error::Io {
        path: partial.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::create(partial).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let result = write(&mut w).and_then(|n| {
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(n)
    });
    drop(w);
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(partial);
            return Err(e);
        }
    };
    if let Err(source) = std::fs::rename(partial, out) {
        let _ = std::fs::remove_file(partial);
        return Err(Error::Io {
            path: out.to_path_buf(),
            source,
        });
    }
    Ok(bytes)
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
