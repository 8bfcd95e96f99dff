//! `vdisk commit [-f FMT] [-b BASE] [-d] [-p] FILE`: fold an overlay into its backing.

use crate::output::outln;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::Format;
use vdisk::Result;

/// Arguments of `commit`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Commit into this image of the chain (default: the direct backing); implies -d.
    #[arg(short = 'b', long = "base")]
    base: Option<PathBuf>,
    /// Do not empty the image after committing.
    #[arg(short = 'd', long = "drop")]
    keep: bool,
    /// Show a progress bar.
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', long = "cache")]
    cache: Option<String>,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = &a.cache;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let mut bar = Progress::new(a.progress && !a.quiet, 0);
    vdisk::ops::commit::commit(&a.file, format, a.base.as_deref(), a.keep, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    if !a.quiet {
        outln!("Image committed.")?;
    }
    Ok(ExitCode::SUCCESS)
}
