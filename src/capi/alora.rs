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
        // SAFETY: non-NULL (checked) and writable (contract).
        unsafe { n_out.write(ids.len()) };
        buffer_fits(ids.len(), cap, || {
            format!("the adapter has {} invocation tokens", ids.len())
        })?;
        if !ids.is_empty() {
            need(out, "out")?;
            // SAFETY: contract: `cap` ≥ ids.len() writable int32_t at `out` (non-NULL, checked).
            let dst = unsafe { std::slice::from_raw_parts_mut(out, ids.len()) };
            for (d, &id) in dst.iter_mut().zip(&ids) {
                *d = id as i32;
            }
        }
        Ok(())
    })
}
