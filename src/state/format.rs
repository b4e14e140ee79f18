//! The state file, version 1. Little-endian; every count and length is a `u64`, every string a `u64`
//! byte length then UTF-8 bytes:
//!
//! ```text
//! magic "ERSTATE\0", version u32 = 1
//! model:    header hash u64, arch string, n_layer, kv_dim, n_vocab (u64 each)
//! kv:       type_k string, type_v string                   (KvType::name: f32, f16, q8_0)
//! adapters: count u64, then per adapter: hash u64, user scale f32, file name string
//! tokens:   n_past u64, n_past × u32 ids, n_past × u8 batched flags (0 or 1)
//! logits:   present u8 (0 or 1), then n_vocab × f32 if present
//! app:      length u64, bytes                               (the application's own data)
//! layers:   per layer: rows u64 (the last `rows` positions), rows × K row, rows × V row
//!           (in position order, each row kv_dim values in the cache's own type)
//! checksum  u64: Hash64 of every byte before it
//! ```
//!
//! Reading goes through a bounds-checked [`Cursor`]; every count is compared with what the session can
//! hold and with the bytes that remain before anything is allocated or sliced, and every error names the
//! file, the field and its byte offset.
use super::hash::hash64;
use super::identity::{AdapterId, Identity};
use crate::gguf::cursor::{Cursor, Short};
use crate::{Error, Result};

pub(crate) const MAGIC: [u8; 8] = *b"ERSTATE\0";
pub(crate) const VERSION: u32 = 1;
/// Longest string (architecture, KV type, adapter file name) a state file holds.
pub(crate) const MAX_STR: usize = 4096;
/// Largest application blob.
pub const MAX_APP_BYTES: usize = 64 << 20;

// ------------------------------------------------------------------------------------------- writing

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A string, cut to [`MAX_STR`] bytes at a character boundary.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u64(out, end as u64);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Magic, version and the identity.
pub(crate) fn write_identity(out: &mut Vec<u8>, id: &Identity) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_u64(out, id.model_hash);
    put_str(out, &id.arch);
    for v in [id.n_layer, id.kv_dim, id.n_vocab] {
        put_u64(out, v);
    }
    put_str(out, &id.type_k);
    put_str(out, &id.type_v);
    put_u64(out, id.adapters.len() as u64);
    for a in &id.adapters {
        put_u64(out, a.hash);
        out.extend_from_slice(&a.scale.to_le_bytes());
        put_str(out, &a.name);
    }
}

/// Tokens, their batched flags, the last logits and the application's data.
pub(crate) fn write_context(out: &mut Vec<u8>, ctx: &Context<'_>) {
    put_u64(out, ctx.tokens.len() as u64);
    for &t in &ctx.tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend(ctx.batched.iter().map(|&b| b as u8));
    out.push(ctx.logits.is_some() as u8);
    for &x in ctx.logits.iter().flatten() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    put_u64(out, ctx.app.len() as u64);
    out.extend_from_slice(ctx.app);
}

/// One layer's rows: their count, then the K rows, then the V rows.
pub(crate) fn write_layer<'r>(
    out: &mut Vec<u8>,
    rows: usize,
    k: impl Iterator<Item = &'r [u8]>,
    v: impl Iterator<Item = &'r [u8]>,
) {
    put_u64(out, rows as u64);
    k.for_each(|r| out.extend_from_slice(r));
    v.for_each(|r| out.extend_from_slice(r));
}

/// Appends the checksum of everything written.
pub(crate) fn seal(out: &mut Vec<u8>) {
    let h = hash64(out);
    put_u64(out, h);
}

// ------------------------------------------------------------------------------------------- reading

/// The context part of a state (owned where it is converted, borrowed where it is bytes).
pub(crate) struct Context<'a> {
    pub tokens: Vec<u32>,
    pub batched: Vec<bool>,
    pub logits: Option<Vec<f32>>,
    pub app: &'a [u8],
}

/// One layer's stored rows: the last `rows` positions, K and V rows in position order.
pub(crate) struct LayerRows<'a> {
    pub rows: usize,
    pub k: &'a [u8],
    pub v: &'a [u8],
}

/// What the loading session can hold: counts in the file are checked against these.
pub(crate) struct Limits {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_layer: usize,
    /// Bytes of one position's K row and V row.
    pub row_k: usize,
    pub row_v: usize,
}

/// A bounds-checked reader of one state file; errors name the file, the field and the offset.
pub(crate) struct Reader<'a> {
    c: Cursor<'a>,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn fail(&self, field: &str, at: usize, detail: String) -> Error {
        Error::format(
            format!("state file {}", self.file),
            field,
            Some(at as u64),
            detail,
        )
    }

    fn short(&self, field: &str, s: Short) -> Error {
        let detail = format!(
            "the file ends: {} bytes needed, {} left (truncated?)",
            s.need, s.have
        );
        self.fail(field, s.at, detail)
    }

    pub fn u64(&mut self, field: &str) -> Result<u64> {
        self.c.u64().map_err(|s| self.short(field, s))
    }

    fn bytes(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        self.c.take(n).map_err(|s| self.short(field, s))
    }

    /// A count at most `max` (`what` says what bounds it).
    fn count(&mut self, field: &str, max: usize, what: &str) -> Result<usize> {
        let at = self.c.pos();
        let n = self.u64(field)?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(self.fail(field, at, format!("{n} is more than {what} ({max})"))),
        }
    }

    fn str(&mut self, field: &str) -> Result<&'a str> {
        let n = self.count(field, MAX_STR, "the longest string a state holds")?;
        let at = self.c.pos();
        let b = self.bytes(n as u64, field)?;
        std::str::from_utf8(b).map_err(|e| self.fail(field, at, format!("not UTF-8: {e}")))
    }

    /// A reader after the magic and version of `bytes`; with `sealed`, the checksum is verified and
    /// excluded from what the reader sees.
    pub fn open(bytes: &'a [u8], file: &'a str, sealed: bool) -> Result<Reader<'a>> {
        let mut r = Reader {
            c: Cursor::new(bytes),
            file,
        };
        let magic = r.bytes(8, "magic")?;
        if magic != MAGIC {
            let detail = format!("{magic:02x?} is not an edge-run state file's \"ERSTATE\\0\"");
            return Err(r.fail("magic", 0, detail));
        }
        let version = r.c.u32().map_err(|s| r.short("version", s))?;
        if version != VERSION {
            let detail = format!("version {version} is not supported (this build reads {VERSION})");
            return Err(r.fail("version", 8, detail));
        }
        if sealed {
            let body = bytes.len().checked_sub(8).filter(|&n| n >= r.c.pos());
            let Some(body) = body else {
                let detail = "the file ends before its checksum (truncated?)".to_string();
                return Err(r.fail("checksum", bytes.len(), detail));
            };
            let stored = u64::from_le_bytes(bytes[body..].try_into().unwrap_or_default());
            let actual = hash64(&bytes[..body]);
            if stored != actual {
                let detail = format!(
                    "{stored:016x} does not match the content's {actual:016x}: the file is corrupted"
                );
                return Err(r.fail("checksum", body, detail));
            }
            r.c = Cursor::at(&bytes[..body], r.c.pos()).unwrap_or(Cursor::new(&[]));
        }
        Ok(r)
    }

    /// The model, KV types and adapter set the state was saved with.
    pub fn identity(&mut self) -> Result<Identity> {
        let model_hash = self.u64("model.hash")?;
        let arch = self.str("model.arch")?.to_string();
        let (n_layer, kv_dim, n_vocab) = (
            self.u64("model.n_layer")?,
            self.u64("model.kv_dim")?,
            self.u64("model.n_vocab")?,
        );
        let type_k = self.str("kv.type_k")?.to_string();
        let type_v = self.str("kv.type_v")?.to_string();
        let max = crate::adapter::MAX_ADAPTERS;
        let n = self.count("adapters.count", max, "the most adapters a session applies")?;
        let mut adapters = Vec::with_capacity(n);
        for i in 0..n {
            let hash = self.u64(&format!("adapters[{i}].hash"))?;
            let (at, field) = (self.c.pos(), format!("adapters[{i}].scale"));
            let scale = self.c.f32().map_err(|s| self.short(&field, s))?;
            if !scale.is_finite() {
                return Err(self.fail(&field, at, format!("{scale} is not finite")));
            }
            let name = self.str(&format!("adapters[{i}].name"))?.to_string();
            adapters.push(AdapterId { hash, scale, name });
        }
        Ok(Identity {
            model_hash,
            arch,
            n_layer,
            kv_dim,
            n_vocab,
            type_k,
            type_v,
            adapters,
        })
    }
}

impl<'a> Reader<'a> {
    /// The number of tokens, refused (naming the context) if more than `n_ctx`.
    pub fn token_count(&mut self, n_ctx: usize) -> Result<usize> {
        let at = self.c.pos();
        let n = self.u64("tokens.count")?;
        if n > n_ctx as u64 {
            return Err(Error::invalid(format!(
                "state file {} holds {n} tokens (field `tokens.count` at byte offset {at}); this \
                 session's context holds {n_ctx} (use a larger -c / n_ctx)",
                self.file
            )));
        }
        Ok(n as usize)
    }

    /// Tokens (each `< n_vocab`, at most `n_ctx`), flags, logits and the application's data.
    pub fn context(&mut self, lim: &Limits) -> Result<Context<'a>> {
        let n = self.token_count(lim.n_ctx)?;
        let at = self.c.pos() - 8;
        let ids = self.bytes(4 * n as u64, "tokens.ids")?;
        let tokens: Vec<u32> = ids
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = tokens.iter().position(|&t| t as usize >= lim.n_vocab) {
            let detail = format!(
                "{} is not below the vocabulary size {}",
                tokens[i], lim.n_vocab
            );
            return Err(self.fail(&format!("tokens[{i}]"), at + 8 + 4 * i, detail));
        }
        let flags_at = self.c.pos();
        let flags = self.bytes(n as u64, "tokens.batched")?;
        if let Some(i) = flags.iter().position(|&b| b > 1) {
            let detail = format!("{} is not 0 or 1", flags[i]);
            return Err(self.fail(&format!("batched[{i}]"), flags_at + i, detail));
        }
        let logits = self.logits(lim.n_vocab)?;
        let app_len = self.count("app.length", MAX_APP_BYTES, "the largest application data")?;
        let app = self.bytes(app_len as u64, "app.data")?;
        Ok(Context {
            tokens,
            batched: flags.iter().map(|&b| b == 1).collect(),
            logits,
            app,
        })
    }

    fn logits(&mut self, n_vocab: usize) -> Result<Option<Vec<f32>>> {
        let at = self.c.pos();
        match self.bytes(1, "logits.present")?[0] {
            0 => Ok(None),
            1 => {
                let b = self.bytes(4 * n_vocab as u64, "logits.values")?;
                Ok(Some(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
            v => Err(self.fail("logits.present", at, format!("{v} is not 0 or 1"))),
        }
    }

    /// Every layer's rows (each at most `n_past` positions); then the file must end.
    pub fn layers(&mut self, lim: &Limits, n_past: usize) -> Result<Vec<LayerRows<'a>>> {
        let mut out = Vec::with_capacity(lim.n_layer);
        for l in 0..lim.n_layer {
            let field = format!("layers[{l}].rows");
            let rows = self.count(&field, n_past, "the tokens in the state")?;
            let len = |row: usize| (rows as u64).saturating_mul(row as u64);
            let k = self.bytes(len(lim.row_k), &format!("layers[{l}].k"))?;
            let v = self.bytes(len(lim.row_v), &format!("layers[{l}].v"))?;
            out.push(LayerRows { rows, k, v });
        }
        if self.c.remaining() > 0 {
            let detail = format!(
                "{} bytes after the last layer, before the checksum",
                self.c.remaining()
            );
            return Err(self.fail("end", self.c.pos(), detail));
        }
        Ok(out)
    }
}
