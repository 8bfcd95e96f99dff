//! `vdisk amend [-f FMT] -o OPTS [-q] FILE`: change compat, lazy_refcounts, refcount_bits
//! or the size of a qcow2 image in place.

use crate::flags::{FormatFlag, OptionsFlag, ProgressFlag, QuietFlag};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format};
use vdisk::qcow2::AmendOptions;
use vdisk::{BlockDevice, Error, Result};

/// Arguments of `amend`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
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

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = (a.quiet.on(), a.progress.on());
    if a.options.is_empty() {
        return Err(Error::invalid("Must specify options (-o)"));
    }
    let mut opts = AmendOptions::default();
    for (k, v) in a.options.pairs()? {
        opts.set(&k, &v)?;
    }
    let format = a.format.or_probe(&a.file, false)?;
    if format != Format::QCOW2 {
        return Err(Error::unsupported(format!(
            "Format driver '{format}' does not support option amendment"
        )));
    }
    // With its backing chain when the size changes, as qemu-img: growing an overlay must
    // hide what a longer backing image holds in the new area.
    let (mut img, _) = image::open_qcow2(
        &a.file,
        &image::ImageOptions {
            format: Some(format),
            no_backing: opts.size.is_none(),
            ..Default::default()
        },
    )?;
    img.amend(&opts)?;
    img.close()?;
    Ok(ExitCode::SUCCESS)
}
