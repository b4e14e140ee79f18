//! GGUF (llama.cpp's model format): a zero-copy reader over memory-mapped bytes and a writer.
//!
//! Layout of a GGUF v2/v3 file (all little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, dims: n_dims × u64, type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset, offsets multiples of the alignment
//! ```
//!
//! A string is a `u64` byte length and UTF-8 bytes (no terminator); an array is an element type
//! `u32`, a count `u64` and the elements (strings and nested arrays are variable-length).
//!
//! [`Gguf::parse`] validates everything up front (every length, count, offset and size is checked
//! against the bytes that remain before it is used), then hands out borrowed views: strings are
//! `&'a str`, arrays are [`ArrayView`]s over the file bytes, tensor data is a `&'a [u8]` slice.
//! [`GgufWriter`] builds files (for tests, fixtures, and adapter conversion).

pub(crate) mod cursor;
mod parse;
mod reader;
mod writer;

pub use reader::{
    Gguf, MetaEntry, TensorInfo, DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS,
};
pub use writer::{Counted, GgufWriter, MetaArray, MetaValue};

use crate::error::{Error, Result};
use cursor::Cursor;

/// The file name used in errors from readers over anonymous buffers; see [`Error::in_file`].
pub const BUFFER_NAME: &str = "<buffer>";

/// A metadata value type, numbered as in the GGUF specification (`gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Short lower-case name (`u32`, `string`, `array` …).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Encoded size of one value, or `None` for the variable-length string and array.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    fn is_integer(self) -> bool {
        use ValueType::*;
        matches!(self, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value of any type: `S` is its string and `A` its array. [`Value`] borrows both from
/// the file bytes; [`MetaValue`] owns them, to write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AnyValue<S, A> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(S),
    Array(A),
}

/// A metadata value, borrowing from the file bytes.
pub type Value<'a> = AnyValue<&'a str, ArrayView<'a>>;

/// The [`ValueType`] of the variant `$value` (an `$enum`: [`AnyValue`] or [`MetaArray`]) is.
macro_rules! variant_type {
    ($enum:ident, $value:expr) => {
        match $value {
            $enum::U8(_) => ValueType::U8,
            $enum::I8(_) => ValueType::I8,
            $enum::U16(_) => ValueType::U16,
            $enum::I16(_) => ValueType::I16,
            $enum::U32(_) => ValueType::U32,
            $enum::I32(_) => ValueType::I32,
            $enum::U64(_) => ValueType::U64,
            $enum::I64(_) => ValueType::I64,
            $enum::F32(_) => ValueType::F32,
            $enum::F64(_) => ValueType::F64,
            $enum::Bool(_) => ValueType::Bool,
            $enum::String(_) => ValueType::String,
            $enum::Array(_) => ValueType::Array,
        }
    };
}
use variant_type;

impl<S, A> AnyValue<S, A> {
    pub fn value_type(&self) -> ValueType {
        variant_type!(AnyValue, self)
    }
}

/// Largest integer magnitude every smaller integer of which an `f32` holds exactly (2^24).
const F32_EXACT_INT: i128 = 1 << 24;
/// Same for `f64` (2^53).
const F64_EXACT_INT: i128 = 1 << 53;

impl<'a> Value<'a> {
    /// The value of any integer type, widened (no loss); `None` for other types.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer type whose value fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_int().and_then(|v| u32::try_from(v).ok())
    }
    /// Any integer type whose value fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }
    /// Any integer type whose value fits in `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_int().and_then(|v| i32::try_from(v).ok())
    }
    /// Any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_int().and_then(|v| i64::try_from(v).ok())
    }
    /// `f32` as is; `f64` rounded to the nearest `f32` unless a finite value would become infinite;
    /// integers only when exactly representable (|v| ≤ 2^24).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => {
                let r = v as f32;
                (r.is_finite() || !v.is_finite()).then_some(r)
            }
            _ => self.as_exact_int(F32_EXACT_INT).map(|v| v as f32),
        }
    }
    /// `f32`/`f64`; integers only when exactly representable (|v| ≤ 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_exact_int(F64_EXACT_INT).map(|v| v as f64),
        }
    }
    /// An integer of magnitude at most `limit` (where a float type stops holding every integer).
    fn as_exact_int(&self, limit: i128) -> Option<i128> {
        self.as_int().filter(|v| v.abs() <= limit)
    }
    /// Only `bool` (no coercion from integers).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&ArrayView<'a>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array: a view of its elements' bytes in the file. Only [`Gguf::parse`] creates one,
/// after validating every element (lengths, UTF-8, bools 0/1, nested arrays), so iterating it
/// cannot fail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayView<'a> {
    key: &'a str,
    elem: ValueType,
    len: usize,
    bytes: &'a [u8],
    offset: u64,
}

impl<'a> ArrayView<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The encoded elements, as they are in the file (for fixed-size types: `len × size` bytes).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// File offset of the first element.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The metadata key this array belongs to (nested arrays report their outermost key).
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// All elements as [`Value`]s (nested arrays as [`Value::Array`]).
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            view: *self,
            cur: Cursor::new(self.bytes),
            idx: 0,
        }
    }

    /// Element `i`: O(1) for fixed-size types, O(i) for strings and nested arrays.
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(sz) => {
                let start = i.checked_mul(sz)?;
                let mut c = Cursor::at(self.bytes, start)?;
                decode_fixed(&mut c, self.elem)
            }
            None => self.iter().nth(i),
        }
    }

    /// The strings of a string array, borrowed from the file.
    pub fn as_str_iter(&self) -> Result<StrIter<'a>> {
        self.expect(ValueType::String)?;
        Ok(StrIter {
            cur: Cursor::new(self.bytes),
            left: self.len,
        })
    }

    /// The strings of a string array, collected.
    pub fn to_vec_str(&self) -> Result<Vec<&'a str>> {
        Ok(self.as_str_iter()?.collect())
    }

    /// Integer elements of any integer type whose values all fit in `u32` (error names the first
    /// element that does not). Floats and bools are refused.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.convert_ints("u32", |v| u32::try_from(v).ok())
    }

    /// Integer elements of any integer type whose values all fit in `i32`.
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        self.convert_ints("i32", |v| i32::try_from(v).ok())
    }

    /// `f32` elements as is; `f64` rounded to nearest (a finite value overflowing `f32` is an
    /// error); integer elements when exactly representable (|v| ≤ 2^24). Bools are refused.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match self.elem {
            ValueType::F32 => Ok(self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            ValueType::F64
            | ValueType::U8
            | ValueType::I8
            | ValueType::U16
            | ValueType::I16
            | ValueType::U32
            | ValueType::I32
            | ValueType::U64
            | ValueType::I64 => {
                let mut out = Vec::with_capacity(self.len);
                for (i, v) in self.iter().enumerate() {
                    match v.as_f32() {
                        Some(f) => out.push(f),
                        None => {
                            return Err(self.elem_err(
                                i,
                                format!("{} cannot be represented as f32", describe_value(&v)),
                            ))
                        }
                    }
                }
                Ok(out)
            }
            _ => Err(self.type_err("f32 (or another number type)")),
        }
    }

    fn convert_ints<T>(&self, target: &str, f: impl Fn(i128) -> Option<T>) -> Result<Vec<T>> {
        if !self.elem.is_integer() {
            return Err(self.type_err(&format!("{target} (or another integer type)")));
        }
        let mut out = Vec::with_capacity(self.len);
        for (i, v) in self.iter().enumerate() {
            match v.as_int().and_then(&f) {
                Some(x) => out.push(x),
                None => {
                    return Err(self.elem_err(
                        i,
                        format!("{} does not fit in {target}", describe_value(&v)),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn expect(&self, ty: ValueType) -> Result<()> {
        if self.elem == ty {
            Ok(())
        } else {
            Err(self.type_err(ty.name()))
        }
    }

    fn type_err(&self, expected: &str) -> Error {
        Error::format(
            BUFFER_NAME,
            format!("metadata[{:?}]", self.key),
            Some(self.offset),
            format!(
                "expected an array of {expected}, found an array of {}",
                self.elem
            ),
        )
    }

    fn elem_err(&self, i: usize, detail: String) -> Error {
        let off = self
            .elem
            .fixed_size()
            .map(|sz| self.offset + (i as u64) * sz as u64)
            .unwrap_or(self.offset);
        Error::format(
            BUFFER_NAME,
            format!("metadata[{:?}][{i}]", self.key),
            Some(off),
            detail,
        )
    }
}

impl<'a> IntoIterator for &ArrayView<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;
    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over an [`ArrayView`]'s elements.
#[derive(Clone, Debug)]
pub struct ArrayIter<'a> {
    view: ArrayView<'a>,
    cur: Cursor<'a>,
    idx: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        if self.idx >= self.view.len {
            return None;
        }
        self.idx += 1;
        let base = self.view.offset;
        match self.view.elem {
            ValueType::String => decode_str(&mut self.cur).map(Value::String),
            ValueType::Array => {
                decode_array(&mut self.cur, self.view.key, base, 0).map(Value::Array)
            }
            ty => decode_fixed(&mut self.cur, ty),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.view.len.saturating_sub(self.idx);
        (n, Some(n))
    }
}

/// Iterator over the strings of a string array.
#[derive(Clone, Debug)]
pub struct StrIter<'a> {
    cur: Cursor<'a>,
    left: usize,
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        decode_str(&mut self.cur)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

// Decoders over bytes that `Gguf::parse` has already validated; they return `None` (ending an
// iteration) rather than panic should that ever not hold.

fn decode_fixed<'a>(c: &mut Cursor<'a>, ty: ValueType) -> Option<Value<'a>> {
    Some(match ty {
        ValueType::U8 => Value::U8(c.u8().ok()?),
        ValueType::I8 => Value::I8(c.i8().ok()?),
        ValueType::U16 => Value::U16(c.u16().ok()?),
        ValueType::I16 => Value::I16(c.i16().ok()?),
        ValueType::U32 => Value::U32(c.u32().ok()?),
        ValueType::I32 => Value::I32(c.i32().ok()?),
        ValueType::U64 => Value::U64(c.u64().ok()?),
        ValueType::I64 => Value::I64(c.i64().ok()?),
        ValueType::F32 => Value::F32(c.f32().ok()?),
        ValueType::F64 => Value::F64(c.f64().ok()?),
        ValueType::Bool => match c.u8().ok()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return None,
        },
        ValueType::String | ValueType::Array => return None,
    })
}

fn decode_str<'a>(c: &mut Cursor<'a>) -> Option<&'a str> {
    let n = c.u64().ok()?;
    std::str::from_utf8(c.take(n).ok()?).ok()
}

/// Decode a nested array (element type, count, elements) at the cursor; `base` is the file offset
/// of the cursor's buffer start.
fn decode_array<'a>(
    c: &mut Cursor<'a>,
    key: &'a str,
    base: u64,
    depth: u32,
) -> Option<ArrayView<'a>> {
    if depth >= MAX_ARRAY_DEPTH {
        return None;
    }
    let elem = ValueType::from_u32(c.u32().ok()?)?;
    let len = usize::try_from(c.u64().ok()?).ok()?;
    let start = c.pos();
    match elem.fixed_size() {
        Some(sz) => c.skip(len.checked_mul(sz)? as u64).ok()?,
        None => {
            for _ in 0..len {
                match elem {
                    ValueType::String => {
                        decode_str(c)?;
                    }
                    _ => {
                        decode_array(c, key, base, depth + 1)?;
                    }
                }
            }
        }
    }
    Some(ArrayView {
        key,
        elem,
        len,
        bytes: c.since(start),
        offset: base + start as u64,
    })
}

/// A short, one-line description of a value for listings: numbers and bools as is, strings quoted
/// (escaped, cut after 60 characters), arrays of up to 4 scalars listed, longer or nested arrays
/// summarized as `[u32; 49152]`.
pub fn describe_value(v: &Value<'_>) -> String {
    const MAX_CHARS: usize = 60;
    match *v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("{x:?}"),
        Value::F64(x) => format!("{x:?}"),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => {
            let n = s.chars().count();
            if n <= MAX_CHARS {
                format!("\"{}\"", s.escape_debug())
            } else {
                let head: String = s.chars().take(MAX_CHARS).collect();
                format!("\"{}\"… ({n} chars)", head.escape_debug())
            }
        }
        Value::Array(a) => {
            if a.len() <= 4 && a.elem_type() != ValueType::Array {
                let items: Vec<String> = a.iter().map(|e| describe_value(&e)).collect();
                if items.iter().map(|s| s.len() + 2).sum::<usize>() <= MAX_CHARS {
                    return format!("[{}]", items.join(", "));
                }
            }
            format!("[{}; {}]", a.elem_type(), a.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_type_ids_follow_the_spec() {
        // GGUF specification: UINT8=0 … FLOAT32=6, BOOL=7, STRING=8, ARRAY=9, UINT64=10, INT64=11, FLOAT64=12.
        let names = [
            "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
            "f64",
        ];
        for (id, name) in names.iter().enumerate() {
            let t = ValueType::from_u32(id as u32).unwrap();
            assert_eq!((t as u32, t.name()), (id as u32, *name));
        }
        assert_eq!(ValueType::from_u32(13), None);
        assert_eq!(ValueType::F64.fixed_size(), Some(8));
        assert_eq!(ValueType::String.fixed_size(), None);
    }

    #[test]
    fn scalar_coercions() {
        assert_eq!(Value::U64(u32::MAX as u64).as_u32(), Some(u32::MAX));
        assert_eq!(Value::U64(u32::MAX as u64 + 1).as_u32(), None);
        assert_eq!(Value::I8(-1).as_u64(), None);
        assert_eq!(Value::I8(-1).as_i64(), Some(-1));
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::F32(1.0).as_u32(), None);
        assert_eq!(Value::Bool(true).as_u32(), None);
        assert_eq!(Value::U32(1).as_bool(), None);
        assert_eq!(Value::I32(-(1 << 24)).as_f32(), Some(-16_777_216.0));
        assert_eq!(Value::I32((1 << 24) + 1).as_f32(), None);
        assert_eq!(Value::F64(f64::INFINITY).as_f32(), Some(f32::INFINITY));
        assert_eq!(Value::F64(1e39).as_f32(), None);
        assert_eq!(Value::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(Value::String("x").as_str(), Some("x"));
        assert_eq!(Value::String("x").as_f64(), None);
    }
}
