//! `Gguf::parse` on arbitrary bytes; on success, every accessor on every entry and tensor, and the
//! readers built on the metadata (tokenizer, adapter base info). Invariant: a parsed tensor's data
//! slice is exactly `size` bytes inside the input.
#![no_main]
use edge_run::gguf::{describe_value, Gguf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    for e in g.metadata() {
        let _ = describe_value(&e.value);
        let k = e.key;
        let _ = (
            g.get_u32(k),
            g.get_u64(k),
            g.get_i32(k),
            g.get_i64(k),
            g.get_f32(k),
            g.get_f64(k),
        );
        let _ = (g.get_bool(k), g.get_str(k));
        if let Some(a) = e.value.as_array() {
            let _ = (
                a.to_vec_u32(),
                a.to_vec_i32(),
                a.to_vec_f32(),
                a.to_vec_str(),
            );
            let n = a.iter().take(256).map(|v| describe_value(&v).len()).count();
            assert!(n <= a.len());
            let _ = a.get(a.len().saturating_sub(1));
            let _ = a.get(a.len());
        }
    }
    for t in g.tensors() {
        let d = g.tensor_data(t);
        assert_eq!(
            d.len(),
            t.size,
            "tensor {} data is not inside the file",
            t.name
        );
        let _ = (t.n_elements(), t.n_rows(), t.row_bytes(), t.shape());
        let _ = g.tensor_f32(t);
        assert!(g.tensor(t.name).is_some());
    }
    let _ = edge_run::tokenizer::Tokenizer::from_gguf(&g);
    let _ = edge_run::adapter::BaseInfo::from_gguf(&g);
    let _ = edge_run::chat::chat_template_from_gguf(&g);
});
