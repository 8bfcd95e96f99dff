//! `vdisk amend [-f FMT] -o OPTS [-q] FILE`: change compat, lazy_refcounts, refcount_bits
//! or the size of a qcow2 image in place.

use crate::flags::{FormatFlag, ImageSpecFlags, OptionsFlag, ProgressFlag, QuietFlag};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::Result;

/// Arguments of `amend`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    // The options to change: compat, lazy_refcounts, refcount_bits, size (backing_file
    // and backing_fmt only as they are).
    #[command(flatten)]
    options: OptionsFlag,
    // Accepted for qemu-img compatibility (amend prints nothing).
    #[command(flatten)]
    quiet: QuietFlag,
    // Accepted for qemu-img compatibility (no progress bar).
    #[command(flatten)]
    progress: ProgressFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let _ = (a.quiet.on(), a.progress.on());
    let options = a.options.pairs()?;
    vdisk::ops::amend::amend(&a.file, a.format.get()?, &options)?;
    Ok(ExitCode::SUCCESS)
}
