//! `vdisk convert [-f FMT|--image-opts] [-l SNAPSHOT] -O FMT [-o OPTS|-n [--target-is-zero]
//! [--target-image-opts]] [-c] [-S SIZE] [-C] [-r RATE] [--salvage] [-m N] [-W] [-p]
//! [-t CACHE] [--object DEF] SRC... DST`

use crate::flags::{
    is_unsafe_cache, parse_option_lists, resolve_image, ForceShareFlag, ObjectFlag, ProgressFlag,
    QuietFlag,
};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, Image, ImageOptions, NewFiles};
use vdisk::ops::convert::source::{open_snapshot, parse_snapshot_param, Concat};
use vdisk::ops::convert::{convert_salvaging, ConvertOptions, SECTOR};
use vdisk::{BlockDevice, Error, Result};

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

/// The flags checked before anything is opened, in qemu-img's order.
fn refuse_combinations(a: &Args) -> Result<()> {
    let refuse = |m: &str| Err(Error::invalid(m));
    if a.compress && a.copy_range {
        return refuse("Cannot enable copy offloading when -c is used");
    }
    if a.sparse_size.is_some() && a.copy_range {
        return refuse("Cannot enable copy offloading when -S is used");
    }
    if a.target_is_zero && !a.no_create {
        return refuse("--target-is-zero requires use of -n flag");
    }
    if a.copy_range && a.salvage {
        return refuse("Cannot use copy offloading in salvaging mode");
    }
    if a.target_image_opts && !a.no_create {
        return refuse("--target-image-opts requires use of -n flag");
    }
    if a.no_create && !a.options.is_empty() {
        return refuse("-o has no effect when skipping image creation");
    }
    if a.image_opts && a.format.is_some() {
        return refuse("--image-opts and --format are mutually exclusive");
    }
    if a.target_image_opts && a.output_format.is_some() {
        return refuse("--image-opts and --format are mutually exclusive");
    }
    if a.files.len() < 2 {
        return refuse("Must specify image file name");
    }
    if a.files.len() > 2 && a.snapshot.is_some() {
        return refuse("No support for concatenating multiple snapshot");
    }
    if a.files.len() > 2 && a.backing.is_some() {
        return refuse("Having a backing file for the target makes no sense when concatenating multiple input images");
    }
    Ok(())
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
    let sparse = a
        .sparse_size
        .as_deref()
        .map(parse_sparse_size)
        .transpose()?;
    let rate = a.rate.as_deref().map(parse_rate).transpose()?;
    a.object.registry()?;
    refuse_combinations(&a)?;
    let unsafe_cache = is_unsafe_cache(&a.cache)?;
    let src_format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let dst_format: Format = a.output_format.as_deref().unwrap_or("raw").parse()?;
    // As create's -o help: the output's options, with the file's (a target name is given).
    let opts = parse_option_lists(&a.options)?;
    if let Some(help) = vdisk::ops::create::help(dst_format, &opts, true) {
        crate::output::out!("{help}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut src = open_sources(&a, &a.files[..a.files.len() - 1], src_format)?;
    let size = src.virtual_size();
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), size);
    let copts = ConvertOptions {
        zero_granularity: match sparse {
            Some(s) if s > 0 && !a.compress => s,
            _ => 0,
        },
        unallocated_is_zero: true,
        compress: a.compress,
        workers: workers.unwrap_or(0),
        out_of_order: a.out_of_order,
        fully_allocate: sparse == Some(0),
        target_dirty: a.no_create && !a.target_is_zero,
        salvage: a.salvage,
        rate_limit: rate.unwrap_or(0),
    };
    let mut unreadable = |offset: u64| {
        eprintln!("vdisk: warning: error while reading offset {offset}: Input/output error");
    };
    let mut progress = |d, t| bar.update(d, t);
    if a.no_create {
        convert_into_existing(&a, src.as_mut(), copts, &mut progress, &mut unreadable)?;
    } else if a.backing.is_some() {
        convert_onto_backing(&a, src.as_mut(), unsafe_cache, &mut progress)?;
    } else {
        let dst_format: Format = a.output_format.as_deref().unwrap_or("raw").parse()?;
        refuse_compression(&a, dst_format)?;
        let opts = parse_option_lists(&a.options)?;
        let dst = &a.files[a.files.len() - 1];
        let files = NewFiles::before_create(dst, dst_format, size, &opts);
        let mut out = image::create_with_cache(dst, dst_format, Some(size), &opts, unsafe_cache)?;
        convert_salvaging(
            src.as_mut(),
            out.as_mut(),
            copts,
            &mut progress,
            &mut unreadable,
        )?;
        files.keep();
    }
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

/// `-c` onto a format without compression is refused before the output is created or
/// opened, as qemu-img does.
fn refuse_compression(a: &Args, format: Format) -> Result<()> {
    if a.compress && !format.supports_compression() {
        return Err(Error::invalid(
            "Compression not supported for this file format",
        ));
    }
    Ok(())
}

/// `-n`: copy into the existing image named last (of the `-O` format, raw by default, or
/// as its `--target-image-opts` say), which must be at least as large as the source.
fn convert_into_existing(
    a: &Args,
    src: &mut dyn BlockDevice,
    copts: ConvertOptions,
    progress: vdisk::ops::convert::Progress<'_>,
    unreadable: &mut dyn FnMut(u64),
) -> Result<()> {
    let dst_ref = resolve_image(a.target_image_opts, &a.files[a.files.len() - 1], None)?;
    let dst_format: Format = match (dst_ref.format, &a.output_format) {
        (Some(f), _) => f,
        (None, Some(f)) => f.parse()?,
        (None, None) => Format::RAW,
    };
    refuse_compression(a, dst_format)?;
    let mut dst = image::open(
        &dst_ref.path,
        &ImageOptions {
            format: Some(dst_format),
            unsafe_cache: is_unsafe_cache(&a.cache)?,
            no_backing: dst_ref.no_backing,
            ..Default::default()
        },
    )?;
    if dst.device.virtual_size() < src.virtual_size() {
        return Err(Error::invalid("output file is smaller than input file"));
    }
    convert_salvaging(src, dst.device.as_mut(), copts, progress, unreadable)
}

/// `-B`: the output is a new overlay over the backing file, holding only the differences.
fn convert_onto_backing(
    a: &Args,
    src: &mut dyn BlockDevice,
    unsafe_cache: bool,
    progress: vdisk::ops::convert::Progress<'_>,
) -> Result<()> {
    let dst_format: Format = a.output_format.as_deref().unwrap_or("raw").parse()?;
    refuse_compression(a, dst_format)?;
    let mut opts = parse_option_lists(&a.options)?;
    let (Some(b), dst) = (&a.backing, &a.files[a.files.len() - 1]) else {
        return Err(Error::invalid("convert -B needs a backing file"));
    };
    let f = a
        .backing_format
        .as_deref()
        .ok_or_else(|| Error::invalid("convert -B needs -F with the backing file's format"))?;
    opts.push(("backing_file".into(), b.clone()));
    opts.push(("backing_fmt".into(), f.to_string()));
    let size = src.virtual_size();
    // Until the copy succeeds, a failure removes the files the output is made of.
    let files = NewFiles::before_create(dst, dst_format, size, &opts);
    image::create_with_cache(dst, dst_format, Some(size), &opts, unsafe_cache)?.close()?;
    let mut out = image::open(
        dst,
        &ImageOptions {
            format: Some(dst_format),
            unsafe_cache,
            ..Default::default()
        },
    )?;
    vdisk::ops::chain_ops::copy_differences(src, out.device.as_mut(), progress)?;
    out.device.close()?;
    files.keep();
    Ok(())
}

/// Open the source images (option strings with `--image-opts`), at snapshot `-l` when
/// given, as one device read in order.
fn open_sources(
    a: &Args,
    names: &[PathBuf],
    format: Option<Format>,
) -> Result<Box<dyn BlockDevice>> {
    let snapshot = a
        .snapshot
        .as_deref()
        .map(parse_snapshot_param)
        .transpose()?;
    let mut parts = Vec::new();
    for name in names {
        let r = resolve_image(a.image_opts, name, format)?;
        let opts = ImageOptions {
            format: r.format,
            read_only: true,
            force_share: a.force_share.on(),
            // As qemu-img convert: no one may write the source while it is copied.
            stable_source: true,
            no_backing: r.no_backing,
            ..Default::default()
        };
        let Image { device, .. } = match &snapshot {
            Some(candidates) => open_snapshot(&r.path, &opts, candidates)?,
            None => image::open(&r.path, &opts)?,
        };
        parts.push(device);
    }
    if parts.len() == 1 {
        return parts
            .pop()
            .ok_or_else(|| Error::invalid("Must specify image file name"));
    }
    Ok(Box::new(Concat::new(parts)?))
}

/// The largest `-S` qemu-img takes (its 16 MiB buffer).
const MAX_SPARSE_SIZE: u64 = 16 << 20;

/// Parse `-S` as qemu-img does: a size (with suffixes) that is a multiple of 512 up to
/// 16 MiB, or 0.
fn parse_sparse_size(s: &str) -> Result<u64> {
    let n = parse_qemu_size(s, "Invalid buffer size for sparse output specified")?;
    if n % SECTOR != 0 || n > MAX_SPARSE_SIZE {
        return Err(Error::invalid(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE_SIZE}. Select 0 to disable sparse detection (fully allocates output)."
        )));
    }
    Ok(n)
}

/// Parse `-r` as qemu-img does: bytes per second, with size suffixes.
fn parse_rate(s: &str) -> Result<u64> {
    parse_qemu_size(s, "Invalid rate limit specified")
}

/// A size argument with qemu-img's two messages: `what: 'S'.` for a malformed one and
/// `what. Must be between 0 and i64::MAX.` for one out of range.
fn parse_qemu_size(s: &str, what: &str) -> Result<u64> {
    let t = s.trim_start();
    if t.starts_with('-') {
        return Err(Error::invalid(format!(
            "{what}. Must be between 0 and {}.",
            i64::MAX
        )));
    }
    match vdisk::size::parse_size(t) {
        Ok(n) if n <= i64::MAX as u64 => Ok(n),
        Ok(_) => Err(Error::invalid(format!(
            "{what}. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(_) => Err(Error::invalid(format!("{what}: '{s}'."))),
    }
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
