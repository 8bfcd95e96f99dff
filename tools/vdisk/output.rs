//! The `--output human|json` choice shared by the reporting subcommands.

use vdisk::{Error, Result};

/// Whether `--output VALUE` asks for JSON; anything but `human` or `json` is an error with a
/// one-line message (clap's own multi-line error would break qemu-img-style scripts).
pub fn wants_json(value: &str) -> Result<bool> {
    match value {
        "json" => Ok(true),
        "human" => Ok(false),
        o => Err(Error::invalid(format!(
            "--output must be human or json, not '{o}'"
        ))),
    }
}
