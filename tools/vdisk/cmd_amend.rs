//! `vdisk amend [-f FMT] [--force] [-p] [-q] -o OPTS FILE`: change compat, lazy_refcounts,
//! refcount_bits or the size of a qcow2 image in place. `-o help` lists the options.

use crate::flags::{FormatFlag, OptionsFlag, ProgressFlag, QuietFlag};
use crate::output::out;
use crate::progress::Progress;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk::create_opts;
use vdisk::image::{self, Format};
use vdisk::{Error, Result};

/// Arguments of `amend`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    // The options to change: compat, lazy_refcounts, refcount_bits, size (backing_file
    // and backing_fmt only as they are); `help` or `?` lists them.
    #[command(flatten)]
    options: OptionsFlag,
    /// Allow unsafe operations (accepted: qemu-img needs it only for encryption key slots,
    /// which vdisk does not amend).
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

/// The format `amend` works on: `-f`, else probed from `file`.
fn format_of(a: &Args) -> Result<Format> {
    match (a.format.get()?, &a.file) {
        (Some(f), _) => Ok(f),
        (None, Some(file)) => image::probe_path(file, false),
        (None, None) => Err(Error::invalid("Expecting one image file name")),
    }
}

/// The qcow2 version of the image at `path` (0 for other formats or when unreadable: it
/// only shapes the progress display).
fn qcow2_version(path: &Path, format: Format) -> u32 {
    if format != Format::QCOW2 {
        return 0;
    }
    image::open_qcow2_alone(path, true, true, "amend")
        .map(|q| q.header().version)
        .unwrap_or(0)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.force;
    let options = a.options.pairs()?;
    if create_opts::wants_help(&options) {
        let format = format_of(&a)?;
        if format.driver().amend.is_none() {
            return Err(Error::invalid(format!(
                "Format driver '{format}' does not support option amendment"
            )));
        }
        out!(
            "{}",
            create_opts::amend_help(format.name(), format.driver().amend_options)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = a.file.as_deref() else {
        return Err(Error::invalid("Expecting one image file name"));
    };
    let show = a.progress.on() && !a.quiet.on();
    let format = a.format.get()?;
    let before = match show {
        true => qcow2_version(
            file,
            format.map_or_else(|| image::probe_path(file, false), Ok)?,
        ),
        false => 0,
    };
    let mut bar = Progress::new(show, 1);
    if let Err(e) = vdisk::ops::amend::amend(file, format, &options) {
        // qemu-img ends its progress line before the error.
        bar.finish();
        return Err(e);
    }
    if show {
        // The steps qemu-img's amend reports: an upgrade in two halves, then the rest;
        // a downgrade as one more step.
        let after = qcow2_version(file, Format::QCOW2);
        if before == 2 && after == 3 {
            bar.step(0.0);
            bar.step(50.0);
        }
        if before != after {
            bar.step(100.0);
        }
        bar.finish();
    }
    Ok(ExitCode::SUCCESS)
}
