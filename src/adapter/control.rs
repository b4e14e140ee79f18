//! Control vectors: llama.cpp's GGUF control-vector files, added to the residual stream.
//!
//! A file holds 1-D tensors `direction.N` (F32, or F16 converted once at load), `n_embd` values
//! each. `direction.N` is added to every position's residual stream right after block `N` (counted
//! from 0) — after its feed-forward residual add — so `N` runs over `1..n_layer` (block 0's output
//! has no direction in llama.cpp's scheme). Several files are summed, each times its scale; a layer
//! range `[start, end]` (inclusive, block indices) keeps only those blocks. A file with scale 0
//! contributes nothing; a block that no file covers is skipped by the forward pass, so a control
//! vector without entries leaves the logits bit-identical to none.
//!
//! Metadata: `general.architecture`, if present, must be `controlvector` or the base's
//! architecture; `controlvector.model_hint` (the producer's model type, e.g. `mistral` for a GGUF
//! `llama`) and `controlvector.layer_count` are descriptive. The width and layer checks are what
//! tie a file to the model.
use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::kernels::QuantType;
use crate::mmap::MappedFile;
use crate::model::Model;

/// One per-layer table of additions to the residual stream, built from one or more files.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlVector {
    n_layer: usize,
    n_embd: usize,
    /// `[n_layer, n_embd]` row-major; rows of absent layers are zeros.
    data: Vec<f32>,
    /// Per layer: some file with a non-zero scale has a direction for it, inside the range.
    present: Vec<bool>,
    /// The files and scales it was built from.
    sources: Vec<(String, f32)>,
}

impl ControlVector {
    /// Sum `files` (each `(path, scale)`) into one control vector for `model`, keeping only the blocks
    /// in `layers` (inclusive block indices; `None`: all). Every file is validated (names, types,
    /// widths, finite values) even when its scale is 0. Errors name the file, field and value.
    pub fn load<P: AsRef<Path>>(
        model: &Model,
        files: &[(P, f32)],
        layers: Option<(usize, usize)>,
    ) -> Result<ControlVector> {
        let (n_layer, n_embd) = (model.hp.n_layer, model.hp.n_embd);
        let mut cv = ControlVector::empty(n_layer, n_embd);
        let (lo, hi) = layers.unwrap_or((0, n_layer.saturating_sub(1)));
        for (path, scale) in files {
            let path = path.as_ref();
            let name = path.display().to_string();
            if !scale.is_finite() {
                return Err(Error::invalid(format!(
                    "{name}: control vector scale {scale} is not a finite number"
                )));
            }
            let dirs = read_file(path, &name, &model.base_info.arch, n_layer, n_embd)?;
            cv.sources.push((name.clone(), *scale));
            if *scale == 0.0 {
                continue;
            }
            for (l, v) in dirs {
                if l < lo || l > hi {
                    continue;
                }
                let row = &mut cv.data[l * n_embd..(l + 1) * n_embd];
                for (i, (d, x)) in row.iter_mut().zip(&v).enumerate() {
                    *d += scale * x;
                    if !d.is_finite() {
                        return Err(Error::format(
                            &name,
                            format!("direction.{l}[{i}]"),
                            None,
                            format!("{x} times scale {scale} summed gives {d}, not finite"),
                        ));
                    }
                }
                cv.present[l] = true;
            }
        }
        Ok(cv)
    }

    /// A control vector from per-block rows given directly: `(block, values)`, `block` in
    /// `1..n_layer`, `n_embd` finite values each (repeated blocks are summed).
    pub fn from_rows(model: &Model, rows: &[(usize, &[f32])]) -> Result<ControlVector> {
        let (n_layer, n_embd) = (model.hp.n_layer, model.hp.n_embd);
        let mut cv = ControlVector::empty(n_layer, n_embd);
        for &(l, v) in rows {
            if l == 0 || l >= n_layer || v.len() != n_embd || v.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "control vector row for block {l}: need a block in 1..{n_layer} and {n_embd} \
                     finite values, got {} values",
                    v.len()
                )));
            }
            let row = &mut cv.data[l * n_embd..(l + 1) * n_embd];
            for (d, x) in row.iter_mut().zip(v) {
                *d += x;
            }
            cv.present[l] = true;
        }
        Ok(cv)
    }

    fn empty(n_layer: usize, n_embd: usize) -> ControlVector {
        ControlVector {
            n_layer,
            n_embd,
            data: vec![0.0; n_layer * n_embd],
            present: vec![false; n_layer],
            sources: Vec::new(),
        }
    }

    /// What block `l`'s output gets added (`None`: nothing).
    pub fn layer(&self, l: usize) -> Option<&[f32]> {
        match self.present.get(l) {
            Some(true) => Some(&self.data[l * self.n_embd..(l + 1) * self.n_embd]),
            _ => None,
        }
    }

    /// Blocks that get an addition.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.present
            .iter()
            .enumerate()
            .filter_map(|(l, &p)| p.then_some(l))
    }

    /// No block gets an addition.
    pub fn is_empty(&self) -> bool {
        !self.present.iter().any(|&p| p)
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// The files (as named) and scales it was built from.
    pub fn sources(&self) -> &[(String, f32)] {
        &self.sources
    }
}

/// The inclusive block range llama.cpp's `--control-vector-layer-range A B` selects: `A ≤ 0` means
/// 1, `B ≤ 0` means `n_layer`; the result is clamped to the model's blocks. `None` if it selects no
/// block.
pub fn layer_range(start: i64, end: i64, n_layer: usize) -> Option<(usize, usize)> {
    let start = if start <= 0 { 1 } else { start as u64 };
    let end = if end <= 0 { n_layer as u64 } else { end as u64 };
    let last = (n_layer as u64).checked_sub(1)?;
    let end = end.min(last);
    (start <= end).then_some((start as usize, end as usize))
}

/// The directions of one file, validated: `(block, values)` sorted by block.
fn read_file(
    path: &Path,
    name: &str,
    arch: &str,
    n_layer: usize,
    n_embd: usize,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let map = MappedFile::open(path)?;
    let g = Gguf::parse_named(&map, name)?;
    check_metadata(&g, name, arch)?;
    if g.tensors().is_empty() {
        return Err(Error::format(
            name,
            "tensor_infos",
            None,
            "no direction.N tensors: not a control vector",
        ));
    }
    let mut dirs = Vec::with_capacity(g.tensors().len());
    for t in g.tensors() {
        let l = block_of(t, name, n_layer)?;
        let field = || format!("tensor_infos[{:?}]", t.name);
        if t.n_dims != 1 || t.dims[0] as usize != n_embd {
            return Err(Error::format(
                name,
                format!("{}.dims", field()),
                None,
                format!("{:?}, but the model's width is [{n_embd}]", t.shape()),
            ));
        }
        let bytes = g.tensor_data(t);
        let v: Vec<f32> = match t.ty {
            QuantType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            QuantType::F16 => {
                let mut v = vec![0.0; n_embd];
                crate::kernels::scalar::dequantize_row_f16(bytes, &mut v);
                v
            }
            ty => {
                return Err(Error::format(
                    name,
                    format!("{}.type", field()),
                    None,
                    format!("{} (control vectors: F32 or F16)", ty.name()),
                ))
            }
        };
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::format(
                name,
                format!("{}[{i}]", t.name),
                Some(t.offset),
                format!("value {x} is not finite"),
            ));
        }
        dirs.push((l, v));
    }
    dirs.sort_unstable_by_key(|d| d.0);
    if let Some(w) = dirs.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::format(
            name,
            "tensor_infos",
            None,
            format!("two tensors for direction.{}", w[0].0),
        ));
    }
    Ok(dirs)
}

/// The block `direction.N` applies to, checked: `N` a decimal number in `1..n_layer`.
fn block_of(t: &TensorInfo<'_>, name: &str, n_layer: usize) -> Result<usize> {
    let field = format!("tensor_infos[{:?}]", t.name);
    let digits = t.name.strip_prefix("direction.").unwrap_or("");
    let n = if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        digits.parse::<usize>().ok()
    } else {
        None
    };
    let Some(n) = n else {
        return Err(Error::format(
            name,
            field,
            None,
            "not a control-vector tensor (name must be direction.N, N a block index)",
        ));
    };
    if n == 0 || n >= n_layer {
        return Err(Error::format(
            name,
            field,
            None,
            format!(
                "block {n} out of range: direction.N applies after block N, N in 1..{n_layer} \
                 for this {n_layer}-block model"
            ),
        ));
    }
    Ok(n)
}

/// `general.architecture`, when present, is `controlvector` or the base's; the `controlvector.*`
/// keys have their types.
fn check_metadata(g: &Gguf<'_>, name: &str, arch: &str) -> Result<()> {
    if let Some(v) = g.get("general.architecture") {
        let a = v.as_str().ok_or_else(|| {
            Error::format(name, "general.architecture", None, "expected a string")
        })?;
        if a != "controlvector" && a != arch {
            return Err(Error::format(
                name,
                "general.architecture",
                None,
                format!("{a:?}: neither \"controlvector\" nor the model's {arch:?}"),
            ));
        }
    }
    // (key, whether a value has the key's type, the type expected)
    type Typed = (
        &'static str,
        fn(&crate::gguf::Value<'_>) -> bool,
        &'static str,
    );
    let typed: [Typed; 2] = [
        (
            "controlvector.model_hint",
            |v| v.as_str().is_some(),
            "a string",
        ),
        (
            "controlvector.layer_count",
            |v| v.as_u64().is_some(),
            "an unsigned integer",
        ),
    ];
    for (key, has_type, expected) in typed {
        if g.get(key).is_some_and(|v| !has_type(v)) {
            return Err(Error::format(
                name,
                key,
                None,
                format!("expected {expected}"),
            ));
        }
    }
    Ok(())
}
