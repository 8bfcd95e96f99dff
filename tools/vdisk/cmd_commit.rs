//! `vdisk commit [-f FMT] [-b BASE] [-d] [-p] [-r RATE] FILE`: fold an overlay into its backing.

use crate::flags::{CacheFlag, FormatFlag, ProgressFlag, QuietFlag};
use crate::output::outln;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::chain_ops::RateLimit;
use vdisk::{Error, Result};

/// Arguments of `commit`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
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

/// A `-r` rate as qemu-img reads it: a size, at most `i64::MAX`.
fn parse_rate(r: &str) -> Result<u64> {
    if r.trim_start().starts_with('-') {
        return Err(Error::invalid(format!(
            "Invalid rate limit specified. Must be between 0 and {}.",
            i64::MAX
        )));
    }
    let n = vdisk::size::parse_size(r)
        .map_err(|_| Error::invalid(format!("Invalid rate limit specified: '{r}'.")))?;
    if n > i64::MAX as u64 {
        return Err(Error::invalid(format!(
            "Invalid rate limit specified. Must be between 0 and {}.",
            i64::MAX
        )));
    }
    Ok(n)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.cache.get();
    let format = a.format.get()?;
    let rate = match &a.rate {
        Some(r) => RateLimit::new(parse_rate(r)?),
        None => None,
    };
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
