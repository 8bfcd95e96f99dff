//! Creation options as qemu-img describes them: each format's `-o` names with their type,
//! default and help text ([`OptionDesc`]), in the order qemu-img prints them; the host
//! file's own options ([`FILE_OPTIONS`]: `nocow`, `preallocation`, `extent_size_hint`);
//! and the three texts made from them: the `Formatting '...'` line of `create`, the
//! `-o help` listing of `create`/`convert`, and the one of `amend`.
//!
//! Values are normalised as qemu-img normalises them before a driver sees them: sizes to
//! bytes, numbers (C `strtoull` base 0: `0x10`, `016`) to decimal, booleans checked but kept
//! as written, strings kept. [`normalise`] returns the options in that form, so a driver
//! parses one spelling only.

use crate::error::{Error, Result};

/// The type of an option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte count with an optional k/M/G/T/P/E suffix.
    Size,
    /// An integer (decimal, `0x` hexadecimal or `0` octal).
    Number,
    /// `on`/`off` (also `yes`/`no`, `true`/`false`, `y`/`n`).
    Bool,
    /// Any text.
    Str,
}

impl Kind {
    /// How `-o help` names the type.
    fn help_name(self) -> &'static str {
        match self {
            Kind::Size => "size",
            Kind::Number => "num",
            Kind::Bool => "bool (on/off)",
            Kind::Str => "str",
        }
    }
}

/// One creation (or amend) option.
#[derive(Debug, Clone, Copy)]
pub struct OptionDesc {
    /// The `-o` name.
    pub name: &'static str,
    /// The value's type.
    pub kind: Kind,
    /// The help text `-o help` prints.
    pub help: &'static str,
    /// The value the `Formatting` line shows when the option is not given.
    pub default: Option<&'static str>,
}

impl OptionDesc {
    /// An option without a default.
    pub const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        OptionDesc {
            name,
            kind,
            help,
            default: None,
        }
    }

    /// An option the `Formatting` line shows as `default` when it is not given.
    pub const fn with_default(self, default: &'static str) -> Self {
        OptionDesc {
            default: Some(default),
            ..self
        }
    }
}

/// The `size` option every format has.
pub const SIZE: OptionDesc = OptionDesc::new("size", Kind::Size, "Virtual disk size");

/// Options of the host file an image is stored in (qemu's `file` protocol), taken by every
/// format after its own (an option the format also has is the format's).
pub const FILE_OPTIONS: &[OptionDesc] = &[
    OptionDesc::new(
        "nocow",
        Kind::Bool,
        "Turn off copy-on-write (valid only on btrfs)",
    ),
    OptionDesc::new(
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    OptionDesc::new(
        "extent_size_hint",
        Kind::Size,
        "Extent size hint for the image file, 0 to disable",
    ),
];

/// Whether `name` is one of [`FILE_OPTIONS`] that no format handles itself (`nocow`,
/// `extent_size_hint`): the image layer applies those to the file.
pub fn is_file_only(name: &str) -> bool {
    matches!(name, "nocow" | "extent_size_hint")
}

/// `format`'s options followed by the file's, without duplicates.
pub fn with_file_options(format: &'static [OptionDesc]) -> Vec<OptionDesc> {
    let mut all = format.to_vec();
    for o in FILE_OPTIONS {
        if !all.iter().any(|a| a.name == o.name) {
            all.push(*o);
        }
    }
    all
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{name}' expects 'on' or 'off'"
        ))),
    }
}

/// `v` read as C's `strtoull(v, 0)` reads it (a leading `-` wraps), the whole text.
fn parse_number(name: &str, v: &str) -> Result<u64> {
    let bad = || Error::invalid(format!("Parameter '{name}' expects a number"));
    let (neg, t) = match v.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let parsed = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8)
    } else {
        t.parse()
    };
    let n = parsed.map_err(|_| bad())?;
    Ok(if neg { n.wrapping_neg() } else { n })
}

/// The size `v` given for option `name`, refused in qemu's words (`Parameter 'size'
/// expects a non-negative number below 2^64`, with its note on suffixes).
pub fn option_size(name: &str, v: &str) -> Result<u64> {
    if v.trim_start().starts_with('-') {
        return Err(Error::invalid(format!(
            "Value '{v}' is out of range for parameter '{name}'"
        )));
    }
    crate::size::parse_size(v).map_err(|_| {
        Error::invalid(format!(
            "Parameter '{name}' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        ))
    })
}

/// Check every option of `options` against `table` (an unknown name is qemu-img's
/// "Invalid parameter") and return them with sizes and numbers in decimal. Booleans and
/// strings keep their spelling.
pub fn normalise(
    table: &[OptionDesc],
    options: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(options.len());
    for (k, v) in options {
        let Some(desc) = table.iter().find(|d| d.name == k) else {
            return Err(Error::invalid(format!("Invalid parameter '{k}'")));
        };
        let value = match desc.kind {
            Kind::Size => option_size(k, v)?.to_string(),
            Kind::Number => parse_number(k, v)?.to_string(),
            Kind::Bool => {
                parse_bool(k, v)?;
                v.clone()
            }
            Kind::Str => v.clone(),
        };
        out.push((k.clone(), value));
    }
    Ok(out)
}

/// qemu-img's `Formatting 'PATH', fmt=FMT ...` line for normalised `options` (the last
/// value of a name wins; options not given show their default) and the final `size`.
pub fn formatting_line(
    path: &str,
    format: &str,
    table: &[OptionDesc],
    options: &[(String, String)],
    size: u64,
) -> String {
    let mut line = format!("Formatting '{path}', fmt={format}");
    for desc in table {
        let given = options.iter().rev().find(|(k, _)| k == desc.name);
        let value = match (desc.name, given) {
            ("size", _) => size.to_string(),
            (_, Some((_, v))) if desc.kind == Kind::Number => {
                // qemu prints numbers signed.
                (v.parse::<u64>().unwrap_or(0) as i64).to_string()
            }
            (_, Some((_, v))) if desc.kind == Kind::Str => v.replace(',', ",,"),
            (_, Some((_, v))) => v.clone(),
            (_, None) => match desc.default {
                Some(d) => d.to_string(),
                None => continue,
            },
        };
        line.push_str(&format!(" {}={value}", desc.name));
    }
    line
}

fn help_lines(table: &[OptionDesc]) -> String {
    let mut sorted = table.to_vec();
    sorted.sort_by_key(|d| d.name);
    let mut s = String::new();
    for d in sorted {
        let left = format!("{}=<{}>", d.name, d.kind.help_name());
        s.push_str(&format!("  {left:<22} - {}\n", d.help));
    }
    s
}

/// What `create -o help` (and `convert -o help`) prints for `format`: with `filename`
/// given, its options and the file's; without, the format's alone and a hint.
pub fn create_help(format: &str, table: &'static [OptionDesc], filename: bool) -> String {
    if filename {
        format!(
            "Supported options:\n{}",
            help_lines(&with_file_options(table))
        )
    } else {
        format!(
            "Supported {format} options:\n{}\nThe protocol level may support further options.\n\
             Specify the target filename to include those options.\n",
            help_lines(table)
        )
    }
}

/// What `amend -o help` prints for `format`.
pub fn amend_help(format: &str, table: &[OptionDesc]) -> String {
    format!("Amend options for '{format}':\n{}", help_lines(table))
}

/// Whether parsed `-o` options ask for help (a bare `help` or `?` item, which
/// `image::parse_options` keeps as a key without a value).
pub fn wants_help(options: &[(String, String)]) -> bool {
    options.iter().any(|(k, _)| k == "help" || k == "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_strtoull_base_0_reads_them() {
        assert_eq!(parse_number("n", "016").ok(), Some(14));
        assert_eq!(parse_number("n", "0x10").ok(), Some(16));
        assert_eq!(parse_number("n", "-1").ok(), Some(u64::MAX));
        assert!(parse_number("n", "x").is_err());
    }

    #[test]
    fn help_pads_the_name_to_22_columns() {
        let t = [OptionDesc::new("size", Kind::Size, "Virtual disk size")];
        assert_eq!(
            help_lines(&t),
            "  size=<size>            - Virtual disk size\n"
        );
    }
}
