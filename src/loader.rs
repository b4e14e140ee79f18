//! [`Model::open`]: map a GGUF file and turn it into a [`Model`], in phases — the common
//! hyper-parameters (read, then checked), the tokenizer, the embedding and head, the family's own
//! hyper-parameters (asked of [`crate::arch`]), every layer's weights (shape and type checked), and the
//! LoRA slot of every weight an adapter can target.
//!
//! The loader sits above [`crate::model`] (the types) and [`crate::arch`] (the families), so neither
//! depends on the other's loading.
use crate::arch;
use crate::gguf::Gguf;
use crate::kernels::QuantType;
use crate::mmap::MappedFile;
use crate::model::{Arch, BaseInfo, HParams, Layer, Model, WeightRef, LAYER_SLOTS};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

impl Model {
    /// Map and validate a GGUF model file.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref().to_path_buf();
        // Read-only and never written through; a file truncated while mapped raises SIGBUS, the
        // documented limitation of using a model in place (README, "Files in use"; `crate::mmap`).
        let map = MappedFile::open(&path)?;
        let fname = path.display().to_string();
        let g = Gguf::parse(&map).map_err(|e| e.in_file(&fname))?;
        let parts = load(&g, &fname, &map).map_err(|e| e.in_file(&fname))?;
        let base_info = BaseInfo::from_gguf(&g).map_err(|e| e.in_file(&fname))?;
        let (n_tensors, gguf_version) = (g.tensors().len(), g.version());
        let header_len = usize::try_from(g.data_offset()).map_or(map.len(), |o| o.min(map.len()));
        drop(g);
        Ok(Model {
            path,
            map,
            header_len,
            arch: parts.arch,
            name: parts.name,
            hp: parts.hp,
            tokenizer: parts.tokenizer,
            tokenizer_model: parts.tokenizer_model,
            chat_template: parts.chat_template,
            token_embd: parts.ends.token_embd,
            output_norm: parts.ends.output_norm,
            output: parts.ends.output,
            tied_output: parts.ends.tied_output,
            rope_freqs: parts.ends.rope_freqs,
            rope_factors: parts.ends.rope_factors,
            layers: parts.layers,
            type_counts: parts.type_counts,
            n_tensors,
            gguf_version,
            base_info,
        })
    }
}

/// What [`load`] reads from the file, before it becomes a [`Model`].
struct Parts {
    arch: String,
    name: Option<String>,
    hp: HParams,
    tokenizer: Tokenizer,
    tokenizer_model: String,
    chat_template: Option<String>,
    ends: Ends,
    layers: Vec<Layer>,
    type_counts: Vec<(QuantType, usize)>,
}

/// The weights outside the layers.
struct Ends {
    token_embd: WeightRef,
    output_norm: WeightRef,
    /// `token_embd` itself when the embedding is tied.
    output: WeightRef,
    tied_output: bool,
    rope_freqs: Option<WeightRef>,
    rope_factors: Option<(WeightRef, WeightRef)>,
}

/// The phases of a load, in the order their errors are reported.
fn load(g: &Gguf<'_>, fname: &str, map: &Arc<MappedFile>) -> Result<Parts> {
    let arch = g.get_str("general.architecture")?.to_string();
    let keys = Keys {
        g,
        fname,
        arch: &arch,
    };
    let mut hp = keys.common_hparams()?;
    let tokenizer = Tokenizer::from_gguf_mapped(g, map)?;
    let tokenizer_model = g.get_str("tokenizer.ggml.model")?.to_string();
    hp.n_vocab = tokenizer.n_vocab();
    let tensors = Tensors { g, fname };
    let mut ends = tensors.ends(&hp)?;
    arch::read_hparams(g, fname, &mut hp)?;
    arch::phi3::check_longrope(fname, ends.rope_factors.is_some(), &hp)?;
    let mut layers = tensors.layers(&hp)?;
    assign_lora_slots(&mut layers, &mut ends);
    Ok(Parts {
        arch,
        name: g.opt_str("general.name").ok().flatten().map(str::to_string),
        chat_template: g.opt_str("tokenizer.chat_template")?.map(str::to_string),
        hp,
        tokenizer,
        tokenizer_model,
        ends,
        layers,
        type_counts: type_counts(g),
    })
}

/// Every weight an adapter can target knows its slot: the layers' linear weights in order, then the
/// embedding and the head (the head has its own slot even when tied to the embedding).
fn assign_lora_slots(layers: &mut [Layer], ends: &mut Ends) {
    for (l, layer) in layers.iter_mut().enumerate() {
        for (k, w) in layer.lora_weights_mut().into_iter().enumerate() {
            w.lora_slot = Some(l * LAYER_SLOTS + k);
        }
    }
    ends.token_embd.lora_slot = Some(layers.len() * LAYER_SLOTS);
    ends.output.lora_slot = Some(layers.len() * LAYER_SLOTS + 1);
}

/// Tensor count per type, for `edge-run info`.
fn type_counts(g: &Gguf<'_>) -> Vec<(QuantType, usize)> {
    let mut counts: Vec<(QuantType, usize)> = Vec::new();
    for t in g.tensors() {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some(c) => c.1 += 1,
            None => counts.push((t.ty, 1)),
        }
    }
    counts
}

/// The `{arch}.*` keys of one file; every error names the file and the key.
struct Keys<'a, 'g> {
    g: &'a Gguf<'g>,
    fname: &'a str,
    arch: &'a str,
}

impl Keys<'_, '_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// A required unsigned key that must fit in memory.
    fn req(&self, k: &str) -> Result<usize> {
        let v = self.g.get_u64(&self.key(k))?;
        usize::try_from(v).map_err(|_| {
            Error::format(
                self.fname,
                self.key(k),
                None,
                format!("value {v} does not fit in memory"),
            )
        })
    }

    fn opt(&self, k: &str) -> Result<Option<u64>> {
        self.g.opt_u64(&self.key(k))
    }

    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        self.g.opt_f32(&self.key(k))
    }

    /// `Ok` if `ok`, else an error on key `k` with `detail`.
    fn check(&self, ok: bool, k: &str, detail: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::format(self.fname, self.key(k), None, detail()))
        }
    }

    /// The hyper-parameters every family shares: read, then checked (the family's own come later,
    /// from [`arch::read_hparams`]; `n_vocab` from the tokenizer).
    fn common_hparams(&self) -> Result<HParams> {
        let kind = Arch::from_name(self.arch).ok_or_else(|| {
            Error::unsupported(
                self.fname,
                format!(
                    "architecture `{}` (general.architecture); supported: {}",
                    self.arch,
                    Arch::SUPPORTED.join(", ")
                ),
            )
        })?;
        let mut hp = self.read_sizes(kind)?;
        self.check_heads(&hp)?;
        hp.swa = vec![false; hp.n_layer];
        self.read_head_dims(&mut hp)?;
        self.check_rest(&hp)?;
        Ok(hp)
    }

    /// Widths, counts, norm epsilon and RoPE base and scaling, as the file states them.
    fn read_sizes(&self, kind: Arch) -> Result<HParams> {
        let n_embd = self.req("embedding_length")?;
        let n_layer = self.req("block_count")?;
        let n_head = self.req("attention.head_count")?;
        let n_head_kv = self
            .opt("attention.head_count_kv")?
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let n_ff = self.req("feed_forward_length")?;
        let n_ctx_train = self
            .opt("context_length")?
            .map_or(2048, |v| usize::try_from(v).unwrap_or(usize::MAX));
        let rms_eps = match kind {
            // llama.cpp requires the key for these families (there is no common default).
            Arch::Gemma3 | Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 => self
                .g
                .get_f32(&self.key("attention.layer_norm_rms_epsilon"))?,
            Arch::Llama => self
                .opt_f32("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
        };
        let rope_freq_base = match kind {
            // Qwen models use bases (1e6) far from the common default: a file without one is refused
            // rather than run with the wrong frequencies.
            Arch::Qwen2 | Arch::Qwen3 => self.g.get_f32(&self.key("rope.freq_base"))?,
            Arch::Llama | Arch::Gemma3 | Arch::Phi3 => {
                self.opt_f32("rope.freq_base")?.unwrap_or(10000.0)
            }
        };
        let rope_freq_scale = self.rope_scale()?;
        Ok(HParams {
            arch: kind,
            n_vocab: 0,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim: 0,
            n_ff,
            n_ctx_train,
            rope_dim: 0,
            rope_freq_base,
            rope_freq_scale,
            rms_eps,
            att_scale: 1.0,
            embd_scale: 1.0,
            logit_softcap: 0.0,
            n_swa: 0,
            // Sized once `n_layer` is checked (`common_hparams`).
            swa: Vec::new(),
            rope_freq_base_swa: rope_freq_base,
            rope_freq_scale_swa: 1.0,
            n_ctx_orig: 0,
            rope_attn_factor: 1.0,
        })
    }

    /// The linear RoPE scale (`rope.scaling.type` = `linear`: 1 / `rope.scaling.factor`), 1 if none.
    fn rope_scale(&self) -> Result<f32> {
        match self.g.opt_str(&self.key("rope.scaling.type"))? {
            None | Some("none") => Ok(1.0),
            Some("linear") => {
                let f = self.g.get_f32(&self.key("rope.scaling.factor"))?;
                self.check(f.is_finite() && f > 0.0, "rope.scaling.factor", || {
                    format!("must be > 0, got {f}")
                })?;
                Ok(1.0 / f)
            }
            Some(other) => Err(Error::unsupported(
                self.fname,
                format!("{} = `{other}`", self.key("rope.scaling.type")),
            )),
        }
    }

    /// Width, depth and head counts in range (before anything divides by them).
    fn check_heads(&self, hp: &HParams) -> Result<()> {
        let (n_embd, n_layer, n_head, n_head_kv) = (hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv);
        self.check(n_embd != 0 && n_embd <= 1 << 16, "embedding_length", || {
            format!("must be in 1..=65536, got {n_embd}")
        })?;
        self.check(n_layer != 0 && n_layer <= 1024, "block_count", || {
            format!("must be in 1..=1024, got {n_layer}")
        })?;
        self.check(
            n_head != 0 && n_head <= n_embd,
            "attention.head_count",
            || format!("must be in 1..=embedding_length {n_embd}, got {n_head}"),
        )?;
        self.check(
            n_head_kv != 0 && n_head % n_head_kv == 0,
            "attention.head_count_kv",
            || format!("must be > 0 and divide head_count {n_head}, got {n_head_kv}"),
        )
    }

    /// Head size (`attention.key_length`, default width / heads; required for Qwen3, whose head size
    /// is its own) and rotated dimensions.
    fn read_head_dims(&self, hp: &mut HParams) -> Result<()> {
        let key_length = match hp.arch {
            Arch::Qwen3 => Some(self.req("attention.key_length")? as u64),
            _ => self.opt("attention.key_length")?,
        };
        let head_dim = match key_length {
            Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
            None => {
                let (n_embd, n_head) = (hp.n_embd, hp.n_head);
                self.check(n_embd % n_head == 0, "attention.head_count", || {
                    format!("must divide embedding_length {n_embd} (no attention.key_length), got {n_head}")
                })?;
                n_embd / n_head
            }
        };
        self.check(
            head_dim != 0 && head_dim % 2 == 0 && head_dim <= 1024,
            "attention.key_length",
            || format!("head size must be even and in 2..=1024, got {head_dim}"),
        )?;
        let rope_dim = self
            .opt("rope.dimension_count")?
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        self.check(
            rope_dim != 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
            "rope.dimension_count",
            || format!("must be even and ≤ head size {head_dim}, got {rope_dim}"),
        )?;
        hp.head_dim = head_dim;
        hp.rope_dim = rope_dim;
        hp.att_scale = 1.0 / (head_dim as f32).sqrt();
        Ok(())
    }

    /// Feed-forward width, epsilon, RoPE base, training context, value head size.
    fn check_rest(&self, hp: &HParams) -> Result<()> {
        let (n_ff, rms_eps, base, n_ctx) = (hp.n_ff, hp.rms_eps, hp.rope_freq_base, hp.n_ctx_train);
        self.check(n_ff != 0 && n_ff <= 1 << 20, "feed_forward_length", || {
            format!("must be in 1..=1048576, got {n_ff}")
        })?;
        self.check(
            rms_eps.is_finite() && rms_eps > 0.0,
            "attention.layer_norm_rms_epsilon",
            || format!("must be finite and > 0, got {rms_eps}"),
        )?;
        self.check(base.is_finite() && base > 0.0, "rope.freq_base", || {
            format!("must be finite and > 0, got {base}")
        })?;
        self.check(
            n_ctx != 0 && n_ctx <= u32::MAX as usize,
            "context_length",
            || format!("must be in 1..=4294967295, got {n_ctx}"),
        )?;
        // The forward pass uses one head size for keys and values.
        if let Some(v) = self.opt("attention.value_length")? {
            let hd = hp.head_dim;
            self.check(v == hd as u64, "attention.value_length", || {
                format!("must equal the key head size {hd}, got {v}")
            })?;
        }
        Ok(())
    }
}

/// The file's tensors, looked up by name and checked against the shape and type their use needs.
struct Tensors<'a, 'g> {
    g: &'a Gguf<'g>,
    fname: &'a str,
}

impl Tensors<'_, '_> {
    /// Tensor `name` as an `[n_in, n_out]` weight: a linear weight of a type the kernels multiply
    /// (`linear`), or F32 data (norms, RoPE divisors) 4-byte aligned in the file.
    fn weight(&self, name: &str, n_in: usize, n_out: usize, linear: bool) -> Result<WeightRef> {
        let fname = self.fname;
        let t = self.g.tensor(name).ok_or_else(|| {
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
                format!("expected [{n_in}, {n_out}], got {:?}", &t.dims[..t.n_dims]),
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
            row0: 0,
            lora_slot: None,
        })
    }

    /// The embedding (its shape error names the vocabulary size), the final norm, the head (or the
    /// embedding again when tied) and the optional RoPE divisors.
    fn ends(&self, hp: &HParams) -> Result<Ends> {
        let (n_embd, n_vocab) = (hp.n_embd, hp.n_vocab);
        let token_embd = self
            .weight("token_embd.weight", n_embd, n_vocab, true)
            .map_err(|e| match e {
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
        let output_norm = self.weight("output_norm.weight", n_embd, 1, false)?;
        let (output, tied_output) = match self.g.tensor("output.weight") {
            Some(_) => (self.weight("output.weight", n_embd, n_vocab, true)?, false),
            None => (token_embd.clone(), true),
        };
        let rope_freqs = self.rope_divisors(hp, "rope_freqs.weight")?;
        let long = self.rope_divisors(hp, "rope_factors_long.weight")?;
        let short = self.rope_divisors(hp, "rope_factors_short.weight")?;
        let rope_factors = match (long, short) {
            (Some(l), Some(s)) => Some((l, s)),
            (None, None) => None,
            (l, _) => {
                let missing = if l.is_none() { "long" } else { "short" };
                return Err(Error::format(
                    self.fname,
                    format!("tensor_infos[\"rope_factors_{missing}.weight\"]"),
                    None,
                    "LongRoPE needs both the long and the short factors",
                ));
            }
        };
        Ok(Ends {
            token_embd,
            output_norm,
            output,
            tied_output,
            rope_freqs,
            rope_factors,
        })
    }

    /// RoPE frequency divisors, one per rotated pair, if present (Llama 3.x's `rope_freqs.weight`,
    /// LongRoPE's `rope_factors_long.weight` and `rope_factors_short.weight`): each finite and > 0 (a
    /// zero would make its frequency infinite).
    fn rope_divisors(&self, hp: &HParams, name: &str) -> Result<Option<WeightRef>> {
        let Some(t) = self.g.tensor(name) else {
            return Ok(None);
        };
        let w = self.weight(name, hp.rope_dim / 2, 1, false)?;
        let data = self.g.tensor_data(t);
        for (i, v) in data.chunks_exact(4).enumerate() {
            let d = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if !(d.is_finite() && d > 0.0) {
                return Err(Error::format(
                    self.fname,
                    format!("{name}[{i}]"),
                    Some(t.offset + 4 * i as u64),
                    format!("a RoPE frequency divisor must be finite and > 0, got {d}"),
                ));
            }
        }
        Ok(Some(w))
    }

    /// Every layer's weights (`blk.{i}.*`); the family's extra norms and biases when it has them.
    fn layers(&self, hp: &HParams) -> Result<Vec<Layer>> {
        let (n_embd, n_ff, head_dim) = (hp.n_embd, hp.n_ff, hp.head_dim);
        let (q_dim, kv_dim) = (hp.q_dim(), hp.kv_dim());
        let gemma = hp.arch == Arch::Gemma3;
        let qk_norm = matches!(hp.arch, Arch::Gemma3 | Arch::Qwen3);
        let qkv_bias = hp.arch == Arch::Qwen2;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let w = |n: &str, a, b, lin| self.weight(&format!("blk.{i}.{n}.weight"), a, b, lin);
            // an F32 vector the family has (`name.weight` or `name.bias`), else none
            let extra = |has: bool, n: &str, a| -> Result<Option<WeightRef>> {
                if has {
                    self.weight(&format!("blk.{i}.{n}"), a, 1, false).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (attn_qkv, ffn_gate_up, fused) = if hp.arch == Arch::Phi3 {
                // q, k, v: rows of `attn_qkv`; gate then up: rows of `ffn_up`
                let qkv = w("attn_qkv", n_embd, q_dim + 2 * kv_dim, true)?;
                let up = w("ffn_up", n_embd, 2 * n_ff, true)?;
                let parts = (
                    [
                        qkv.rows(0, q_dim),
                        qkv.rows(q_dim, kv_dim),
                        qkv.rows(q_dim + kv_dim, kv_dim),
                    ],
                    [up.rows(0, n_ff), up.rows(n_ff, n_ff)],
                );
                (parts.0, parts.1, vec![qkv, up])
            } else {
                (
                    [
                        w("attn_q", n_embd, q_dim, true)?,
                        w("attn_k", n_embd, kv_dim, true)?,
                        w("attn_v", n_embd, kv_dim, true)?,
                    ],
                    [
                        w("ffn_gate", n_embd, n_ff, true)?,
                        w("ffn_up", n_embd, n_ff, true)?,
                    ],
                    Vec::new(),
                )
            };
            let [attn_q, attn_k, attn_v] = attn_qkv;
            let [ffn_gate, ffn_up] = ffn_gate_up;
            layers.push(Layer {
                attn_q_bias: extra(qkv_bias, "attn_q.bias", q_dim)?,
                attn_k_bias: extra(qkv_bias, "attn_k.bias", kv_dim)?,
                attn_v_bias: extra(qkv_bias, "attn_v.bias", kv_dim)?,
                attn_q_norm: extra(qk_norm, "attn_q_norm.weight", head_dim)?,
                attn_k_norm: extra(qk_norm, "attn_k_norm.weight", head_dim)?,
                attn_post_norm: extra(gemma, "post_attention_norm.weight", n_embd)?,
                ffn_post_norm: extra(gemma, "post_ffw_norm.weight", n_embd)?,
                attn_norm: w("attn_norm", n_embd, 1, false)?,
                attn_q,
                attn_k,
                attn_v,
                attn_output: w("attn_output", q_dim, n_embd, true)?,
                ffn_norm: w("ffn_norm", n_embd, 1, false)?,
                ffn_gate,
                ffn_up,
                ffn_down: w("ffn_down", n_ff, n_embd, true)?,
                fused,
            });
        }
        Ok(layers)
    }
}
