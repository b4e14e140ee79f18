//! Looking into a model: `tokenize` (token ids of a text), `logits` (every position's logits as .npy)
//! and `info` (hyper-parameters, tensors, adapters; a GGUF adapter given as the model is described too).
use crate::args::{InfoArgs, LogitsArgs, TokenizeArgs};
use crate::{
    apply_adapters, apply_control_vector, load_adapter, open_model, session_config, sized_config,
    usage, Failure,
};
use edge_run::kernels::Kernels;
use edge_run::{Model, Session};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

pub(crate) fn cmd_tokenize(a: TokenizeArgs) -> Result<(), Failure> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            std::fs::read_to_string(p).map_err(|e| Failure(1, format!("{}: {e}", p.display())))?
        }
        (None, None) => return Err(usage("tokenize needs --text or --file")),
    };
    let model = open_model(&a.m.model)?;
    let ids = model.tokenizer.encode(&text, true);
    outln!(
        "{}",
        serde_json::to_string(&ids).expect("a Vec<u32> serializes")
    );
    Ok(())
}

fn parse_tokens(s: &str) -> Result<Vec<u32>, Failure> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    if t.trim().is_empty() {
        return Err(usage("--tokens: no token ids given"));
    }
    t.split(',')
        .enumerate()
        .map(|(i, x)| {
            x.trim().parse::<u32>().map_err(|e| {
                usage(format!(
                    "--tokens: item {i} `{}` is not a token id: {e}",
                    x.trim()
                ))
            })
        })
        .collect()
}

pub(crate) fn cmd_logits(a: LogitsArgs) -> Result<(), Failure> {
    let tokens = parse_tokens(&a.tokens)?;
    let model = open_model(&a.m.model)?;
    let mut cfg = session_config(&model, &a.rt, true)?;
    cfg.n_ctx = cfg.n_ctx.max(tokens.len());
    let nv = model.hp.n_vocab;
    let mut sess = Session::new(model, cfg)?;
    apply_adapters(&mut sess, &a.rt.adapters)?;
    apply_control_vector(&mut sess, &a.rt)?;
    let tmp = a.output.with_extension("npy.partial");
    let f =
        std::fs::File::create(&tmp).map_err(|e| Failure(1, format!("{}: {e}", tmp.display())))?;
    let mut w = std::io::BufWriter::new(f);
    let io_err = |e: std::io::Error| Failure(1, format!("{}: {e}", a.output.display()));
    write_npy_header(&mut w, &[tokens.len(), nv]).map_err(io_err)?;
    let mut werr = None;
    sess.eval_each(&tokens, |_, row| {
        if werr.is_none() {
            if let Err(e) = w.write_all(bytemuck::cast_slice(row)) {
                werr = Some(e);
            }
        }
    })?;
    if let Some(e) = werr {
        return Err(io_err(e));
    }
    w.flush().map_err(io_err)?;
    drop(w);
    std::fs::rename(&tmp, &a.output).map_err(io_err)?;
    eprintln!(
        "wrote {} × {} logits to {}",
        tokens.len(),
        nv,
        a.output.display()
    );
    Ok(())
}

/// NumPy .npy v1.0 header for a little-endian float32 C-order array.
fn write_npy_header(w: &mut impl Write, shape: &[usize]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    h.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(h.len() as u16).to_le_bytes())?;
    w.write_all(h.as_bytes())
}

pub(crate) fn cmd_info(a: InfoArgs) -> Result<(), Failure> {
    if let Some(desc) = describe_if_adapter(&a.m.model)? {
        outln!("{desc}");
        return Ok(());
    }
    let heap0 = crate::heap::live_bytes();
    let model = open_model(&a.m.model)?;
    let tables = crate::heap::live_bytes().saturating_sub(heap0);
    let m = &*model;
    let hp = &m.hp;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    outln!("file:            {}", m.path().display());
    outln!("format:          GGUF v{}", m.gguf_version);
    if let Some(n) = &m.name {
        outln!("name:            {n}");
    }
    outln!("architecture:    {}", m.arch);
    outln!(
        "vocabulary:      {} tokens ({} tokenizer)",
        hp.n_vocab,
        m.tokenizer_model
    );
    outln!("context (train): {}", hp.n_ctx_train);
    outln!("width:           {}", hp.n_embd);
    outln!("layers:          {}", hp.n_layer);
    outln!(
        "heads:           {} query, {} key/value, head size {}",
        hp.n_head,
        hp.n_head_kv,
        hp.head_dim
    );
    outln!("feed-forward:    {}", hp.n_ff);
    outln!(
        "rope:            base {}, {} dims, scale {}",
        hp.rope_freq_base,
        hp.rope_dim,
        hp.rope_freq_scale
    );
    if hp.n_swa > 0 {
        outln!(
            "sliding window:  {} positions on {} of {} layers (their rope base {})",
            hp.n_swa,
            hp.n_swa_layers(),
            hp.n_layer,
            hp.rope_freq_base_swa
        );
    }
    outln!("rms epsilon:     {:e}", hp.rms_eps);
    outln!(
        "output head:     {}",
        if m.tied_output {
            "tied to token_embd"
        } else {
            "separate (output.weight)"
        }
    );
    let types: Vec<String> = m
        .type_counts
        .iter()
        .map(|(t, n)| format!("{} {}", n, t.name()))
        .collect();
    outln!("tensors:         {} ({})", m.n_tensors, types.join(", "));
    outln!(
        "file size:       {} bytes ({:.1} MiB), mapped read-only: {:.1} MiB",
        m.mapped_bytes(),
        mib(m.mapped_bytes()),
        mib(m.mapped_bytes())
    );
    outln!(
        "weights/token:   {:.1} MiB read per decoded token",
        mib(m.bytes_per_token())
    );
    outln!(
        "chat template:   {}",
        if m.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    let tiers: Vec<&str> = Kernels::available().map(|k| k.tier.name()).collect();
    outln!(
        "kernels:         {} (available: {})",
        Kernels::best().tier.name(),
        tiers.join(", ")
    );
    print_memory(&a, &model, tables)?;
    for spec in &a.adapters {
        let (ad, scale) = load_adapter(m, spec)?;
        let (ba, bb) = ad.bytes();
        outln!(
            "\nadapter:         {} (user scale {scale})",
            ad.path().display()
        );
        outln!("{}", ad.summary());
        outln!(
            "share of base:   {:.2}% of the bytes read per token",
            100.0 * (ba + bb) as f64 / m.bytes_per_token() as f64
        );
    }
    Ok(())
}

/// The memory of a session with `a`'s context, batch, threads and KV types, by component: the
/// mapped weights, the session's buffers ([`edge_run::session::SessionMemory`]) and `tables`, the
/// model's heap (tokenizer, tensor index), measured by the binary's counting allocator.
fn print_memory(a: &InfoArgs, model: &Arc<Model>, tables: usize) -> Result<(), Failure> {
    let hp = &model.hp;
    let cfg = sized_config(model, &a.size)?;
    let (n_ctx, n_batch, n_threads) = (cfg.n_ctx, cfg.n_batch, cfg.n_threads);
    let (type_k, type_v) = (cfg.type_k, cfg.type_v);
    let mem = Session::new(Arc::clone(model), cfg)?.memory();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let positions: usize = (0..hp.n_layer).map(|l| hp.kv_positions(l, n_ctx)).sum();
    outln!(
        "\nmemory of a session (-c {n_ctx}, -b {n_batch}, -t {n_threads}, KV {}/{}):",
        type_k.name(),
        type_v.name()
    );
    outln!(
        "  mapped weights:  {:8.1} MiB (the file, read-only and shared; pages are read as used)",
        mib(model.mapped_bytes())
    );
    outln!(
        "  KV cache:        {:8.1} MiB ({positions} layer-positions × {} values, K {} + V {})",
        mib(mem.kv),
        hp.kv_dim(),
        type_k.name(),
        type_v.name()
    );
    outln!("  activations:     {:8.1} MiB", mib(mem.activations));
    outln!("  logits:          {:8.1} MiB", mib(mem.logits));
    outln!("  LoRA scratch:    {:8.1} MiB", mib(mem.lora_scratch));
    outln!(
        "  model tables:    {:8.1} MiB (tokenizer, tensor index: heap)",
        mib(tables)
    );
    outln!(
        "  total:           {:8.1} MiB",
        mib(model.mapped_bytes() + mem.total() + tables)
    );
    Ok(())
}

/// For `info -m` given a GGUF LoRA adapter instead of a model: a GGUF-level description.
fn describe_if_adapter(path: &Path) -> Result<Option<String>, Failure> {
    let Ok(map) = edge_run::mmap::MappedFile::open(path) else {
        return Ok(None);
    };
    if map.len() < 4 || &map[..4] != b"GGUF" {
        return Ok(None);
    }
    let g = edge_run::gguf::Gguf::parse_named(&map, &path.display().to_string())?;
    if g.opt_str("general.type")? != Some("adapter") {
        return Ok(None);
    }
    let mut s = format!(
        "file:            {}\nformat:          GGUF v{} LoRA adapter\n",
        path.display(),
        g.version()
    );
    s += &format!(
        "architecture:    {}\n",
        g.opt_str("general.architecture")?.unwrap_or("?")
    );
    s += &format!(
        "adapter type:    {}\n",
        g.opt_str("adapter.type")?.unwrap_or("?")
    );
    if let Some(al) = g.opt_f32("adapter.lora.alpha")? {
        s += &format!("lora alpha:      {al}\n");
    }
    let mut types: Vec<(&str, usize)> = Vec::new();
    for t in g.tensors() {
        match types.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some(c) => c.1 += 1,
            None => types.push((t.ty.name(), 1)),
        }
    }
    let types: Vec<String> = types.iter().map(|(n, c)| format!("{c} {n}")).collect();
    s += &format!(
        "tensors:         {} ({})\n",
        g.tensors().len(),
        types.join(", ")
    );
    s += "validate it against a model with: edge-run info -m MODEL --adapter FILE";
    Ok(Some(s))
}
