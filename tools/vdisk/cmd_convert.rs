//! `vdisk convert [-f FMT] -O FMT [-o OPTS] [-c] [-m N] [-W] [-p] [-t CACHE] SRC DST`

use crate::flags::{is_unsafe_cache, parse_option_lists, ForceShareFlag, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions, NewFiles};
use vdisk::ops::convert::{convert, ConvertOptions};
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
    let mut opts = parse_option_lists(&a.options)?;
    if vdisk::create_opts::wants_help(&opts) {
        // As create's: the output's options, with the file's (a target name is given).
        let help = vdisk::create_opts::create_help(
            dst_format.name(),
            dst_format.driver().create_options,
            true,
        );
        crate::output::out!("{help}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut src = image::open(
        &a.src,
        &ImageOptions {
            format: src_format,
            read_only: true,
            force_share: a.force_share.on(),
            // As qemu-img convert: no one may write the source while it is copied.
            stable_source: true,
            ..Default::default()
        },
    )?;
    let size = src.device.virtual_size();
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), size);
    if a.compress && !dst_format.supports_compression() {
        // Refused before the output file is created, as qemu-img does.
        return Err(Error::invalid(
            "Compression not supported for this file format",
        ));
    }
    if let Some(b) = &a.backing {
        // qemu-img convert -B: the output is an overlay holding only the differences.
        let f = a
            .backing_format
            .as_deref()
            .ok_or_else(|| Error::invalid("convert -B needs -F with the backing file's format"))?;
        opts.push(("backing_file".into(), b.clone()));
        opts.push(("backing_fmt".into(), f.to_string()));
        // Until the copy succeeds, a failure removes the files the output is made of.
        let files = NewFiles::before_create(&a.dst, dst_format, size, &opts);
        image::create_with_cache(&a.dst, dst_format, Some(size), &opts, unsafe_cache)?.close()?;
        let mut dst = image::open(
            &a.dst,
            &ImageOptions {
                format: Some(dst_format),
                unsafe_cache,
                ..Default::default()
            },
        )?;
        vdisk::ops::chain_ops::copy_differences(
            src.device.as_mut(),
            dst.device.as_mut(),
            &mut |d, t| bar.update(d, t),
        )?;
        dst.device.close()?;
        files.keep();
        bar.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let files = NewFiles::before_create(&a.dst, dst_format, size, &opts);
    let mut dst = image::create_with_cache(&a.dst, dst_format, Some(size), &opts, unsafe_cache)?;
    let copts = ConvertOptions {
        zero_granularity: 0,
        unallocated_is_zero: true,
        compress: a.compress,
        workers: workers.unwrap_or(0),
        out_of_order: a.out_of_order,
    };
    convert(src.device.as_mut(), dst.as_mut(), copts, &mut |d, t| {
        bar.update(d, t)
    })?;
    files.keep();
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
