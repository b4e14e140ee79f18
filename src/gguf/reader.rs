//! [`Gguf::parse`]: validate a whole GGUF v2/v3 file held in memory and index it, without copying.

use std::collections::HashMap;

use bytemuck::Pod;
use edge_run_kernels::QuantType;

use super::cursor::{Cursor, Short};
use super::{describe_value, ArrayView, Value, ValueType, BUFFER_NAME};
use crate::error::{Error, Result};

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Largest `general.alignment` accepted (1 MiB).
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata (an array of arrays of scalars has depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 8;

const MAGIC: [u8; 4] = *b"GGUF";
/// Smallest encoded key/value: key length (8) + key (≥ 1) + type (4) + a 1-byte value.
const MIN_KV_BYTES: usize = 14;
/// Smallest encoded tensor info: name length (8) + name (≥ 1) + n_dims (4) + one dim (8) + type (4)
/// + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 33;

/// One metadata entry, in file order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetaEntry<'a> {
    pub key: &'a str,
    pub value: Value<'a>,
    /// File offset of the value (after the key and the type id).
    pub offset: u64,
}

/// A tensor's description, validated against the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// Sizes in ggml order: `dims[0]` (ne0) is the row length, the fastest-varying index; unused
    /// trailing dimensions are 1.
    pub dims: [u64; 4],
    /// Number of dimensions stored in the file (1..=4).
    pub n_dims: usize,
    pub ty: QuantType,
    /// Absolute file offset of the first data byte.
    pub offset: u64,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo<'_> {
    /// Total elements (the product of all dims; checked to fit in `usize` by the parser).
    pub fn n_elements(&self) -> usize {
        self.dims
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d as usize))
    }
    /// Rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> usize {
        self.dims[1..]
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d as usize))
    }
    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.row_len()).unwrap_or(0)
    }
    /// The used dimensions, `&dims[..n_dims]`.
    pub fn shape(&self) -> &[u64] {
        self.dims.get(..self.n_dims).unwrap_or(&self.dims)
    }
}

/// A parsed GGUF file. Borrowed from the file's bytes; nothing is copied.
#[derive(Debug)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    file: String,
    version: u32,
    alignment: u32,
    data_offset: u64,
    metadata: Vec<MetaEntry<'a>>,
    meta_index: HashMap<&'a str, usize>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: HashMap<&'a str, usize>,
}

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

        // Metadata.
        let mut metadata = Vec::with_capacity(kv_count);
        let mut meta_index = HashMap::with_capacity(kv_count);
        for i in 0..kv_count {
            let key_at = c.pos();
            let key = read_string(&mut c, &|| format!("metadata[{i}].key"))?;
            if key.is_empty() {
                return Err(format_err(
                    format!("metadata[{i}].key"),
                    key_at,
                    "empty key",
                ));
            }
            if let Some(&j) = meta_index.get(key) {
                return Err(format_err(
                    format!("metadata[{i}].key"),
                    key_at,
                    format!("duplicate key {key:?} (first at metadata[{j}])"),
                ));
            }
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
            let value = read_value(&mut c, ty, key, &|| format!("metadata[{key:?}]"), 0)?;
            meta_index.insert(key, i);
            metadata.push(MetaEntry { key, value, offset });
        }

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

        // Tensor infos.
        struct Raw {
            rel: u64,
            rel_at: usize,
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut raws = Vec::with_capacity(tensor_count);
        let mut tensor_index: HashMap<&'a str, usize> = HashMap::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let name_at = c.pos();
            let name = read_string(&mut c, &|| format!("tensor_infos[{i}].name"))?;
            if name.is_empty() {
                return Err(format_err(
                    format!("tensor_infos[{i}].name"),
                    name_at,
                    "empty tensor name",
                ));
            }
            if let Some(&j) = tensor_index.get(name) {
                return Err(format_err(
                    format!("tensor_infos[{i}].name"),
                    name_at,
                    format!("duplicate tensor name {name:?} (first at tensor_infos[{j}])"),
                ));
            }
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
            tensor_index.insert(name, i);
            tensors.push(TensorInfo {
                name,
                dims,
                n_dims,
                ty,
                offset: 0,
                size,
            });
            raws.push(Raw { rel, rel_at });
        }

        // Data section.
        let len = bytes.len() as u64;
        let info_end = c.pos();
        let data_offset = align_up(info_end as u64, alignment as u64)
            .ok_or_else(|| format_err("data", info_end, "overflow"))?;
        if !tensors.is_empty() && data_offset > len {
            return Err(format_err(
                "data",
                info_end,
                format!("the data section would start at byte {data_offset} (aligned to {alignment}) but the file has {len} bytes"),
            ));
        }
        for (t, r) in tensors.iter_mut().zip(&raws) {
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

    /// The name errors use (`<buffer>` unless given to [`Gguf::parse_named`]).
    pub fn file_name(&self) -> &str {
        &self.file
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u32 {
        self.alignment
    }
    /// File offset of the data section (tensor offsets in the file are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[MetaEntry<'a>] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entry(key).map(|e| &e.value)
    }
    pub fn entry(&self, key: &str) -> Option<&MetaEntry<'a>> {
        self.meta_index.get(key).and_then(|&i| self.metadata.get(i))
    }

    fn require(&self, key: &str) -> Result<&MetaEntry<'a>> {
        self.entry(key).ok_or_else(|| {
            Error::format(
                &self.file,
                format!("metadata[{key:?}]"),
                None,
                "required key is missing",
            )
        })
    }

    fn type_err(&self, e: &MetaEntry<'a>, expected: &str) -> Error {
        let found = e.value.value_type();
        let detail = if e.value.as_int().is_some() && expected.contains("integer") {
            format!(
                "expected {expected}, found {found} {} which does not fit",
                describe_value(&e.value)
            )
        } else {
            format!(
                "expected {expected}, found {found} {}",
                describe_value(&e.value)
            )
        };
        Error::format(
            &self.file,
            format!("metadata[{:?}]", e.key),
            Some(e.offset),
            detail,
        )
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }
    /// A tensor by name, or an error naming it.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo<'a>> {
        self.tensor(name).ok_or_else(|| {
            Error::format(
                &self.file,
                format!("tensor_infos[{name:?}]"),
                None,
                "required tensor is missing",
            )
        })
    }

    /// The tensor's bytes, borrowed from the file. `t` should come from this file; for a
    /// `TensorInfo` whose range is not inside the file the slice is empty.
    pub fn tensor_data(&self, t: &TensorInfo<'_>) -> &'a [u8] {
        let start = usize::try_from(t.offset).ok();
        start
            .and_then(|s| Some(s..s.checked_add(t.size)?))
            .and_then(|r| self.bytes.get(r))
            .unwrap_or(&[])
    }

    /// The tensor's bytes viewed as `T`s, in place. Errors (never panics) if the data does not
    /// span a whole number of `T`s or is not aligned for `T` in memory.
    pub fn tensor_as<T: Pod>(&self, t: &TensorInfo<'_>) -> Result<&'a [T]> {
        let data = self.tensor_data(t);
        if data.len() != t.size {
            return Err(Error::invalid(format!(
                "tensor {:?}: its data range is not inside {}",
                t.name, self.file
            )));
        }
        bytemuck::try_cast_slice(data).map_err(|e| {
            Error::format(
                &self.file,
                format!("tensor_infos[{:?}].offset", t.name),
                Some(t.offset),
                format!(
                    "cannot view {} bytes at address {:p} as {} ({}-byte aligned, {} bytes each): {e:?}",
                    data.len(),
                    data.as_ptr(),
                    std::any::type_name::<T>(),
                    std::mem::align_of::<T>(),
                    std::mem::size_of::<T>()
                ),
            )
        })
    }

    /// An F32 tensor's values, in place (little-endian hosts only; the data must be 4-byte aligned
    /// in memory, which it is when the file is memory-mapped and the alignment is at least 4).
    pub fn tensor_f32(&self, t: &TensorInfo<'_>) -> Result<&'a [f32]> {
        if t.ty != QuantType::F32 {
            return Err(Error::format(
                &self.file,
                format!("tensor_infos[{:?}].type", t.name),
                None,
                format!("expected an F32 tensor, found {}", t.ty.name()),
            ));
        }
        if cfg!(target_endian = "big") {
            return Err(Error::unsupported(
                &self.file,
                "in-place f32 views need a little-endian host",
            ));
        }
        self.tensor_as::<f32>(t)
    }
}

macro_rules! getters {
    ($($get:ident, $opt:ident, $conv:ident, $t:ty, $expected:expr;)*) => {
        impl<'a> Gguf<'a> {
            $(
                #[doc = concat!("The value of `key` as ", $expected, "; an error if it is missing or of another type.")]
                pub fn $get(&self, key: &str) -> Result<$t> {
                    let e = self.require(key)?;
                    e.value.$conv().ok_or_else(|| self.type_err(e, $expected))
                }
                #[doc = concat!("The value of `key` as ", $expected, " if present; an error if it is of another type.")]
                pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
                    match self.entry(key) {
                        None => Ok(None),
                        Some(e) => e.value.$conv().map(Some).ok_or_else(|| self.type_err(e, $expected)),
                    }
                }
            )*
        }
    };
}

getters! {
    get_u32, opt_u32, as_u32, u32, "u32 (or another integer type, if the value fits)";
    get_u64, opt_u64, as_u64, u64, "u64 (or another integer type, if the value fits)";
    get_i32, opt_i32, as_i32, i32, "i32 (or another integer type, if the value fits)";
    get_i64, opt_i64, as_i64, i64, "i64 (or another integer type, if the value fits)";
    get_f32, opt_f32, as_f32, f32, "f32 (or f64, or an integer up to 2^24)";
    get_f64, opt_f64, as_f64, f64, "f64 (or f32, or an integer up to 2^53)";
    get_bool, opt_bool, as_bool, bool, "bool";
    get_str, opt_str, as_str, &'a str, "string";
}

impl<'a> Gguf<'a> {
    /// The array at `key`; an error if missing or not an array.
    pub fn get_array(&self, key: &str) -> Result<&ArrayView<'a>> {
        let e = self.require(key)?;
        e.value.as_array().ok_or_else(|| self.type_err(e, "array"))
    }
    /// The array at `key` if present; an error if it is not an array.
    pub fn opt_array(&self, key: &str) -> Result<Option<&ArrayView<'a>>> {
        match self.entry(key) {
            None => Ok(None),
            Some(e) => e
                .value
                .as_array()
                .map(Some)
                .ok_or_else(|| self.type_err(e, "array")),
        }
    }
    /// A string array's elements ([`ArrayView::to_vec_str`]), errors naming this file.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.get_array(key)?
            .to_vec_str()
            .map_err(|e| e.in_file(&self.file))
    }
    /// [`ArrayView::to_vec_u32`] of the array at `key`, errors naming this file.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.get_array(key)?
            .to_vec_u32()
            .map_err(|e| e.in_file(&self.file))
    }
    /// [`ArrayView::to_vec_i32`] of the array at `key`, errors naming this file.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key)?
            .to_vec_i32()
            .map_err(|e| e.in_file(&self.file))
    }
    /// [`ArrayView::to_vec_f32`] of the array at `key`, errors naming this file.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key)?
            .to_vec_f32()
            .map_err(|e| e.in_file(&self.file))
    }
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
