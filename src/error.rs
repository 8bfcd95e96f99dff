//! The library's error type.
//!
//! Every error names the structure it was reading or writing and, where it has one, the
//! byte offset in the image file, so that a message such as
//! `L2 table at 0x50000: entry 17 points past the end of the file` can be acted upon
//! without a debugger. The CLI prints the `Display` form as one line.

use std::io;

/// Result alias used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when opening, reading or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error from the storage layer, with what was being done (the cause as C's
    /// `strerror` words it, as QEMU prints it).
    #[error("{context}: {}", strerror(source))]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The image's bytes break a rule of its format (bad magic, field out of range, table
    /// outside the file, ...). `structure` names what was being parsed.
    #[error("{structure} at {offset:#x}: {message}")]
    Corrupt {
        structure: &'static str,
        offset: u64,
        message: String,
    },

    /// The image uses a feature this implementation does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The caller asked for something invalid (bad option, offset past the end, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// A write was attempted on an image opened read-only or marked corrupt.
    #[error("{0}")]
    ReadOnly(String),

    /// Another process holds a conflicting lock on the image.
    #[error("{0}")]
    Locked(String),

    /// The file is not in the format it was opened as (no magic, no signature: it is some
    /// other file, not a damaged image), in QEMU's words; once [`with_path`] has named the
    /// file, shown after QEMU's `Could not open 'X': `.
    #[error("{}", not_format_text(file.as_deref(), message))]
    NotFormat {
        file: Option<String>,
        message: String,
    },
}

impl Error {
    /// A corruption error for `structure` at file offset `offset`.
    pub fn corrupt(structure: &'static str, offset: u64, message: impl Into<String>) -> Self {
        Error::Corrupt {
            structure,
            offset,
            message: message.into(),
        }
    }

    /// An I/O error with a context string.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// The message without the prefix some kinds add ("unsupported: "), for wrapping into
    /// another message.
    pub fn bare_message(&self) -> String {
        match self {
            Error::Unsupported(m) | Error::InvalidArgument(m) | Error::ReadOnly(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// A file not in the format it was opened as, in QEMU's words (see
    /// [`Error::NotFormat`]).
    pub fn not_format(message: impl Into<String>) -> Self {
        Error::NotFormat {
            file: None,
            message: message.into(),
        }
    }

    /// An unsupported-feature error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported(message.into())
    }
}

pub use crate::storage::strerror;

/// How [`Error::NotFormat`] reads: QEMU's `Could not open 'X': ` once the file is known.
fn not_format_text(file: Option<&str>, message: &str) -> String {
    match file {
        Some(f) => format!("Could not open '{f}': {message}"),
        None => message.to_string(),
    }
}

/// Name the file an image error came from.
pub fn with_path(path: &std::path::Path, e: Error) -> Error {
    match e {
        Error::ReadOnly(message) => Error::ReadOnly(format!("'{}': {message}", path.display())),
        Error::NotFormat {
            file: None,
            message,
        } => Error::NotFormat {
            file: Some(path.display().to_string()),
            message,
        },
        Error::Corrupt {
            structure,
            offset,
            message,
        } => Error::Corrupt {
            structure,
            offset,
            message: format!("{message} (in '{}')", path.display()),
        },
        other => other,
    }
}
