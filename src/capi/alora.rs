//! Activated LoRA (aLoRA) adapters: their invocation tokens.
use super::*;

/// The invocation tokens of an aLoRA adapter (`*n_out` = 0 for a plain LoRA). `*n_out` is set also
/// on `ER_ERR_BUFFER_TOO_SMALL` (then `out` is untouched); `out` may be NULL when `cap` is 0.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_invocation_tokens(
    adapter: *const er_adapter,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    ffi(|| {
        need(n_out, "n_out")?;
        let ids = with_handle(adapter, Kind::Adapter, |a| {
            Ok(a.adapter.invocation_tokens().map(<[u32]>::to_vec))
        })?
        .unwrap_or_default();
        // SAFETY: contract: `n_out` (checked non-NULL) is writable, and `out` is NULL or holds `cap`
        // writable int32_t.
        unsafe {
            put_tokens(&ids, out, cap, n_out, || {
                format!("the adapter has {} invocation tokens", ids.len())
            })
        }
    })
}
