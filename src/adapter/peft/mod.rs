//! Hugging Face PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! # `adapter_config.json` fields
//! Applied:
//! - `peft_type` (must be `"LORA"`), `r`, `lora_alpha`, `use_rslora` (scale `alpha/√r` instead of
//!   `alpha/r`), `rank_pattern` / `alpha_pattern` (per-module overrides; PEFT's `get_pattern_key`:
//!   the first key, in the file's order, such that `re.match(rf"(.*\.)?({key})$", module)` matches),
//! - `target_modules` (list: a module is targeted if its name equals an entry or ends with
//!   `"." + entry`; string: `re.fullmatch`; `"all-linear"`: every linear layer but the output head),
//!   `exclude_modules` (same matching, excluded), `layers_to_transform` (+ `layers_pattern`): every
//!   tensor in the file must belong to a module these select, else the load fails;
//! - `alora_invocation_tokens`: an activated LoRA ([`crate::adapter::alora`]), applied only from the
//!   last occurrence of these tokens on;
//! - `fan_in_fan_out`: PEFT's LoRA factors are `nn.Linear`s whose shapes (`A [r, in]`, `B [out, r]`)
//!   do not depend on it (it transposes only the *merged* delta, for GPT-2-style `Conv1D` bases), and
//!   for `nn.Linear` bases (every architecture edge-run runs) PEFT itself resets it to false. Shapes are
//!   checked against the base either way; a `true` value is reported in the summary;
//! - `modules_to_save` (entries `embed_tokens` / `lm_head`, others refused by name): each whole-module
//!   tensor of the file (`base_model.model.lm_head.weight`, `base_model.model.model.embed_tokens.weight`)
//!   must be listed there and replaces the base tensor ([`super::saved`]); `ensure_weight_tying` with a
//!   replaced embedding on a tied base makes the head use the replacement too, as PEFT ties them.
//!
//! - `use_dora`: DoRA ([`super::dora`]). Every module then needs its magnitude vector
//!   (`base_model.model.<module>.lora_magnitude_vector`, 1-D, one finite value per output row of the
//!   base tensor; F32/F16/BF16, kept as f32); without `use_dora` such a tensor is refused. DoRA on the
//!   token embedding is refused.
//!
//! Refused when not at their default (an error naming the field): `bias` ≠ `"none"`,
//! `lora_bias`, `trainable_token_indices`, `target_parameters`, `layer_replication`,
//! `use_qalora`, `use_bdlora`, `arrow_config`, `kasa_config`,
//! `monteclora_config`, `velora_config`, `lora_ga_config`, `loftq_config` (non-empty: the base was
//! modified), `init_lora_weights` ∈ {pissa*, olora, corda, loftq, lora_ga} (these rewrite the base
//! weights), and any field this loader does not know whose value is not null / false / empty.
//! Inert (no effect on inference, accepted): `lora_dropout`, `inference_mode`, `task_type`,
//! `base_model_name_or_path`, `revision`, `peft_version`, `auto_mapping`, `megatron_config`,
//! `megatron_core`, `qalora_group_size` (only with `use_qalora`), `eva_config` / `corda_config`
//! (initialisation only; `corda` init itself is refused above), `runtime_config`, and `init_lora_weights`
//! true / false / `"gaussian"` / `"eva"` / `"orthogonal"` (initialisation only).
use std::path::{Path, PathBuf};

use super::safetensors::{self, Dtype};
use super::*;

mod config;
pub(crate) use config::unexpected;
use config::Config;

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";

/// HF module leaf names edge-run can map, and their GGUF tensor names. Phi-3's fused projections
/// map to its fused tensors (q, k, v rows in `attn_qkv`; gate, up rows in `ffn_up`), as llama.cpp's
/// converter names them; the base's shapes tell a fused `ffn_up` from a plain one.
const LEAVES: &[(&str, &str)] = &[
    ("self_attn.qkv_proj", "attn_qkv"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// A mapped module: GGUF target, layer, whether q/k (permuted), kind.
pub(super) struct Mapped {
    target: String,
    layer: Option<usize>,
    perm_heads: Option<usize>,
    kind: LoraKind,
    is_head: bool,
}

/// Where a causal LM's decoder lives in PEFT module names: `model.` for `*ForCausalLM`
/// (`Gemma3ForCausalLM` too), `model.language_model.` for `Gemma3ForConditionalGeneration` (transformers
/// ≥ 4.52) and `language_model.model.` before that. The output head is `lm_head` or
/// `language_model.lm_head`.
/// (Longest first: `model.` is a prefix of the second.)
const DECODER_PREFIXES: &[&str] = &["model.language_model.", "language_model.model.", "model."];

/// `model.layers.N.self_attn.q_proj` → `blk.N.attn_q.weight` etc. The q/k rows are permuted only for
/// architectures whose GGUF permutes them ([`crate::model::Arch::permuted_qk`]: llama, not gemma3).
fn map_module(module: &str, base: &BaseInfo) -> Option<Mapped> {
    let permute = crate::model::Arch::from_name(&base.arch).is_some_and(|a| a.permuted_qk());
    let inner = DECODER_PREFIXES.iter().find_map(|p| module.strip_prefix(p));
    if inner == Some("embed_tokens") {
        return Some(Mapped {
            target: "token_embd.weight".into(),
            layer: None,
            perm_heads: None,
            kind: LoraKind::Embedding,
            is_head: false,
        });
    }
    if module == "lm_head" || module == "language_model.lm_head" {
        return Some(Mapped {
            target: "output.weight".into(),
            layer: None,
            perm_heads: None,
            kind: LoraKind::Linear,
            is_head: true,
        });
    }
    let rest = inner?.strip_prefix("layers.")?;
    let (n, leaf) = rest.split_once('.')?;
    let layer: usize = n.parse().ok()?;
    let (_, g) = LEAVES.iter().find(|(hf, _)| *hf == leaf)?;
    let perm_heads = match (*g, permute) {
        ("attn_q", true) => Some(base.n_head),
        ("attn_k", true) => Some(base.n_head_kv),
        _ => None,
    };
    Some(Mapped {
        target: format!("blk.{layer}.{g}.weight"),
        layer: Some(layer),
        perm_heads,
        kind: LoraKind::Linear,
        is_head: false,
    })
}

/// Resolves the config and weights paths.
fn paths(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_dir() {
        Ok((path.join(CONFIG), path.join(WEIGHTS)))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok((dir.join(CONFIG), path.to_path_buf()))
    }
}

pub(super) fn load(path: &Path, base: &BaseInfo) -> Result<Adapter> {
    let (cfg_path, st_path) = paths(path)?;
    let cfg = Config::read(&cfg_path)?;
    let st_name = st_path.display().to_string();
    let map = MappedFile::open(&st_path)?;
    let st = safetensors::parse(&map, &st_name)?;
    let (modules, whole) = pair_factors(&st, &st_name)?;
    let mut tensors = vec![];
    for (module, pair) in &modules {
        tensors.push(cfg.lora_tensor(module, pair, base, &map, &st_name)?);
    }
    // `ensure_weight_tying` on a tied base: PEFT ties the head to the replaced embedding (and saves
    // the head too, without listing it in `modules_to_save`): the embedding's replacement serves both.
    let tie = cfg.tie_saved && cfg.saves_embedding() && !base.tensors.contains_key("output.weight");
    let mut saved = vec![];
    for (module, t) in &whole {
        if tie && (module == "lm_head" || module == "language_model.lm_head") {
            continue;
        }
        saved.push(cfg.saved_module(module, t, base, &map, &st_name)?);
    }
    let head = saved
        .iter()
        .find(|m| tie && m.target == "token_embd.weight")
        .map(|e| e.alias("output.weight"));
    saved.extend(head);
    let root = if path.is_dir() {
        path.to_path_buf()
    } else {
        st_path.clone()
    };
    let cfg_name = cfg_path.display().to_string();
    Adapter::with_saved(&root, AdapterFormat::Peft, tensors, saved, cfg.notes)?.with_invocation(
        cfg.invocation,
        base,
        &cfg_name,
        crate::adapter::alora::PEFT_FIELD,
    )
}

/// A whole module the file stores in place of the base's (`modules_to_save`).
type Whole<'t> = Vec<(String, &'t safetensors::Tensor)>;

/// A module's two factors (and DoRA magnitude) in the safetensors file.
struct Pair<'t> {
    a: Option<&'t safetensors::Tensor>,
    b: Option<&'t safetensors::Tensor>,
    m: Option<&'t safetensors::Tensor>,
    embedding: bool,
}

/// Groups the file's tensors by module: `base_model.model.<module>.lora_{A,B}` (or
/// `lora_embedding_{A,B}`) and DoRA's `lora_magnitude_vector`, each once.
fn pair_factors<'t>(
    st: &'t [safetensors::Tensor],
    st_name: &str,
) -> Result<(std::collections::BTreeMap<String, Pair<'t>>, Whole<'t>)> {
    let mut modules: std::collections::BTreeMap<String, Pair> = Default::default();
    let mut whole = vec![];
    for t in st {
        let rest = t.name.strip_prefix("base_model.model.").ok_or_else(|| {
            Error::format(
                st_name,
                &t.name,
                None,
                "tensor name does not start with `base_model.model.` (not a PEFT LoRA checkpoint?)",
            )
        })?;
        let has_weight = rest.ends_with(".weight");
        let rest = rest.strip_suffix(".weight").unwrap_or(rest);
        if let Some(module) = rest.strip_suffix(".lora_magnitude_vector") {
            let e = modules.entry(module.to_string()).or_insert(Pair {
                a: None,
                b: None,
                m: None,
                embedding: false,
            });
            if e.m.replace(t).is_some() {
                return Err(Error::format(
                    st_name,
                    &t.name,
                    None,
                    "duplicate magnitude vector",
                ));
            }
            continue;
        }
        if has_weight && !rest.contains(".lora_") {
            whole.push((rest.to_string(), t));
            continue;
        }
        let (module, which, emb) = if let Some(m) = rest.strip_suffix(".lora_A") {
            (m, 'A', false)
        } else if let Some(m) = rest.strip_suffix(".lora_B") {
            (m, 'B', false)
        } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
            (m, 'A', true)
        } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
            (m, 'B', true)
        } else {
            return Err(Error::unsupported(
                st_name,
                format!("tensor {:?} is not a LoRA A/B factor or DoRA magnitude (bias or a saved module?)", t.name),
            ));
        };
        let e = modules.entry(module.to_string()).or_insert(Pair {
            a: None,
            b: None,
            m: None,
            embedding: emb,
        });
        if e.a.is_none() && e.b.is_none() {
            e.embedding = emb;
        }
        if e.embedding != emb {
            return Err(Error::format(
                st_name,
                &t.name,
                None,
                "mixes lora_embedding_* and lora_* factors for one module",
            ));
        }
        let slot = if which == 'A' { &mut e.a } else { &mut e.b };
        if slot.replace(t).is_some() {
            return Err(Error::format(st_name, &t.name, None, "duplicate factor"));
        }
    }
    Ok((modules, whole))
}

/// Rank, `n_in` and `n_out` of a module's factors, checked: both 2-D, one rank, and the base
/// tensor's shape. Linear: A [r, in], B [out, r]. Embedding: A [r, vocab], B [dim, r].
fn factor_shapes(
    ta: &safetensors::Tensor,
    tb: &safetensors::Tensor,
    m: &Mapped,
    module: &str,
    base: &BaseInfo,
    st_name: &str,
) -> Result<(usize, usize, usize)> {
    // An error in the shape of `t`.
    let bad_shape = |t: &safetensors::Tensor, detail: String| {
        Error::format(st_name, format!("{}.shape", t.name), None, detail)
    };
    for t in [ta, tb] {
        if t.shape.len() != 2 {
            return Err(bad_shape(t, format!("{:?} is not 2-D", t.shape)));
        }
    }
    let (rank, n_in) = (ta.shape[0], ta.shape[1]);
    let (n_out, rank_b) = (tb.shape[0], tb.shape[1]);
    if rank != rank_b || rank == 0 {
        return Err(bad_shape(
            tb,
            format!(
                "rank mismatch: A {:?} has rank {rank}, B {:?} has rank {rank_b}",
                ta.shape, tb.shape
            ),
        ));
    }
    let (ne0, ne1) = base.target_shape(&m.target).ok_or_else(|| {
        Error::invalid(format!("{st_name}: module {module:?} maps to base tensor {:?}, which the base model does not have", m.target))
    })?;
    let want = match m.kind {
        LoraKind::Linear => (ne0, ne1),
        LoraKind::Embedding => (ne1, ne0),
    };
    if (n_in, n_out) != want {
        return Err(bad_shape(
            ta,
            format!(
                "shape mismatch: A {:?} / B {:?} give n_in {n_in}, n_out {n_out}, but base tensor {} is {ne0}x{ne1} (ne0 x ne1) so expects n_in {}, n_out {}",
                ta.shape, tb.shape, m.target, want.0, want.1
            ),
        ));
    }
    Ok((rank, n_in, n_out))
}

/// Reads one factor as fp16: in place when F16, aligned and `in_place_ok`; otherwise decoded,
/// checked finite, transformed by `post` and converted. Reports the first NaN/Inf by source index.
fn load_factor(
    map: &Arc<MappedFile>,
    t: &safetensors::Tensor,
    file: &str,
    post: impl FnOnce(Vec<u16>) -> Result<Vec<u16>>,
    in_place_ok: bool,
) -> Result<Halves> {
    let bytes = &map[t.start..t.start + t.len];
    let n = t.numel();
    let src = match t.dtype {
        Dtype::F32 => QuantType::F32,
        Dtype::F16 => QuantType::F16,
        Dtype::Bf16 => QuantType::BF16,
    };
    let vals = widen(src, bytes, n).ok_or_else(|| {
        Error::format(
            file,
            &t.name,
            None,
            format!("{} bytes do not hold {n} values", bytes.len()),
        )
    })?;
    if let Some(i) = first_non_finite(&vals) {
        return Err(non_finite_err(file, &t.name, i, vals[i]));
    }
    if src == QuantType::F16 && in_place_ok {
        if let Some(h) = Halves::mapped(map, t.start, n) {
            return Ok(h);
        }
    }
    let h = to_f16(&vals, file, &t.name)?;
    Ok(Halves::Owned(post(h)?))
}

impl Config {
    /// The replacement a whole-module tensor brings: listed in `modules_to_save`, the embedding or the
    /// head, shaped like the base's, finite; fp16 in place when aligned, else converted once.
    fn saved_module(
        &self,
        module: &str,
        t: &safetensors::Tensor,
        base: &BaseInfo,
        map: &Arc<MappedFile>,
        st_name: &str,
    ) -> Result<SavedModule> {
        if !self.saves(module) {
            return Err(Error::unsupported(
                st_name,
                format!(
                    "tensor {:?} is a whole module ({module:?}) that `modules_to_save` does not list (a DoRA magnitude, bias or other module?)",
                    t.name
                ),
            ));
        }
        let target = match map_module(module, base) {
            Some(m) if m.layer.is_none() => m.target,
            _ => {
                return Err(Error::unsupported(
                    st_name,
                    format!(
                        "tensor {:?}: module {module:?} in `modules_to_save` cannot be replaced (only embed_tokens and lm_head)",
                        t.name
                    ),
                ))
            }
        };
        let want = saved::expected_shape(&target, base, st_name, &t.name)?;
        let got = match t.shape[..] {
            [rows, cols] => (cols, rows),
            _ => {
                return Err(Error::format(
                    st_name,
                    format!("{}.shape", t.name),
                    None,
                    format!("{:?} is not 2-D", t.shape),
                ))
            }
        };
        saved::check_shape(got, want, st_name, &t.name, &target)?;
        let data = load_factor(map, t, st_name, Ok, true)?;
        Ok(SavedModule::new(&target, want.0, want.1, data))
    }

    /// The LoRA of one module: its GGUF target, selected by the config, shapes matching the base, rank
    /// and scale from the config, factors read (q/k `B` rows permuted, embedding `A` transposed).
    fn lora_tensor(
        &self,
        module: &str,
        pair: &Pair<'_>,
        base: &BaseInfo,
        map: &Arc<MappedFile>,
        st_name: &str,
    ) -> Result<LoraTensor> {
        let (Some(ta), Some(tb)) = (pair.a, pair.b) else {
            return Err(Error::format(
                st_name,
                module,
                None,
                "has only one of the LoRA factors A and B",
            ));
        };
        let m = map_module(module, base).ok_or_else(|| {
            Error::unsupported(
                st_name,
                format!(
                    "module {module:?} has no GGUF counterpart edge-run knows (tensor {:?})",
                    ta.name
                ),
            )
        })?;
        if (m.kind == LoraKind::Embedding) != pair.embedding {
            return Err(Error::format(
                st_name,
                &ta.name,
                None,
                "embedding factors on a linear module, or linear factors on the embedding",
            ));
        }
        self.check_selected(module, &m, st_name)?;
        if let Some(n) = m.layer {
            if n >= base.n_layer {
                return Err(Error::format(
                    st_name,
                    &ta.name,
                    None,
                    format!("layer {n} but the base model has {} layers", base.n_layer),
                ));
            }
        }
        let (rank, n_in, n_out) = factor_shapes(ta, tb, &m, module, base, st_name)?;
        let scale = self.scale(module, rank)?;
        let a = load_factor(
            map,
            ta,
            st_name,
            |v| match m.kind {
                LoraKind::Linear => Ok(v),
                LoraKind::Embedding => Ok(transpose(&v, rank, n_in)),
            },
            m.kind == LoraKind::Linear,
        )?;
        let b = load_factor(
            map,
            tb,
            st_name,
            |v| match m.perm_heads {
                None => Ok(v),
                Some(h) => permute_rows(&v, n_out, rank, h).ok_or_else(|| {
                    Error::invalid(format!(
                        "{st_name}: {}: cannot permute {n_out} rows into {h} heads of rotary pairs",
                        tb.name
                    ))
                }),
            },
            m.perm_heads.is_none(),
        )?;
        let magnitude = self.magnitude(module, pair, &m, n_out, map, st_name)?;
        Ok(LoraTensor {
            target: m.target,
            kind: m.kind,
            rank,
            n_in,
            n_out,
            scale,
            a,
            b,
            magnitude,
        })
    }

    /// DoRA's magnitude vector of `module`: required with `use_dora`, refused without it; 1-D with
    /// `n_out` finite values, permuted like `B`'s rows for llama q/k.
    fn magnitude(
        &self,
        module: &str,
        pair: &Pair<'_>,
        m: &Mapped,
        n_out: usize,
        map: &Arc<MappedFile>,
        st_name: &str,
    ) -> Result<Option<Arc<[f32]>>> {
        let t = match (pair.m, self.dora) {
            (None, false) => return Ok(None),
            (Some(t), false) => {
                return Err(Error::format(
                    st_name,
                    &t.name,
                    None,
                    "a DoRA lora_magnitude_vector, but adapter_config.json does not set use_dora",
                ))
            }
            (None, true) => {
                return Err(Error::format(
                    st_name,
                    module,
                    None,
                    "use_dora is true in adapter_config.json but this module has no lora_magnitude_vector",
                ))
            }
            (Some(t), true) => t,
        };
        if m.kind == LoraKind::Embedding {
            return Err(Error::unsupported(
                st_name,
                format!("{}: DoRA on the token embedding is not supported", t.name),
            ));
        }
        if t.shape != [n_out] {
            return Err(Error::format(
                st_name,
                format!("{}.shape", t.name),
                None,
                format!(
                    "{:?}, but the magnitude needs one value per output row of {} ([{n_out}])",
                    t.shape, m.target
                ),
            ));
        }
        let src = match t.dtype {
            Dtype::F32 => QuantType::F32,
            Dtype::F16 => QuantType::F16,
            Dtype::Bf16 => QuantType::BF16,
        };
        let vals = widen(src, &map[t.start..t.start + t.len], n_out).ok_or_else(|| {
            Error::format(
                st_name,
                &t.name,
                None,
                format!("{} bytes do not hold {n_out} values", t.len),
            )
        })?;
        if let Some(i) = first_non_finite(&vals) {
            return Err(non_finite_err(st_name, &t.name, i, vals[i]));
        }
        let vals = match m.perm_heads {
            None => vals,
            Some(h) => permute_rows(&vals, n_out, 1, h).ok_or_else(|| {
                Error::invalid(format!(
                    "{st_name}: {}: cannot permute {n_out} rows into {h} heads of rotary pairs",
                    t.name
                ))
            })?,
        };
        Ok(Some(vals.into()))
    }
}
