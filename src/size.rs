//! Parsing and printing sizes the way qemu-img does (`64k`, `1G`, `1.5M`, plain bytes).

use crate::error::{Error, Result};

/// Parse a size as qemu-img does (QEMU's `qemu_strtosz`): a decimal number with an
/// optional suffix k/K, M, G, T, P, E (powers of 1024) or `b`/`B` (bytes); a decimal
/// fraction (`1.5M`, `.5G`, `1.0`) whose fractional part is zero unless a suffix scales it;
/// or a hexadecimal number (`0x1000`) with neither fraction nor suffix.
pub fn parse_size(s: &str) -> Result<u64> {
    parse(s).map_err(|_| {
        Error::invalid(format!(
            "invalid size '{s}' (expected a number with an optional k, M, G, T, P or E suffix)"
        ))
    })
}

/// Why a size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeError {
    /// Not a size at all.
    Syntax,
    /// A size, but more than 64 bits hold.
    Range,
}

fn parse(s: &str) -> std::result::Result<u64, SizeError> {
    let bad = || SizeError::Syntax;
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        // Hex digits include b/B and e/E, so `0x10B` is 267, never 16 bytes.
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return u64::from_str_radix(hex, 16).map_err(|_| SizeError::Range);
    }
    let int_len = t.bytes().take_while(u8::is_ascii_digit).count();
    let (int, rest) = t.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            r.split_at(n)
        }
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let shift = match rest {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(bad()),
    };
    let mult = 1u64 << shift;
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| SizeError::Range)?
    };
    let fraction: f64 = if frac.is_empty() {
        0.0
    } else {
        format!("0.{frac}").parse().map_err(|_| bad())?
    };
    if fraction != 0.0 && mult == 1 {
        return Err(bad());
    }
    // As qemu: the fraction is scaled in floating point and truncated to bytes.
    let part = (fraction * mult as f64) as u64;
    whole
        .checked_mul(mult)
        .and_then(|v| v.checked_add(part))
        .ok_or(SizeError::Range)
}

/// Parse the size argument of `create` with qemu-img's refusals: a size that does not
/// parse, or one above `i64::MAX`.
pub fn parse_image_size(s: &str) -> Result<u64> {
    match parse(s) {
        Ok(size) if size <= i64::MAX as u64 => Ok(size),
        Err(SizeError::Syntax) => Err(Error::invalid(format!(
            "Invalid image size specified: '{s}'."
        ))),
        _ => Err(Error::invalid(format!(
            "Invalid image size specified. Must be between 0 and {}.",
            i64::MAX
        ))),
    }
}

/// Format a size as qemu-img's human output does (`1 GiB`, `196 KiB`, `1.5 MiB`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    // qemu prints 3 significant digits and trims trailing zeros.
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[u])
}

/// Format seconds since the epoch as local time, `YYYY-MM-DD HH:MM:SS` (qemu-img's snapshot
/// list format).
pub fn format_date(secs: i64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes only into the zeroed `tm` we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "1970-01-01 00:00:00".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_qemu_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("2E").unwrap(), 2 << 60);
        assert!(parse_size("16E").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("0X10B").unwrap(), 267);
        assert_eq!(parse_size("1.0").unwrap(), 1);
        assert_eq!(parse_size(".5M").unwrap(), 1 << 19);
        assert_eq!(parse_size("1.M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1.3k").unwrap(), 1331);
        assert_eq!(parse_size("1.9999999999999999999k").unwrap(), 2048);
        for bad in [
            "0x", "0x10k", "0x1.8", "1.5", "1.5b", "1e3", "1k5", "00x10", ".",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes_match_qemu_img() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(200704), "196 KiB");
        assert_eq!(human_size(197120), "192 KiB");
        assert_eq!(human_size(3 << 19), "1.5 MiB");
        assert_eq!(human_size(10), "10 B");
    }
}
