//! [`GgufWriter`]: build a GGUF v3 file (metadata of every type, tensors with alignment padding).

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

use edge_run_kernels::QuantType;

use super::reader::{DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_DIMS};
use super::{variant_type, AnyValue, ArrayView, Value, ValueType};
use crate::error::{Error, Result};

/// An owned metadata value to write.
pub type MetaValue = AnyValue<String, MetaArray>;

/// An owned, homogeneous metadata array to write. Nested arrays may each have their own element type.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// An owned copy of a value read from a file (to copy metadata from one file to another).
    pub fn from_value(v: &Value<'_>) -> MetaValue {
        match *v {
            Value::U8(x) => MetaValue::U8(x),
            Value::I8(x) => MetaValue::I8(x),
            Value::U16(x) => MetaValue::U16(x),
            Value::I16(x) => MetaValue::I16(x),
            Value::U32(x) => MetaValue::U32(x),
            Value::I32(x) => MetaValue::I32(x),
            Value::U64(x) => MetaValue::U64(x),
            Value::I64(x) => MetaValue::I64(x),
            Value::F32(x) => MetaValue::F32(x),
            Value::F64(x) => MetaValue::F64(x),
            Value::Bool(x) => MetaValue::Bool(x),
            Value::String(s) => MetaValue::String(s.to_string()),
            Value::Array(a) => MetaValue::Array(MetaArray::from_view(&a)),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(u8::from(*x)),
            MetaValue::String(s) => put_str(out, s),
            MetaValue::Array(a) => a.encode(out),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl MetaArray {
    pub fn elem_type(&self) -> ValueType {
        variant_type!(MetaArray, self)
    }

    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An owned copy of an array read from a file.
    pub fn from_view(a: &ArrayView<'_>) -> MetaArray {
        fn all<T>(a: &ArrayView<'_>, f: impl Fn(Value<'_>) -> Option<T>) -> Vec<T> {
            a.iter().filter_map(f).collect()
        }
        // The `MetaArray::$var` of the array's elements, which are all `Value::$var`.
        macro_rules! numbers {
            ($var:ident) => {
                MetaArray::$var(all(a, |v| match v {
                    Value::$var(x) => Some(x),
                    _ => None,
                }))
            };
        }
        match a.elem_type() {
            ValueType::U8 => numbers!(U8),
            ValueType::I8 => numbers!(I8),
            ValueType::U16 => numbers!(U16),
            ValueType::I16 => numbers!(I16),
            ValueType::U32 => numbers!(U32),
            ValueType::I32 => numbers!(I32),
            ValueType::U64 => numbers!(U64),
            ValueType::I64 => numbers!(I64),
            ValueType::F32 => numbers!(F32),
            ValueType::F64 => numbers!(F64),
            ValueType::Bool => MetaArray::Bool(all(a, |v| v.as_bool())),
            ValueType::String => MetaArray::String(all(a, |v| v.as_str().map(str::to_string))),
            ValueType::Array => {
                MetaArray::Array(all(a, |v| v.as_array().map(MetaArray::from_view)))
            }
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.elem_type() as u32).to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        macro_rules! le {
            ($v:expr) => {
                for x in $v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            };
        }
        match self {
            MetaArray::U8(v) => out.extend_from_slice(v),
            MetaArray::I8(v) => le!(v),
            MetaArray::U16(v) => le!(v),
            MetaArray::I16(v) => le!(v),
            MetaArray::U32(v) => le!(v),
            MetaArray::I32(v) => le!(v),
            MetaArray::U64(v) => le!(v),
            MetaArray::I64(v) => le!(v),
            MetaArray::F32(v) => le!(v),
            MetaArray::F64(v) => le!(v),
            MetaArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            MetaArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
            MetaArray::Array(v) => v.iter().for_each(|a| a.encode(out)),
        }
    }
}

macro_rules! from_impls {
    ($($t:ty => $var:ident),* $(,)?) => {
        $(
            impl From<$t> for MetaValue {
                fn from(x: $t) -> Self { MetaValue::$var(x) }
            }
            impl From<Vec<$t>> for MetaArray {
                fn from(v: Vec<$t>) -> Self { MetaArray::$var(v) }
            }
            impl From<Vec<$t>> for MetaValue {
                fn from(v: Vec<$t>) -> Self { MetaValue::Array(MetaArray::$var(v)) }
            }
        )*
    };
}
from_impls!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
            f32 => F32, f64 => F64, bool => Bool, String => String);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_string())
    }
}
impl From<Vec<&str>> for MetaArray {
    fn from(v: Vec<&str>) -> Self {
        MetaArray::String(v.into_iter().map(str::to_string).collect())
    }
}
impl From<Vec<&str>> for MetaValue {
    fn from(v: Vec<&str>) -> Self {
        MetaValue::Array(v.into())
    }
}
impl From<Vec<MetaArray>> for MetaArray {
    fn from(v: Vec<MetaArray>) -> Self {
        MetaArray::Array(v)
    }
}
impl From<MetaArray> for MetaValue {
    fn from(a: MetaArray) -> Self {
        MetaValue::Array(a)
    }
}

#[derive(Clone, Debug)]
struct PendingTensor<'d> {
    name: String,
    dims: Vec<u64>,
    ty: QuantType,
    data: Data<'d>,
}

/// A tensor's bytes: given when added, or produced while the file is written
/// ([`GgufWriter::add_tensor_streamed`]).
#[derive(Clone, Debug)]
enum Data<'d> {
    Bytes(Cow<'d, [u8]>),
    Streamed(u64),
}

impl PendingTensor<'_> {
    fn len(&self) -> u64 {
        match &self.data {
            Data::Bytes(b) => b.len() as u64,
            Data::Streamed(n) => *n,
        }
    }
}

/// Counts the bytes a streamed tensor's producer writes.
pub struct Counted<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Builds a GGUF v3 file: metadata entries and tensors are written in the order they were added;
/// each tensor's data starts at a multiple of the alignment (`general.alignment` if added, else 32)
/// and is followed by zero padding up to the next multiple.
///
/// Tensor data may be borrowed (`&'d [u8]`, e.g. from a mapped file) or owned (`Vec<u8>`).
#[derive(Clone, Debug, Default)]
pub struct GgufWriter<'d> {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor<'d>>,
}

fn bad(msg: String) -> Error {
    Error::invalid(msg)
}

impl<'d> GgufWriter<'d> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Add a metadata entry. Refuses an empty or duplicate key and a `general.alignment` that is not
    /// a u32 power of two in 1..=1 MiB.
    pub fn add(&mut self, key: &str, value: impl Into<MetaValue>) -> Result<&mut Self> {
        let value = value.into();
        if key.is_empty() {
            return Err(bad("GGUF writer: empty metadata key".into()));
        }
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("GGUF writer: duplicate metadata key {key:?}")));
        }
        if key == "general.alignment" {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => {}
                _ => {
                    return Err(bad(format!(
                        "GGUF writer: general.alignment must be a u32 power of two ≤ {MAX_ALIGNMENT}, got {value:?}"
                    )))
                }
            }
        }
        self.metadata.push((key.to_string(), value));
        Ok(self)
    }

    /// Add a tensor: `dims` in ggml order (`dims[0]` = row length), `data` exactly the bytes of the
    /// type for that shape.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: QuantType,
        data: impl Into<Cow<'d, [u8]>>,
    ) -> Result<&mut Self> {
        self.push_tensor(name, dims, ty, Data::Bytes(data.into()))
    }

    /// Add a tensor whose bytes are produced while the file is written: [`GgufWriter::write_streaming`]
    /// asks its `fill` for them (e.g. weights computed block by block, never all in memory).
    pub fn add_tensor_streamed(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: QuantType,
    ) -> Result<&mut Self> {
        let size = Self::data_size(dims, ty).ok_or_else(|| {
            bad(format!(
                "GGUF writer: tensor {name:?} ({} {dims:?}) is too large",
                ty.name()
            ))
        })?;
        self.push_tensor(name, dims, ty, Data::Streamed(size))
    }

    /// Bytes of a `ty` tensor of shape `dims` (whose row length is a multiple of the block size).
    fn data_size(dims: &[u64], ty: QuantType) -> Option<u64> {
        let bs = ty.block_size() as u64;
        dims.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| (n / bs).checked_mul(ty.type_size() as u64))
    }

    fn push_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: QuantType,
        data: Data<'d>,
    ) -> Result<&mut Self> {
        if name.is_empty() {
            return Err(bad("GGUF writer: empty tensor name".into()));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad(format!("GGUF writer: duplicate tensor name {name:?}")));
        }
        if dims.is_empty()
            || dims.len() > MAX_DIMS
            || dims.iter().any(|&d| d == 0 || d > i64::MAX as u64)
        {
            return Err(bad(format!("GGUF writer: tensor {name:?} has shape {dims:?}; need 1..={MAX_DIMS} dims, each > 0")));
        }
        let bs = ty.block_size() as u64;
        if !dims[0].is_multiple_of(bs) {
            return Err(bad(format!(
                "GGUF writer: tensor {name:?}: row length {} is not a multiple of the {} block size {bs}",
                dims[0],
                ty.name()
            )));
        }
        let size = Self::data_size(dims, ty);
        if let Data::Bytes(data) = &data {
            if size != Some(data.len() as u64) {
                return Err(bad(format!(
                    "GGUF writer: tensor {name:?} ({} {dims:?}) needs {size:?} bytes of data, got {}",
                    ty.name(),
                    data.len()
                )));
            }
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// The alignment the file will use.
    pub fn alignment(&self) -> u32 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", MetaValue::U32(a)) => Some(*a),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    fn pad(n: u64, align: u64) -> u64 {
        (align - n % align) % align
    }

    /// Everything before the tensor data (header, metadata, tensor infos, padding).
    fn head(&self) -> Vec<u8> {
        let align = self.alignment() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            v.encode(&mut out);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let n = t.len();
            offset += n + Self::pad(n, align);
        }
        let pad = Self::pad(out.len() as u64, align);
        out.resize(out.len() + pad as usize, 0);
        out
    }

    /// The whole file in memory (no tensor may be streamed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec fails only for a streamed tensor, which this writer's users never add here.
        self.write_to(&mut out)
            .expect("to_bytes: every tensor has its data");
        out
    }

    /// Stream the file to `w` (tensor data is written straight from its slices); returns the bytes
    /// written. Fails for a streamed tensor (use [`GgufWriter::write_streaming`]).
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<u64> {
        self.write_streaming(w, |i, _| {
            Err(std::io::Error::other(format!(
                "GGUF writer: tensor {i} is streamed; write it with write_streaming"
            )))
        })
    }

    /// Stream the file to `w`; the bytes of the `i`-th tensor added with
    /// [`GgufWriter::add_tensor_streamed`] come from `fill(i, w)`, which must write exactly the
    /// tensor's size (checked). Returns the bytes written.
    pub fn write_streaming<W: Write, E: From<std::io::Error>>(
        &self,
        w: &mut W,
        mut fill: impl FnMut(usize, &mut Counted<'_, W>) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        let align = self.alignment() as u64;
        let head = self.head();
        w.write_all(&head)?;
        let mut total = head.len() as u64;
        let zeros = vec![0u8; align as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            match &t.data {
                Data::Bytes(b) => w.write_all(b)?,
                Data::Streamed(n) => {
                    let mut c = Counted { inner: w, n: 0 };
                    fill(i, &mut c)?;
                    if c.n != *n {
                        return Err(std::io::Error::other(format!(
                            "GGUF writer: tensor {:?} needs {n} bytes, {} were written",
                            t.name, c.n
                        ))
                        .into());
                    }
                }
            }
            let pad = Self::pad(t.len(), align);
            w.write_all(&zeros[..pad as usize])?;
            total += t.len() + pad;
        }
        Ok(total)
    }

    /// Write the file to `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<u64> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        let n = self.write_to(&mut w).map_err(io)?;
        w.flush().map_err(io)?;
        Ok(n)
    }
}
