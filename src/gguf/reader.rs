//! A parsed GGUF file ([`Gguf`], made by [`Gguf::parse`] in `parse.rs`): metadata and tensors, typed
//! access to both, borrowed from the file's bytes.

use std::collections::HashMap;

use bytemuck::Pod;
use edge_run_kernels::QuantType;

use super::{describe_value, ArrayView, Value};
use crate::error::{Error, Result};

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Largest `general.alignment` accepted (1 MiB).
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata (an array of arrays of scalars has depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 8;

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
    pub(super) bytes: &'a [u8],
    pub(super) file: String,
    pub(super) version: u32,
    pub(super) alignment: u32,
    pub(super) data_offset: u64,
    pub(super) metadata: Vec<MetaEntry<'a>>,
    pub(super) meta_index: HashMap<&'a str, usize>,
    pub(super) tensors: Vec<TensorInfo<'a>>,
    pub(super) tensor_index: HashMap<&'a str, usize>,
}
impl<'a> Gguf<'a> {
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
    /// `convert` of the array at `key`, errors naming this file.
    fn array_as<T>(&self, key: &str, convert: fn(&ArrayView<'a>) -> Result<T>) -> Result<T> {
        convert(self.get_array(key)?).map_err(|e| e.in_file(&self.file))
    }
    /// A string array's elements ([`ArrayView::to_vec_str`]), errors naming this file.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array_as(key, ArrayView::to_vec_str)
    }
    /// [`ArrayView::to_vec_u32`] of the array at `key`, errors naming this file.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.array_as(key, ArrayView::to_vec_u32)
    }
    /// [`ArrayView::to_vec_i32`] of the array at `key`, errors naming this file.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_as(key, ArrayView::to_vec_i32)
    }
    /// [`ArrayView::to_vec_f32`] of the array at `key`, errors naming this file.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_as(key, ArrayView::to_vec_f32)
    }
}
