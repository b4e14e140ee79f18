//! What a saved context is only valid with: the model (a hash of its GGUF header, metadata and tensor
//! table, plus the shapes the cache depends on), the KV cache's types and the adapter set it was
//! computed under (each adapter by a hash of its factors, with its user scale). A state is restored only
//! into a session whose identity is the same; [`Identity::check`] names the first difference.
use super::hash::{hash64, Hash64};
use crate::adapter::{Adapter, LoraKind};
use crate::{Error, Result, Session};

/// One applied adapter: its content hash and user scale (its file name is only for messages).
#[derive(Clone, Debug)]
pub(crate) struct AdapterId {
    pub hash: u64,
    pub scale: f32,
    pub name: String,
}

/// A session's identity as a state file records it.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub model_hash: u64,
    pub arch: String,
    pub n_layer: u64,
    pub kv_dim: u64,
    pub n_vocab: u64,
    pub type_k: String,
    pub type_v: String,
    pub adapters: Vec<AdapterId>,
}

impl Identity {
    /// The identity of `s` with its currently applied adapter set (the caller refreshed it).
    pub fn of(s: &Session) -> Identity {
        let m = s.model();
        let cfg = s.config();
        Identity {
            model_hash: hash64(&m.map[..m.header_len]),
            arch: m.arch.clone(),
            n_layer: m.hp.n_layer as u64,
            kv_dim: m.hp.kv_dim() as u64,
            n_vocab: m.hp.n_vocab as u64,
            type_k: cfg.type_k.name().to_string(),
            type_v: cfg.type_v.name().to_string(),
            adapters: s
                .applied_adapters()
                .iter()
                .map(|(a, scale)| AdapterId {
                    hash: adapter_hash(a),
                    scale: *scale,
                    name: a.path().display().to_string(),
                })
                .collect(),
        }
    }

    /// Ok if a state saved with identity `self` (from file `file`) can be restored into a session of
    /// identity `ours`; otherwise an error naming what differs.
    pub fn check(&self, file: &str, ours: &Identity) -> Result<()> {
        let differs = |what: &str, saved: String, this: String| {
            Err(Error::invalid(format!(
                "state file {file} was saved with {what} {saved}; this session's is {this}"
            )))
        };
        let shape = |i: &Identity| {
            format!(
                "{} ({} layers, KV width {}, {} tokens in the vocabulary, header hash {:016x})",
                i.arch, i.n_layer, i.kv_dim, i.n_vocab, i.model_hash
            )
        };
        if (
            &self.arch,
            self.n_layer,
            self.kv_dim,
            self.n_vocab,
            self.model_hash,
        ) != (
            &ours.arch,
            ours.n_layer,
            ours.kv_dim,
            ours.n_vocab,
            ours.model_hash,
        ) {
            return differs("the model", shape(self), shape(ours));
        }
        if self.type_k != ours.type_k {
            return differs("KV type K", self.type_k.clone(), ours.type_k.clone());
        }
        if self.type_v != ours.type_v {
            return differs("KV type V", self.type_v.clone(), ours.type_v.clone());
        }
        let same = |a: &AdapterId, b: &AdapterId| {
            a.hash == b.hash && a.scale.to_bits() == b.scale.to_bits()
        };
        if self.adapters.len() != ours.adapters.len()
            || !self
                .adapters
                .iter()
                .zip(&ours.adapters)
                .all(|(a, b)| same(a, b))
        {
            return differs(
                "the adapter set",
                adapter_list(&self.adapters),
                adapter_list(&ours.adapters),
            );
        }
        Ok(())
    }
}

/// `[name (scale s, hash h), …]`, or `none (base model)`.
fn adapter_list(set: &[AdapterId]) -> String {
    if set.is_empty() {
        return "none (base model)".to_string();
    }
    let items: Vec<String> = set
        .iter()
        .map(|a| format!("{} (scale {}, hash {:016x})", a.name, a.scale, a.hash))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A hash of everything an adapter contributes: per tensor its target, kind, rank, shape, scale and
/// the fp16 bits of `A` and `B`, and DoRA's magnitude vector when it has one (a plain LoRA's hash is
/// the same as before DoRA existed).
pub(crate) fn adapter_hash(a: &Adapter) -> u64 {
    let mut h = Hash64::new();
    for t in a.tensors() {
        h.u64(t.target.len() as u64);
        h.update(t.target.as_bytes());
        h.u64(match t.kind {
            LoraKind::Linear => 0,
            LoraKind::Embedding => 1,
        });
        for v in [t.rank, t.n_in, t.n_out] {
            h.u64(v as u64);
        }
        h.u64(u64::from(t.scale.to_bits()));
        for f in [t.a(), t.b()] {
            h.u64(f.len() as u64);
            // Little-endian bytes: state files are refused on big-endian machines (`super::check_endian`).
            h.update(bytemuck::cast_slice(f));
        }
        if let Some(m) = t.magnitude() {
            h.u64(m.len() as u64);
            h.update(bytemuck::cast_slice(m));
        }
    }
    h.finish()
}
