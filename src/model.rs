//! A GGUF model, memory-mapped read-only and used in place.
//!
//! `Model::open` maps the file, parses the GGUF header with [`crate::gguf`], checks the hyper-parameters and
//! every weight's shape and type, and records where each weight lives in the mapping. Weight bytes are
//! never copied or written; a [`WeightRef`] is an offset into the mapping.
use crate::adapter::BaseInfo;
use crate::arch::Arch;
use crate::gguf::Gguf;
use crate::kernels::QuantType;
use crate::mmap::MappedFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a tensor lives in the mapped file and how to read it.
#[derive(Clone, Debug)]
pub struct WeightRef {
    /// The GGUF tensor name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    pub ty: QuantType,
    /// Row length (ggml ne0): the input width of a linear layer.
    pub n_in: usize,
    /// Number of rows (ggml ne1): the output width of a linear layer.
    pub n_out: usize,
    /// Byte range in the mapping.
    pub offset: usize,
    pub size: usize,
    /// The slot adapters bind to on this weight (set at load for every weight an adapter can target:
    /// the linear weights of each layer, the token embedding and the output head); `None` for norms.
    pub lora_slot: Option<usize>,
}

impl WeightRef {
    pub fn row_bytes(&self) -> usize {
        self.size / self.n_out.max(1)
    }
}

/// One transformer block's weights, named after the GGUF tensors.
#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: WeightRef,
    pub attn_q: WeightRef,
    pub attn_k: WeightRef,
    pub attn_v: WeightRef,
    pub attn_output: WeightRef,
    pub ffn_norm: WeightRef,
    pub ffn_gate: WeightRef,
    pub ffn_up: WeightRef,
    pub ffn_down: WeightRef,
    /// Gemma 3: per-head RMSNorm weights of q and k [head_dim].
    pub attn_q_norm: Option<WeightRef>,
    pub attn_k_norm: Option<WeightRef>,
    /// Gemma 3: RMSNorm of the attention output (`post_attention_norm`) and of the FFN output
    /// (`post_ffw_norm`) before their residual adds [n_embd].
    pub attn_post_norm: Option<WeightRef>,
    pub ffn_post_norm: Option<WeightRef>,
}

impl Layer {
    /// The weights an adapter can target, in slot order ([`LAYER_WEIGHTS`]).
    pub fn lora_weights(&self) -> [&WeightRef; LAYER_SLOTS] {
        [
            &self.attn_q,
            &self.attn_k,
            &self.attn_v,
            &self.attn_output,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }

    fn lora_weights_mut(&mut self) -> [&mut WeightRef; LAYER_SLOTS] {
        [
            &mut self.attn_q,
            &mut self.attn_k,
            &mut self.attn_v,
            &mut self.attn_output,
            &mut self.ffn_gate,
            &mut self.ffn_up,
            &mut self.ffn_down,
        ]
    }
}

/// Hyper-parameters from the GGUF metadata (`{arch}.*` keys).
#[derive(Clone, Debug)]
pub struct HParams {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_dim: usize,
    pub rope_freq_base: f32,
    /// Linear RoPE scaling factor (`rope.scaling.factor` with type `linear`), 1.0 if none.
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    /// Scale of q·k in attention: 1/√head_dim unless the architecture says otherwise.
    pub att_scale: f32,
    /// Factor on the input embeddings (Gemma: √n_embd; 1 for llama).
    pub embd_scale: f32,
    /// Final logit soft cap c (logits = c·tanh(logits/c)); 0 = none.
    pub logit_softcap: f32,
    /// Sliding window of the local layers (a query at p sees keys p - n_swa < j ≤ p); 0 = none.
    pub n_swa: usize,
    /// Per layer: local (sliding-window) attention. All false without `n_swa`.
    pub swa: Vec<bool>,
    /// RoPE base and linear scale of the local layers.
    pub rope_freq_base_swa: f32,
    pub rope_freq_scale_swa: f32,
}

impl HParams {
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// KV positions layer `l` keeps in a context of `n_ctx`: a ring of the window for local layers.
    pub fn kv_positions(&self, l: usize, n_ctx: usize) -> usize {
        if self.swa.get(l).copied().unwrap_or(false) {
            self.n_swa.min(n_ctx)
        } else {
            n_ctx
        }
    }
    /// Local (sliding-window) layers.
    pub fn n_swa_layers(&self) -> usize {
        self.swa.iter().filter(|&&s| s).count()
    }
}

pub struct Model {
    path: PathBuf,
    /// The file, mapped read-only and registered with [`crate::mmap`]'s truncation guard (named if it shrinks while
    /// mapped); shared with the tokenizer, which reads its texts in place.
    map: Arc<MappedFile>,
    pub arch: String,
    pub name: Option<String>,
    pub hp: HParams,
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.model` (`gpt2`, `llama`, …).
    pub tokenizer_model: String,
    pub chat_template: Option<String>,
    pub token_embd: WeightRef,
    pub output_norm: WeightRef,
    /// The output head; `token_embd` itself when the embedding is tied.
    pub output: WeightRef,
    pub tied_output: bool,
    /// Llama 3.1-style per-frequency RoPE divisors (`rope_freqs.weight`), if present.
    pub rope_freqs: Option<WeightRef>,
    pub layers: Vec<Layer>,
    /// Tensor count per type, for `edge-run info`.
    pub type_counts: Vec<(QuantType, usize)>,
    pub n_tensors: usize,
    pub gguf_version: u32,
    /// Names and shapes adapters are validated against.
    pub base_info: BaseInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("arch", &self.arch)
            .field("hp", &self.hp)
            .finish()
    }
}

/// The linear weights of a layer an adapter can target, in slot order.
pub const LAYER_WEIGHTS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
pub const LAYER_SLOTS: usize = LAYER_WEIGHTS.len();

impl Model {
    /// Map and validate a GGUF model file.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref().to_path_buf();
        // Read-only and never written through; a file truncated while mapped raises SIGBUS, the
        // documented limitation of using a model in place (README, "Files in use"; `crate::mmap`).
        let map = MappedFile::open(&path)?;
        let fname = path.display().to_string();
        let g = Gguf::parse(&map).map_err(|e| e.in_file(&fname))?;
        let m = Self::from_gguf(&g, &fname, &map).map_err(|e| e.in_file(&fname))?;
        let base_info = BaseInfo::from_gguf(&g).map_err(|e| e.in_file(&fname))?;
        let Loaded {
            arch,
            name,
            hp,
            tokenizer,
            tokenizer_model,
            chat_template,
            token_embd,
            output_norm,
            output,
            tied_output,
            rope_freqs,
            layers,
            type_counts,
            n_tensors,
            gguf_version,
        } = m;
        drop(g);
        Ok(Model {
            path,
            map,
            arch,
            name,
            hp,
            tokenizer,
            tokenizer_model,
            chat_template,
            token_embd,
            output_norm,
            output,
            tied_output,
            rope_freqs,
            layers,
            type_counts,
            n_tensors,
            gguf_version,
            base_info,
        })
    }

    fn from_gguf(g: &Gguf<'_>, fname: &str, map: &Arc<MappedFile>) -> Result<Loaded> {
        let arch = g.get_str("general.architecture")?.to_string();
        let kind = Arch::from_name(&arch).ok_or_else(|| {
            Error::unsupported(
                fname,
                format!(
                    "architecture `{arch}` (general.architecture); supported: {}",
                    Arch::SUPPORTED.join(", ")
                ),
            )
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize> {
            let v = g.get_u64(&key(k))?;
            usize::try_from(v).map_err(|_| {
                Error::format(
                    fname,
                    key(k),
                    None,
                    format!("value {v} does not fit in memory"),
                )
            })
        };
        let opt = |k: &str| -> Result<Option<u64>> { g.opt_u64(&key(k)) };
        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let n_ff = req("feed_forward_length")?;
        let n_ctx_train =
            opt("context_length")?.map_or(2048, |v| usize::try_from(v).unwrap_or(usize::MAX));
        let rms_eps = match kind {
            // llama.cpp requires the key for gemma3 (there is no common default).
            Arch::Gemma3 => g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            Arch::Llama => g
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        };
        let rope_freq_base = g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let mut rope_freq_scale = 1.0f32;
        if let Some(t) = g.opt_str(&key("rope.scaling.type"))? {
            match t {
                "none" => {}
                "linear" => {
                    let f = g.get_f32(&key("rope.scaling.factor"))?;
                    if !(f.is_finite() && f > 0.0) {
                        return Err(Error::format(
                            fname,
                            key("rope.scaling.factor"),
                            None,
                            format!("must be > 0, got {f}"),
                        ));
                    }
                    rope_freq_scale = 1.0 / f;
                }
                other => {
                    return Err(Error::unsupported(
                        fname,
                        format!("{} = `{other}`", key("rope.scaling.type")),
                    ))
                }
            }
        }
        let bad = |field: String, detail: String| Err(Error::format(fname, field, None, detail));
        if n_embd == 0 || n_embd > 1 << 16 {
            return bad(
                key("embedding_length"),
                format!("must be in 1..=65536, got {n_embd}"),
            );
        }
        if n_layer == 0 || n_layer > 1024 {
            return bad(
                key("block_count"),
                format!("must be in 1..=1024, got {n_layer}"),
            );
        }
        if n_head == 0 || n_embd % n_head != 0 {
            return bad(
                key("attention.head_count"),
                format!("must be > 0 and divide embedding_length {n_embd}, got {n_head}"),
            );
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return bad(
                key("attention.head_count_kv"),
                format!("must be > 0 and divide head_count {n_head}, got {n_head_kv}"),
            );
        }
        let head_dim = match opt("attention.key_length")? {
            Some(v) => v as usize,
            None => n_embd / n_head,
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1024 {
            return bad(
                key("attention.key_length"),
                format!("head size must be even and in 2..=1024, got {head_dim}"),
            );
        }
        let rope_dim = opt("rope.dimension_count")?
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return bad(
                key("rope.dimension_count"),
                format!("must be even and ≤ head size {head_dim}, got {rope_dim}"),
            );
        }
        if n_ff == 0 || n_ff > 1 << 20 {
            return bad(
                key("feed_forward_length"),
                format!("must be in 1..=1048576, got {n_ff}"),
            );
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return bad(
                key("attention.layer_norm_rms_epsilon"),
                format!("must be finite and > 0, got {rms_eps}"),
            );
        }
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return bad(
                key("rope.freq_base"),
                format!("must be finite and > 0, got {rope_freq_base}"),
            );
        }
        if n_ctx_train == 0 || n_ctx_train > u32::MAX as usize {
            return bad(
                key("context_length"),
                format!("must be in 1..=4294967295, got {n_ctx_train}"),
            );
        }
        // The forward pass uses one head size for keys and values.
        if let Some(v) = opt("attention.value_length")? {
            if v != head_dim as u64 {
                return bad(
                    key("attention.value_length"),
                    format!("must equal the key head size {head_dim}, got {v}"),
                );
            }
        }

        let weight = |name: &str, n_in: usize, n_out: usize, linear: bool| -> Result<WeightRef> {
            let t = g.tensor(name).ok_or_else(|| {
                Error::format(
                    fname,
                    format!("tensor_infos[{name:?}]"),
                    None,
                    "required tensor is missing",
                )
            })?;
            let (ne0, ne1) = (
                t.dims[0] as usize,
                if t.n_dims >= 2 { t.dims[1] as usize } else { 1 },
            );
            let extra: u64 = t.dims[2..].iter().product();
            if ne0 != n_in || ne1 != n_out || (t.n_dims > 2 && extra != 1) {
                return Err(Error::format(
                    fname,
                    format!("tensor_infos[{name:?}].dims"),
                    None,
                    format!(
                        "expected [{n_in}, {n_out}], got {:?}",
                        &t.dims[..t.n_dims as usize]
                    ),
                ));
            }
            let ok = if linear {
                crate::kernels::Kernels::scalar().matvec(t.ty).is_some()
            } else {
                t.ty == QuantType::F32
            };
            if !linear && t.offset % 4 != 0 {
                return Err(Error::format(
                    fname,
                    format!("tensor_infos[{name:?}].offset"),
                    Some(t.offset),
                    "F32 data must be 4-byte aligned",
                ));
            }
            if !ok {
                return Err(Error::unsupported(
                    fname,
                    format!(
                        "tensor `{name}` has type {} which edge-run cannot use there",
                        t.ty.name()
                    ),
                ));
            }
            Ok(WeightRef {
                name: name.to_string(),
                ty: t.ty,
                n_in,
                n_out,
                offset: t.offset as usize,
                size: t.size,
                lora_slot: None,
            })
        };
        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);

        let tokenizer = Tokenizer::from_gguf_mapped(g, map)?;
        let tokenizer_model = g.get_str("tokenizer.ggml.model")?.to_string();
        let n_vocab = tokenizer.n_vocab();
        let token_embd =
            weight("token_embd.weight", n_embd, n_vocab, true).map_err(|e| match e {
                Error::Format {
                    file,
                    field,
                    offset,
                    detail,
                } => Error::Format {
                    file,
                    field,
                    offset,
                    detail: format!("{detail} (vocabulary has {n_vocab} tokens)"),
                },
                e => e,
            })?;
        let output_norm = weight("output_norm.weight", n_embd, 1, false)?;
        let (output, tied_output) = match g.tensor("output.weight") {
            Some(_) => (weight("output.weight", n_embd, n_vocab, true)?, false),
            None => (token_embd.clone(), true),
        };
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            Some(_) => Some(weight("rope_freqs.weight", rope_dim / 2, 1, false)?),
            None => None,
        };
        let gemma = match kind {
            Arch::Gemma3 => Some(crate::arch::gemma3::hparams(
                g, fname, n_layer, n_embd, n_head, head_dim,
            )?),
            Arch::Llama => None,
        };
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let w = |n: &str, a, b, lin| weight(&format!("blk.{i}.{n}.weight"), a, b, lin);
            let g3 = |n: &str, a| -> Result<Option<WeightRef>> {
                if gemma.is_some() {
                    w(n, a, 1, false).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_q_norm: g3("attn_q_norm", head_dim)?,
                attn_k_norm: g3("attn_k_norm", head_dim)?,
                attn_post_norm: g3("post_attention_norm", n_embd)?,
                ffn_post_norm: g3("post_ffw_norm", n_embd)?,
                attn_norm: w("attn_norm", n_embd, 1, false)?,
                attn_q: w("attn_q", n_embd, q_dim, true)?,
                attn_k: w("attn_k", n_embd, kv_dim, true)?,
                attn_v: w("attn_v", n_embd, kv_dim, true)?,
                attn_output: w("attn_output", q_dim, n_embd, true)?,
                ffn_norm: w("ffn_norm", n_embd, 1, false)?,
                ffn_gate: w("ffn_gate", n_embd, n_ff, true)?,
                ffn_up: w("ffn_up", n_embd, n_ff, true)?,
                ffn_down: w("ffn_down", n_ff, n_embd, true)?,
            });
        }
        // Every weight an adapter can target knows its slot: the layers' linear weights in order, then
        // the embedding and the head (the head has its own slot even when tied to the embedding).
        for (l, layer) in layers.iter_mut().enumerate() {
            for (k, w) in layer.lora_weights_mut().into_iter().enumerate() {
                w.lora_slot = Some(l * LAYER_SLOTS + k);
            }
        }
        let mut token_embd = token_embd;
        token_embd.lora_slot = Some(n_layer * LAYER_SLOTS);
        let mut output = output;
        output.lora_slot = Some(n_layer * LAYER_SLOTS + 1);
        let mut type_counts: Vec<(QuantType, usize)> = Vec::new();
        for t in g.tensors() {
            match type_counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some(c) => c.1 += 1,
                None => type_counts.push((t.ty, 1)),
            }
        }
        let chat_template = g.opt_str("tokenizer.chat_template")?.map(str::to_string);
        let name = g.opt_str("general.name").ok().flatten().map(str::to_string);
        let mut hp = HParams {
            arch: kind,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rope_dim,
            rope_freq_base,
            rope_freq_scale,
            rms_eps,
            att_scale: 1.0 / (head_dim as f32).sqrt(),
            embd_scale: 1.0,
            logit_softcap: 0.0,
            n_swa: 0,
            swa: vec![false; n_layer],
            rope_freq_base_swa: rope_freq_base,
            rope_freq_scale_swa: 1.0,
        };
        if let Some(p) = gemma {
            hp.n_swa = p.n_swa;
            hp.swa = p.swa;
            hp.rope_freq_base_swa = p.rope_freq_base_swa;
            hp.att_scale = p.att_scale;
            hp.embd_scale = p.embd_scale;
            hp.logit_softcap = p.logit_softcap;
        }
        Ok(Loaded {
            arch,
            name,
            hp,
            tokenizer,
            tokenizer_model,
            chat_template,
            token_embd,
            output_norm,
            output,
            tied_output,
            rope_freqs,
            layers,
            type_counts,
            n_tensors: g.tensors().len(),
            gguf_version: g.version(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the whole mapping (the file size).
    pub fn mapped_bytes(&self) -> usize {
        self.map.len()
    }

    /// The bytes of a weight, in place in the mapping.
    #[inline]
    pub fn bytes(&self, w: &WeightRef) -> &[u8] {
        &self.map[w.offset..w.offset + w.size]
    }

    /// An F32 weight viewed in place (alignment was checked at load).
    pub fn f32s(&self, w: &WeightRef) -> &[f32] {
        bytemuck::cast_slice(self.bytes(w))
    }

    /// Bytes of all weights read to decode one token (every layer's matrices + the output head).
    pub fn bytes_per_token(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| l.lora_weights().iter().map(|w| w.size).sum::<usize>())
            .sum();
        l + self.output.size
    }

    /// Number of weight slots an adapter can target: 7 linear weights per layer, the embedding and the head.
    pub fn n_slots(&self) -> usize {
        self.layers.len() * LAYER_SLOTS + 2
    }

    /// The weight an adapter target (a base tensor name) adapts, found without allocating: a layer's
    /// linear weight, `token_embd.weight` or `output.weight` (the embedding itself when tied, with the
    /// head's own LoRA slot).
    pub fn lora_target(&self, target: &str) -> Option<&WeightRef> {
        match target {
            "token_embd.weight" => return Some(&self.token_embd),
            "output.weight" => return Some(&self.output),
            _ => {}
        }
        let rest = target.strip_prefix("blk.")?;
        let (layer, name) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let kind = LAYER_WEIGHTS
            .iter()
            .position(|w| name.strip_suffix(".weight") == Some(w))?;
        Some(self.layers.get(layer)?.lora_weights()[kind])
    }
}

struct Loaded {
    arch: String,
    name: Option<String>,
    hp: HParams,
    tokenizer: Tokenizer,
    tokenizer_model: String,
    chat_template: Option<String>,
    token_embd: WeightRef,
    output_norm: WeightRef,
    output: WeightRef,
    tied_output: bool,
    rope_freqs: Option<WeightRef>,
    layers: Vec<Layer>,
    type_counts: Vec<(QuantType, usize)>,
    n_tensors: usize,
    gguf_version: u32,
}
