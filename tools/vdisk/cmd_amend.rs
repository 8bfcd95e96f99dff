//! `vdisk amend [-f FMT] [--force] [-p] [-q] -o OPTS FILE`: change compat, lazy_refcounts,
//! refcount_bits, the size or the LUKS key slots of a qcow2 image in place. `-o help` lists the options.

use crate::flags::{FormatFlag, ImageSpecFlags, OptionsFlag, ProgressFlag, QuietFlag};
use crate::output::out;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::amend;
use vdisk::{Error, Result};

/// Arguments of `amend`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    // The options to change: compat, lazy_refcounts, refcount_bits, size (backing_file
    // and backing_fmt only as they are); `help` or `?` lists them.
    #[command(flatten)]
    options: OptionsFlag,
    /// Allow unsafe operations: overwrite an active LUKS key slot, erase the last active
    /// one (the data is then lost) or a free one, as qemu-img.
    #[arg(long = "force")]
    force: bool,
    // Silences -p (amend prints nothing else on success).
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    progress: ProgressFlag,
    /// Image file.
    file: Option<PathBuf>,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    if let Some(f) = a.file.as_mut() {
        a.spec.resolve_in_place(f, &mut a.format)?;
    }
    let options = a.options.pairs()?;
    if options.is_empty() {
        return Err(crate::flags::usage_error(
            "amend",
            "Must specify options (-o)",
        ));
    }
    let format = match a.file.as_deref() {
        Some(file) => a.format.get_for(file)?,
        None => a.format.get()?,
    };
    if let Some(help) = amend::help(a.file.as_deref(), format, &options)? {
        out!("{help}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = a.file.as_deref() else {
        return Err(Error::invalid("Expecting one image file name"));
    };
    let show = a.progress.on() && !a.quiet.on();
    let mut bar = Progress::new(show, 1);
    let mut step = |pct| bar.step(pct);
    let progress: Option<&mut dyn FnMut(f64)> = match show {
        true => Some(&mut step),
        false => None,
    };
    let result = amend::amend(file, format, &options, a.force, progress);
    // qemu-img ends its progress line after the steps, and before an error.
    bar.finish();
    result?;
    Ok(ExitCode::SUCCESS)
}
