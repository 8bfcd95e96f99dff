//! `vdisk convert [-f FMT] -O FMT [-o OPTS] [-c] [-m N] [-W] [-p] [-t CACHE] SRC DST`

use crate::flags::{is_unsafe_cache, parse_option_lists, ForceShareFlag, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::Format;
use vdisk::ops::convert::{convert_file, FileConversion};
use vdisk::{Error, Result};

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    // -f, -o and -t are this command's own: qemu-img spells them --source-format,
    // --target-options and --target-cache here, and -t defaults to unsafe.
    /// Source format (probed when absent).
    #[arg(short = 'f', long = "source-format")]
    format: Option<String>,
    /// Output format.
    #[arg(short = 'O', long = "target-format", default_value = "raw")]
    output_format: String,
    /// Output format options (key=value, comma-separated).
    #[arg(short = 'o', long = "target-options", action = clap::ArgAction::Append)]
    options: Vec<String>,
    #[command(flatten)]
    progress: ProgressFlag,
    /// Compress the output (qcow2: compressed clusters; -o compression_type=zlib|zstd).
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    /// Worker threads for reading, zero detection and compression, 1 to 16 (default: all
    /// cores).
    #[arg(short = 'm', long = "parallel", allow_hyphen_values = true)]
    workers: Option<String>,
    /// Allow out-of-order writes to the output (where its format allows them).
    #[arg(short = 'W', long = "oob-writes")]
    out_of_order: bool,
    /// Output cache mode: unsafe (default, as qemu-img: no fsync), writeback, none.
    #[arg(short = 't', long = "target-cache", default_value = "unsafe")]
    cache: String,
    /// Source cache mode (accepted for qemu-img compatibility).
    #[arg(short = 'T', long = "source-cache")]
    src_cache: Option<String>,
    #[command(flatten)]
    quiet: QuietFlag,
    // Read the source without locking out other users of it.
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Write only what differs from this backing file, which the output records.
    #[arg(short = 'B', long = "backing")]
    backing: Option<String>,
    /// Format of the -B backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    /// Source image.
    src: PathBuf,
    /// Output image.
    dst: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = &a.src_cache;
    let workers = a.workers.as_deref().map(parse_workers).transpose()?;
    let unsafe_cache = is_unsafe_cache(&a.cache)?;
    let src_format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let dst_format: Format = a.output_format.parse()?;
    let options = parse_option_lists(&a.options)?;
    let job = FileConversion {
        src_format,
        force_share: a.force_share.on(),
        dst_format,
        options: &options,
        unsafe_cache,
        compress: a.compress,
        workers: workers.unwrap_or(0),
        out_of_order: a.out_of_order,
        backing: a
            .backing
            .as_deref()
            .map(|b| (b, a.backing_format.as_deref())),
    };
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), 0);
    convert_file(&a.src, &a.dst, &job, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

/// The most `-m` workers qemu-img allows (its `MAX_COROUTINES`).
const MAX_WORKERS: i64 = 16;

/// Parse `-m` as qemu-img does: a C integer (decimal, `0x` hex or `0` octal, optional sign
/// and leading blanks) from 1 to 16, with qemu-img's two messages.
fn parse_workers(s: &str) -> Result<usize> {
    let range = || {
        Error::invalid(format!(
            "Invalid number of coroutines specified. Must be between 1 and {MAX_WORKERS}."
        ))
    };
    let syntax = || Error::invalid(format!("Invalid number of coroutines specified: '{s}'."));
    let t = s.trim_start();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(syntax());
    }
    let n = i64::from_str_radix(digits, radix).map_err(|_| range())?;
    let n = if negative { -n } else { n };
    if !(1..=MAX_WORKERS).contains(&n) {
        return Err(range());
    }
    Ok(n as usize)
}
