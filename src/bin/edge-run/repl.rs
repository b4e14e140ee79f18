//! The interactive chat (`edge-run -m M --chat` without a prompt): one user turn per line, `/` commands
//! between turns, and the KV cache kept across turns.
use crate::args::GenArgs;
use crate::generate::{chat_keep, render_chat, run_turn};
use crate::{load_adapter, usage, Failure};
use edge_run::adapter::Adapter;
use edge_run::chat::ChatMessage;
use edge_run::{Sampler, Session, Shifted};
use std::io::{BufRead, Write};
use std::sync::Arc;

pub(crate) fn interactive_chat(
    sess: &mut Session,
    sampler: &mut Sampler,
    g: &GenArgs,
    max_new: usize,
    mut adapters: Vec<(Arc<Adapter>, f32)>,
) -> Result<(), Failure> {
    let mut chat = Conversation {
        msgs: g
            .system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .collect(),
    };
    let keep = match g.keep {
        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(-1) | None => chat_keep(sess.model(), g.system.as_deref())?,
        Some(n) => return Err(usage(format!("--keep must be -1 or ≥ 0, got {n}"))),
    };
    sess.set_context_shift((!g.no_context_shift).then_some(keep));
    eprintln!("edge-run chat: type a message and press Enter; /help for commands, /quit or Ctrl-D to leave.");
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Failure(1, format!("reading stdin: {e}"))),
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            if !slash_command(sess, sampler, &mut chat, &mut adapters, g, cmd.trim()) {
                break;
            }
            continue;
        }
        chat.user_turn(sess, sampler, text, max_new, g.quiet)?;
    }
    Ok(())
}

/// Runs a `/` command between turns; `false` for `/quit`.
fn slash_command(
    sess: &mut Session,
    sampler: &mut Sampler,
    chat: &mut Conversation,
    adapters: &mut Vec<(Arc<Adapter>, f32)>,
    g: &GenArgs,
    cmd: &str,
) -> bool {
    match cmd {
        "quit" | "exit" => return false,
        "reset" => {
            chat.msgs.retain(|m| m.role == "system");
            sess.reset();
            eprintln!("(context cleared)");
        }
        "help" => eprintln!("{CHAT_HELP}"),
        c if c.starts_with("save ") || c.starts_with("load ") => {
            let (verb, file) = c.split_at(4);
            let file = std::path::Path::new(file.trim());
            let (done, past) = if verb == "save" {
                (crate::chat_state::save(sess, chat, file), "saved")
            } else {
                (crate::chat_state::load(sess, sampler, chat, file), "loaded")
            };
            match done {
                Ok(()) => eprintln!("({past} {}: {} tokens)", file.display(), sess.n_past()),
                Err(Failure(_, msg)) => eprintln!("edge-run: {msg}"),
            }
        }
        c if c == "adapters" || c.starts_with("adapter ") => {
            match adapter_command(sess, adapters, c) {
                Ok(()) => {
                    if g.reeval_on_swap && c != "adapters" {
                        // Re-evaluate the conversation so far with the new adapter set.
                        sess.reset();
                        eprintln!("(context will be re-evaluated with the new adapters)");
                    }
                }
                Err(Failure(_, msg)) => eprintln!("edge-run: {msg} (adapters unchanged)"),
            }
        }
        other => eprintln!("unknown command /{other}; /help lists commands"),
    }
    true
}

/// The messages of the chat so far. The session's KV cache always holds a prefix of the conversation as
/// the chat template renders it (less the span context shifts dropped), so each turn evaluates only
/// what follows that prefix.
pub(crate) struct Conversation {
    pub(crate) msgs: Vec<ChatMessage>,
}

impl Conversation {
    /// One user message and the model's streamed reply. A turn that fails (e.g. a full context) is
    /// reported and forgotten; only a template that cannot render ends the chat.
    fn user_turn(
        &mut self,
        sess: &mut Session,
        sampler: &mut Sampler,
        text: &str,
        max_new: usize,
        quiet: bool,
    ) -> Result<(), Failure> {
        let model = sess.model().clone();
        self.msgs.push(ChatMessage::new("user", text));
        // Re-render the whole conversation and evaluate only what the cache does not hold yet.
        let ids = model
            .tokenizer
            .encode(&render_chat(&model, &self.msgs)?, true);
        let (keep, from) = cached_prefix(sess, &ids);
        sess.truncate(keep);
        let reply = match run_turn(sess, sampler, &ids[from..], max_new, quiet) {
            Ok(r) => r,
            Err(Failure(_, msg)) => {
                eprintln!("edge-run: {msg}");
                self.msgs.pop();
                return Ok(());
            }
        };
        self.msgs.push(ChatMessage::new(
            "assistant",
            model.tokenizer.decode_with(&reply, false),
        ));
        // The cache now holds prompt + reply without the end-of-turn markup; the next render
        // re-evaluates from where they differ.
        let next = model
            .tokenizer
            .encode(&render_chat(&model, &self.msgs)?, true);
        let cached = ids.iter().chain(reply.iter());
        let same = cached.zip(&next).take_while(|(a, b)| a == b).count();
        sess.truncate(session_len(sess.shifted(), same));
        Ok(())
    }
}

/// Where the rendered conversation `ids` and the session's context part: how many of the session's
/// tokens to keep, and from which token of `ids` to evaluate on. The context holds `ids` as
/// evaluated, less the span context shifts dropped after the kept tokens.
fn cached_prefix(sess: &Session, ids: &[u32]) -> (usize, usize) {
    let shift = sess.shifted();
    let held = |j: usize| match shift {
        Some(s) if j >= s.keep => j + s.dropped,
        _ => j,
    };
    let same = sess
        .tokens()
        .iter()
        .enumerate()
        .take_while(|&(j, t)| ids.get(held(j)) == Some(t))
        .count();
    (same, held(same).min(ids.len()))
}

/// How many of the session's tokens hold the first `n` tokens of the conversation as rendered.
fn session_len(shift: Option<Shifted>, n: usize) -> usize {
    match shift {
        Some(s) if n >= s.keep + s.dropped => n - s.dropped,
        Some(s) => n.min(s.keep),
        None => n,
    }
}

const CHAT_HELP: &str = "commands (between turns):
  /adapters                 list the active adapters
  /adapter add PATH[:S]     load an adapter and apply it with scale S (default 1)
  /adapter rm N             remove adapter N (as listed by /adapters)
  /adapter scale N S        change adapter N's scale
  /reset                    clear the conversation
  /save FILE                save the conversation and its KV cache to FILE
  /load FILE                continue the conversation saved in FILE (same model, KV types and adapters)
  /quit                     leave
Adapter changes apply from the next token on; the conversation already in the KV cache stays as it was
computed unless edge-run was started with --reeval-on-swap.";

fn adapter_command(
    sess: &mut Session,
    adapters: &mut Vec<(Arc<Adapter>, f32)>,
    cmd: &str,
) -> Result<(), Failure> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let index = |w: Option<&&str>, n: usize| -> Result<usize, Failure> {
        let i: usize = w
            .ok_or_else(|| usage("missing adapter number"))?
            .parse()
            .map_err(|_| usage("adapter number must be an integer"))?;
        if i >= n {
            return Err(usage(format!("no adapter {i}: {n} active")));
        }
        Ok(i)
    };
    let mut next = adapters.clone();
    match words.as_slice() {
        ["adapters"] => {}
        ["adapter", "add", spec] => next.push(load_adapter(sess.model(), spec)?),
        ["adapter", "rm", ..] => {
            let i = index(words.get(2), next.len())?;
            next.remove(i);
        }
        ["adapter", "scale", _, s] => {
            let i = index(words.get(2), next.len())?;
            next[i].1 = s
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| usage(format!("bad scale `{s}`")))?;
        }
        _ => {
            return Err(usage(format!(
                "unknown adapter command `/{cmd}`; /help lists commands"
            )))
        }
    }
    let set: Vec<(&Arc<Adapter>, f32)> = next.iter().map(|(a, s)| (a, *s)).collect();
    sess.set_adapters(&set)?;
    *adapters = next;
    if adapters.is_empty() {
        eprintln!("(no adapters: base model)");
    }
    for (i, (a, s)) in adapters.iter().enumerate() {
        let kind = match a.invocation_tokens() {
            Some(ids) => format!(", aLoRA: applies from its invocation tokens {ids:?} on"),
            None => String::new(),
        };
        eprintln!(
            "  {i}: {} scale {s} ({} tensors{kind})",
            a.path().display(),
            a.tensors().len()
        );
    }
    Ok(())
}
