//! Models: opening and freeing, their facts, token checks, tokenizing and detokenizing.
use super::*;

/// Facts about a model, filled by `er_model_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct er_model_info {
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    /// Beginning-of-sequence token, -1 if the vocabulary has none.
    pub bos: i32,
    /// End-of-sequence token, -1 if none.
    pub eos: i32,
    /// 1 if prompts should start with `bos` (the tokenizer does not add it).
    pub add_bos: i32,
}

/// Map and validate a GGUF model file. On success `*out` is a new handle (free with `er_model_free`).
#[no_mangle]
pub unsafe extern "C" fn er_model_open(path: *const c_char, out: *mut *mut er_model) -> c_int {
    // SAFETY: contract: `out` is NULL or writable, `path` NULL or NUL-terminated.
    ffi(|| unsafe {
        put_handle(out, Kind::Model, || {
            let model = Arc::new(Model::open(&path_arg(path, "path")?)?);
            Ok(er_model { model })
        })
    })
}

/// Release a model handle. NULL is a no-op. Sessions and adapters made from it stay valid.
#[no_mangle]
pub unsafe extern "C" fn er_model_free(model: *mut er_model) -> c_int {
    ffi(|| unregister(model, Kind::Model, |_| Ok(())))
}

#[no_mangle]
pub unsafe extern "C" fn er_model_n_vocab(model: *const er_model, out: *mut usize) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe { put(out, "out", || Ok(model_of(model)?.hp.n_vocab)) })
}

#[no_mangle]
pub unsafe extern "C" fn er_model_get_info(
    model: *const er_model,
    out: *mut er_model_info,
) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe { put(out, "out", || model_info(model)) })
}

fn model_info(model: *const er_model) -> R<er_model_info> {
    let m = model_of(model)?;
    let (hp, tok) = (&m.hp, &m.tokenizer);
    let id = |t: Option<u32>| t.map(|v| v as i32).unwrap_or(-1);
    Ok(er_model_info {
        n_vocab: hp.n_vocab,
        n_ctx_train: hp.n_ctx_train,
        n_embd: hp.n_embd,
        n_layer: hp.n_layer,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        n_ff: hp.n_ff,
        bos: id(tok.bos()),
        eos: id(tok.eos()),
        add_bos: tok.add_bos() as i32,
    })
}

pub(super) fn token_id(m: &Model, token: i32, what: &str) -> R<u32> {
    let nv = m.hp.n_vocab;
    if token < 0 || token as usize >= nv {
        return err(
            ER_ERR_TOKEN_OUT_OF_RANGE,
            format!("{what} {token} is out of range: the vocabulary has {nv} tokens"),
        );
    }
    Ok(token as u32)
}

/// `*out` = 1 if `token` ends generation (EOS, EOT, end-of-turn tokens such as `<|im_end|>`), else 0.
#[no_mangle]
pub unsafe extern "C" fn er_token_is_eog(
    model: *const er_model,
    token: i32,
    out: *mut c_int,
) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe {
        put(out, "out", || {
            let m = model_of(model)?;
            Ok(m.tokenizer.is_eog(token_id(&m, token, "token")?) as c_int)
        })
    })
}

/// Tokenize `len` bytes of UTF-8 `text` (no NUL needed; no BOS added). `*n_out` = number of tokens;
/// `ER_ERR_BUFFER_TOO_SMALL` if that exceeds `cap` (nothing written to `out`).
#[no_mangle]
pub unsafe extern "C" fn er_tokenize(
    model: *const er_model,
    text: *const c_char,
    len: usize,
    parse_special: c_int,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    ffi(|| {
        need(n_out, "n_out")?;
        let m = model_of(model)?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            need(text, "text")?;
            // SAFETY: contract: `len` readable bytes at `text` (non-NULL, checked).
            unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) }
        };
        let s = match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                return err(
                    ER_ERR_INVALID_ARGUMENT,
                    format!(
                        "text is not valid UTF-8: bad byte at offset {}",
                        e.valid_up_to()
                    ),
                )
            }
        };
        let ids = m.tokenizer.encode(s, parse_special != 0);
        // SAFETY: contract: `n_out` (checked non-NULL) is writable, and `out` is NULL or holds `cap`
        // writable int32_t.
        unsafe {
            put_tokens(&ids, out, cap, n_out, || {
                format!("the text has {} tokens", ids.len())
            })
        }
    })
}

/// The bytes of one token (control tokens as their text), not NUL-terminated unless `cap > *n`.
/// Pieces are raw bytes: a multi-byte UTF-8 character may be split over two tokens. `*n` = the piece's
/// length; `ER_ERR_BUFFER_TOO_SMALL` if it exceeds `cap`.
#[no_mangle]
pub unsafe extern "C" fn er_detokenize(
    model: *const er_model,
    token: i32,
    buf: *mut c_char,
    cap: usize,
    n: *mut usize,
) -> c_int {
    ffi(|| {
        need(n, "n")?;
        let m = model_of(model)?;
        let id = token_id(&m, token, "token")?;
        let piece = m.tokenizer.token_to_piece(id, true);
        let len = piece.len();
        // SAFETY: non-NULL and writable (contract).
        unsafe { n.write(len) };
        buffer_fits(len, cap, || format!("token {token} has {len} bytes"))?;
        if cap > 0 {
            need(buf, "buf")?;
            // SAFETY: contract: `cap` writable bytes at `buf` (non-NULL, checked); len ≤ cap.
            let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) };
            let mut at = 0;
            piece.for_each_chunk(|c| {
                dst[at..at + c.len()].copy_from_slice(c);
                at += c.len();
            });
            if cap > len {
                dst[len] = 0;
            }
        }
        Ok(())
    })
}
