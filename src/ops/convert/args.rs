//! convert's argument values as qemu-img reads them: `-m`, `-S` and `-r` (with qemu-img's
//! messages and limits) and the `-t` cache mode. The flags refused together are checked
//! by [`super::convert_file`].

use super::SECTOR;
use crate::error::{Error, Result};

/// The largest `-S` qemu-img takes (its 16 MiB buffer).
pub const MAX_SPARSE_SIZE: u64 = 16 << 20;

/// The most `-m` workers qemu-img allows (its `MAX_COROUTINES`).
pub const MAX_WORKERS: i64 = 16;

/// Whether cache `mode` skips flushing (`unsafe`); another qemu cache mode name flushes,
/// anything else is an error.
pub fn is_unsafe_cache(mode: &str) -> Result<bool> {
    match mode {
        "unsafe" => Ok(true),
        "writeback" | "none" | "writethrough" | "directsync" => Ok(false),
        c => Err(Error::invalid(format!("invalid cache mode '{c}'"))),
    }
}

/// Parse `-S` as qemu-img does: a size (with suffixes) that is a multiple of 512 up to
/// 16 MiB, or 0.
pub fn parse_sparse_size(s: &str) -> Result<u64> {
    let n = parse_qemu_size(s, "Invalid buffer size for sparse output specified")?;
    if n % SECTOR != 0 || n > MAX_SPARSE_SIZE {
        return Err(Error::invalid(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE_SIZE}. Select 0 to disable sparse detection (fully allocates output)."
        )));
    }
    Ok(n)
}

/// Parse `-r` as qemu-img does: bytes per second, with size suffixes.
pub fn parse_rate(s: &str) -> Result<u64> {
    parse_qemu_size(s, "Invalid rate limit specified")
}

/// A size argument with qemu-img's two messages: `what: 'S'.` for a malformed one and
/// `what. Must be between 0 and i64::MAX.` for one out of range.
fn parse_qemu_size(s: &str, what: &str) -> Result<u64> {
    let t = s.trim_start();
    if t.starts_with('-') {
        return Err(Error::invalid(format!(
            "{what}. Must be between 0 and {}.",
            i64::MAX
        )));
    }
    match crate::size::parse_size(t) {
        Ok(n) if n <= i64::MAX as u64 => Ok(n),
        Ok(_) => Err(Error::invalid(format!(
            "{what}. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(_) => Err(Error::invalid(format!("{what}: '{s}'."))),
    }
}

/// Parse `-m` as qemu-img does: a C integer (decimal, `0x` hex or `0` octal, optional sign
/// and leading blanks) from 1 to 16, with qemu-img's two messages.
pub fn parse_workers(s: &str) -> Result<usize> {
    let range = || {
        Error::invalid(format!(
            "Invalid number of coroutines specified. Must be between 1 and {MAX_WORKERS}."
        ))
    };
    let syntax = || Error::invalid(format!("Invalid number of coroutines specified: '{s}'."));
    let t = s.trim_start();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(syntax());
    }
    let n = i64::from_str_radix(digits, radix).map_err(|_| range())?;
    let n = if negative { -n } else { n };
    if !(1..=MAX_WORKERS).contains(&n) {
        return Err(range());
    }
    Ok(n as usize)
}
