//! [`Gguf::parse`]: validate a whole GGUF v2/v3 file held in memory and index it, without copying, in
//! phases — header, metadata, alignment, tensor infos, data placement — each refusing what is wrong
//! with the field and byte offset named.
use std::collections::HashMap;

use edge_run_kernels::QuantType;

use super::cursor::{Cursor, Short};
use super::reader::{
    Gguf, MetaEntry, TensorInfo, DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS,
};
use super::{describe_value, ArrayView, Value, ValueType, BUFFER_NAME};
use crate::error::{Error, Result};

const MAGIC: [u8; 4] = *b"GGUF";
/// Smallest encoded key/value: key length (8) + key (≥ 1) + type (4) + a 1-byte value.
const MIN_KV_BYTES: usize = 14;
/// Smallest encoded tensor info: name length (8) + name (≥ 1) + n_dims (4) + one dim (8) + type (4)
/// + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 33;

fn format_err(field: impl Into<String>, offset: usize, detail: impl Into<String>) -> Error {
    Error::format(BUFFER_NAME, field, Some(offset as u64), detail)
}

fn short_err(field: String, s: Short) -> Error {
    format_err(
        field,
        s.at,
        format!(
            "needs {} bytes but only {} remain (the file is truncated or a length before it is corrupt)",
            s.need, s.have
        ),
    )
}

/// Round `x` up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

fn read_string<'a>(c: &mut Cursor<'a>, field: &dyn Fn() -> String) -> Result<&'a str> {
    let at = c.pos();
    let len = c
        .u64()
        .map_err(|s| short_err(format!("{}.len", field()), s))?;
    if len > c.remaining() as u64 {
        return Err(format_err(
            format!("{}.len", field()),
            at,
            format!(
                "string length {len} exceeds the {} bytes that remain",
                c.remaining()
            ),
        ));
    }
    let start = c.pos();
    let bytes = c.take(len).map_err(|s| short_err(field(), s))?;
    std::str::from_utf8(bytes).map_err(|e| {
        format_err(
            field(),
            start + e.valid_up_to(),
            format!(
                "string is not valid UTF-8 (bad byte at index {})",
                e.valid_up_to()
            ),
        )
    })
}

fn read_value<'a>(
    c: &mut Cursor<'a>,
    ty: ValueType,
    key: &'a str,
    field: &dyn Fn() -> String,
    depth: u32,
) -> Result<Value<'a>> {
    let at = c.pos();
    let sh = |s| short_err(field(), s);
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8().map_err(sh)?),
        ValueType::I8 => Value::I8(c.i8().map_err(sh)?),
        ValueType::U16 => Value::U16(c.u16().map_err(sh)?),
        ValueType::I16 => Value::I16(c.i16().map_err(sh)?),
        ValueType::U32 => Value::U32(c.u32().map_err(sh)?),
        ValueType::I32 => Value::I32(c.i32().map_err(sh)?),
        ValueType::U64 => Value::U64(c.u64().map_err(sh)?),
        ValueType::I64 => Value::I64(c.i64().map_err(sh)?),
        ValueType::F32 => Value::F32(c.f32().map_err(sh)?),
        ValueType::F64 => Value::F64(c.f64().map_err(sh)?),
        ValueType::Bool => match c.u8().map_err(sh)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(format_err(
                    field(),
                    at,
                    format!("bool must be 0 or 1, found {b}"),
                ))
            }
        },
        ValueType::String => Value::String(read_string(c, field)?),
        ValueType::Array => Value::Array(read_array(c, key, field, depth)?),
    })
}

fn read_array<'a>(
    c: &mut Cursor<'a>,
    key: &'a str,
    field: &dyn Fn() -> String,
    depth: u32,
) -> Result<ArrayView<'a>> {
    let ty_at = c.pos();
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format_err(
            field(),
            ty_at,
            format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
        ));
    }
    let elem_id = c
        .u32()
        .map_err(|s| short_err(format!("{}.type", field()), s))?;
    let elem = ValueType::from_u32(elem_id).ok_or_else(|| {
        format_err(
            format!("{}.type", field()),
            ty_at,
            format!("unknown array element type {elem_id} (expected 0..=12)"),
        )
    })?;
    let len_at = c.pos();
    let count = c
        .u64()
        .map_err(|s| short_err(format!("{}.len", field()), s))?;
    let start = c.pos();
    let remaining = c.remaining();
    let too_long = |min: usize| {
        format_err(
            format!("{}.len", field()),
            len_at,
            format!(
                "array of {count} {elem} elements needs at least {} bytes but only {remaining} remain",
                match count.checked_mul(min as u64) {
                    Some(n) => n.to_string(),
                    None => format!("{count}×{min} (overflows)"),
                }
            ),
        )
    };
    match elem.fixed_size() {
        Some(sz) => {
            let n_bytes = count
                .checked_mul(sz as u64)
                .filter(|&n| n <= remaining as u64)
                .ok_or_else(|| too_long(sz))?;
            let bytes = c.take(n_bytes).map_err(|s| short_err(field(), s))?;
            if elem == ValueType::Bool {
                if let Some(j) = bytes.iter().position(|&b| b > 1) {
                    return Err(format_err(
                        format!("{}[{j}]", field()),
                        start + j,
                        format!("bool must be 0 or 1, found {}", bytes[j]),
                    ));
                }
            }
        }
        None => {
            // A string takes at least its 8-byte length, a nested array its type and count.
            let min = if elem == ValueType::String { 8 } else { 12 };
            if count > (remaining / min) as u64 {
                return Err(too_long(min));
            }
            for j in 0..count {
                let sub = || format!("{}[{j}]", field());
                if elem == ValueType::String {
                    read_string(c, &sub)?;
                } else {
                    read_array(c, key, &sub, depth + 1)?;
                }
            }
        }
    }
    Ok(ArrayView {
        key,
        elem,
        len: count as usize,
        bytes: c.since(start),
        offset: start as u64,
    })
}

impl<'a> Gguf<'a> {
    /// Parse and validate a GGUF v2 or v3 file. Errors name the file `<buffer>`; use
    /// [`Gguf::parse_named`] or [`Error::in_file`] to name it.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        let mut c = Cursor::new(bytes);
        let (version, tensor_count, kv_count) = read_header(&mut c)?;
        let (metadata, meta_index) = read_metadata(&mut c, kv_count)?;
        let alignment = alignment(&metadata, &meta_index)?;
        let (mut tensors, raws, tensor_index) = read_tensor_infos(&mut c, tensor_count)?;
        let data_offset =
            place_tensors(bytes.len() as u64, c.pos(), alignment, &mut tensors, &raws)?;
        check_overlaps(&tensors, &raws)?;
        Ok(Gguf {
            bytes,
            file: BUFFER_NAME.to_string(),
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }

    /// [`Gguf::parse`], naming `name` in errors (from parsing and from the typed getters).
    pub fn parse_named(bytes: &'a [u8], name: &str) -> Result<Gguf<'a>> {
        let mut g = Gguf::parse(bytes).map_err(|e| e.in_file(name))?;
        g.file = name.to_string();
        Ok(g)
    }
}

/// Magic, version (2 or 3, little-endian) and the two counts, each checked against the bytes that
/// follow (so that nothing is allocated from a count the file cannot hold).
fn read_header(c: &mut Cursor<'_>) -> Result<(u32, usize, usize)> {
    // Header.
    let magic = c
        .array::<4>()
        .map_err(|s| short_err("header.magic".into(), s))?;
    if magic != MAGIC {
        return Err(format_err(
            "header.magic",
            0,
            format!(
                "not a GGUF file: the first bytes are {:?} (\"{}\"), expected \"GGUF\"",
                magic,
                magic.escape_ascii()
            ),
        ));
    }
    let version = c.u32().map_err(|s| short_err("header.version".into(), s))?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::unsupported(
                BUFFER_NAME,
                "GGUF version 1 (header.version at byte 4) is not supported; only versions 2 and 3 are \
                 (re-convert the model with a current llama.cpp)",
            ))
        }
        v if v & 0xffff == 0 && (1..=3).contains(&v.swap_bytes()) => {
            return Err(Error::unsupported(
                BUFFER_NAME,
                format!(
                    "big-endian GGUF (header.version at byte 4 reads {} when byte-swapped); only little-endian \
                     files are supported",
                    v.swap_bytes()
                ),
            ))
        }
        v => return Err(format_err("header.version", 4, format!("unknown GGUF version {v} (expected 2 or 3)"))),
    }
    let tensor_count = c
        .u64()
        .map_err(|s| short_err("header.tensor_count".into(), s))?;
    let kv_count = c
        .u64()
        .map_err(|s| short_err("header.kv_count".into(), s))?;
    let rest = c.remaining() as u64;
    if tensor_count > rest / MIN_TENSOR_INFO_BYTES as u64 {
        return Err(format_err(
            "header.tensor_count",
            8,
            format!(
                "{tensor_count} tensors need at least {MIN_TENSOR_INFO_BYTES} bytes each but only {rest} bytes follow the header"
            ),
        ));
    }
    if kv_count > rest / MIN_KV_BYTES as u64 {
        return Err(format_err(
            "header.kv_count",
            16,
            format!("{kv_count} metadata entries need at least {MIN_KV_BYTES} bytes each but only {rest} bytes follow the header"),
        ));
    }
    // Both counts are now below the file length, so they fit in usize, and so do these
    // capacities (each element takes at least one byte of the file).
    let (tensor_count, kv_count) = (tensor_count as usize, kv_count as usize);
    if tensor_count * MIN_TENSOR_INFO_BYTES + kv_count * MIN_KV_BYTES > rest as usize {
        return Err(format_err(
            "header.kv_count",
            16,
            format!(
                "{kv_count} metadata entries and {tensor_count} tensors need at least {} bytes but only {rest} bytes follow the header",
                tensor_count * MIN_TENSOR_INFO_BYTES + kv_count * MIN_KV_BYTES
            ),
        ));
    }

    Ok((version, tensor_count, kv_count))
}

/// Reads the string `{table}[{i}].{field}`, refusing an empty one ("empty {what}") and one that
/// `index` already holds ("duplicate {what} …"); errors point at its start.
fn read_unique_name<'a>(
    c: &mut Cursor<'a>,
    index: &HashMap<&'a str, usize>,
    (table, i, field): (&str, usize, &str),
    what: &str,
) -> Result<&'a str> {
    let at = c.pos();
    let label = || format!("{table}[{i}].{field}");
    let name = read_string(c, &label)?;
    if name.is_empty() {
        return Err(format_err(label(), at, format!("empty {what}")));
    }
    if let Some(&j) = index.get(name) {
        return Err(format_err(
            label(),
            at,
            format!("duplicate {what} {name:?} (first at {table}[{j}])"),
        ));
    }
    Ok(name)
}

/// `count` entries of `table` in file order, with an index by name: each starts with its name
/// (`field`, read by [`read_unique_name`]), and `entry` reads the rest from `(cursor, i, name)`.
fn read_named<'a, T>(
    c: &mut Cursor<'a>,
    count: usize,
    (table, field, what): (&str, &str, &str),
    mut entry: impl FnMut(&mut Cursor<'a>, usize, &'a str) -> Result<T>,
) -> Result<(Vec<T>, HashMap<&'a str, usize>)> {
    let mut entries = Vec::with_capacity(count);
    let mut index = HashMap::with_capacity(count);
    for i in 0..count {
        let name = read_unique_name(c, &index, (table, i, field), what)?;
        entries.push(entry(c, i, name)?);
        index.insert(name, i);
    }
    Ok((entries, index))
}

/// Every key/value entry, in file order, with an index by key (empty and duplicate keys refused).
#[allow(clippy::type_complexity)]
fn read_metadata<'a>(
    c: &mut Cursor<'a>,
    kv_count: usize,
) -> Result<(Vec<MetaEntry<'a>>, HashMap<&'a str, usize>)> {
    read_named(c, kv_count, ("metadata", "key", "key"), |c, _, key| {
        let ty_at = c.pos();
        let ty_id = c
            .u32()
            .map_err(|s| short_err(format!("metadata[{key:?}].type"), s))?;
        let ty = ValueType::from_u32(ty_id).ok_or_else(|| {
            format_err(
                format!("metadata[{key:?}].type"),
                ty_at,
                format!("unknown value type {ty_id} (expected 0..=12)"),
            )
        })?;
        let offset = c.pos() as u64;
        let value = read_value(c, ty, key, &|| format!("metadata[{key:?}]"), 0)?;
        Ok(MetaEntry { key, value, offset })
    })
}

/// `general.alignment` (a power of two up to [`MAX_ALIGNMENT`]) or the default.
fn alignment(metadata: &[MetaEntry<'_>], meta_index: &HashMap<&str, usize>) -> Result<u32> {
    let mut alignment = DEFAULT_ALIGNMENT;
    if let Some(&i) = meta_index.get("general.alignment") {
        let e = &metadata[i];
        let field = "metadata[\"general.alignment\"]";
        let a = e.value.as_u32().ok_or_else(|| {
            Error::format(
                BUFFER_NAME,
                field,
                Some(e.offset),
                format!(
                    "expected a u32, found {} {}",
                    e.value.value_type(),
                    describe_value(&e.value)
                ),
            )
        })?;
        if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
            return Err(Error::format(
                BUFFER_NAME,
                field,
                Some(e.offset),
                format!("alignment {a} must be a power of two between 1 and {MAX_ALIGNMENT}"),
            ));
        }
        alignment = a;
    }

    Ok(alignment)
}

/// A tensor's data offset as the file states it (relative to the data section) and where it stands.
struct Raw {
    rel: u64,
    rel_at: usize,
}

/// Every tensor info, in file order, with an index by name: name, shape, type and the data size they
/// imply (offsets are placed by [`place_tensors`]).
#[allow(clippy::type_complexity)]
fn read_tensor_infos<'a>(
    c: &mut Cursor<'a>,
    tensor_count: usize,
) -> Result<(Vec<TensorInfo<'a>>, Vec<Raw>, HashMap<&'a str, usize>)> {
    let what = ("tensor_infos", "name", "tensor name");
    let (infos, tensor_index) = read_named(c, tensor_count, what, read_tensor_info)?;
    let (tensors, raws) = infos.into_iter().unzip();
    Ok((tensors, raws, tensor_index))
}

/// The rest of the tensor info `i`, after its name.
fn read_tensor_info<'a>(
    c: &mut Cursor<'a>,
    i: usize,
    name: &'a str,
) -> Result<(TensorInfo<'a>, Raw)> {
    let f = |what: &str| format!("tensor_infos[{name:?}].{what}");
    let nd_at = c.pos();
    let n_dims = c.u32().map_err(|s| short_err(f("n_dims"), s))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(format_err(
            f("n_dims"),
            nd_at,
            format!("n_dims is {n_dims}, expected 1..={MAX_DIMS}"),
        ));
    }
    let n_dims = n_dims as usize;
    let mut dims = [1u64; 4];
    for (d, slot) in dims.iter_mut().enumerate().take(n_dims) {
        let at = c.pos();
        let v = c
            .u64()
            .map_err(|s| short_err(f(&format!("dims[{d}]")), s))?;
        if v == 0 || v > i64::MAX as u64 {
            return Err(format_err(
                f(&format!("dims[{d}]")),
                at,
                format!("dimension {v} must be in 1..=2^63-1"),
            ));
        }
        *slot = v;
    }
    let ty_at = c.pos();
    let ty_id = c.u32().map_err(|s| short_err(f("type"), s))?;
    let ty = QuantType::from_ggml(ty_id).ok_or_else(|| {
            Error::unsupported(
                BUFFER_NAME,
                format!("tensor {name:?} (tensor_infos[{i}].type at byte {ty_at}) has ggml type id {ty_id}, which edge-run does not know"),
            )
        })?;
    let rel_at = c.pos();
    let rel = c.u64().map_err(|s| short_err(f("offset"), s))?;

    let dims_at = nd_at + 4;
    let shape = &dims[..n_dims];
    let n_elements = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| {
            format_err(
                f("dims"),
                dims_at,
                format!("element count of shape {shape:?} overflows"),
            )
        })?;
    let bs = ty.block_size() as u64;
    if dims[0] % bs != 0 {
        return Err(format_err(
            f("dims[0]"),
            dims_at,
            format!(
                "row length {} is not a multiple of the {} block size {bs}",
                dims[0],
                ty.name()
            ),
        ));
    }
    let size = (n_elements / bs)
        .checked_mul(ty.type_size() as u64)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| {
            format_err(
                f("dims"),
                dims_at,
                format!("byte size of {} tensor {shape:?} overflows", ty.name()),
            )
        })?;
    let info = TensorInfo {
        name,
        dims,
        n_dims,
        ty,
        offset: 0,
        size,
    };
    Ok((info, Raw { rel, rel_at }))
}

/// The data section starts at the aligned end of the tensor infos; every tensor's data lies aligned
/// inside the file. Sets each tensor's absolute offset; returns the data section's start.
fn place_tensors(
    len: u64,
    info_end: usize,
    alignment: u32,
    tensors: &mut [TensorInfo<'_>],
    raws: &[Raw],
) -> Result<u64> {
    let data_offset = align_up(info_end as u64, alignment as u64)
        .ok_or_else(|| format_err("data", info_end, "overflow"))?;
    if !tensors.is_empty() && data_offset > len {
        return Err(format_err(
            "data",
            info_end,
            format!("the data section would start at byte {data_offset} (aligned to {alignment}) but the file has {len} bytes"),
        ));
    }
    for (t, r) in tensors.iter_mut().zip(raws) {
        let field = || format!("tensor_infos[{:?}].offset", t.name);
        if r.rel % alignment as u64 != 0 {
            return Err(format_err(
                field(),
                r.rel_at,
                format!(
                    "offset {} is not a multiple of the alignment {alignment}",
                    r.rel
                ),
            ));
        }
        let start = data_offset.checked_add(r.rel);
        let end = start.and_then(|s| s.checked_add(t.size as u64));
        match (start, end) {
            (Some(s), Some(e)) if e <= len => t.offset = s,
            _ => {
                return Err(format_err(
                    field(),
                    r.rel_at,
                    format!(
                        "data offset {} + {} bytes runs past the end of the data section ({} bytes from byte {data_offset}; file is {len} bytes)",
                        r.rel,
                        t.size,
                        len - data_offset
                    ),
                ))
            }
        }
    }
    Ok(data_offset)
}

/// No two tensors' data overlap.
fn check_overlaps(tensors: &[TensorInfo<'_>], raws: &[Raw]) -> Result<()> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.size as u64 > b.offset {
            return Err(format_err(
                format!("tensor_infos[{:?}].offset", b.name),
                raws[w[1]].rel_at,
                format!(
                    "data [{}, {}) overlaps tensor {:?} at [{}, {})",
                    b.offset,
                    b.offset + b.size as u64,
                    a.name,
                    a.offset,
                    a.offset + a.size as u64
                ),
            ));
        }
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(32, 32), Some(32));
        assert_eq!(align_up(33, 1), Some(33));
        assert_eq!(align_up(u64::MAX - 3, 32), None);
    }

    #[test]
    fn minimal_file_parses() {
        // Header only: no metadata, no tensors.
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(
            (
                g.version(),
                g.alignment(),
                g.tensors().len(),
                g.metadata().len()
            ),
            (3, 32, 0, 0)
        );
        assert_eq!(g.data_offset(), 32);
        // One byte short of the header.
        let e = Gguf::parse(&b[..23]).unwrap_err();
        assert!(
            matches!(e, Error::Format { ref field, offset: Some(16), .. } if field == "header.kv_count"),
            "{e}"
        );
    }
}
