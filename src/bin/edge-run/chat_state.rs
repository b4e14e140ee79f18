//! The chat's `/save FILE` and `/load FILE`: the session's state with the conversation's messages as
//! its application data (JSON: `{"messages": [{"role": …, "content": …}, …]}`), so a loaded chat
//! continues where it was saved.
use crate::repl::Conversation;
use crate::Failure;
use edge_run::chat::ChatMessage;
use edge_run::{Error, Sampler, Session};
use std::path::Path;

/// Saves the session's state and `chat`'s messages to `file` (through `file.tmp`).
pub(crate) fn save(sess: &mut Session, chat: &Conversation, file: &Path) -> Result<(), Failure> {
    let msgs: Vec<serde_json::Value> = chat
        .msgs
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    let app = serde_json::json!({ "messages": msgs }).to_string();
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    sess.save_state_with(&tmp, app.as_bytes())?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure(1, format!("{}: {e}", file.display()))
    })
}

/// Restores the state and the conversation saved in `file`; the sampler restarts with the restored
/// tokens in its history. On error nothing changed.
pub(crate) fn load(
    sess: &mut Session,
    sampler: &mut Sampler,
    chat: &mut Conversation,
    file: &Path,
) -> Result<(), Failure> {
    let name = file.display().to_string();
    let msgs = sess.load_state_with(file, |app| messages(app, &name))?;
    chat.msgs = msgs;
    *sampler = Sampler::new(sampler.params.clone(), sess.model().hp.n_vocab);
    for &t in sess.tokens() {
        sampler.accept(t);
    }
    Ok(())
}

/// The messages of a saved conversation.
fn messages(app: &[u8], name: &str) -> edge_run::Result<Vec<ChatMessage>> {
    let bad = |detail: String| Error::format(format!("state file {name}"), "app", None, detail);
    let v: serde_json::Value = serde_json::from_slice(app)
        .map_err(|e| bad(format!("not a saved conversation (JSON): {e}")))?;
    let list = v["messages"]
        .as_array()
        .ok_or_else(|| bad("no `messages` array: not saved by the chat's /save".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| match (m["role"].as_str(), m["content"].as_str()) {
            (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
            _ => Err(bad(format!("messages[{i}] lacks a role or content string"))),
        })
        .collect()
}
