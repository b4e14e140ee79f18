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
//!
//! edge-run's extension for replaced modules (PEFT `modules_to_save`, see [`super::saved`]):
//! `token_embd.weight.replace` / `output.weight.replace`, dims `[n_embd, n_vocab]` like the base
//! tensor, same types (F16 in place). llama.cpp does not read these.
use super::*;
use crate::gguf::{Gguf, TensorInfo};

pub(super) fn load(path: &Path, base: &BaseInfo) -> Result<Adapter> {
    let name = path.display().to_string();
    let map = MappedFile::open(path)?;
    let g = Gguf::parse_named(&map, &name)?;
    let alpha = check_metadata(&g, &name, base)?;
    let factors = sorted_factors(&g, &name)?;
    let saved = replacements(&g, &map, &name, base)?;
    let mut tensors = Vec::with_capacity(factors.len() / 2);
    let mut rest = &factors[..];
    while let Some(&(target, is_b, a)) = rest.first() {
        let b = match rest.get(1) {
            Some(&(t2, true, b)) if !is_b && t2 == target => b,
            _ => {
                return Err(Error::format(
                    &name,
                    target,
                    None,
                    "has only one of lora_a / lora_b",
                ))
            }
        };
        rest = &rest[2..];
        let (kind, rank, n_in, n_out) = pair_shape(&name, target, a, b, base)?;
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
    Adapter::with_saved(path, AdapterFormat::Gguf, tensors, saved, notes)
}

/// `general.type` = adapter, `adapter.type` = lora, the base's architecture, a usable alpha, and no
/// key outside `general.*` and the two `adapter.*` keys. Returns alpha (0 when absent).
fn check_metadata(g: &Gguf<'_>, name: &str, base: &BaseInfo) -> Result<f32> {
    let ty = g.get_str("general.type")?;
    if ty != "adapter" {
        return Err(Error::format(
            name,
            "general.type",
            None,
            format!("{ty:?}: not an adapter (expected \"adapter\")"),
        ));
    }
    let at = g.get_str("adapter.type")?;
    if at != "lora" {
        return Err(Error::unsupported(
            name,
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
            name,
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
                name,
                format!("metadata key `{k}` is not understood; refusing rather than ignoring it"),
            ));
        }
    }
    Ok(alpha)
}

/// Every tensor as a factor `(target, is B, tensor)`, sorted by (target, A before B), so that each
/// target's pair is adjacent and the tensors come out sorted by target.
#[allow(clippy::type_complexity)]
fn sorted_factors<'g, 'a>(
    g: &'g Gguf<'a>,
    name: &str,
) -> Result<Vec<(&'a str, bool, &'g TensorInfo<'a>)>> {
    let mut factors: Vec<(&str, bool, &TensorInfo)> = Vec::with_capacity(g.tensors().len());
    for t in g
        .tensors()
        .iter()
        .filter(|t| !t.name.ends_with(REPLACE_SUFFIX))
    {
        let (target, is_b) = if let Some(b) = t.name.strip_suffix(".lora_a") {
            (b, false)
        } else if let Some(b) = t.name.strip_suffix(".lora_b") {
            (b, true)
        } else {
            return Err(Error::format(
                name,
                format!("tensor_infos[{:?}]", t.name),
                None,
                "not a LoRA factor (name must end in .lora_a / .lora_b)",
            ));
        };
        factors.push((target, is_b, t));
    }
    factors.sort_unstable_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    // (The GGUF parser already refuses two tensors of one name; kept as a guard.)
    if let Some(w) = factors
        .windows(2)
        .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
    {
        return Err(Error::format(
            name,
            format!("tensor_infos[{:?}]", w[1].2.name),
            None,
            "duplicate tensor",
        ));
    }
    Ok(factors)
}

/// Name suffix of a replaced base tensor.
pub(super) const REPLACE_SUFFIX: &str = ".replace";

/// The `<target>.replace` tensors: replaceable targets, the base's shape, finite, as fp16.
fn replacements(
    g: &Gguf<'_>,
    map: &Arc<MappedFile>,
    name: &str,
    base: &BaseInfo,
) -> Result<Vec<SavedModule>> {
    let mut out = vec![];
    for t in g.tensors() {
        let Some(target) = t.name.strip_suffix(REPLACE_SUFFIX) else {
            continue;
        };
        let tname = format!("tensor_infos[{:?}]", t.name);
        let want = saved::expected_shape(target, base, name, &tname)?;
        let got = match t.dims[..t.n_dims] {
            [ne0, ne1] => (ne0 as usize, ne1 as usize),
            _ => {
                return Err(Error::format(
                    name,
                    format!("{tname}.shape"),
                    None,
                    format!("{:?} is not 2-D", &t.dims[..t.n_dims]),
                ))
            }
        };
        saved::check_shape(got, want, name, &tname, target)?;
        let data = factor(g, map, t, name)?;
        out.push(SavedModule::new(target, want.0, want.1, data));
    }
    Ok(out)
}

/// Kind, rank, `n_in` and `n_out` of the pair `a`, `b` on `target`, checked: both 2-D, a base
/// tensor of the matching shape, one rank, a layer the base has.
fn pair_shape(
    name: &str,
    target: &str,
    a: &TensorInfo<'_>,
    b: &TensorInfo<'_>,
    base: &BaseInfo,
) -> Result<(LoraKind, usize, usize, usize)> {
    // An error in the dims of `t`.
    let bad_dims = |t: &TensorInfo<'_>, detail: String| {
        Error::format(
            name,
            format!("tensor_infos[{:?}].dims", t.name),
            None,
            detail,
        )
    };
    for t in [a, b] {
        if t.n_dims != 2 {
            return Err(bad_dims(t, format!("{:?} is not 2-D", t.shape())));
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
        return Err(bad_dims(
            b,
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
        return Err(bad_dims(
            a,
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
                name,
                a.name,
                None,
                format!(
                    "layer {layer} but the base model has {} layers",
                    base.n_layer
                ),
            ));
        }
    }
    Ok((kind, rank, n_in, n_out))
}

/// A factor as fp16: F16 in place (after a finiteness scan), others converted once.
fn factor(g: &Gguf<'_>, map: &Arc<MappedFile>, t: &TensorInfo<'_>, file: &str) -> Result<Halves> {
    let data = g.tensor_data(t);
    let n = t.n_elements();
    // Built only on the way to an error: the success path formats nothing.
    let what = || format!("tensor {:?}", t.name);
    match t.ty {
        QuantType::F16 | QuantType::F32 | QuantType::BF16 | QuantType::Q8_0 => {}
        other => {
            return Err(Error::unsupported(
                file,
                format!(
                    "{} has type {} (LoRA factors: F16, F32, BF16, Q8_0)",
                    what(),
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
            what(),
            Some(t.offset),
            format!("data is {} bytes, expected {need:?}", data.len()),
        ));
    }
    if t.ty == QuantType::F16 {
        // Scanned as bits (exponent all ones = Inf/NaN), without widening: this scan is most of the
        // load time of an fp16 adapter, which is otherwise used in place.
        if let Some(i) = first_non_finite_f16(data) {
            let h = half::f16::from_bits(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]));
            return Err(non_finite_err(file, &what(), i, h.to_f32()));
        }
        if let Some(h) = Halves::mapped(map, t.offset as usize, n) {
            return Ok(h);
        }
    }
    let vals = widen(t.ty, data, n).ok_or_else(|| {
        Error::format(
            file,
            what(),
            Some(t.offset),
            format!("data is {} bytes, not {n} values", data.len()),
        )
    })?;
    if let Some(i) = first_non_finite(&vals) {
        return Err(non_finite_err(file, &what(), i, vals[i]));
    }
    Ok(Halves::Owned(to_f16(&vals, file, &what())?))
}

/// Whether an fp16 value (bits) is Inf or NaN: its exponent bits are all ones.
#[inline]
fn is_non_finite_f16(h: u16) -> bool {
    h & 0x7c00 == 0x7c00
}

/// Halves checked per step of the fast scan before looking at the flag (4 KiB of data).
const SCAN_BLOCK: usize = 2048;

/// Whether any of `halves` is Inf/NaN. Branch-free over the block so that the compiler vectorizes
/// it: `(h & 0x7c00) + 0x0400` reaches bit 15 exactly when all five exponent bits are set, and the
/// OR of those sums keeps bit 15 iff some value does.
#[inline]
fn any_non_finite_f16(halves: &[u16]) -> bool {
    let mut acc = 0u16;
    for &h in halves {
        acc |= (h & 0x7c00) + 0x0400;
    }
    acc & 0x8000 != 0
}

/// Index of the first non-finite fp16 value (little-endian bytes), if any.
fn first_non_finite_f16(bytes: &[u8]) -> Option<usize> {
    let n = bytes.len() / 2;
    let whole = &bytes[..2 * n];
    // In place as u16 when the bytes are 2-byte aligned in memory (always, for a mapped GGUF) and the
    // host is little-endian; otherwise element by element.
    match bytemuck::try_cast_slice::<u8, u16>(whole) {
        Ok(halves) if cfg!(target_endian = "little") => {
            for (bi, blk) in halves.chunks(SCAN_BLOCK).enumerate() {
                if any_non_finite_f16(blk) {
                    let j = blk.iter().position(|&h| is_non_finite_f16(h))?;
                    return Some(bi * SCAN_BLOCK + j);
                }
            }
            None
        }
        _ => whole
            .chunks_exact(2)
            .position(|c| is_non_finite_f16(u16::from_le_bytes([c[0], c[1]]))),
    }
}

#[cfg(test)]
mod tests {
    use super::first_non_finite_f16;

    #[test]
    fn non_finite_f16_found_across_blocks_aligned_or_not() {
        use super::SCAN_BLOCK;
        let len = 2 * SCAN_BLOCK + 905;
        // Finite values with every exponent but all-ones, both signs.
        let v: Vec<u16> = (0..len as u32)
            .map(|i| ((i * 0x0400) % 0x7c00) as u16 | ((i & 1) << 15) as u16 | (i % 0x3ff) as u16)
            .collect();
        assert!(v.iter().all(|&h| half::f16::from_bits(h).is_finite()));
        let as_bytes = |v: &[u16], shift: usize| -> Vec<u8> {
            let mut b = vec![0u8; shift];
            b.extend(v.iter().flat_map(|h| h.to_le_bytes()));
            b
        };
        for shift in [0usize, 1] {
            let b = as_bytes(&v, shift);
            assert_eq!(first_non_finite_f16(&b[shift..]), None, "shift {shift}");
            // A trailing odd byte is not a value.
            let mut odd = b.clone();
            odd.push(0xff);
            assert_eq!(
                first_non_finite_f16(&odd[shift..]),
                None,
                "shift {shift}, odd length"
            );
            for pos in [
                0,
                1,
                SCAN_BLOCK - 1,
                SCAN_BLOCK,
                SCAN_BLOCK + 1,
                2 * SCAN_BLOCK,
                len - 1,
            ] {
                for bad in [0x7c00u16, 0xfe01] {
                    let mut w = v.clone();
                    w[pos] = bad;
                    let b = as_bytes(&w, shift);
                    assert_eq!(
                        first_non_finite_f16(&b[shift..]),
                        Some(pos),
                        "shift {shift} pos {pos} bad {bad:#x}"
                    );
                    // With a second bad value later on, the first is reported.
                    w[len - 1 - (pos == len - 1) as usize * (len - 1)] = 0x7fff;
                    let b = as_bytes(&w, shift);
                    let first = if pos == len - 1 { 0 } else { pos };
                    assert_eq!(
                        first_non_finite_f16(&b[shift..]),
                        Some(first),
                        "shift {shift} pos {pos}, two bad"
                    );
                }
            }
        }
    }

    #[test]
    fn non_finite_f16_found_at_every_position() {
        let finite = [
            0x0000u16, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x0001, 0x83ff, 0x7800,
        ];
        for len in 0..19 {
            let mut v: Vec<u16> = (0..len).map(|i| finite[i % finite.len()]).collect();
            let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_le_bytes()).collect();
            assert_eq!(first_non_finite_f16(&bytes), None, "len {len}");
            for bad in [0x7c00u16, 0xfc00, 0x7e00, 0x7c01, 0xffff] {
                for pos in 0..len {
                    let keep = v[pos];
                    v[pos] = bad;
                    let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_le_bytes()).collect();
                    assert_eq!(
                        first_non_finite_f16(&bytes),
                        Some(pos),
                        "len {len} bad {bad:#x} at {pos}"
                    );
                    assert!(!half::f16::from_bits(bad).is_finite());
                    v[pos] = keep;
                }
            }
        }
    }
}
