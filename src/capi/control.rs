//! Control vectors: opening (summing files with scales over a block range), freeing, and a session's
//! control vector.
use super::*;
use crate::adapter::control::layer_range;

/// Sum the control-vector files `paths[i]` times `scales[i]` (NULL: all 1) for `model`, keeping the
/// blocks `layer_start..=layer_end` (≤ 0: the first / last block with a direction), as llama.cpp's
/// `--control-vector-scaled` and `--control-vector-layer-range`.
#[no_mangle]
pub unsafe extern "C" fn er_control_vector_open(
    model: *const er_model,
    paths: *const *const c_char,
    scales: *const f32,
    n: usize,
    layer_start: i32,
    layer_end: i32,
    out: *mut *mut er_control_vector,
) -> c_int {
    // SAFETY: contract: `out` NULL or writable; `n` readable elements at `paths` (checked non-NULL
    // below) and at `scales` if non-NULL; each path NULL or NUL-terminated.
    ffi(|| unsafe {
        put_handle(out, Kind::ControlVector, || {
            let m = model_of(model)?;
            if n == 0 {
                return err(
                    ER_ERR_INVALID_ARGUMENT,
                    "no control-vector file given (n = 0)",
                );
            }
            need(paths, "paths")?;
            // `n` readable pointers (contract), non-NULL (checked).
            let ps = std::slice::from_raw_parts(paths, n);
            let ss = if scales.is_null() {
                None
            } else {
                // `n` readable floats (contract), non-NULL (checked).
                Some(std::slice::from_raw_parts(scales, n))
            };
            let mut files = Vec::with_capacity(n);
            for (i, &p) in ps.iter().enumerate() {
                // each path NULL or NUL-terminated (contract)
                let path = path_arg(p, &format!("paths[{i}]"))?;
                let s = ss.map_or(1.0, |ss| ss[i]);
                if !s.is_finite() {
                    return err(
                        ER_ERR_INVALID_ARGUMENT,
                        format!("scales[{i}] = {s} is not finite"),
                    );
                }
                files.push((path, s));
            }
            let range = layer_range(layer_start.into(), layer_end.into(), m.hp.n_layer);
            let Some(range) = range else {
                return err(
                    ER_ERR_INVALID_ARGUMENT,
                    format!(
                        "layer range {layer_start}..={layer_end} selects no block (directions \
                         apply after blocks 1..={})",
                        m.hp.n_layer.saturating_sub(1)
                    ),
                );
            };
            let cv = ControlVector::load(&m, &files, Some(range))?;
            Ok(er_control_vector { cv: Arc::new(cv) })
        })
    })
}

/// Release a control-vector handle; sessions applying it keep it alive. NULL: no-op.
#[no_mangle]
pub unsafe extern "C" fn er_control_vector_free(cv: *mut er_control_vector) -> c_int {
    ffi(|| unregister(cv, Kind::ControlVector, |_| Ok(())))
}

/// Add `cv` to the residual stream from the next `er_eval` on; NULL clears it.
#[no_mangle]
pub unsafe extern "C" fn er_session_set_control_vector(
    sess: *mut er_session,
    cv: *const er_control_vector,
) -> c_int {
    ffi(|| {
        let cv = if cv.is_null() {
            None
        } else {
            Some(with_handle(cv, Kind::ControlVector, |c| {
                Ok(Arc::clone(&c.cv))
            })?)
        };
        let mut g = session(sess)?;
        g.state().s.set_control_vector(cv)?;
        Ok(())
    })
}
