//! Standard output for the subcommands: printing that survives a closed pipe.
//!
//! `print!` panics when stdout is a closed pipe (`vdisk map big.qcow2 | head`): Rust
//! ignores SIGPIPE, so the write fails with EPIPE. qemu-img ignores SIGPIPE too, and then
//! its failed writes: it ends quietly with the exit code the command would have had anyway.
//! [`print`] (behind `out!` and `outln!`) does the same, and `main` ends quietly with
//! success when a command's own writes (`dump`) report a broken pipe.

use std::io::Write;
use vdisk::{Error, Result};

/// Write `args` to stdout and flush. A closed pipe is not an error (see the module doc);
/// other write errors are.
pub fn print(args: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to standard output", e))
        }
        _ => Ok(()),
    }
}

/// Whether `e` is a write to a closed pipe.
pub fn is_broken_pipe(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `print!` that neither panics on a closed pipe nor hides other write errors.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

/// `println!` that neither panics on a closed pipe nor hides other write errors.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// An error as qemu-img words it where the two differ only in form: a file that could not
/// be opened reads `Could not open 'X': Could not open 'X': reason` (QEMU names the image,
/// then the file under it).
pub fn error_text(e: &vdisk::Error) -> String {
    if let vdisk::Error::Io { context, source } = e {
        if let Some(name) = context
            .strip_prefix("could not open '")
            .and_then(|n| n.strip_suffix('\''))
        {
            let reason = vdisk::error::strerror(source);
            return format!("Could not open '{name}': Could not open '{name}': {reason}");
        }
    }
    e.to_string()
}
