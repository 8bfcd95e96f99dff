//! `vdisk resize [-f FMT] [--shrink] [--preallocation MODE] [-q] FILE [+|-]SIZE`
//!
//! As qemu-img: the size may be relative (`+1G`, `-512M`), shrinking needs `--shrink`,
//! preallocation applies to the added part only, and success prints "Image resized.".

use crate::flags::{FormatFlag, ImageSpecFlags, QuietFlag};
use crate::output::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::{Error, Preallocation, Result};

/// Arguments of `resize`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Allow the image to become smaller (data past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// Preallocation for the added part: off, metadata (qcow2), falloc, full.
    #[arg(long, value_name = "MODE")]
    preallocation: Option<String>,
    // Suppresses "Image resized.".
    #[command(flatten)]
    quiet: QuietFlag,
    /// Image file.
    file: PathBuf,
    /// New size, or `+SIZE` / `-SIZE` relative to the current one (k, M, G, T suffixes).
    #[arg(allow_hyphen_values = true)]
    size: String,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let prealloc: Preallocation = match &a.preallocation {
        Some(p) => p
            .parse()
            .map_err(|_| Error::invalid(format!("Invalid preallocation mode '{p}'")))?,
        None => Preallocation::Off,
    };
    let format = a.format.get_for(&a.file)?;
    vdisk::ops::resize::resize(&a.file, format, &a.size, a.shrink, prealloc)?;
    if !a.quiet.on() {
        outln!("Image resized.")?;
    }
    Ok(ExitCode::SUCCESS)
}
