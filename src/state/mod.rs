//! Saving a session's context to a file and restoring it: the tokens, the KV cache rows the session
//! holds for them, the last position's logits and an optional blob of the application's own data (e.g.
//! a chat's messages). Restoring gives bit-identical logits to evaluating the tokens again, in this
//! process or another, and so does evaluating further tokens afterwards.
//!
//! A state is only valid with the model, KV cache types and adapter set it was computed under
//! ([`identity`]); restoring into another session is refused with an error naming the difference, as
//! is a context too small for its tokens or a sliding-window ring narrower than this session needs.
//! The file ([`format`]) is versioned and checksummed; a truncated, corrupted or hostile file is
//! refused with an error naming the file and the field. A load parses and checks everything before it
//! changes anything: a failed load leaves the session as it was.
mod format;
mod hash;
mod identity;

pub use format::MAX_APP_BYTES;
pub use hash::{hash64, Hash64};

use crate::{Error, Result, Session};
use format::{Context, LayerRows, Limits, Reader};
use identity::Identity;
use std::path::Path;

/// How much of an oversized file is read to tell a different session's state from a corrupt file.
const PREFIX_BYTES: usize = 1 << 20;

/// State files store the cache's bytes as they are in memory, which is little-endian.
fn check_endian() -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(Error::invalid(
            "state files are little-endian; this machine is big-endian",
        ));
    }
    Ok(())
}

impl Session {
    /// Saves the context to `path` (see [`Session::save_state_to`]).
    pub fn save_state(&mut self, path: &Path) -> Result<()> {
        self.save_state_with(path, &[])
    }

    /// Saves the context and the application's data `app` (at most [`MAX_APP_BYTES`]) to `path`.
    pub fn save_state_with(&mut self, path: &Path, app: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        self.save_state_to(&mut out, app)?;
        std::fs::write(path, &out).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Appends the state file's bytes to `out`: the identity, the tokens, the last logits, `app` and
    /// the KV rows the session holds. A pending replay runs first and the published adapter set is
    /// adopted (the state records the set the next `eval` would apply).
    pub fn save_state_to(&mut self, out: &mut Vec<u8>, app: &[u8]) -> Result<()> {
        check_endian()?;
        no_control_vector(self)?;
        if app.len() > MAX_APP_BYTES {
            return Err(Error::invalid(format!(
                "application data of {} bytes is more than a state file holds ({MAX_APP_BYTES})",
                app.len()
            )));
        }
        self.settle();
        out.reserve(state_bytes_estimate(self, app.len()));
        format::write_identity(out, &Identity::of(self));
        let ctx = Context {
            tokens: self.tokens().to_vec(),
            batched: self.batched().to_vec(),
            logits: self.last_logits().map(<[f32]>::to_vec),
            app,
        };
        format::write_context(out, &ctx);
        let (kv, n_past) = (self.kv(), self.n_past());
        for l in 0..self.model().hp.n_layer {
            let rows = n_past.min(kv.cap[l]);
            let span = n_past - rows..n_past;
            let k = span.clone().map(|p| kv.position(l, p).0);
            let v = span.map(|p| kv.position(l, p).1);
            format::write_layer(out, rows, k, v);
        }
        format::seal(out);
        Ok(())
    }

    /// Restores the context saved in `path`; returns the application's data saved with it.
    pub fn load_state(&mut self, path: &Path) -> Result<Vec<u8>> {
        self.load_state_with(path, |app| Ok(app.to_vec()))
    }

    /// Restores the context saved in `path` if `accept` takes its application data (its result is
    /// returned). On any error — the file's, a mismatch, or `accept`'s — the session is unchanged.
    pub fn load_state_with<T>(
        &mut self,
        path: &Path,
        accept: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        use std::io::Read;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let max = max_state_bytes(self);
        let f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut bytes = Vec::new();
        let limit = if len > max {
            PREFIX_BYTES as u64
        } else {
            max + 1
        };
        f.take(limit).read_to_end(&mut bytes).map_err(io)?;
        let name = path.display().to_string();
        if len > max || bytes.len() as u64 > max {
            return Err(self.too_large(&bytes, &name, len.max(bytes.len() as u64), max));
        }
        self.load_state_from_with(&bytes, &name, accept)
    }

    /// Restores a state from its bytes (`name` names them in errors); returns the application's data.
    pub fn load_state_from(&mut self, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
        self.load_state_from_with(bytes, name, |app| Ok(app.to_vec()))
    }

    /// [`Session::load_state_with`] over bytes: parse and check everything, then commit.
    pub fn load_state_from_with<T>(
        &mut self,
        bytes: &[u8],
        name: &str,
        accept: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        check_endian()?;
        no_control_vector(self)?;
        let max = max_state_bytes(self);
        if bytes.len() as u64 > max {
            let prefix = &bytes[..bytes.len().min(PREFIX_BYTES)];
            return Err(self.too_large(prefix, name, bytes.len() as u64, max));
        }
        self.refresh_adapters();
        let lim = limits(self);
        let mut r = Reader::open(bytes, name, true)?;
        r.identity()?.check(name, &Identity::of(self))?;
        let ctx = r.context(&lim)?;
        let layers = r.layers(&lim, ctx.tokens.len())?;
        self.check_rings(name, &layers, ctx.tokens.len())?;
        let t = accept(ctx.app)?;
        self.commit(&ctx, &layers, &lim);
        Ok(t)
    }

    /// The error for a file of `len` bytes, more than `max`: a mismatch if its identity (read from
    /// `prefix`) differs from this session's, else the size.
    fn too_large(&mut self, prefix: &[u8], name: &str, len: u64, max: u64) -> Error {
        self.refresh_adapters();
        let ours = Identity::of(self);
        let n_ctx = self.config().n_ctx;
        let diff = Reader::open(prefix, name, false).and_then(|mut r| {
            r.identity()?.check(name, &ours)?;
            r.token_count(n_ctx).map(|_| ())
        });
        match diff {
            Err(e) => e,
            Ok(()) => Error::format(
                format!("state file {name}"),
                "size",
                None,
                format!("{len} bytes is more than a state of this session can be ({max} bytes)"),
            ),
        }
    }

    /// Every sliding-window layer holds the positions this session's ring needs.
    fn check_rings(&self, name: &str, layers: &[LayerRows<'_>], n_past: usize) -> Result<()> {
        for (l, rows) in layers.iter().enumerate() {
            let need = n_past.min(self.kv().cap[l]);
            if rows.rows < need {
                return Err(Error::invalid(format!(
                    "state file {name} keeps the last {} of its {n_past} positions in layer {l} (a \
                     sliding window); this session keeps {} there and needs {need} of them (save \
                     with a context at least as large as this session's)",
                    rows.rows,
                    self.kv().cap[l]
                )));
            }
        }
        Ok(())
    }

    /// Replaces the context with the checked state: the rows each layer keeps, in their slots.
    fn commit(&mut self, ctx: &Context<'_>, layers: &[LayerRows<'_>], lim: &Limits) {
        let n_past = ctx.tokens.len();
        let (rk, rv) = (lim.row_k, lim.row_v);
        self.restore(&ctx.tokens, &ctx.batched, ctx.logits.as_deref(), |kv| {
            for (l, rows) in layers.iter().enumerate() {
                let keep = rows.rows.min(kv.cap[l]);
                let first = n_past - rows.rows;
                for i in rows.rows - keep..rows.rows {
                    let k = &rows.k[i * rk..(i + 1) * rk];
                    let v = &rows.v[i * rv..(i + 1) * rv];
                    kv.set_position(l, first + i, k, v);
                }
            }
        });
    }
}

/// What `s` can hold, for checking a file's counts.
fn limits(s: &Session) -> Limits {
    let (row_k, row_v) = s.kv().row_bytes();
    Limits {
        n_ctx: s.config().n_ctx,
        n_vocab: s.model().hp.n_vocab,
        n_layer: s.model().hp.n_layer,
        row_k,
        row_v,
    }
}

/// The largest state file `s` could write (with the largest application data), bytes.
fn max_state_bytes(s: &Session) -> u64 {
    let lim = limits(s);
    let str_max = 8 + format::MAX_STR as u64;
    let adapter = 8 + 4 + str_max;
    let fixed = 12 + 8 + 3 * str_max + 3 * 8 + 8 + crate::adapter::MAX_ADAPTERS as u64 * adapter;
    let context = 8 + 5 * lim.n_ctx as u64 + 1 + 4 * lim.n_vocab as u64 + 8 + MAX_APP_BYTES as u64;
    let row = (lim.row_k + lim.row_v) as u64;
    let layers: u64 = s.kv().cap.iter().map(|&c| 8 + c as u64 * row).sum();
    fixed + context + layers + 8
}

/// About the size of the state `s` writes now with `app_len` bytes of application data (to reserve).
fn state_bytes_estimate(s: &Session, app_len: usize) -> usize {
    let (n_past, lim) = (s.n_past(), limits(s));
    let rows: usize = s.kv().cap.iter().map(|&c| c.min(n_past)).sum();
    (1 << 16) + 5 * n_past + 4 * lim.n_vocab + app_len + rows * (lim.row_k + lim.row_v)
}

/// A state file does not record a control vector, so a session applying one neither saves nor loads.
fn no_control_vector(s: &Session) -> Result<()> {
    if s.control_vector().is_some() {
        return Err(Error::invalid(
            "a saved state does not record control vectors: clear the session's control vector \
             before saving or loading a state",
        ));
    }
    Ok(())
}
