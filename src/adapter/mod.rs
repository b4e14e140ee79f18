//! LoRA adapters: loading, validation and fp16 storage.
//!
//! Semantics: for every adapted linear layer `W0` (the quantized, memory-mapped base tensor, never
//! touched), `y = W0·x + Σ_i s_i · B_i (A_i · x)` with `s_i = user_scale_i · scale_i` and
//! `scale_i` = `alpha/r` (or `alpha/√r` for rsLoRA), resolved per tensor at load time.
//!
//! # API (what the forward pass needs)
//! - [`Adapter::load`]`(path, &BaseInfo)`: detects the format from content and validates everything
//!   against the base model (architecture, every shape, ranks, finiteness). A failed load returns an
//!   [`Error`] naming the file / field / tensor and leaves nothing behind.
//!   - PEFT: a directory holding `adapter_config.json` + `adapter_model.safetensors`, or the
//!     `.safetensors` file itself with `adapter_config.json` beside it.
//!   - llama.cpp GGUF LoRA adapter (`general.type = adapter`, `adapter.type = lora`).
//! - [`Adapter::get`]`(target)` → the [`LoraTensor`] for a base tensor name such as
//!   `"blk.3.attn_q.weight"` (or `None` if this adapter does not touch it); [`Adapter::tensors`] lists all.
//! - [`LoraTensor::a`] / [`LoraTensor::b`]: fp16 bits; [`LoraTensor::kernel_ref`]`(user_scale)` gives
//!   the [`LoraRef`] that `edge_run_kernels::lora::LoraKernels` kernels take.
//! - [`Adapter::summary`] for `edge-run info`.
//!
//! # Layouts (see [`LoraKind`])
//! - [`LoraKind::Linear`]: `A` is `rank × n_in` row-major, `B` is `n_out × rank` row-major, where
//!   `(n_in, n_out) = (ne0, ne1)` of the base tensor. Use `shrink` then `expand` (kernels).
//! - [`LoraKind::Embedding`] (`token_embd.weight`): `n_in` = vocabulary size, `n_out` = model width.
//!   `A` is stored **token-major**, `n_in × rank` (row `tok` is the intermediate `t` for token `tok`:
//!   `t = a[tok·rank .. (tok+1)·rank]`, no shrink needed), `B` is `n_out × rank` (`expand` as usual) —
//!   llama.cpp's layout; PEFT's `lora_embedding_A [r, vocab]` is transposed once at load.
//! - The q/k output rows of PEFT adapters for `llama` are permuted like llama.cpp's converter permutes
//!   the base `attn_q` / `attn_k` weights, so `B`'s rows line up with the GGUF base's rows.
//! - A LoRA on a fused base tensor (phi3's `attn_qkv`: q, k, v rows; `ffn_up`: gate, up rows; PEFT's
//!   `qkv_proj`, `gate_up_proj`) is stored whole and binds to every part the forward pass multiplies
//!   ([`crate::model::Model::lora_parts`]); each part takes its rows of `B`
//!   ([`LoraTensor::kernel_ref_rows`]), which is the fused product split after the low-rank term.
//! - `output.weight` may be a target even if the base has no such tensor (tied embeddings: the head
//!   is `token_embd.weight` used as a `vocab × width` linear); it is validated against `token_embd`.
//!
//! # Storage
//! F16 tensor data that lies aligned in a GGUF (or safetensors) file and needs no reordering is used in
//! place from the memory map (zero copy); everything else (F32, BF16, Q8_0, permuted q/k `B`,
//! transposed embedding `A`) is converted once at load to an owned f16 buffer.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernels::lora::LoraRef;
use crate::kernels::QuantType;
use crate::mmap::MappedFile;

pub mod alora;
pub mod control;
pub mod dora;
mod gguf_adapter;
mod peft;
pub mod safetensors;
mod saved;
mod set;

pub use crate::model::BaseInfo;
pub use control::ControlVector;
pub use saved::{SavedModule, REPLACEABLE};
pub use set::{ActiveSet, AdapterControl, MAX_ADAPTERS};
pub(crate) use set::{Applied, LoraRefs, Skips};

/// The file format an adapter was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// Hugging Face PEFT (`adapter_config.json` + `adapter_model.safetensors`).
    Peft,
    /// llama.cpp GGUF LoRA adapter.
    Gguf,
}

/// How a [`LoraTensor`]'s factors are laid out; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraKind {
    /// `A`: `rank × n_in`, `B`: `n_out × rank`.
    Linear,
    /// Token embedding: `A` token-major `n_in (vocab) × rank`, `B`: `n_out (width) × rank`.
    Embedding,
}

/// fp16 data, either in place in a memory map or owned.
#[derive(Clone)]
enum Halves {
    /// `len` u16 starting at byte `start` of the map (checked 2-byte aligned and in bounds at load).
    Mapped {
        map: Arc<MappedFile>,
        start: usize,
        len: usize,
    },
    Owned(Vec<u16>),
}

impl Halves {
    fn get(&self) -> &[u16] {
        match self {
            // Bounds and alignment were checked when this was built (`Halves::mapped`), so the cast
            // cannot fail; an empty slice would be caught by the kernels' shape checks anyway.
            Halves::Mapped { map, start, len } => map
                .get(*start..*start + 2 * *len)
                .and_then(|b| bytemuck::try_cast_slice(b).ok())
                .unwrap_or(&[]),
            Halves::Owned(v) => v,
        }
    }

    /// In place if the bytes are 2-byte aligned in memory (little-endian hosts), otherwise copied.
    fn mapped(map: &Arc<MappedFile>, start: usize, len: usize) -> Option<Halves> {
        let bytes = map.get(start..start.checked_add(len.checked_mul(2)?)?)?;
        if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, u16>(bytes).is_ok() {
            Some(Halves::Mapped {
                map: map.clone(),
                start,
                len,
            })
        } else {
            Some(Halves::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ))
        }
    }

    fn is_mapped(&self) -> bool {
        matches!(self, Halves::Mapped { .. })
    }
}

/// Where the values live and how many there are, never the values.
impl std::fmt::Debug for Halves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halves::Mapped { len, .. } => write!(f, "{len} mapped halves"),
            Halves::Owned(v) => write!(f, "{} owned halves", v.len()),
        }
    }
}

/// One adapted base tensor.
#[derive(Clone)]
pub struct LoraTensor {
    /// The base GGUF tensor name, e.g. `blk.3.attn_q.weight`.
    pub target: String,
    pub kind: LoraKind,
    pub rank: usize,
    /// Columns of the base tensor (`ne0`); for [`LoraKind::Embedding`] the vocabulary size.
    pub n_in: usize,
    /// Rows of the base tensor (`ne1`); for [`LoraKind::Embedding`] the model width.
    pub n_out: usize,
    /// `alpha/r` (rsLoRA: `alpha/√r`; GGUF with alpha 0: 1), user scale NOT included.
    pub scale: f32,
    a: Halves,
    b: Halves,
    /// DoRA: the magnitude `m`, `n_out` values in the base's row order (see [`dora`]).
    magnitude: Option<Arc<[f32]>>,
}

impl std::fmt::Debug for LoraTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraTensor")
            .field("target", &self.target)
            .field("kind", &self.kind)
            .field("rank", &self.rank)
            .field("n_in", &self.n_in)
            .field("n_out", &self.n_out)
            .field("scale", &self.scale)
            .field("a", &self.a)
            .field("b", &self.b)
            .field("dora", &self.magnitude.is_some())
            .finish()
    }
}

impl LoraTensor {
    /// `A` as fp16 bits: `rank × n_in` ([`LoraKind::Linear`]) or `n_in × rank` ([`LoraKind::Embedding`]).
    pub fn a(&self) -> &[u16] {
        self.a.get()
    }
    /// `B` as fp16 bits, `n_out × rank` row-major.
    pub fn b(&self) -> &[u16] {
        self.b.get()
    }
    /// The kernels' view with full scale `user_scale · self.scale`. (For an embedding, use only the
    /// `expand` kernels with it; the intermediate is a row of [`LoraTensor::a`].)
    pub fn kernel_ref(&self, user_scale: f32) -> LoraRef<'_> {
        LoraRef {
            rank: self.rank,
            n_in: self.n_in,
            n_out: self.n_out,
            a: self.a(),
            b: self.b(),
            scale: user_scale * self.scale,
        }
    }
    /// The kernels' view of rows `row0..row0 + n` of this LoRA's output (a part of a fused base
    /// tensor: `B`'s rows of that part, `A` whole), with full scale `user_scale · self.scale`.
    pub fn kernel_ref_rows(&self, user_scale: f32, row0: usize, n: usize) -> LoraRef<'_> {
        let r = self.rank;
        LoraRef {
            n_out: n,
            b: &self.b()[row0 * r..(row0 + n) * r],
            ..self.kernel_ref(user_scale)
        }
    }
    /// DoRA's magnitude vector (`n_out` values, one per base row), `None` for a plain LoRA.
    pub fn magnitude(&self) -> Option<&[f32]> {
        self.magnitude.as_deref()
    }
    /// Whether `A` / `B` are used in place from the file's memory map.
    pub fn is_mapped(&self) -> (bool, bool) {
        (self.a.is_mapped(), self.b.is_mapped())
    }
}

/// A loaded, validated LoRA adapter. Owns its memory map(s). A clone shares the mapped factors and
/// copies the converted ones; it is a different adapter to a session (its own DoRA norms cache entry).
#[derive(Clone)]
pub struct Adapter {
    path: PathBuf,
    format: AdapterFormat,
    /// Sorted by target, no two alike.
    tensors: Vec<LoraTensor>,
    /// Replaced base tensors (PEFT `modules_to_save`), sorted by target.
    saved: Vec<SavedModule>,
    /// Human-readable facts for the summary (alpha, rsLoRA, fields found inert …).
    notes: Vec<String>,
    /// An aLoRA's invocation sequence ([`alora`]); `None` for a plain LoRA.
    invocation: Option<Vec<u32>>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .field("saved", &self.saved)
            .finish()
    }
}

impl Adapter {
    /// Loads and validates an adapter against `base`; the format is detected from the content.
    pub fn load(path: &Path, base: &BaseInfo) -> Result<Adapter> {
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return peft::load(path, base);
        }
        let mut magic = [0u8; 9];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(io)?;
            let mut got = 0;
            while got < magic.len() {
                let k = f.read(&mut magic[got..]).map_err(io)?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            got
        };
        if n >= 4 && &magic[..4] == b"GGUF" {
            gguf_adapter::load(path, base)
        } else if n == 9 && magic[8] == b'{' {
            peft::load(path, base)
        } else {
            Err(Error::format(
                path.display().to_string(),
                "magic",
                Some(0),
                format!(
                    "not a GGUF adapter (magic \"GGUF\") nor a safetensors file (8-byte header length then '{{'); \
                     first bytes {:02x?}",
                    &magic[..n]
                ),
            ))
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn format(&self) -> AdapterFormat {
        self.format
    }
    /// All adapted tensors, in a stable order (by target name).
    pub fn tensors(&self) -> &[LoraTensor] {
        &self.tensors
    }
    /// The LoRA for base tensor `target` (e.g. `blk.0.attn_q.weight`), if this adapter has one.
    pub fn get(&self, target: &str) -> Option<&LoraTensor> {
        let i = self
            .tensors
            .binary_search_by(|t| t.target.as_str().cmp(target))
            .ok()?;
        self.tensors.get(i)
    }
    /// Whether any tensor is DoRA (has a magnitude vector).
    pub fn is_dora(&self) -> bool {
        self.tensors.iter().any(|t| t.magnitude.is_some())
    }
    /// The same factors and scales as a plain LoRA: every DoRA magnitude dropped (for comparisons
    /// such as `bench`'s DoRA overhead). Shares the factors' memory.
    pub fn without_dora(&self) -> Adapter {
        Adapter {
            path: self.path.clone(),
            format: self.format,
            tensors: self
                .tensors
                .iter()
                .map(|t| LoraTensor {
                    magnitude: None,
                    ..t.clone()
                })
                .collect(),
            notes: self.notes.clone(),
            saved: self.saved.clone(),
            invocation: self.invocation.clone(),
        }
    }
    /// Replaced base tensors (`token_embd.weight`, `output.weight`), sorted by target.
    pub fn saved(&self) -> &[SavedModule] {
        &self.saved
    }
    /// The replacement of base tensor `target`, if this adapter has one.
    pub fn saved_for(&self, target: &str) -> Option<&SavedModule> {
        self.saved.iter().find(|m| m.target == target)
    }
    /// Bytes of fp16 `A` and `B` data (in place or owned).
    pub fn bytes(&self) -> (usize, usize) {
        self.tensors.iter().fold((0, 0), |(a, b), t| {
            (a + 2 * t.a().len(), b + 2 * t.b().len())
        })
    }

    /// A multi-line description: format, ranks, alpha, resolved scales, targets, bytes of A/B.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let fmt = match self.format {
            AdapterFormat::Peft => "PEFT safetensors",
            AdapterFormat::Gguf => "llama.cpp GGUF",
        };
        let _ = writeln!(
            s,
            "adapter {} ({fmt}): {} tensors",
            self.path.display(),
            self.tensors.len()
        );
        let mut ranks: Vec<usize> = self.tensors.iter().map(|t| t.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut scales: Vec<f32> = self.tensors.iter().map(|t| t.scale).collect();
        scales.sort_by(f32::total_cmp);
        scales.dedup();
        let _ = writeln!(s, "  ranks: {ranks:?}");
        let _ = writeln!(
            s,
            "  scales (alpha/r or alpha/sqrt(r), before the user scale): {scales:?}"
        );
        for n in &self.notes {
            let _ = writeln!(s, "  {n}");
        }
        let n_dora = self
            .tensors
            .iter()
            .filter(|t| t.magnitude.is_some())
            .count();
        if n_dora > 0 {
            let _ = writeln!(
                s,
                "  DoRA: {n_dora} of {} tensors carry a magnitude vector (y = m / ‖W0 + s·B·A‖_row ⊙ (W0·x + s·B·A·x), \
                 row norms computed when a set is published)",
                self.tensors.len()
            );
        }
        // Targets grouped by the part after `blk.N.`.
        let mut groups: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for t in &self.tensors {
            let (layer, rest) = split_block(&t.target);
            groups.entry(rest.to_string()).or_default().extend(layer);
        }
        let list: Vec<String> = groups
            .iter()
            .map(|(k, l)| {
                if l.is_empty() {
                    k.clone()
                } else {
                    format!("{k} ×{} layers", l.len())
                }
            })
            .collect();
        let _ = writeln!(s, "  targets: {}", list.join(", "));
        let (a, b) = self.bytes();
        let mapped: usize = self
            .tensors
            .iter()
            .map(|t| if t.a.is_mapped() { 2 * t.a().len() } else { 0 } + if t.b.is_mapped() { 2 * t.b().len() } else { 0 })
            .sum();
        let _ = writeln!(s, "  fp16 data: A {a} bytes, B {b} bytes ({mapped} in place from the file map, {} converted)", a + b - mapped);
        for m in &self.saved {
            let _ = writeln!(
                s,
                "  replaces {} (modules_to_save): {} x {} fp16, {} bytes {}",
                m.target,
                m.n_vocab,
                m.n_embd,
                2 * m.data().len(),
                if m.is_mapped() {
                    "in place from the file map"
                } else {
                    "converted at load"
                }
            );
        }
        s
    }

    /// Builds the adapter from validated tensors (sorted by target; duplicates are an error).
    /// Replaced base tensors may be given too (sorted here); a LoRA on a replaced tensor is an error.
    fn with_saved(
        path: &Path,
        format: AdapterFormat,
        mut tensors: Vec<LoraTensor>,
        mut saved: Vec<SavedModule>,
        notes: Vec<String>,
    ) -> Result<Adapter> {
        sort_by_target(path, &mut saved, |m| &m.target, "replaced twice")?;
        if let Some(m) = saved
            .iter()
            .find(|m| tensors.iter().any(|t| t.target == m.target))
        {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("{} is both replaced and adapted by a LoRA", m.target),
            ));
        }
        // Stable and linear on input already in order (the GGUF loader's).
        sort_by_target(
            path,
            &mut tensors,
            |t| &t.target,
            "two LoRAs for the same base tensor",
        )?;
        if tensors.is_empty() && saved.is_empty() {
            return Err(Error::format(
                path.display().to_string(),
                "tensors",
                None,
                "the adapter has no LoRA tensors",
            ));
        }
        Ok(Adapter {
            path: path.to_path_buf(),
            format,
            tensors,
            saved,
            notes,
            invocation: None,
        })
    }
}

/// Sorts `items` by their base tensor `target` (stable); two for one tensor are an error of the
/// adapter at `path` naming that tensor with `twice`.
fn sort_by_target<T>(
    path: &Path,
    items: &mut [T],
    target: impl Fn(&T) -> &String,
    twice: &str,
) -> Result<()> {
    items.sort_by(|a, b| target(a).cmp(target(b)));
    if let Some(w) = items.windows(2).find(|w| target(&w[0]) == target(&w[1])) {
        return Err(Error::format(
            path.display().to_string(),
            target(&w[1]),
            None,
            twice,
        ));
    }
    Ok(())
}

/// `("blk.3.attn_q.weight")` → `(Some(3), "attn_q.weight")`; other names → `(None, name)`.
fn split_block(name: &str) -> (Option<usize>, &str) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((n, tail)) = rest.split_once('.') {
            if let Ok(n) = n.parse() {
                return (Some(n), tail);
            }
        }
    }
    (None, name)
}

// ---------------------------------------------------------------------------------------------------
// Shared by the loaders.

/// `n` values of type `ty` (F32, F16, BF16 or Q8_0) widened to f32 by the kernels' dequantizer;
/// `None` if `bytes` does not hold exactly `n` such values (the loaders checked it).
fn widen(ty: QuantType, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let mut out = vec![0f32; n];
    crate::kernels::dequantize(ty, bytes, &mut out).then_some(out)
}

/// Index of the first non-finite value, if any.
fn first_non_finite(v: &[f32]) -> Option<usize> {
    v.iter().position(|x| !x.is_finite())
}

/// f32 → f16 bits; errors (naming `what` and the index) if a value does not fit in f16.
fn to_f16(v: &[f32], file: &str, what: &str) -> Result<Vec<u16>> {
    let mut out = Vec::with_capacity(v.len());
    for (i, &x) in v.iter().enumerate() {
        let h = half::f16::from_f32(x);
        if !h.is_finite() {
            return Err(Error::format(
                file,
                what,
                None,
                format!("value {x} at index {i} overflows fp16 (|x| > 65504)"),
            ));
        }
        out.push(h.to_bits());
    }
    Ok(out)
}

/// Error for a non-finite value at `idx` of tensor `what`.
fn non_finite_err(file: &str, what: &str, idx: usize, val: f32) -> Error {
    Error::format(
        file,
        what,
        None,
        format!("value at index {idx} is {val} (NaN/Inf not allowed)"),
    )
}

/// Reorders the rows of an `n_rows × row_len` matrix like llama.cpp's converter permutes q/k weights
/// for `llama` (`permute(w, n_head, n_head_kv)`): within each head of `hd` rows, output row
/// `2j + i` takes input row `i·hd/2 + j` (i ∈ {0, 1}, j < hd/2), i.e. the two rotary halves are
/// interleaved. `n_heads` is `n_head` for q and `n_head_kv` for k.
fn permute_rows<T: Copy + Default>(
    v: &[T],
    n_rows: usize,
    row_len: usize,
    n_heads: usize,
) -> Option<Vec<T>> {
    if n_heads == 0 || !n_rows.is_multiple_of(2 * n_heads) || v.len() != n_rows * row_len {
        return None;
    }
    let hd = n_rows / n_heads;
    let half = hd / 2;
    let mut out = vec![T::default(); v.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for i in 0..2 {
                let dst = h * hd + 2 * j + i;
                let src = h * hd + i * half + j;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&v[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    Some(out)
}

/// Transposes a `rows × cols` row-major matrix.
fn transpose(v: &[u16], rows: usize, cols: usize) -> Vec<u16> {
    let mut out = vec![0u16; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_interleaves_rotary_halves() {
        // 2 heads of 4 rows, 1 column: rows [0 1 2 3 | 4 5 6 7] → [0 2 1 3 | 4 6 5 7].
        let v: Vec<u16> = (0..8).collect();
        assert_eq!(
            permute_rows(&v, 8, 1, 2).unwrap(),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
        assert!(permute_rows(&v, 8, 1, 3).is_none());
    }

    #[test]
    fn transpose_small() {
        assert_eq!(transpose(&[1, 2, 3, 4, 5, 6], 2, 3), vec![1, 4, 2, 5, 3, 6]);
    }
}
