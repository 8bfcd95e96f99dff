//! `vdisk convert [-f FMT|--image-opts] [-l SNAPSHOT] -O FMT [-o OPTS|-n [--target-is-zero]
//! [--target-image-opts]] [-c] [-S SIZE] [-C] [-r RATE] [--salvage] [--bitmaps [--skip-broken-bitmaps]] [-m N] [-W] [-p]
//! [-t CACHE] [--object DEF] SRC... DST`

use crate::flags::{ForceShareFlag, ObjectFlag, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::convert::args::{parse_rate, parse_sparse_size, parse_workers};
use vdisk::ops::convert::{convert_file, option_help, FileConversion};
use vdisk::{Error, Result};

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    // -f, -o and -t are this command's own: qemu-img spells them --source-format,
    // --target-options and --target-cache here, and -t defaults to unsafe.
    /// Source format (probed when absent).
    #[arg(short = 'f', long = "source-format")]
    format: Option<String>,
    /// Output format (raw when absent).
    #[arg(short = 'O', long = "target-format")]
    output_format: Option<String>,
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
    /// Do not create the output: write into the existing image DST (of the -O format).
    #[arg(short = 'n', long = "no-create")]
    no_create: bool,
    /// With -n: the output already reads as zeros, so zero runs are not written.
    #[arg(long = "target-is-zero")]
    target_is_zero: bool,
    /// Runs of zeros at least this long are not written; 0 writes every byte.
    #[arg(short = 'S', long = "sparse-size", allow_hyphen_values = true)]
    sparse_size: Option<String>,
    /// Read an internal snapshot: snapshot.id=ID, snapshot.name=NAME, or ID-or-name.
    #[arg(short = 'l', long = "source-snapshot")]
    snapshot: Option<String>,
    // qemu-img 10 no longer has convert's old -s SNAPSHOT (-l replaced it) and refuses it
    // as an unknown option; so does vdisk, in the same words.
    #[arg(short = 's', hide = true, num_args = 0..=1, allow_hyphen_values = true)]
    old_snapshot: Option<Option<String>>,
    /// Copy offloading (accepted as qemu-img does; vdisk copies as usual).
    #[arg(short = 'C', long = "copy-range-offloading")]
    copy_range: bool,
    /// Most bytes written per second (suffixes k, M, G, ...).
    #[arg(short = 'r', long = "rate", allow_hyphen_values = true)]
    rate: Option<String>,
    /// Write zeros where the source cannot be read, warning for each sector.
    #[arg(long = "salvage")]
    salvage: bool,
    /// Copy the source's persistent dirty bitmaps (qcow2 to qcow2).
    #[arg(long = "bitmaps")]
    bitmaps: bool,
    /// With --bitmaps: skip inconsistent bitmaps, with a warning, instead of failing.
    #[arg(long = "skip-broken-bitmaps")]
    skip_broken_bitmaps: bool,
    /// The source arguments are option strings (driver=...,file.filename=...).
    #[arg(long = "image-opts", visible_alias = "source-image-opts")]
    image_opts: bool,
    /// The output argument is an option string (needs -n).
    #[arg(long = "target-image-opts")]
    target_image_opts: bool,
    #[command(flatten)]
    object: ObjectFlag,
    /// Source images (read one after another), then the output image.
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = &a.src_cache;
    if a.old_snapshot.is_some() {
        return Err(Error::invalid(
            "vdisk convert: invalid option -- 's'\nTry 'vdisk convert --help' for more info",
        ));
    }
    // qemu-img parses these as it meets them, before anything else.
    let workers = a.workers.as_deref().map(parse_workers).transpose()?;
    let sparse_size = a
        .sparse_size
        .as_deref()
        .map(parse_sparse_size)
        .transpose()?;
    let rate_limit = a.rate.as_deref().map(parse_rate).transpose()?;
    a.object.registry()?;
    // clap requires at least one file.
    let Some((target, sources)) = a.files.split_last() else {
        return Err(Error::invalid("Must specify image file name"));
    };
    let job = FileConversion {
        sources,
        target,
        src_format: a.format.as_deref(),
        image_opts: a.image_opts,
        snapshot: a.snapshot.as_deref(),
        force_share: a.force_share.on(),
        dst_format: a.output_format.as_deref(),
        target_image_opts: a.target_image_opts,
        options: &a.options,
        cache: &a.cache,
        compress: a.compress,
        workers: workers.unwrap_or(0),
        out_of_order: a.out_of_order,
        backing: a.backing.as_deref(),
        backing_format: a.backing_format.as_deref(),
        no_create: a.no_create,
        target_is_zero: a.target_is_zero,
        sparse_size,
        copy_range: a.copy_range,
        rate_limit,
        salvage: a.salvage,
        bitmaps: a.bitmaps,
        skip_broken_bitmaps: a.skip_broken_bitmaps,
    };
    if let Some(help) = option_help(&job)? {
        crate::output::out!("{help}")?;
        return Ok(ExitCode::SUCCESS);
    }
    // The bar starts once the sources are open: convert_file then reports (0, size).
    let enabled = a.progress.on() && !a.quiet.on();
    let mut bar = None;
    convert_file(
        &job,
        &mut |d, t| {
            bar.get_or_insert_with(|| Progress::new(enabled, t))
                .update(d, t)
        },
        &mut |w| eprintln!("vdisk: warning: {w}"),
    )?;
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(ExitCode::SUCCESS)
}
