//! The inspector behind `vdisk dump`: every on-disk structure of an image with its host
//! offset and its raw values decoded.
//!
//! Each format's driver builds one JSON document (`Driver::dump`) ([`serde_json::Value`]) of sections; the
//! human form is printed from the same document by [`write_human`], so the two never
//! disagree. Printers write to any [`Write`]; output is stable (no times, no paths beyond
//! what the image holds) so that it can be tested against golden files.

pub use crate::driver::DumpOptions;

use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::storage::HostFiles;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// The dump document of the image at `file` (format `format`, probed when `None`) with the
/// sections `opts` asks for; `force_share` reads without locking out other users.
pub fn document(
    file: &Path,
    format: Option<Format>,
    opts: DumpOptions,
    force_share: bool,
) -> Result<Value> {
    let format = match format {
        Some(f) => f,
        None => image::probe_path(file, force_share)?,
    };
    let Some(dump_doc) = format.driver().dump else {
        return Err(Error::unsupported(format!(
            "dump of {format} images (they have no metadata)"
        )));
    };
    dump_doc(&HostFiles, file, opts, force_share)
}

fn io(e: std::io::Error) -> Error {
    Error::io("writing the dump", e)
}

/// Write `doc` as pretty JSON followed by a newline.
pub fn write_json(doc: &Value, out: &mut dyn Write) -> Result<()> {
    let s = serde_json::to_string_pretty(doc).map_err(|e| Error::invalid(e.to_string()))?;
    writeln!(out, "{s}").map_err(io)
}

/// A section of a dump document: a title line and its rows.
fn section_title(key: &str, v: &Value) -> String {
    let off = v.get("offset").and_then(Value::as_str);
    match off {
        Some(o) => format!("{key} at {o}"),
        None => key.to_string(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Print one object as `key value` rows (nested arrays of objects become indented rows).
fn write_object(
    o: &serde_json::Map<String, Value>,
    indent: usize,
    out: &mut dyn Write,
) -> Result<()> {
    let pad = " ".repeat(indent);
    for (k, v) in o {
        match v {
            Value::Array(items) => {
                writeln!(out, "{pad}{k}: {} item(s)", items.len()).map_err(io)?;
                for item in items {
                    write_row(item, indent + 2, out)?;
                }
            }
            Value::Object(inner) => {
                writeln!(out, "{pad}{k}:").map_err(io)?;
                write_object(inner, indent + 2, out)?;
            }
            other => writeln!(out, "{pad}{k:<24} {}", scalar(other)).map_err(io)?,
        }
    }
    Ok(())
}

/// Print an array item on one line when it is flat, as a block otherwise.
fn write_row(item: &Value, indent: usize, out: &mut dyn Write) -> Result<()> {
    let pad = " ".repeat(indent);
    match item {
        Value::Object(o) if o.values().all(|v| !v.is_array() && !v.is_object()) => {
            let parts: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect();
            writeln!(out, "{pad}{}", parts.join(" ")).map_err(io)
        }
        Value::Object(o) => {
            writeln!(out, "{pad}-").map_err(io)?;
            write_object(o, indent + 2, out)
        }
        other => writeln!(out, "{pad}{}", scalar(other)).map_err(io),
    }
}

/// Print a dump document in its human form: one block per section.
pub fn write_human(doc: &Value, out: &mut dyn Write) -> Result<()> {
    let Some(sections) = doc.as_object() else {
        return Ok(());
    };
    let mut first = true;
    for (key, v) in sections {
        if !first {
            writeln!(out).map_err(io)?;
        }
        first = false;
        match v {
            Value::Object(o) => {
                writeln!(out, "{}", section_title(key, v)).map_err(io)?;
                let rest: serde_json::Map<String, Value> = o
                    .iter()
                    .filter(|(k, _)| k.as_str() != "offset")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                write_object(&rest, 2, out)?;
            }
            Value::Array(items) => {
                writeln!(out, "{key}: {} item(s)", items.len()).map_err(io)?;
                for item in items {
                    write_row(item, 2, out)?;
                }
            }
            other => writeln!(out, "{key} {}", scalar(other)).map_err(io)?,
        }
    }
    Ok(())
}
