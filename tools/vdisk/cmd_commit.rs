//! `vdisk commit [-f FMT] [-b BASE] [-d] [-p] [-r RATE] FILE`: fold an overlay into its backing.

use crate::flags::{CacheFlag, FormatFlag, ImageSpecFlags, ProgressFlag, QuietFlag};
use crate::output::outln;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::chain_ops::RateLimit;
use vdisk::Result;

/// Arguments of `commit`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Commit into this image of the chain (default: the direct backing); implies -d.
    #[arg(short = 'b', long = "base")]
    base: Option<PathBuf>,
    /// Do not empty the image after committing.
    #[arg(short = 'd', long = "drop")]
    keep: bool,
    #[command(flatten)]
    progress: ProgressFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    cache: CacheFlag,
    /// I/O rate limit in bytes per second (k, M, G, ... suffixes; 0: none).
    #[arg(
        short = 'r',
        long = "rate",
        value_name = "RATE",
        allow_hyphen_values = true
    )]
    rate: Option<String>,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let _ = a.cache.get();
    let format = a.format.get_for(&a.file)?;
    let rate = a
        .rate
        .as_deref()
        .map(RateLimit::parse)
        .transpose()?
        .flatten();
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), 0);
    vdisk::ops::commit::commit(
        &a.file,
        format,
        a.base.as_deref(),
        a.keep,
        rate,
        &mut |d, t| bar.update(d, t),
    )?;
    bar.finish();
    if !a.quiet.on() {
        outln!("Image committed.")?;
    }
    Ok(ExitCode::SUCCESS)
}
