//! Parsing and printing sizes the way qemu-img does (`64k`, `1G`, `1.5M`, plain bytes).

use crate::error::{Error, Result};

/// Parse a size with an optional suffix: k/K, M, G, T, P, E (powers of 1024), or `b`/none
/// for bytes. Fractions are allowed with a suffix (`1.5G`).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let bad = || {
        Error::invalid(format!(
            "invalid size '{s}' (expected a number with an optional k, M, G, T, P or E suffix)"
        ))
    };
    if s.is_empty() {
        return Err(bad());
    }
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c {
                'b' | 'B' => 0,
                'k' | 'K' => 10,
                'm' | 'M' => 20,
                'g' | 'G' => 30,
                't' | 'T' => 40,
                'p' | 'P' => 50,
                'e' | 'E' => 60,
                _ => return Err(bad()),
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1u64),
    };
    if let Ok(v) = num.parse::<u64>() {
        return v.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !f.is_finite() || f < 0.0 || mult == 1 {
        return Err(bad());
    }
    let v = f * mult as f64;
    if v >= 18446744073709551615.0 {
        return Err(bad());
    }
    Ok(v as u64)
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
