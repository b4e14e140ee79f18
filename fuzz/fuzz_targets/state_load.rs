//! `Session::load_state_from` on arbitrary bytes, into a session of the tiny fixture model
//! (`models/fixtures/tiny-q4_1.gguf`, 16-token context). Each input is tried as it is and with its
//! checksum appended (so the fields behind the checksum are reached). A refused state must leave the
//! session as it was; an accepted one must hold at most the context and evaluate one more token.
#![no_main]
use std::sync::{Arc, OnceLock};

use edge_run::state::hash64;
use edge_run::{Model, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/tiny-q4_1.gguf");
    M.get_or_init(|| Arc::new(Model::open(path).expect("the tiny fixture model")))
        .clone()
}

fn try_load(bytes: &[u8]) {
    let cfg = SessionConfig {
        n_ctx: 16,
        n_batch: 4,
        n_threads: 1,
        max_rank: 8,
        ..Default::default()
    };
    let mut s = Session::new(model(), cfg).expect("session");
    s.eval(&[1, 2]).expect("eval");
    let before: Vec<u32> = s.logits().iter().map(|x| x.to_bits()).collect();
    match s.load_state_from(bytes, "fuzz input") {
        Err(_) => {
            assert_eq!(s.tokens(), &[1, 2], "a refused load changed the tokens");
            let now: Vec<u32> = s.logits().iter().map(|x| x.to_bits()).collect();
            assert_eq!(now, before, "a refused load changed the logits");
        }
        Ok(_) => {
            assert!(s.n_past() <= 16 && s.tokens().len() == s.n_past());
            if s.n_past() < 16 {
                s.eval(&[3]).expect("eval after a load");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    try_load(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&hash64(data).to_le_bytes());
    try_load(&sealed);
});
