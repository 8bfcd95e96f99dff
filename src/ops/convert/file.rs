//! `convert` of images named on the command line: refuse flags that do not go together, open
//! the sources (`--image-opts` strings, at snapshot `-l`, several read one after another),
//! and copy them into a new image (removing its files again if the copy fails), into an
//! existing one (`-n`), or, with a backing file for the target (`-B`), only what differs
//! from it.

use super::args::is_unsafe_cache;
use super::bitmaps;
use super::sequential::{self, SequentialTarget};
use super::source::{open_snapshot, parse_snapshot_param, Concat};
use super::{convert_salvaging, ConvertOptions, Progress};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::opts::ImageSpec;
use crate::image::{self, Format, Image, ImageOptions, NewFiles};
use crate::ops::create;
use std::path::{Path, PathBuf};

/// How to convert image files into another, as qemu-img convert's flags say. Formats and
/// the cache mode are names, read (and refused) in qemu-img's order by [`convert_file`].
#[derive(Debug, Clone)]
pub struct FileConversion<'a> {
    /// The source images, read one after another as one disk.
    pub sources: &'a [PathBuf],
    /// The output image.
    pub target: &'a Path,
    /// The source format (`-f`); `None` probes it.
    pub src_format: Option<&'a str>,
    /// The sources are `--image-opts` option strings.
    pub image_opts: bool,
    /// Read the sources at this internal snapshot (`-l`).
    pub snapshot: Option<&'a str>,
    /// Read the sources without locking out other users of them (`-U`).
    pub force_share: bool,
    /// The output format (`-O`); raw when `None`.
    pub dst_format: Option<&'a str>,
    /// The target is an option string (`--target-image-opts`, needs `-n`).
    pub target_image_opts: bool,
    /// The output's `-o` lists (`key=value,...`), in order.
    pub options: &'a [String],
    /// The output's cache mode (`-t`): `unsafe` skips fdatasync.
    pub cache: &'a str,
    /// Write compressed clusters (`-c`).
    pub compress: bool,
    /// Worker threads (`-m`); 0 means one per available core.
    pub workers: usize,
    /// Let the writer apply windows as they complete (`-W`).
    pub out_of_order: bool,
    /// A backing file for the target (`-B`): the target records it and holds only what
    /// differs from it.
    pub backing: Option<&'a str>,
    /// The format of the `-B` backing file (`-F`), which must be given with it.
    pub backing_format: Option<&'a str>,
    /// Write into the existing image `target` (`-n`).
    pub no_create: bool,
    /// With `no_create`: the target already reads as zeros (`--target-is-zero`).
    pub target_is_zero: bool,
    /// `-S`: zero runs at least this long are not written; `Some(0)` writes every byte.
    pub sparse_size: Option<u64>,
    /// Copy offloading asked for (`-C`): checked against other flags, then copied as usual.
    pub copy_range: bool,
    /// Most bytes written per second (`-r`).
    pub rate_limit: Option<u64>,
    /// Write zeros where a source cannot be read, with a warning for each (`--salvage`).
    pub salvage: bool,
    /// Copy the source's persistent bitmaps (`--bitmaps`).
    pub bitmaps: bool,
    /// With `bitmaps`: leave out inconsistent ones with a warning instead of failing
    /// (`--skip-broken-bitmaps`).
    pub skip_broken_bitmaps: bool,
}

/// Run the conversion `job`. `progress` is called with `(0, size)` once the sources are
/// open, then as the copy advances; `warn` gets each warning (an `--image-opts`
/// spelling, an unreadable sector with `--salvage`) without a prefix.
pub fn convert_file(
    job: &FileConversion<'_>,
    progress: Progress<'_>,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    refuse_combinations(job)?;
    let unsafe_cache = is_unsafe_cache(job.cache)?;
    let src_format: Option<Format> = job.src_format.map(str::parse).transpose()?;
    let carried = match job.bitmaps {
        true => Some(bitmaps::collect(
            job.sources,
            src_format,
            job.skip_broken_bitmaps,
            warn,
        )?),
        false => None,
    };
    if carried.is_some() && !job.no_create {
        bitmaps::refuse_target(target_format(job)?, 3)?;
    }
    let mut src = open_sources(job, src_format, warn)?;
    progress(0, src.virtual_size());
    let copts = ConvertOptions {
        zero_granularity: match job.sparse_size {
            Some(s) if s > 0 && !job.compress => s,
            _ => 0,
        },
        unallocated_is_zero: true,
        compress: job.compress,
        workers: job.workers,
        out_of_order: job.out_of_order,
        fully_allocate: job.sparse_size == Some(0),
        target_dirty: job.no_create && !job.target_is_zero,
        salvage: job.salvage,
        rate_limit: job.rate_limit.unwrap_or(0),
    };
    if job.no_create {
        convert_into_existing(job, src.as_mut(), copts, unsafe_cache, progress, warn)?;
        return match &carried {
            Some(c) => bitmaps::add_to(job.target, c),
            None => Ok(()),
        };
    }
    // The bitmaps are added once the copy is done: until then the output is removed on a
    // failure (the copy's own guard has let go of it by then).
    let files = carried
        .as_ref()
        .map(|_| NewFiles::before_create(job.target, Format::QCOW2, 0, &[]));
    if job.backing.is_some() {
        convert_onto_backing(job, src.as_mut(), copts, unsafe_cache, progress)?;
    } else {
        convert_into_new(job, src.as_mut(), copts, unsafe_cache, progress, warn)?;
    }
    if let (Some(c), Some(files)) = (&carried, files) {
        bitmaps::add_to(job.target, c)?;
        files.keep();
    }
    Ok(())
}

/// What `convert -o help` (or `?`) prints, when the job's `-o` lists ask for it: as
/// create's, the output format's options with the file's (a target name is given).
pub fn option_help(job: &FileConversion<'_>) -> Result<Option<String>> {
    refuse_combinations(job)?;
    is_unsafe_cache(job.cache)?;
    let options = image::parse_option_lists(job.options)?;
    Ok(crate::ops::create::help(
        target_format(job)?,
        &options,
        true,
    ))
}

/// The flags refused together, checked before anything is opened, in qemu-img's order.
fn refuse_combinations(job: &FileConversion<'_>) -> Result<()> {
    let refuse = |m: &str| Err(Error::invalid(m));
    if job.skip_broken_bitmaps && !job.bitmaps {
        return refuse("Use of --skip-broken-bitmaps requires --bitmaps");
    }
    if job.compress && job.copy_range {
        return refuse("Cannot enable copy offloading when -c is used");
    }
    if job.sparse_size.is_some() && job.copy_range {
        return refuse("Cannot enable copy offloading when -S is used");
    }
    if job.target_is_zero && !job.no_create {
        return refuse("--target-is-zero requires use of -n flag");
    }
    if job.copy_range && job.salvage {
        return refuse("Cannot use copy offloading in salvaging mode");
    }
    if job.target_image_opts && !job.no_create {
        return refuse("--target-image-opts requires use of -n flag");
    }
    if job.no_create && !job.options.is_empty() {
        return refuse("-o has no effect when skipping image creation");
    }
    if job.image_opts && job.src_format.is_some() {
        return refuse("--image-opts and --format are mutually exclusive");
    }
    if job.target_image_opts && job.dst_format.is_some() {
        return refuse("--image-opts and --format are mutually exclusive");
    }
    if job.sources.is_empty() {
        return refuse("Must specify image file name");
    }
    if job.sources.len() > 1 && job.snapshot.is_some() {
        return refuse("No support for concatenating multiple snapshot");
    }
    if job.sources.len() > 1 && job.backing.is_some() {
        return refuse("Having a backing file for the target makes no sense when concatenating multiple input images");
    }
    Ok(())
}

/// `-c` onto a format without compression is refused before the output is created or
/// opened, as qemu-img does.
fn refuse_compression(job: &FileConversion<'_>, format: Format) -> Result<()> {
    if job.compress && !format.supports_compression() {
        return Err(Error::invalid(
            "Compression not supported for this file format",
        ));
    }
    let options = image::parse_option_lists(job.options)?;
    if job.compress
        && options
            .iter()
            .any(|(k, v)| k == "data_file" && !v.is_empty())
    {
        return Err(Error::invalid(
            "Compression is not supported in an image with an external data file",
        ));
    }
    let encrypted = |(k, v): &(String, String)| {
        (k == "encrypt.format" && !v.is_empty()) || (k == "encryption" && v == "on")
    };
    if job.compress && options.iter().any(encrypted) {
        return Err(Error::invalid(
            "Compression and encryption not supported at the same time",
        ));
    }
    Ok(())
}

/// `--bitmaps` into an image written sequentially: the bitmaps are added to an image
/// after its data, by rewriting its header.
fn refuse_bitmaps() -> Error {
    Error::unsupported(
        "--bitmaps into a qcow2 image written sequentially (to an upload stream): bitmaps are added by rewriting the finished image; convert to a local file, then upload it",
    )
}

/// The warning `--salvage` gives for the unreadable sector at `offset`.
fn unreadable(warn: &mut dyn FnMut(&str), offset: u64) {
    warn(&format!(
        "error while reading offset {offset}: Input/output error"
    ));
}

/// The `-O` format, raw when none is given.
fn target_format(job: &FileConversion<'_>) -> Result<Format> {
    job.dst_format.unwrap_or("raw").parse()
}

/// The output's `-o` options, checked as qemu-img convert checks them: names and value
/// types first (those errors do not name the file), then what creating the image would
/// refuse (`FILE: error while converting FORMAT: reason`).
fn checked_options(
    dst: &Path,
    format: Format,
    opts: Vec<(String, String)>,
) -> Result<Vec<(String, String)>> {
    let normal = image::normalise_create_options(format, &opts)?;
    image::check_normalised_options(format, &normal)
        .map_err(|e| create::conversion_refusal(dst, format, e))?;
    Ok(opts)
}

/// Copy into a new image `target`; until the copy succeeds, a failure removes the files
/// the output is made of.
fn convert_into_new(
    job: &FileConversion<'_>,
    src: &mut dyn BlockDevice,
    copts: ConvertOptions,
    unsafe_cache: bool,
    progress: Progress<'_>,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    let dst_format = target_format(job)?;
    refuse_compression(job, dst_format)?;
    let opts = image::parse_option_lists(job.options)?;
    let (dst, size) = (job.target, src.virtual_size());
    let opts = checked_options(dst, dst_format, opts)?;
    let files = NewFiles::before_create(dst, dst_format, size, &opts);
    if let Some(storage) = sequential::remote_qcow2_storage(dst, dst_format, unsafe_cache)? {
        if job.bitmaps {
            return Err(refuse_bitmaps());
        }
        // A raw source's allocation includes the zeros written to it: read it once more
        // rather than upload them.
        let target = SequentialTarget {
            storage,
            options: &opts,
            backing: None,
            scan_zeros: src.cluster_size().is_none(),
        };
        sequential::convert_remote(src, target, copts, progress, &mut |o| unreadable(warn, o))?;
        files.keep();
        return Ok(());
    }
    let mut out = image::create_with_cache(dst, dst_format, Some(size), &opts, unsafe_cache)
        .map_err(|e| create::conversion_refusal(dst, dst_format, e))?;
    convert_salvaging(src, out.as_mut(), copts, progress, &mut |o| {
        unreadable(warn, o)
    })?;
    files.keep();
    Ok(())
}

/// `-n`: copy into the existing image `target` (of the `-O` format, raw by default, or as
/// its `--target-image-opts` say), which must be at least as large as the source.
fn convert_into_existing(
    job: &FileConversion<'_>,
    src: &mut dyn BlockDevice,
    copts: ConvertOptions,
    unsafe_cache: bool,
    progress: Progress<'_>,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    let dst_ref = ImageSpec::resolve(job.target_image_opts, job.target, None)?;
    for w in &dst_ref.warnings {
        warn(w);
    }
    let dst_format: Format = match (dst_ref.format, job.dst_format) {
        (Some(f), _) => f,
        (None, Some(f)) => f.parse()?,
        (None, None) => Format::RAW,
    };
    refuse_compression(job, dst_format)?;
    let mut dst = image::open(
        &dst_ref.path,
        &ImageOptions {
            format: Some(dst_format),
            unsafe_cache,
            no_backing: dst_ref.no_backing,
            ..Default::default()
        },
    )?;
    if dst.device.virtual_size() < src.virtual_size() {
        return Err(Error::invalid("output file is smaller than input file"));
    }
    convert_salvaging(src, dst.device.as_mut(), copts, progress, &mut |o| {
        unreadable(warn, o)
    })
}

/// `-B`: the output is a new overlay over the backing file, holding only the differences.
fn convert_onto_backing(
    job: &FileConversion<'_>,
    src: &mut dyn BlockDevice,
    copts: ConvertOptions,
    unsafe_cache: bool,
    progress: Progress<'_>,
) -> Result<()> {
    let dst_format = target_format(job)?;
    refuse_compression(job, dst_format)?;
    let mut opts = image::parse_option_lists(job.options)?;
    let (Some(b), dst) = (job.backing, job.target) else {
        return Err(Error::invalid("convert -B needs a backing file"));
    };
    let f = job
        .backing_format
        .ok_or_else(|| Error::invalid("convert -B needs -F with the backing file's format"))?;
    opts.push(("backing_file".into(), b.to_string()));
    opts.push(("backing_fmt".into(), f.to_string()));
    let size = src.virtual_size();
    let opts = checked_options(dst, dst_format, opts)?;
    // Until the copy succeeds, a failure removes the files the output is made of.
    let files = NewFiles::before_create(dst, dst_format, size, &opts);
    if let Some(storage) = sequential::remote_qcow2_storage(dst, dst_format, unsafe_cache)? {
        if job.bitmaps {
            return Err(refuse_bitmaps());
        }
        let mut backing = image::open_backing_of(
            dst,
            dst_format,
            &crate::driver::BackingRef {
                name: b.to_string(),
                format: Some(f.to_string()),
            },
        )?;
        let target = SequentialTarget {
            storage,
            options: &opts,
            backing: Some(backing.as_mut()),
            scan_zeros: false,
        };
        sequential::convert_remote(src, target, copts, progress, &mut |_| {})?;
        files.keep();
        return Ok(());
    }
    image::create_with_cache(dst, dst_format, Some(size), &opts, unsafe_cache)
        .map_err(|e| create::conversion_refusal(dst, dst_format, e))?
        .close()?;
    let mut out = image::open(
        dst,
        &ImageOptions {
            format: Some(dst_format),
            unsafe_cache,
            ..Default::default()
        },
    )?;
    crate::ops::chain_ops::copy_differences(src, out.device.as_mut(), progress)?;
    out.device.close()?;
    files.keep();
    Ok(())
}

/// Open the source images (option strings with `--image-opts`), at snapshot `-l` when
/// given, as one device read in order.
fn open_sources(
    job: &FileConversion<'_>,
    format: Option<Format>,
    warn: &mut dyn FnMut(&str),
) -> Result<Box<dyn BlockDevice>> {
    let snapshot = job.snapshot.map(parse_snapshot_param).transpose()?;
    let mut parts = Vec::new();
    for name in job.sources {
        let r = ImageSpec::resolve(job.image_opts, name, format)?;
        for w in &r.warnings {
            warn(w);
        }
        let opts = ImageOptions {
            format: r.format,
            read_only: true,
            force_share: job.force_share,
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
