//! Adapters: opening and freeing, a session's adapter set and its adapter control.
use super::*;

/// Load a LoRA adapter (GGUF file, PEFT directory or `.safetensors`) made for `model`.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_open(
    model: *const er_model,
    path: *const c_char,
    out: *mut *mut er_adapter,
) -> c_int {
    // SAFETY: contract: `out` is NULL or writable, `path` NULL or NUL-terminated.
    ffi(|| unsafe {
        put_handle(out, Kind::Adapter, || {
            let m = model_of(model)?;
            let adapter = Arc::new(Adapter::load(&path_arg(path, "path")?, &m.base_info)?);
            Ok(er_adapter { adapter })
        })
    })
}

/// Release an adapter handle. NULL is a no-op. Sessions still applying it keep it alive.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_free(adapter: *mut er_adapter) -> c_int {
    ffi(|| unregister(adapter, Kind::Adapter, |_| Ok(())))
}

pub(super) type AdapterList = heapless::Vec<(Arc<Adapter>, f32), MAX_ADAPTERS>;

/// The adapters and scales of a `set_adapters` call, resolved to `Arc`s (allocation-free).
pub(super) unsafe fn adapter_list(
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> R<AdapterList> {
    let mut list = AdapterList::new();
    if n == 0 {
        return Ok(list);
    }
    if n > MAX_ADAPTERS {
        return err(
            ER_ERR_INVALID_ARGUMENT,
            format!("{n} adapters given; at most {MAX_ADAPTERS} can be applied at once"),
        );
    }
    need(adapters, "adapters")?;
    need(scales, "scales")?;
    // SAFETY: contract: `n` readable elements at each (non-NULL, checked; n ≤ MAX_ADAPTERS).
    let (hs, ss) = unsafe {
        (
            std::slice::from_raw_parts(adapters, n),
            std::slice::from_raw_parts(scales, n),
        )
    };
    for (i, (&h, &s)) in hs.iter().zip(ss).enumerate() {
        let a =
            with_handle(h, Kind::Adapter, |a| Ok(Arc::clone(&a.adapter))).map_err(|e| CErr {
                code: e.code,
                msg: format!("adapters[{i}]: {}", e.msg),
            })?;
        if !s.is_finite() {
            return err(
                ER_ERR_INVALID_ARGUMENT,
                format!("scales[{i}] = {s} is not finite"),
            );
        }
        let _ = list.push((a, s));
    }
    Ok(list)
}

pub(super) fn publish(ctl: &AdapterControl, list: &AdapterList) -> R<()> {
    let refs: heapless::Vec<(&Arc<Adapter>, f32), MAX_ADAPTERS> =
        list.iter().map(|(a, s)| (a, *s)).collect();
    ctl.set(&refs)?;
    Ok(())
}

/// Apply these adapters with these user scales from the next `er_eval` on (`n` = 0 removes all).
#[no_mangle]
pub unsafe extern "C" fn er_session_set_adapters(
    sess: *mut er_session,
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> c_int {
    ffi(|| {
        let mut g = session(sess)?;
        // SAFETY: forwarded contract.
        let list = unsafe { adapter_list(adapters, scales, n) }?;
        publish(&g.state().s.adapter_control(), &list)
    })
}

/// A handle through which any thread can change the session's adapters while it runs (free it with
/// `er_adapter_control_free`; it keeps working after the session is freed, without effect).
#[no_mangle]
pub unsafe extern "C" fn er_session_adapter_control(
    sess: *mut er_session,
    out: *mut *mut er_adapter_control,
) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe {
        put_handle(out, Kind::AdapterControl, || {
            let ctl = session(sess)?.state().s.adapter_control();
            Ok(er_adapter_control { ctl })
        })
    })
}

/// `er_session_set_adapters` from any thread: takes effect at the start of the session's next `er_eval`.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_control_set(
    ctl: *const er_adapter_control,
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> c_int {
    ffi(|| {
        let c = with_handle(ctl, Kind::AdapterControl, |c| Ok(Arc::clone(&c.ctl)))?;
        // SAFETY: forwarded contract.
        let list = unsafe { adapter_list(adapters, scales, n) }?;
        publish(&c, &list)
    })
}

#[no_mangle]
pub unsafe extern "C" fn er_adapter_control_free(ctl: *mut er_adapter_control) -> c_int {
    ffi(|| unregister(ctl, Kind::AdapterControl, |_| Ok(())))
}
