//! The default command: generate text from a prompt (`-p`, `-f`), optionally through the model's chat
//! template (`--chat`), streaming the tokens to stdout; without a prompt `--chat` starts [`crate::repl`].
use crate::args::GenArgs;
use crate::{apply_adapters, apply_control_vector, open_model, session_config, usage, Failure};
use edge_run::chat::{apply_chat_template, ChatMessage};
use edge_run::kernels::Kernels;
use edge_run::session::StopReason;
use edge_run::tokenizer::StreamDecoder;
use edge_run::{Model, Sampler, SamplingParams, Session};
use std::io::Write;

fn sampling_params(g: &GenArgs) -> Result<SamplingParams, Failure> {
    let seed = g.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64).rotate_left(32)
    });
    let p = SamplingParams {
        temperature: g.temp,
        top_k: g.top_k,
        top_p: g.top_p,
        min_p: g.min_p,
        repeat_penalty: g.repeat_penalty,
        repeat_last_n: g.repeat_last_n,
        seed,
    };
    p.validate().map_err(|e| usage(e.to_string()))?;
    Ok(p)
}

pub(crate) fn cmd_generate(g: GenArgs) -> Result<(), Failure> {
    let Some(model_path) = g.model.clone() else {
        return Err(usage("no model given: use -m FILE (see --help)"));
    };
    let prompt = match (&g.prompt, &g.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f).map_err(|e| Failure(1, format!("{}: {e}", f.display())))?,
        ),
        (None, None) => None,
    };
    if prompt.is_none() && g.prompt_cache.is_some() {
        return Err(usage(
            "--prompt-cache needs a prompt (-p or -f); in the interactive chat use /save and /load",
        ));
    }
    let steered = !g.rt.control_vectors.is_empty() || !g.rt.control_vectors_scaled.is_empty();
    if steered && g.prompt_cache.is_some() {
        return Err(usage(
            "--prompt-cache does not record control vectors; use one or the other",
        ));
    }
    if prompt.is_none() && !g.chat {
        return Err(usage(
            "no prompt given: use -p TEXT, -f FILE, or --chat for an interactive chat",
        ));
    }
    let params = sampling_params(&g)?;
    let t0 = std::time::Instant::now();
    let model = open_model(&model_path)?;
    let cfg = session_config(&model, &g.rt, false)?;
    if !g.quiet {
        eprintln!(
            "edge-run: {} ({}, {} layers, {:.0} MiB mapped) in {:.0} ms; {} threads, {} kernels, context {}, seed {}",
            model_path.display(),
            model.arch,
            model.hp.n_layer,
            model.mapped_bytes() as f64 / 1048576.0,
            t0.elapsed().as_secs_f64() * 1e3,
            cfg.n_threads,
            cfg.kernels.unwrap_or_else(Kernels::best).tier.name(),
            cfg.n_ctx,
            params.seed
        );
    }
    let n_vocab = model.hp.n_vocab;
    let mut sess = Session::new(model.clone(), cfg)?;
    let adapters = apply_adapters(&mut sess, &g.rt.adapters)?;
    apply_control_vector(&mut sess, &g.rt)?;
    if !g.quiet {
        for (a, s) in &adapters {
            eprintln!(
                "edge-run: adapter {} (scale {s}, {} tensors)",
                a.path().display(),
                a.tensors().len()
            );
        }
    }
    let mut sampler = Sampler::new(params, n_vocab);
    let max_new = if g.n_predict < 0 {
        usize::MAX
    } else {
        g.n_predict as usize
    };

    match prompt {
        Some(p) => {
            let text = if g.chat {
                let mut msgs = Vec::new();
                if let Some(s) = &g.system {
                    msgs.push(ChatMessage::new("system", s.clone()));
                }
                msgs.push(ChatMessage::new("user", p));
                render_chat(&model, &msgs)?
            } else {
                p
            };
            let mut ids = Vec::new();
            if model.tokenizer.add_bos() && !g.chat {
                ids.extend(model.tokenizer.bos());
            }
            ids.extend(model.tokenizer.encode(&text, g.chat));
            if ids.is_empty() {
                return Err(usage("the prompt is empty"));
            }
            let keep = match g.keep {
                None if g.chat => chat_keep(&model, g.system.as_deref())?,
                None => usize::from(model.tokenizer.add_bos()),
                Some(n) => prompt_keep(&model, n, &ids, g.chat)?,
            };
            sess.set_context_shift((!g.no_context_shift).then_some(keep));
            match &g.prompt_cache {
                Some(file) => {
                    crate::prompt_cache::evaluate(&mut sess, &mut sampler, &ids, file, g.quiet)?;
                    run_turn(&mut sess, &mut sampler, &[], max_new, g.quiet)?;
                }
                None => {
                    run_turn(&mut sess, &mut sampler, &ids, max_new, g.quiet)?;
                }
            }
            Ok(())
        }
        None => crate::repl::interactive_chat(&mut sess, &mut sampler, &g, max_new, adapters),
    }
}

/// Tokens `--keep N` keeps of the prompt `ids`: N after BOS (as llama.cpp counts), all for -1.
pub(crate) fn prompt_keep(
    model: &Model,
    n: i64,
    ids: &[u32],
    chat: bool,
) -> Result<usize, Failure> {
    let bos = usize::from(model.tokenizer.add_bos() && !chat);
    match n {
        -1 => Ok(ids.len()),
        n if n >= 0 => Ok(usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_add(bos)
            .min(ids.len())),
        n => Err(usage(format!("--keep must be -1 or ≥ 0, got {n}"))),
    }
}

/// The tokens of the chat's system part (the system message, or what the template puts first without
/// one): where a rendered conversation starts to differ from the rendered system message alone.
pub(crate) fn chat_keep(model: &Model, system: Option<&str>) -> Result<usize, Failure> {
    let mut msgs: Vec<ChatMessage> = system
        .map(|s| ChatMessage::new("system", s.to_string()))
        .into_iter()
        .collect();
    let alone = model.tokenizer.encode(&render_chat(model, &msgs)?, true);
    msgs.push(ChatMessage::new("user", "."));
    let with_user = model.tokenizer.encode(&render_chat(model, &msgs)?, true);
    Ok(alone
        .iter()
        .zip(&with_user)
        .take_while(|(a, b)| a == b)
        .count())
}

pub(crate) fn render_chat(model: &Model, msgs: &[ChatMessage]) -> Result<String, Failure> {
    let tpl = model.chat_template.as_deref().ok_or_else(|| {
        Failure(
            1,
            format!(
                "{}: the model has no tokenizer.chat_template; --chat needs one",
                model.path().display()
            ),
        )
    })?;
    let tok = &model.tokenizer;
    let piece = |id: Option<u32>| {
        id.map(|i| String::from_utf8_lossy(&tok.token_to_piece(i, true).to_vec()).into_owned())
            .unwrap_or_default()
    };
    Ok(apply_chat_template(
        tpl,
        msgs,
        true,
        &piece(tok.bos()),
        &piece(tok.eos()),
    )?)
}

/// Evaluate `ids` and stream up to `max_new` sampled tokens to stdout. Returns the generated ids.
pub(crate) fn run_turn(
    sess: &mut Session,
    sampler: &mut Sampler,
    ids: &[u32],
    max_new: usize,
    quiet: bool,
) -> Result<Vec<u32>, Failure> {
    let model = sess.model().clone();
    let tok = &model.tokenizer;
    let room = sess.config().n_ctx - sess.n_past();
    if ids.len() > room && sess.context_shift().is_none() {
        return Err(Failure(1, format!("the prompt has {} tokens but only {} fit in the context (size {}); use a larger -c", ids.len(), room, sess.config().n_ctx)));
    }
    let mut dec = StreamDecoder::new(false);
    let mut buf = String::new();
    let mut out = Vec::new();
    let stdout = std::io::stdout();
    let mut broken = false;
    let st = sess.generate(ids, max_new, sampler, |id| {
        out.push(id);
        buf.clear();
        dec.push(tok, id, &mut buf);
        let mut lock = stdout.lock();
        if lock
            .write_all(buf.as_bytes())
            .and_then(|_| lock.flush())
            .is_err()
        {
            broken = true; // stdout closed (e.g. piped into `head`): stop quietly
            return false;
        }
        true
    })?;
    buf.clear();
    dec.finish(&mut buf);
    if !broken {
        let mut lock = stdout.lock();
        let _ = lock
            .write_all(buf.as_bytes())
            .and_then(|_| lock.write_all(b"\n"))
            .and_then(|_| lock.flush());
    }
    if !quiet {
        let why = match st.stop {
            StopReason::MaxTokens => "token limit (-n)",
            StopReason::EndOfGeneration => "end of generation",
            StopReason::ContextFull => "context full (-c)",
            StopReason::Caller => "output closed",
        };
        let shifted = match st.n_dropped {
            0 => String::new(),
            n => format!("; context shift dropped {n} tokens"),
        };
        eprintln!(
            "\nedge-run: prompt {} tokens in {:.0} ms ({:.1} tok/s); generated {} tokens in {:.0} ms ({:.1} tok/s){shifted}; stopped: {why}",
            st.n_prompt,
            st.prompt_secs * 1e3,
            st.n_prompt as f64 / st.prompt_secs.max(1e-9),
            st.n_generated,
            st.gen_secs * 1e3,
            st.n_generated as f64 / st.gen_secs.max(1e-9)
        );
    }
    Ok(out)
}
