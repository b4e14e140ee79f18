//! The KV cache: the keys and values of every layer, stored as f32, f16 or Q8_0 blocks
//! ([`KvType`], K and V each their own), and read in place by the attention's row kernels
//! (`Kernels::dot_rows_*`, `axpy_rows_*`) — no widened copy per token.
//!
//! Layer `l` holds `cap[l]` positions of `kv_dim` values from value `off[l]`; position `p` lives in
//! slot `p % cap[l]`. Global layers have `cap = n_ctx` (never wraps); local (sliding-window) layers a
//! ring of `min(window, n_ctx)` positions.
//!
//! A batch's own keys and values are encoded into the cache's types before attention reads them
//! ([`KvCache::stage`]), so a key scores the same whether it is read from the batch or, later, from the
//! cache: results do not depend on how a prompt is split into batches.
use crate::kernels::{BlockQ8_0, F16Bits, Kernels, QK};
use crate::model::HParams;
use crate::{Error, Result};

/// How the KV cache stores keys or values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value (exact).
    F32,
    /// 2 bytes per value (IEEE half, round to nearest even); the default, as llama.cpp's.
    #[default]
    F16,
    /// 34 bytes per 32 values (an f16 scale and 32 signed bytes, llama.cpp's Q8_0 block).
    Q8_0,
}

impl KvType {
    /// Every type, in the order the CLI lists them.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    /// The name the CLI, the C API and state files use (llama.cpp's: `f32`, `f16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The type named `name` ([`KvType::name`]).
    pub fn from_name(name: &str) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes of `n` values (`n` a whole number of blocks for Q8_0).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n / QK * std::mem::size_of::<BlockQ8_0>(),
        }
    }

    /// Whether rows of a model with this head size can be stored: Q8_0 needs every head to start and
    /// end on a block. `which` names the cache ("K" or "V") in the error.
    pub(crate) fn check(self, which: &str, hp: &HParams) -> Result<()> {
        if self == KvType::Q8_0 && !hp.head_dim.is_multiple_of(QK) {
            return Err(Error::invalid(format!(
                "{which} cache type q8_0 needs a head size that is a multiple of {QK}; this model's \
                 is {} (use f16 or f32)",
                hp.head_dim
            )));
        }
        Ok(())
    }
}

/// Rows of values in one [`KvType`].
pub(crate) enum KvStore {
    F32(Vec<f32>),
    F16(Vec<F16Bits>),
    Q8_0(Vec<BlockQ8_0>),
}

/// Rows of values in one [`KvType`], borrowed; positions and lengths count values.
#[derive(Clone, Copy)]
pub(crate) enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [F16Bits]),
    Q8_0(&'a [BlockQ8_0]),
}

/// One row operation's kernels, one per [`KvRows`] variant.
type RowKernels = (
    fn(&[f32], &[f32], usize, &mut [f32]),
    fn(&[f32], &[F16Bits], usize, &mut [f32]),
    fn(&[f32], &[BlockQ8_0], usize, &mut [f32]),
);

impl KvRows<'_> {
    /// `out[j] = q · row_j`, row `j` starting at value `at + j·stride`.
    #[inline]
    pub fn dot(self, k: &Kernels, q: &[f32], at: usize, stride: usize, out: &mut [f32]) {
        let f = (k.dot_rows_f32, k.dot_rows_f16, k.dot_rows_q8_0);
        self.apply(f, q, at, stride, out);
    }

    /// `out += Σ_j w[j]·row_j`, row `j` starting at value `at + j·stride`.
    #[inline]
    pub fn axpy(self, k: &Kernels, w: &[f32], at: usize, stride: usize, out: &mut [f32]) {
        let f = (k.axpy_rows_f32, k.axpy_rows_f16, k.axpy_rows_q8_0);
        self.apply(f, w, at, stride, out);
    }

    /// The kernel of `f` for this variant over the rows from value `at` on.
    #[inline]
    fn apply(self, f: RowKernels, v: &[f32], at: usize, stride: usize, out: &mut [f32]) {
        match self {
            KvRows::F32(r) => (f.0)(v, &r[at..], stride, out),
            KvRows::F16(r) => (f.1)(v, &r[at..], stride, out),
            KvRows::Q8_0(r) => (f.2)(v, &r[at / QK..], stride, out),
        }
    }
}

impl KvStore {
    /// `n` zero values of type `ty`; an allocation failure is an error rather than an abort (the cache
    /// can be large).
    fn zeroed(ty: KvType, n: usize) -> Result<KvStore> {
        fn vec<T: bytemuck::Zeroable + Clone>(n: usize, bytes: usize) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                Error::invalid(format!(
                    "cannot allocate {} MiB for the KV cache: use a smaller context (-c) or a \
                     smaller cache type (-ctk/-ctv)",
                    bytes >> 20
                ))
            })?;
            v.resize(n, T::zeroed());
            Ok(v)
        }
        let bytes = ty.bytes(n);
        Ok(match ty {
            KvType::F32 => KvStore::F32(vec(n, bytes)?),
            KvType::F16 => KvStore::F16(vec(n, bytes)?),
            KvType::Q8_0 => KvStore::Q8_0(vec(n / QK, bytes)?),
        })
    }

    pub fn rows(&self) -> KvRows<'_> {
        match self {
            KvStore::F32(v) => KvRows::F32(v),
            KvStore::F16(v) => KvRows::F16(v),
            KvStore::Q8_0(v) => KvRows::Q8_0(v),
        }
    }

    pub fn ty(&self) -> KvType {
        match self {
            KvStore::F32(_) => KvType::F32,
            KvStore::F16(_) => KvType::F16,
            KvStore::Q8_0(_) => KvType::Q8_0,
        }
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            KvStore::F32(v) => bytemuck::cast_slice(v),
            KvStore::F16(v) => bytemuck::cast_slice(v),
            KvStore::Q8_0(v) => bytemuck::cast_slice(v),
        }
    }

    /// Encodes the f32 values `src` at value `at` (whole blocks for Q8_0).
    fn encode(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvStore::F16(v) => {
                for (d, &s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *d = F16Bits::from_f32(s);
                }
            }
            KvStore::Q8_0(v) => {
                let blocks = &mut v[at / QK..(at + src.len()) / QK];
                crate::kernels::scalar::quantize_q8_0(src, bytemuck::cast_slice_mut(blocks));
            }
        }
    }

    /// Decodes the `out.len()` values from value `at` (whole blocks for Q8_0).
    fn decode(&self, at: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            KvStore::F32(v) => out.copy_from_slice(&v[at..at + n]),
            KvStore::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[at..at + n]) {
                    *o = h.to_f32();
                }
            }
            KvStore::Q8_0(v) => {
                crate::kernels::scalar::dequantize_row_q8_0(&v[at / QK..(at + n) / QK], out)
            }
        }
    }

    /// The value at `at`, decoded.
    #[cfg(test)]
    pub fn value_at(&self, at: usize) -> f32 {
        let mut block = [0.0; QK];
        let start = match self {
            KvStore::Q8_0(_) => at / QK * QK,
            _ => at,
        };
        let n = if matches!(self, KvStore::Q8_0(_)) {
            QK
        } else {
            1
        };
        self.decode(start, &mut block[..n]);
        block[at - start]
    }

    /// Moves the `n` values from value `from` to value `to` (ranges may overlap; whole blocks for
    /// Q8_0).
    fn move_values(&mut self, from: usize, to: usize, n: usize) {
        match self {
            KvStore::F32(v) => v.copy_within(from..from + n, to),
            KvStore::F16(v) => v.copy_within(from..from + n, to),
            KvStore::Q8_0(v) => v.copy_within(from / QK..(from + n) / QK, to / QK),
        }
    }

    /// Rotates the `n` values from value `at` left by `by` values: value `at + i` goes to
    /// `at + (i - by) mod n` (whole blocks for Q8_0).
    fn rotate_values(&mut self, at: usize, n: usize, by: usize) {
        match self {
            KvStore::F32(v) => v[at..at + n].rotate_left(by),
            KvStore::F16(v) => v[at..at + n].rotate_left(by),
            KvStore::Q8_0(v) => v[at / QK..(at + n) / QK].rotate_left(by / QK),
        }
    }

    /// Copies `n` values from value `from` of `src` (the same type) to value `at`.
    fn copy_from(&mut self, at: usize, src: KvRows<'_>, from: usize, n: usize) {
        match (self, src) {
            (KvStore::F32(d), KvRows::F32(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (KvStore::F16(d), KvRows::F16(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (KvStore::Q8_0(d), KvRows::Q8_0(s)) => {
                d[at / QK..(at + n) / QK].copy_from_slice(&s[from / QK..(from + n) / QK])
            }
            _ => unreachable!("KV rows copied between types"),
        }
    }
}

/// Keys and values of every layer (see the module documentation).
pub(crate) struct KvCache {
    pub k: KvStore,
    pub v: KvStore,
    pub off: Vec<usize>,
    pub cap: Vec<usize>,
    kv_dim: usize,
    /// The current batch's keys and values encoded in the cache's types, `[B, kv_dim]` (unused for
    /// f32, whose batch rows are read as they are).
    batch_k: KvStore,
    batch_v: KvStore,
}

impl KvCache {
    /// The cache of `n_ctx` positions (rings of the window in local layers) for batches of up to
    /// `n_batch` tokens.
    pub fn new(
        hp: &HParams,
        n_ctx: usize,
        n_batch: usize,
        type_k: KvType,
        type_v: KvType,
    ) -> Result<KvCache> {
        type_k.check("K", hp)?;
        type_v.check("V", hp)?;
        let kvd = hp.kv_dim();
        let mut off = Vec::with_capacity(hp.n_layer);
        let mut cap = Vec::with_capacity(hp.n_layer);
        let mut total = 0usize;
        for l in 0..hp.n_layer {
            let c = hp.kv_positions(l, n_ctx);
            off.push(total);
            cap.push(c);
            total = c
                .checked_mul(kvd)
                .and_then(|n| total.checked_add(n))
                .filter(|&n| n <= (isize::MAX as usize) / 8)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "context {n_ctx} is too large for this model's KV cache"
                    ))
                })?;
        }
        let staged = |ty: KvType| match ty {
            KvType::F32 => KvStore::zeroed(ty, 0),
            _ => KvStore::zeroed(ty, n_batch * kvd),
        };
        Ok(KvCache {
            k: KvStore::zeroed(type_k, total)?,
            v: KvStore::zeroed(type_v, total)?,
            off,
            cap,
            kv_dim: kvd,
            batch_k: staged(type_k)?,
            batch_v: staged(type_v)?,
        })
    }

    /// Bytes of the keys and values of every layer.
    pub fn bytes(&self) -> usize {
        self.k.as_bytes().len() + self.v.as_bytes().len()
    }

    /// Bytes of the batch's encoded keys and values.
    pub fn staging_bytes(&self) -> usize {
        self.batch_k.as_bytes().len() + self.batch_v.as_bytes().len()
    }

    /// Encodes the batch's keys `kk` and values `v` (whole rows) for [`KvCache::batch_rows`].
    pub fn stage(&mut self, kk: &[f32], v: &[f32]) {
        if self.k.ty() != KvType::F32 {
            self.batch_k.encode(0, kk);
        }
        if self.v.ty() != KvType::F32 {
            self.batch_v.encode(0, v);
        }
    }

    /// The batch's keys and values as attention reads them: encoded by [`KvCache::stage`], or the f32
    /// rows themselves.
    pub fn batch_rows<'a>(&'a self, kk: &'a [f32], v: &'a [f32]) -> (KvRows<'a>, KvRows<'a>) {
        (
            staged_rows(self.k.ty(), &self.batch_k, kk),
            staged_rows(self.v.ty(), &self.batch_v, v),
        )
    }

    /// Appends the staged batch of `b` tokens at positions `pos0..` to layer `l`: position `p` to slot
    /// `p % cap` (only the last `cap` of the batch can survive).
    pub fn append(&mut self, l: usize, pos0: usize, b: usize, kk: &[f32], v: &[f32]) {
        let (off, cap, kvd) = (self.off[l], self.cap[l], self.kv_dim);
        let KvCache {
            k: keys,
            v: values,
            batch_k,
            batch_v,
            ..
        } = self;
        let bk = staged_rows(keys.ty(), batch_k, kk);
        let bv = staged_rows(values.ty(), batch_v, v);
        for t in b.saturating_sub(cap)..b {
            let s = off + ((pos0 + t) % cap) * kvd;
            keys.copy_from(s, bk, t * kvd, kvd);
            values.copy_from(s, bv, t * kvd, kvd);
        }
    }
}

impl KvCache {
    /// Context shift of layer `l`, whose cache holds positions `..n_past`: positions
    /// `keep + d..n_past` move to `keep..n_past - d` (positions `keep..keep + d` are dropped), then the
    /// key row of every moved position the layer still holds is decoded into `row` (`kv_dim` values),
    /// handed to `rerotate` and encoded back.
    ///
    /// A ring that has wrapped (`n_past > cap`) is rotated as a whole, so its kept positions `< keep`
    /// land in the wrong slots: the caller shifts such a layer only when no query after the shift can
    /// see them ([`super::shift`]).
    pub fn shift_layer(
        &mut self,
        l: usize,
        (keep, d, n_past): (usize, usize, usize),
        row: &mut [f32],
        mut rerotate: impl FnMut(&mut [f32]),
    ) {
        let (off, cap, kvd) = (self.off[l], self.cap[l], self.kv_dim);
        let n_new = n_past - d;
        let moved = if n_past <= cap {
            let (from, to, n) = (
                off + (keep + d) * kvd,
                off + keep * kvd,
                (n_new - keep) * kvd,
            );
            self.k.move_values(from, to, n);
            self.v.move_values(from, to, n);
            keep..n_new
        } else {
            // slot s = p % cap holds the row of new position p - d at slot (s - d) mod cap
            let by = (d % cap) * kvd;
            self.k.rotate_values(off, cap * kvd, by);
            self.v.rotate_values(off, cap * kvd, by);
            keep.max(n_new.saturating_sub(cap))..n_new
        };
        let row = &mut row[..kvd];
        for p in moved {
            let at = off + (p % cap) * kvd;
            self.k.decode(at, row);
            rerotate(row);
            self.k.encode(at, row);
        }
    }
}

/// A batch's rows in a cache of type `ty`: the staged encoding, or the f32 rows themselves.
fn staged_rows<'a>(ty: KvType, staged: &'a KvStore, rows: &'a [f32]) -> KvRows<'a> {
    match ty {
        KvType::F32 => KvRows::F32(rows),
        _ => staged.rows(),
    }
}

/// Reading and writing one position's stored rows, for saving and restoring a context
/// ([`crate::state`]).
impl KvCache {
    /// Bytes of one position's keys and of its values, in the cache's types.
    pub(crate) fn row_bytes(&self) -> (usize, usize) {
        (
            self.k.ty().bytes(self.kv_dim),
            self.v.ty().bytes(self.kv_dim),
        )
    }

    /// The stored keys and values of position `pos` in layer `l` (slot `pos % cap[l]`).
    pub(crate) fn position(&self, l: usize, pos: usize) -> (&[u8], &[u8]) {
        let ((kb, vb), at) = (
            self.row_bytes(),
            self.off[l] + (pos % self.cap[l]) * self.kv_dim,
        );
        let (ka, va) = (self.k.ty().bytes(at), self.v.ty().bytes(at));
        (
            &self.k.as_bytes()[ka..ka + kb],
            &self.v.as_bytes()[va..va + vb],
        )
    }

    /// Overwrites position `pos` of layer `l` with stored rows ([`KvCache::row_bytes`] long each).
    pub(crate) fn set_position(&mut self, l: usize, pos: usize, k: &[u8], v: &[u8]) {
        let at = self.off[l] + (pos % self.cap[l]) * self.kv_dim;
        let (ka, va) = (self.k.ty().bytes(at), self.v.ty().bytes(at));
        self.k.as_bytes_mut()[ka..ka + k.len()].copy_from_slice(k);
        self.v.as_bytes_mut()[va..va + v.len()].copy_from_slice(v);
    }
}

impl KvStore {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            KvStore::F32(v) => bytemuck::cast_slice_mut(v),
            KvStore::F16(v) => bytemuck::cast_slice_mut(v),
            KvStore::Q8_0(v) => bytemuck::cast_slice_mut(v),
        }
    }
}
