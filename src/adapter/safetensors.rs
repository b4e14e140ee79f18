//! A checked reader for the safetensors format: an 8-byte little-endian header length `N`, a JSON
//! header of `N` bytes (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, …,
//! "__metadata__": {str: str}}`), then the data; offsets are relative to the end of the header.
//!
//! Checks: `N` ≤ [`MAX_HEADER`] and inside the file; the header is a UTF-8 JSON object; every entry
//! has a known dtype (only F32, F16 and BF16 are accepted), a shape of non-negative integers and
//! offsets whose length is exactly `numel × dtype size`; the tensors' byte ranges, sorted, start at 0,
//! follow each other without gaps or overlaps, and end exactly at the end of the file.
use crate::error::{Error, Result};

/// Largest header length accepted (100 MB).
pub const MAX_HEADER: u64 = 100 * 1000 * 1000;

/// Element types accepted for LoRA factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub len: usize,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Parses and validates the header of a safetensors file held in `bytes`; `file` names it in errors:
/// the header's JSON, every tensor entry, and data that tiles the rest of the file exactly.
pub fn parse(bytes: &[u8], file: &str) -> Result<Vec<Tensor>> {
    let err = |field: &str, off: Option<u64>, d: String| Error::format(file, field, off, d);
    let (json, data_start) = header(bytes, file)?;
    let obj = json
        .as_object()
        .ok_or_else(|| err("header", Some(8), "header is not a JSON object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            let ok = v
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()));
            if !ok {
                return Err(err(
                    "__metadata__",
                    None,
                    "must be an object of strings".into(),
                ));
            }
            continue;
        }
        out.push(entry(name, v, data_start, data_len, file)?);
    }
    check_tiling(&mut out, data_start, bytes.len(), file)?;
    Ok(out)
}

/// The 8-byte header length and the header's JSON; returns the JSON and where the data starts.
fn header(bytes: &[u8], file: &str) -> Result<(serde_json::Value, usize)> {
    let err = |field: &str, off: Option<u64>, d: String| Error::format(file, field, off, d);
    if bytes.len() < 8 {
        return Err(err(
            "header_len",
            Some(0),
            format!(
                "file is {} bytes, shorter than the 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER {
        return Err(err(
            "header_len",
            Some(0),
            format!("header length {n} exceeds the limit of {MAX_HEADER} bytes"),
        ));
    }
    if n > (bytes.len() - 8) as u64 {
        return Err(err(
            "header_len",
            Some(0),
            format!(
                "header length {n} exceeds the {} bytes after it (truncated file?)",
                bytes.len() - 8
            ),
        ));
    }
    let n = n as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| {
        err(
            "header",
            Some(8 + e.valid_up_to() as u64),
            "header is not valid UTF-8".into(),
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| err("header", Some(8), format!("header is not valid JSON: {e}")))?;
    Ok((json, 8 + n))
}

/// One tensor entry: dtype, shape and `data_offsets` inside the data, holding exactly the shape's bytes.
fn entry(
    name: &str,
    v: &serde_json::Value,
    data_start: usize,
    data_len: usize,
    file: &str,
) -> Result<Tensor> {
    let err = |field: &str, off: Option<u64>, d: String| Error::format(file, field, off, d);
    let f = |what: &str| format!("{name}.{what}");
    let e = v
        .as_object()
        .ok_or_else(|| err(name, None, "entry is not an object".into()))?;
    let dtype = match e.get("dtype").and_then(|d| d.as_str()) {
        Some("F32") => Dtype::F32,
        Some("F16") => Dtype::F16,
        Some("BF16") => Dtype::Bf16,
        Some(other) => {
            return Err(err(
                &f("dtype"),
                None,
                format!("dtype {other:?} is not supported for LoRA tensors (F32, F16, BF16)"),
            ))
        }
        None => return Err(err(&f("dtype"), None, "missing or not a string".into())),
    };
    let shape: Vec<usize> = e
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| err(&f("shape"), None, "missing or not an array".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            err(
                &f("shape"),
                None,
                format!("not a list of non-negative integers: {}", e["shape"]),
            )
        })?;
    let offs = e
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| {
            err(
                &f("data_offsets"),
                None,
                "missing or not [begin, end]".into(),
            )
        })?;
    let (b, en) = offs;
    if b > en || en > data_len as u64 {
        return Err(err(
            &f("data_offsets"),
            None,
            format!(
                "[{b}, {en}] is reversed or beyond the {data_len} data bytes (truncated file?)"
            ),
        ));
    }
    let need = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d));
    if need != Some((en - b) as usize) {
        return Err(err(
            &f("data_offsets"),
            None,
            format!(
                "[{b}, {en}] holds {} bytes but shape {shape:?} of {dtype:?} needs {need:?}",
                en - b
            ),
        ));
    }
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        start: data_start + b as usize,
        len: (en - b) as usize,
    })
}

/// The tensors' data, in offset order, has no gap or overlap and ends where the file does.
fn check_tiling(out: &mut [Tensor], data_start: usize, file_len: usize, file: &str) -> Result<()> {
    let err = |field: &str, off: Option<u64>, d: String| Error::format(file, field, off, d);
    out.sort_by_key(|t| (t.start, t.len));
    let mut pos = data_start;
    for t in out.iter() {
        if t.start != pos {
            return Err(err(
                &format!("{}.data_offsets", t.name),
                None,
                format!(
                    "begins at data byte {} but the previous tensor ends at {} (gap or overlap)",
                    t.start - data_start,
                    pos - data_start
                ),
            ));
        }
        pos = t.start + t.len;
    }
    if pos != file_len {
        return Err(err(
            "data_offsets",
            None,
            format!(
                "tensors end at data byte {} but the file has {} data bytes",
                pos - data_start,
                file_len - data_start
            ),
        ));
    }
    Ok(())
}
