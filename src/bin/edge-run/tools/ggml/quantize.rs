//! Model quantization through llama.cpp (`llama_model_quantize`).
use super::*;

/// A llama.cpp file type for [`quantize_model`] (`enum llama_ftype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ftype {
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
}

impl Ftype {
    pub const ALL: [Ftype; 11] = [
        Ftype::F16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q8_0,
        Ftype::Q4KS,
        Ftype::Q4KM,
        Ftype::Q5KS,
        Ftype::Q5KM,
        Ftype::Q6K,
    ];

    /// llama-quantize's name (`Q4_K_M` …).
    pub fn name(self) -> &'static str {
        match self {
            Ftype::F16 => "F16",
            Ftype::Q4_0 => "Q4_0",
            Ftype::Q4_1 => "Q4_1",
            Ftype::Q5_0 => "Q5_0",
            Ftype::Q5_1 => "Q5_1",
            Ftype::Q8_0 => "Q8_0",
            Ftype::Q4KS => "Q4_K_S",
            Ftype::Q4KM => "Q4_K_M",
            Ftype::Q5KS => "Q5_K_S",
            Ftype::Q5KM => "Q5_K_M",
            Ftype::Q6K => "Q6_K",
        }
    }

    /// The type for a llama-quantize name (case-insensitive).
    pub fn parse(s: &str) -> Result<Ftype> {
        Ftype::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Ftype::ALL.iter().map(|f| f.name()).collect();
                Error::invalid(format!(
                    "unknown file type {s:?}; known: {}",
                    names.join(", ")
                ))
            })
    }

    fn raw(self) -> sys::llama_ftype {
        match self {
            Ftype::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            Ftype::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Ftype::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Ftype::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Ftype::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Ftype::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            Ftype::Q4KS => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Ftype::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Ftype::Q5KS => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Ftype::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Ftype::Q6K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
        }
    }
}

/// `llama_model_quantize(input → output)` to `ftype`, re-quantizing already quantized tensors
/// (`allow_requantize`), with llama.cpp's per-tensor type choices for the `_S`/`_M` mixes and its
/// fallbacks for rows that a K-quant block does not divide.
pub fn quantize_model(input: &Path, output: &Path, ftype: Ftype, n_threads: usize) -> Result<()> {
    init();
    if !input.is_file() {
        return Err(Error::Io {
            path: input.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        });
    }
    let (i, o) = (c_path(input)?, c_path(output)?);
    // SAFETY: returns a plain struct by value.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = i32::try_from(n_threads.max(1)).unwrap_or(1);
    params.ftype = ftype.raw();
    params.allow_requantize = true;
    // SAFETY: both paths are NUL-terminated and outlive the call; `params` is a valid struct whose
    // pointer fields are the library's defaults (null).
    let rc = unsafe { sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &params) };
    if rc != 0 {
        return Err(Error::invalid(format!(
            "llama_model_quantize {} → {} ({}) failed with code {rc}",
            input.display(),
            output.display(),
            ftype.name()
        )));
    }
    Ok(())
}
