//! `edge-run adapter convert`: write any loaded adapter (PEFT or GGUF) as a llama.cpp-layout GGUF LoRA
//! adapter in which every tensor's true scale is folded into its `B` factor.
//!
//! Why fold: llama.cpp reads one global `adapter.lora.alpha` and computes the scale of every tensor as
//! `user_scale · alpha / rank` — or just `user_scale` when alpha is 0 (`get_scale` in llama.cpp's
//! `llama-adapter.h`). That cannot express rsLoRA (`alpha/√r`), `alpha_pattern` or `rank_pattern`.
//! Writing `B' = round_f16(scale · B)` with `adapter.lora.alpha = 0` gives the exact per-tensor scale in
//! both llama.cpp and edge-run (whose GGUF loader also maps alpha 0 to scale 1), up to the fp16
//! rounding of `scale · B`.
//!
//! Output layout (what [`super::gguf_adapter`] and llama.cpp read):
//! - metadata `general.type = "adapter"`, `general.architecture` = the base's, `adapter.type = "lora"`,
//!   `adapter.lora.alpha = 0.0` (f32);
//! - all tensors F16, data aligned to 32 bytes (GGUF default), so edge-run uses them in place from the
//!   memory map;
//! - linear targets: `<target>.lora_a` ggml dims `[n_in, r]`, `<target>.lora_b` dims `[r, n_out]`;
//! - `token_embd.weight`: llama.cpp's embedding layout, `lora_a` dims `[r, vocab]` (token-major),
//!   `lora_b` dims `[r, width]`.
//!
//! - replaced modules (PEFT `modules_to_save`): `<target>.replace`, F16, dims `[n_embd, n_vocab]`
//!   (edge-run's own extension; llama.cpp does not know them and warns are given).
//!
//! `q`/`k` rows are already in GGUF order in a loaded [`Adapter`] (PEFT adapters are permuted at load),
//! so they are written as they are.
use std::borrow::Cow;
use std::path::{Path, PathBuf};

use edge_run::kernels::QuantType;

use edge_run::adapter::{Adapter, BaseInfo, LoraKind};
use edge_run::gguf::GgufWriter;
use edge_run::{Error, Result};

/// What [`convert`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertReport {
    /// Adapted base tensors written (each as a `lora_a` + `lora_b` pair).
    pub tensors: usize,
    /// Bytes of the output file.
    pub bytes: u64,
    /// The distinct per-tensor scales that were folded into `B` (sorted).
    pub scales: Vec<f32>,
    /// Things the user should know, e.g. targets llama.cpp will not accept.
    pub warnings: Vec<String>,
}

/// `B' = round_f16(scale · B)` for the `B` factor (fp16 bits) of the LoRA on `target`; errors (naming
/// `<target>.lora_b`, the index and value) when a value overflows fp16. `scale == 1` copies the bits
/// unchanged.
pub fn fold_b(target: &str, b: &[u16], scale: f32, file: &str) -> Result<Vec<u16>> {
    if scale == 1.0 {
        return Ok(b.to_vec());
    }
    if !scale.is_finite() {
        return Err(Error::invalid(format!(
            "{file}: tensor {target}: scale {scale} is not finite"
        )));
    }
    let mut out = Vec::with_capacity(b.len());
    for (i, &h) in b.iter().enumerate() {
        let x = half::f16::from_bits(h).to_f32() * scale;
        let y = half::f16::from_f32(x);
        if !y.is_finite() {
            return Err(Error::format(
                file,
                format!("{target}.lora_b"),
                None,
                format!(
                    "scale {scale} · B[{i}] = {x} overflows fp16 (|x| > 65504); cannot fold the scale"
                ),
            ));
        }
        out.push(y.to_bits());
    }
    Ok(out)
}

/// Builds the GGUF (in memory, `A` borrowed from `adapter`) for `adapter` against `base`. `file` names
/// the output in errors. Also returns the warnings of [`ConvertReport`].
pub fn to_writer<'a>(
    adapter: &'a Adapter,
    base: &BaseInfo,
    file: &str,
) -> Result<(GgufWriter<'a>, Vec<String>)> {
    let mut w = GgufWriter::new();
    w.add("general.type", "adapter")?;
    w.add("general.architecture", base.arch.as_str())?;
    w.add("adapter.type", "lora")?;
    w.add("adapter.lora.alpha", 0.0f32)?;
    let mut warnings = Vec::new();
    for t in adapter.tensors() {
        if !base.tensors.contains_key(&t.target) {
            warnings.push(format!(
                "{}: the base model has no such tensor (tied embeddings); edge-run applies it to the \
                 tied output head, llama.cpp will refuse to load this adapter",
                t.target
            ));
        }
        let (r, n_in, n_out) = (t.rank as u64, t.n_in as u64, t.n_out as u64);
        let a_dims = match t.kind {
            LoraKind::Linear => [n_in, r],
            LoraKind::Embedding => [r, n_in],
        };
        let b = fold_b(&t.target, t.b(), t.scale, file)?;
        let a_bytes: &'a [u8] = bytemuck::cast_slice(t.a());
        w.add_tensor(
            &format!("{}.lora_a", t.target),
            &a_dims,
            QuantType::F16,
            Cow::Borrowed(a_bytes),
        )?;
        w.add_tensor(
            &format!("{}.lora_b", t.target),
            &[r, n_out],
            QuantType::F16,
            Cow::Owned(bytemuck::cast_slice::<u16, u8>(&b).to_vec()),
        )?;
    }
    for m in adapter.saved() {
        warnings.push(format!(
            "{}: replaced (modules_to_save), written as {}.replace; llama.cpp ignores or refuses it",
            m.target, m.target
        ));
        w.add_tensor(
            &format!("{}.replace", m.target),
            &[m.n_embd as u64, m.n_vocab as u64],
            QuantType::F16,
            Cow::Borrowed(bytemuck::cast_slice(m.data())),
        )?;
    }
    Ok((w, warnings))
}

/// Loads the adapter at `src` (PEFT directory / safetensors or GGUF) against `base`, folds every
/// tensor's scale into `B` and writes the GGUF to `out` (via a temporary file beside it that is
/// renamed into place, so a failure leaves no partial output).
pub fn convert(src: &Path, base: &BaseInfo, out: &Path) -> Result<ConvertReport> {
    let adapter = Adapter::load(src, base)?;
    let file = out.display().to_string();
    let (w, warnings) = to_writer(&adapter, base, &file)?;
    let mut tmp: PathBuf = out.to_path_buf();
    let mut name = out
        .file_name()
        .ok_or_else(|| Error::invalid(format!("output path {file:?} has no file name")))?
        .to_os_string();
    name.push(".partial");
    tmp.set_file_name(name);
    let bytes = match w.write_file(&tmp) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(source) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io {
            path: out.to_path_buf(),
            source,
        });
    }
    let mut scales: Vec<f32> = adapter.tensors().iter().map(|t| t.scale).collect();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    Ok(ConvertReport {
        tensors: adapter.tensors().len(),
        bytes,
        scales,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halves(b: &[f32]) -> Vec<u16> {
        b.iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect()
    }

    #[test]
    fn fold_multiplies_and_rounds() {
        let b = halves(&[0.5, -0.25, 1.0e-3]);
        let got: Vec<f32> = fold_b("blk.0.attn_q.weight", &b, 4.0, "x")
            .unwrap()
            .iter()
            .map(|&h| half::f16::from_bits(h).to_f32())
            .collect();
        // 4·f16(1e-3) rounded to f16 again.
        let small = half::f16::from_f32(4.0 * half::f16::from_f32(1.0e-3).to_f32()).to_f32();
        assert_eq!(got, vec![2.0, -1.0, small]);
    }

    #[test]
    fn fold_overflow_names_the_tensor() {
        let b = halves(&[1.0, 100.0]);
        let e = fold_b("blk.0.attn_q.weight", &b, 1000.0, "out.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.0.attn_q.weight.lora_b") && e.contains("B[1]"),
            "{e}"
        );
    }
}
