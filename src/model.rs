//! A GGUF model, memory-mapped read-only and used in place.
//!
//! [`Model::open`] ([`crate::loader`]) maps the file, parses the GGUF header with [`crate::gguf`], checks
//! the hyper-parameters and every weight's shape and type, and records where each weight lives in the
//! mapping. Weight bytes are never copied or written; a [`WeightRef`] is an offset into the mapping and
//! knows the LoRA slot adapters bind to on it.
use crate::kernels::QuantType;
use crate::mmap::MappedFile;
use crate::tokenizer::Tokenizer;
use crate::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model families edge-run runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama`, `mistral`: RMSNorm, interleaved RoPE, GQA, SwiGLU.
    Llama,
    /// `gemma3`: scaled embeddings, QK-norm, sandwich norms, GELU-gated FFN, NeoX RoPE, local
    /// (sliding-window) and global layers with their own RoPE bases.
    Gemma3,
    /// `qwen2` (Qwen2, Qwen2.5): llama's block with biases on q, k and v and NeoX RoPE.
    Qwen2,
    /// `qwen3`: per-head RMSNorm of q and k before NeoX RoPE, no biases, a head size of its own.
    Qwen3,
    /// `phi3` (Phi-3, Phi-3.5 mini): llama's block with fused q/k/v and gate/up tensors, NeoX RoPE
    /// (possibly partial, possibly LongRoPE) and an optional sliding window on every layer.
    Phi3,
}

impl Arch {
    /// `general.architecture` values edge-run accepts.
    pub const SUPPORTED: &'static [&'static str] =
        &["llama", "mistral", "gemma3", "qwen2", "qwen3", "phi3"];

    /// The architecture for a `general.architecture` value.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "gemma3" => Some(Arch::Gemma3),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }

    /// Whether llama.cpp's converter stores this architecture's `attn_q` / `attn_k` rows permuted so
    /// that RoPE rotates adjacent pairs (it does for llama; Gemma 3 and Qwen keep the Hugging Face
    /// order and use NeoX-style RoPE). PEFT adapters' q/k `lora_B` rows must then be permuted the same way.
    pub fn permuted_qk(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

/// Where a tensor lives in the mapped file and how to read it.
#[derive(Clone, Debug)]
pub struct WeightRef {
    /// The GGUF tensor name, e.g. `blk.3.attn_q.weight`; for a part of a fused tensor, the fused
    /// tensor's (`blk.3.attn_qkv.weight`).
    pub name: String,
    /// The first row of tensor `name` this weight covers: 0 for a whole tensor, the part's offset in a
    /// fused one (phi3's k starts at row `q_dim` of `attn_qkv`). Its rows are `row0..row0 + n_out`.
    pub row0: usize,
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

    /// Rows `row0..row0 + n` of this weight as a weight of their own (same name, no LoRA slot yet).
    pub(crate) fn rows(&self, row0: usize, n: usize) -> WeightRef {
        let rb = self.row_bytes();
        WeightRef {
            name: self.name.clone(),
            row0: self.row0 + row0,
            n_out: n,
            offset: self.offset + row0 * rb,
            size: n * rb,
            lora_slot: None,
            ..self.clone()
        }
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
    /// Qwen2: biases of the q, k and v projections [q_dim], [kv_dim], [kv_dim].
    pub attn_q_bias: Option<WeightRef>,
    pub attn_k_bias: Option<WeightRef>,
    pub attn_v_bias: Option<WeightRef>,
    /// Gemma 3, Qwen3: per-head RMSNorm weights of q and k [head_dim].
    pub attn_q_norm: Option<WeightRef>,
    pub attn_k_norm: Option<WeightRef>,
    /// Gemma 3: RMSNorm of the attention output (`post_attention_norm`) and of the FFN output
    /// (`post_ffw_norm`) before their residual adds [n_embd].
    pub attn_post_norm: Option<WeightRef>,
    pub ffn_post_norm: Option<WeightRef>,
    /// Phi-3: the whole fused tensors (`attn_qkv`: q, k, v rows; `ffn_up`: gate, up rows) whose row
    /// ranges are `attn_q`/`attn_k`/`attn_v` and `ffn_gate`/`ffn_up` above. Empty for other families.
    pub fused: Vec<WeightRef>,
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

    pub(crate) fn lora_weights_mut(&mut self) -> [&mut WeightRef; LAYER_SLOTS] {
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
    /// The context the model was trained at before RoPE scaling (`rope.scaling.original_context_length`),
    /// 0 if the file has none; picks LongRoPE's factors.
    pub n_ctx_orig: usize,
    /// LongRoPE's attention factor on the rotated part of q and k (`rope.scaling.attn_factor`), 1 if
    /// none.
    pub rope_attn_factor: f32,
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
    pub(crate) path: PathBuf,
    /// The file, mapped read-only and registered with [`crate::mmap`]'s truncation guard (named if it shrinks while
    /// mapped); shared with the tokenizer, which reads its texts in place.
    pub(crate) map: Arc<MappedFile>,
    /// Bytes of the file before the tensor data (header, metadata, tensor table, padding): what a
    /// saved context identifies the model by ([`crate::state`]).
    pub(crate) header_len: usize,
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
    /// LongRoPE's divisors (Phi-3 128k, Phi-3.5): `rope_factors_long.weight` and
    /// `rope_factors_short.weight`, both or neither. A session whose context exceeds
    /// [`HParams::n_ctx_orig`] uses the long ones, else the short ones.
    pub rope_factors: Option<(WeightRef, WeightRef)>,
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

/// What an adapter is checked against, built from the base model's GGUF ([`BaseInfo::from_gguf`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BaseInfo {
    /// `general.architecture`, e.g. `llama`.
    pub arch: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Every 2-D base tensor: name → `(ne0, ne1)` = `(n_in, n_out)` for a linear layer.
    pub tensors: HashMap<String, (usize, usize)>,
}

impl BaseInfo {
    /// From a parsed base GGUF: `general.architecture`, `<arch>.block_count`,
    /// `<arch>.attention.head_count`, `<arch>.attention.head_count_kv` (default: head_count) and the
    /// shapes of all 2-D tensors.
    pub fn from_gguf(g: &crate::gguf::Gguf<'_>) -> Result<BaseInfo> {
        let arch = g.get_str("general.architecture")?.to_string();
        let n_layer = g.get_u32(&format!("{arch}.block_count"))? as usize;
        let n_head = g.get_u32(&format!("{arch}.attention.head_count"))? as usize;
        let n_head_kv = g
            .opt_u32(&format!("{arch}.attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        let tensors = g
            .tensors()
            .iter()
            .filter(|t| t.n_dims == 2)
            .map(|t| (t.name.to_string(), (t.dims[0] as usize, t.dims[1] as usize)))
            .collect();
        Ok(BaseInfo {
            arch,
            n_layer,
            n_head,
            n_head_kv,
            tensors,
        })
    }

    /// The `(ne0, ne1)` a LoRA on `target` must match: the tensor's own shape, or for `output.weight`
    /// absent from a tied-embedding base, `token_embd.weight`'s.
    pub(crate) fn target_shape(&self, target: &str) -> Option<(usize, usize)> {
        self.tensors.get(target).copied().or_else(|| {
            (target == "output.weight")
                .then(|| self.tensors.get("token_embd.weight").copied())
                .flatten()
        })
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

    /// The base tensor an adapter target (a base tensor name) adapts, found without allocating: a
    /// layer's linear weight or fused tensor, `token_embd.weight` or `output.weight` (the embedding
    /// itself when tied, with the head's own LoRA slot). A fused tensor has no slot: its parts have
    /// ([`Model::lora_parts`]).
    pub fn lora_target(&self, target: &str) -> Option<&WeightRef> {
        match target {
            "token_embd.weight" => return Some(&self.token_embd),
            "output.weight" => return Some(&self.output),
            _ => {}
        }
        let layer = self.layers.get(block_of(target)?)?;
        let whole = |w: &&WeightRef| w.name == target && w.row0 == 0;
        (layer.fused.iter().find(whole)).or_else(|| layer.lora_weights().into_iter().find(whole))
    }

    /// The weights the forward pass multiplies that an adapter on `target` acts on, each with its LoRA
    /// slot: the target itself, or every part of a fused tensor (whose rows a LoRA's `B` is cut into).
    pub fn lora_parts<'m>(&'m self, target: &str) -> impl Iterator<Item = &'m WeightRef> + 'm {
        let end = match target {
            "token_embd.weight" => Some(&self.token_embd),
            "output.weight" => Some(&self.output),
            _ => None,
        };
        let layer = end
            .is_none()
            .then(|| block_of(target).and_then(|l| self.layers.get(l)))
            .flatten();
        let hits = layer.map_or([false; LAYER_SLOTS], |l| {
            l.lora_weights().map(|w| w.name == target)
        });
        let parts = layer.into_iter().flat_map(move |l| {
            (l.lora_weights().into_iter().zip(hits)).filter_map(|(w, hit)| hit.then_some(w))
        });
        end.into_iter().chain(parts)
    }
}

/// The block of a layer tensor name: `blk.3.attn_q.weight` → 3.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}
