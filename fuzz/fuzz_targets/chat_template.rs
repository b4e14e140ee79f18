//! Render arbitrary template text (lossily UTF-8) with `apply_chat_template`, as a hostile model's
//! `tokenizer.chat_template` would be: it may fail, but must not panic, hang or exhaust memory.
#![no_main]
use edge_run::chat::{apply_chat_template, ChatMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tpl = String::from_utf8_lossy(data);
    let msgs = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hi {{ there }} {% raw %}"),
        ChatMessage::new("assistant", "Hello\n"),
        ChatMessage::new("user", "\u{e9}\u{1F600}"),
    ];
    let _ = apply_chat_template(&tpl, &msgs, true, "<s>", "</s>");
});
