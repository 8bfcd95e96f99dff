//! `vdisk rebase [-f FMT] [-u] [-U] [-c] -b NEW [-F NEW_FMT] [-p] FILE`: change an
//! overlay's backing file; safe mode (the default) keeps the guest contents the same.

use crate::flags::{
    CacheFlag, ForceShareFlag, FormatFlag, ImageSpecFlags, ProgressFlag, QuietFlag,
};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::rebase::Rebase;
use vdisk::Result;

/// Arguments of `rebase`.
#[derive(clap::Args)]
pub struct Args {
    // The image's format (probed when absent; only qcow2 records a backing file).
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Unsafe: only rewrite the backing name in the header.
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_mode: bool,
    /// New backing file ("" removes the backing file, as leaving it out does with -u).
    #[arg(short = 'b', long = "backing")]
    backing: Option<String>,
    /// Format of the new backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    /// Cache mode of the backing files (accepted for qemu-img compatibility).
    #[arg(short = 'T', long = "backing-cache", value_name = "CACHE")]
    backing_cache: Option<String>,
    /// Store the clusters a safe rebase writes compressed.
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    // -U: the new backing file is read without locking out its writers.
    #[command(flatten)]
    force_share: ForceShareFlag,
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
    let _ = (a.cache.get(), a.backing_cache.as_deref());
    // As qemu-img: only unsafe mode may leave -b out (and then removes the backing file).
    if a.backing.is_none() && !a.unsafe_mode {
        return Err(crate::flags::usage_error(
            "rebase",
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    }
    let new_format = match a.backing_format.as_deref() {
        Some(f) => Some(
            f.parse()
                .map_err(|_| vdisk::Error::invalid(format!("Invalid format name: '{f}'")))?,
        ),
        None => None,
    };
    let job = Rebase {
        file: &a.file,
        format: a.format.get_for(&a.file)?,
        new_backing: a.backing.as_deref().filter(|b| !b.is_empty()),
        new_format,
        unsafe_mode: a.unsafe_mode,
        compress: a.compress,
        force_share: a.force_share.on(),
    };
    // Only safe mode copies data, and so shows progress.
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on() && !a.unsafe_mode, 0);
    job.run(&mut |d, t| bar.update(d, t))?;
    bar.finish();
    Ok(ExitCode::SUCCESS)
}
