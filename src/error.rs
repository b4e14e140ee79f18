//! The one error type of the library. Every refusal names what was wrong: the file, the field and the
//! offending value (and, for GGUF, the byte offset).
use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The OS refused to open, map or read a file.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's content is malformed.
    Format {
        /// The file (or a description of the buffer) that was being read.
        file: String,
        /// The field that is wrong, e.g. `tensor_infos[3].dims[1]` or `llama.block_count`.
        field: String,
        /// Byte offset of the field in the file, when known.
        offset: Option<u64>,
        /// What is wrong with it, including the offending value.
        detail: String,
    },
    /// Well-formed, but asks for something edge-run does not implement (architecture, tensor type …).
    Unsupported { file: String, detail: String },
    /// A request that cannot be served: bad token id, context full, bad argument, adapter mismatch …
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(
        file: impl Into<String>,
        field: impl Into<String>,
        offset: Option<u64>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Format {
            file: file.into(),
            field: field.into(),
            offset,
            detail: detail.into(),
        }
    }
    pub fn unsupported(file: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Unsupported {
            file: file.into(),
            detail: detail.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// Re-attribute a format/unsupported error to a named file (readers over byte buffers don't know it).
    pub fn in_file(self, name: &str) -> Self {
        match self {
            Error::Format {
                field,
                offset,
                detail,
                ..
            } => Error::Format {
                file: name.to_string(),
                field,
                offset,
                detail,
            },
            Error::Unsupported { detail, .. } => Error::Unsupported {
                file: name.to_string(),
                detail,
            },
            e => e,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Format {
                file,
                field,
                offset: Some(o),
                detail,
            } => {
                write!(f, "{file}: field `{field}` at byte offset {o}: {detail}")
            }
            Error::Format {
                file,
                field,
                offset: None,
                detail,
            } => write!(f, "{file}: field `{field}`: {detail}"),
            Error::Unsupported { file, detail } => write!(f, "{file}: unsupported: {detail}"),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
