//! `vdisk rebase [-f FMT] [-u] -b NEW [-F NEW_FMT] [-p] FILE`: change an overlay's backing
//! file; safe mode (the default) keeps the guest contents the same.

use crate::flags::{CacheFlag, FormatFlag, ImageSpecFlags, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::Format;
use vdisk::ops::rebase::rebase;
use vdisk::Result;

/// Arguments of `rebase`.
#[derive(clap::Args)]
pub struct Args {
    // Accepted for qemu-img compatibility: the image must be qcow2.
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Unsafe: only rewrite the backing name in the header.
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_mode: bool,
    /// New backing file ("" removes the backing file).
    #[arg(short = 'b', long = "backing", required = true)]
    backing: String,
    /// Format of the new backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    #[command(flatten)]
    progress: ProgressFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    cache: CacheFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let _ = (a.cache.get(), a.format.name());
    let new_name = (!a.backing.is_empty()).then_some(a.backing.as_str());
    let new_fmt: Option<Format> = a.backing_format.as_deref().map(str::parse).transpose()?;
    // Only safe mode copies data, and so shows progress.
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on() && !a.unsafe_mode, 0);
    rebase(&a.file, new_name, new_fmt, a.unsafe_mode, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    Ok(ExitCode::SUCCESS)
}
