//! llama.cpp GGUF LoRA adapters (as written by `convert_lora_to_gguf.py`).
//!
//! Metadata: `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture` (must equal
//! the base's), `adapter.lora.alpha` (optional; 0 or absent → scale 1, else `alpha / rank`). Other
//! `general.*` keys are descriptive (inert); any other `adapter.*` key (e.g. aLoRA invocation tokens)
//! is refused, as is any key outside `general.*` / `adapter.*`.
//!
//! Tensors: `<base tensor>.lora_a` with ggml dims `[n_in, r]` (row-major `r × n_in`) and
//! `<base tensor>.lora_b` with dims `[r, n_out]` (row-major `n_out × r`); for `token_embd.weight`
//! llama.cpp's layout is `lora_a` dims `[r, vocab]` (token-major) and `lora_b` dims `[r, width]`.
//! Types F16 (used in place from the map), F32, BF16 and Q8_0 (converted once to f16).
use edge_run_kernels::QuantType;

use super::*;
use crate::gguf::{Gguf, TensorInfo};

pub(super) fn load(path: &Path, base: &BaseInfo) -> Result<Adapter> {
    let name = path.display().to_string();
    let map = map_file(path)?;
    let g = Gguf::parse_named(&map, &name)?;
    let ty = g.get_str("general.type")?;
    if ty != "adapter" {
        return Err(Error::format(
            &name,
            "general.type",
            None,
            format!("{ty:?}: not an adapter (expected \"adapter\")"),
        ));
    }
    let at = g.get_str("adapter.type")?;
    if at != "lora" {
        return Err(Error::unsupported(
            &name,
            format!("adapter.type {at:?} (only \"lora\")"),
        ));
    }
    let arch = g.get_str("general.architecture")?;
    if arch != base.arch {
        return Err(Error::invalid(format!(
            "{name}: general.architecture {arch:?} does not match the base model's {:?}",
            base.arch
        )));
    }
    let alpha = g.opt_f32("adapter.lora.alpha")?.unwrap_or(0.0);
    if !alpha.is_finite() || alpha < 0.0 {
        return Err(Error::format(
            &name,
            "adapter.lora.alpha",
            None,
            format!("{alpha} is not a finite non-negative number"),
        ));
    }
    for e in g.metadata() {
        let k = e.key;
        let ok = k.starts_with("general.") || matches!(k, "adapter.type" | "adapter.lora.alpha");
        if !ok {
            return Err(Error::unsupported(
                &name,
                format!("metadata key `{k}` is not understood; refusing rather than ignoring it"),
            ));
        }
    }

    let mut pairs: std::collections::BTreeMap<&str, (Option<&TensorInfo>, Option<&TensorInfo>)> =
        Default::default();
    for t in g.tensors() {
        let (target, is_a) = if let Some(b) = t.name.strip_suffix(".lora_a") {
            (b, true)
        } else if let Some(b) = t.name.strip_suffix(".lora_b") {
            (b, false)
        } else {
            return Err(Error::format(
                &name,
                format!("tensor_infos[{:?}]", t.name),
                None,
                "not a LoRA factor (name must end in .lora_a / .lora_b)",
            ));
        };
        let e = pairs.entry(target).or_default();
        let slot = if is_a { &mut e.0 } else { &mut e.1 };
        if slot.replace(t).is_some() {
            return Err(Error::format(
                &name,
                format!("tensor_infos[{:?}]", t.name),
                None,
                "duplicate tensor",
            ));
        }
    }

    let mut tensors = vec![];
    for (target, (a, b)) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::format(
                &name,
                target,
                None,
                "has only one of lora_a / lora_b",
            ));
        };
        for t in [a, b] {
            if t.n_dims != 2 {
                return Err(Error::format(
                    &name,
                    format!("tensor_infos[{:?}].dims", t.name),
                    None,
                    format!("{:?} is not 2-D", t.shape()),
                ));
            }
        }
        let (ne0, ne1) = base.target_shape(target).ok_or_else(|| {
            Error::invalid(format!(
                "{name}: tensor {:?} adapts {target:?}, which the base model does not have",
                a.name
            ))
        })?;
        let embedding = target == "token_embd.weight";
        let (a0, a1, b0, b1) = (
            a.dims[0] as usize,
            a.dims[1] as usize,
            b.dims[0] as usize,
            b.dims[1] as usize,
        );
        let (kind, rank, n_in, n_out, rank_b) = if embedding {
            // a: [r, vocab], b: [r, width]; base token_embd: [width, vocab].
            (LoraKind::Embedding, a0, a1, b1, b0)
        } else {
            // a: [n_in, r], b: [r, n_out].
            (LoraKind::Linear, a1, a0, b1, b0)
        };
        if rank != rank_b || rank == 0 {
            return Err(Error::format(
                &name,
                format!("tensor_infos[{:?}].dims", b.name),
                None,
                format!(
                    "rank mismatch: {} dims {:?} has rank {rank}, {} dims {:?} has rank {rank_b}",
                    a.name,
                    a.shape(),
                    b.name,
                    b.shape()
                ),
            ));
        }
        let want = if embedding { (ne1, ne0) } else { (ne0, ne1) };
        if (n_in, n_out) != want {
            return Err(Error::format(
                &name,
                format!("tensor_infos[{:?}].dims", a.name),
                None,
                format!(
                    "shape mismatch: {:?} / {:?} give n_in {n_in}, n_out {n_out}, but base tensor {target} is {ne0}x{ne1} (ne0 x ne1) so expects {}x{}",
                    a.shape(),
                    b.shape(),
                    want.0,
                    want.1
                ),
            ));
        }
        if let (Some(layer), _) = split_block(target) {
            if layer >= base.n_layer {
                return Err(Error::format(
                    &name,
                    a.name,
                    None,
                    format!(
                        "layer {layer} but the base model has {} layers",
                        base.n_layer
                    ),
                ));
            }
        }
        let scale = if alpha == 0.0 {
            1.0
        } else {
            alpha / rank as f32
        };
        let ha = factor(&g, &map, a, &name)?;
        let hb = factor(&g, &map, b, &name)?;
        tensors.push(LoraTensor {
            target: target.to_string(),
            kind,
            rank,
            n_in,
            n_out,
            scale,
            a: ha,
            b: hb,
        });
    }
    let notes = vec![if alpha == 0.0 {
        "adapter.lora.alpha: 0 or absent (scale 1)".to_string()
    } else {
        format!("adapter.lora.alpha {alpha} (scale alpha/rank)")
    }];
    Adapter::new(path, AdapterFormat::Gguf, tensors, notes)
}

/// A factor as fp16: F16 in place (after a finiteness scan), others converted once.
fn factor(
    g: &Gguf<'_>,
    map: &Arc<MappedFile>,
    t: &TensorInfo<'_>,
    file: &str,
) -> Result<Halves> {
    let data = g.tensor_data(t);
    let n = t.n_elements();
    let what = format!("tensor {:?}", t.name);
    let src = match t.ty {
        QuantType::F16 => Src::F16,
        QuantType::F32 => Src::F32,
        QuantType::BF16 => Src::Bf16,
        QuantType::Q8_0 => Src::Q8_0,
        other => {
            return Err(Error::unsupported(
                file,
                format!(
                    "{what} has type {} (LoRA factors: F16, F32, BF16, Q8_0)",
                    other.name()
                ),
            ))
        }
    };
    let need =
        t.ty.row_bytes(t.row_len())
            .and_then(|r| r.checked_mul(t.n_rows()));
    if need != Some(data.len()) || data.len() != t.size {
        return Err(Error::format(
            file,
            what,
            Some(t.offset),
            format!("data is {} bytes, expected {need:?}", data.len()),
        ));
    }
    if src == Src::F16 {
        // Scanned as bits (exponent all ones = Inf/NaN), without widening: this scan is most of the
        // load time of an fp16 adapter, which is otherwise used in place.
        if let Some(i) = first_non_finite_f16(data) {
            let h = half::f16::from_bits(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]));
            return Err(non_finite_err(file, &what, i, h.to_f32()));
        }
        if let Some(h) = Halves::mapped(map, t.offset as usize, n) {
            return Ok(h);
        }
    }
    let vals = decode(src, data, n);
    if let Some(i) = first_non_finite(&vals) {
        return Err(non_finite_err(file, &what, i, vals[i]));
    }
    Ok(Halves::Owned(to_f16(&vals, file, &what)?))
}

/// Index of the first non-finite fp16 value (little-endian bytes), if any.
fn first_non_finite_f16(bytes: &[u8]) -> Option<usize> {
    const EXP: u64 = 0x7c00_7c00_7c00_7c00;
    let is_bad = |h: u16| h & 0x7c00 == 0x7c00;
    // Four halves per step: a lane is bad iff its exponent bits are all set, i.e. (w & EXP) has that
    // lane equal to 0x7c00; checked exactly only in the (rare) words that have one.
    let mut words = bytes.chunks_exact(8);
    for (wi, w) in words.by_ref().enumerate() {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        let e = w & EXP;
        // A lane has all exponent bits iff adding 0x0400 to its masked exponent carries into bit 15.
        if (e + 0x0400_0400_0400_0400) & 0x8000_8000_8000_8000 != 0 {
            for lane in 0..4 {
                if is_bad((w >> (16 * lane)) as u16) {
                    return Some(wi * 4 + lane);
                }
            }
        }
    }
    let base = (bytes.len() / 8) * 4;
    words
        .remainder()
        .chunks_exact(2)
        .position(|c| is_bad(u16::from_le_bytes([c[0], c[1]])))
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::first_non_finite_f16;

    #[test]
    fn non_finite_f16_found_at_every_position() {
        let finite = [0x0000u16, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x0001, 0x83ff, 0x7800];
        for len in 0..19 {
            let mut v: Vec<u16> = (0..len).map(|i| finite[i % finite.len()]).collect();
            let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_le_bytes()).collect();
            assert_eq!(first_non_finite_f16(&bytes), None, "len {len}");
            for bad in [0x7c00u16, 0xfc00, 0x7e00, 0x7c01, 0xffff] {
                for pos in 0..len {
                    let keep = v[pos];
                    v[pos] = bad;
                    let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_le_bytes()).collect();
                    assert_eq!(first_non_finite_f16(&bytes), Some(pos), "len {len} bad {bad:#x} at {pos}");
                    assert!(!half::f16::from_bits(bad).is_finite());
                    v[pos] = keep;
                }
            }
        }
    }
}
