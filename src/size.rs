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

/// Parse the size-valued argument `what` of a qemu-img subcommand (`bench -o`, `-s`, `-S`;
/// `dd bs=`) as qemu-img does (its `cvtnum_full`): a size as [`parse_size`] reads it, from
/// `min` to `max`, with qemu-img's two messages (`Invalid offset specified: 'x'.` and
/// `Invalid offset specified. Must be between 0 and ...`). A negative number is out of range.
pub fn parse_size_arg(s: &str, what: &str, min: u64, max: u64) -> Result<u64> {
    let t = s.trim_start();
    let parsed = match t.strip_prefix('-') {
        // A well-formed negative size is a range error; anything else after '-' is syntax.
        Some(rest) if !rest.starts_with(char::is_whitespace) => match parse(rest) {
            Ok(_) | Err(SizeError::Range) => Err(SizeError::Range),
            Err(SizeError::Syntax) => Err(SizeError::Syntax),
        },
        Some(_) => Err(SizeError::Syntax),
        None => parse(t),
    };
    match parsed {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Err(SizeError::Syntax) => Err(Error::invalid(format!("Invalid {what} specified: '{s}'."))),
        _ => Err(Error::invalid(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        ))),
    }
}

/// Parse a numeric argument named `what` ("start offset", "max length") as qemu-img's
/// `cvtnum` does: [`parse_size_arg`] from 0 to `i64::MAX`.
pub fn parse_named_size(what: &str, s: &str) -> Result<u64> {
    parse_size_arg(s, what, 0, i64::MAX as u64)
}

/// Parse the integer argument `what` of a qemu-img subcommand (`bench -c`, `-d`,
/// `--pattern`; `dd count=`) as qemu-img does (C's `strtoll` with base 0: leading blanks,
/// an optional sign, `0x` hex, `0` octal, and nothing after the digits), from `min` to
/// `max`, with the same two messages as [`parse_size_arg`].
pub fn parse_int_arg(s: &str, what: &str, min: i64, max: i64) -> Result<i64> {
    let syntax = || Error::invalid(format!("Invalid {what} specified: '{s}'."));
    let range = || {
        Error::invalid(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        ))
    };
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None if t.len() > 1 && t.starts_with('0') => (8, &t[1..]),
        None => (10, t),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(syntax());
    }
    // Overflow past 64 bits is a range error, as strtoll's ERANGE.
    let magnitude = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    let value = if negative { -magnitude } else { magnitude };
    if value < i128::from(min) || value > i128::from(max) {
        return Err(range());
    }
    Ok(value as i64)
}

/// Format a size as qemu-img's human output does (QEMU's `size_to_str`): the unit is
/// the largest power of 1024 that leaves a value of at least 1000/1024, so 1000 KiB prints
/// as `0.977 MiB` and 1023 KiB as `0.999 MiB`, and the value is printed with C's `%0.3g`
/// (`1 GiB`, `196 KiB`, `1.5 MiB`; a value that rounds to 1000 prints as `1e+03`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    // frexp(n / (1000.0 / 1024.0)): the binary exponent e with x in [2^(e-1), 2^e).
    let x = n as f64 / (1000.0 / 1024.0);
    let e = if x == 0.0 {
        0
    } else {
        ((x.to_bits() >> 52) & 0x7ff) as i32 - 1022
    };
    let unit = ((e - 1) / 10).clamp(0, UNITS.len() as i32 - 1) as usize;
    let v = n as f64 / (1u64 << (unit * 10)) as f64;
    format!("{} {}", c_format_g3(v), UNITS[unit])
}

/// C's `printf("%0.3g", v)` for a finite `v >= 0`: three significant digits, trailing
/// zeros dropped, exponent form below 1e-4 or from 1000 on (after rounding).
fn c_format_g3(v: f64) -> String {
    fn trim(s: &str) -> &str {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.')
        } else {
            s
        }
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.2e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exp.abs());
    }
    let precision = (2 - exp) as usize;
    trim(&format!("{v:.precision$}")).to_string()
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
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(102912), "100 KiB");
        assert_eq!(human_size(1023488), "1e+03 KiB");
        assert_eq!(human_size(1024000), "0.977 MiB");
        assert_eq!(human_size(1047552), "0.999 MiB");
        assert_eq!(human_size(1048064), "1 MiB");
        assert_eq!(human_size(1024000000), "977 MiB");
        assert_eq!(human_size(1072693248), "0.999 GiB");
        assert_eq!(human_size(10240000), "9.77 MiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn numeric_arguments_parse_and_fail_as_qemu_img_reads_them() {
        let size = |v| parse_size_arg(v, "offset", 0, i64::MAX as u64);
        assert_eq!(size("1.5k").unwrap(), 1536);
        assert_eq!(size("0x200").unwrap(), 512);
        assert_eq!(size("010").unwrap(), 10);
        assert_eq!(
            size("1x").unwrap_err().to_string(),
            "Invalid offset specified: '1x'."
        );
        assert_eq!(
            size("-x").unwrap_err().to_string(),
            "Invalid offset specified: '-x'."
        );
        for range in ["-1", "-0", "20E"] {
            assert_eq!(
                size(range).unwrap_err().to_string(),
                "Invalid offset specified. Must be between 0 and 9223372036854775807."
            );
        }
        let int = |v| parse_int_arg(v, "count", 1, i32::MAX.into());
        assert_eq!(int("0x10").unwrap(), 16);
        assert_eq!(int("010").unwrap(), 8);
        assert_eq!(int(" +5").unwrap(), 5);
        for syntax in ["", "1k", "0x", "1.5", "- 1", "5 "] {
            let want = format!("Invalid count specified: '{syntax}'.");
            assert_eq!(int(syntax).unwrap_err().to_string(), want);
        }
        for range in [
            "0",
            "-1",
            "2147483648",
            "99999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                int(range).unwrap_err().to_string(),
                "Invalid count specified. Must be between 1 and 2147483647."
            );
        }
    }
}
