//! `convert` of an image by path into a new image: open the source with its chain, create
//! the target (removing its files again if the copy fails), and copy, either everything
//! ([`super::convert`]) or, with a backing file for the target (`-B`), only what differs
//! from it.

use super::{convert, ConvertOptions, Progress};
use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions, NewFiles};
use std::path::Path;

/// How to convert one image file into another.
#[derive(Debug, Clone)]
pub struct FileConversion<'a> {
    /// The source format; `None` probes it.
    pub src_format: Option<Format>,
    /// Read the source without locking out other users of it (qemu-img `-U`).
    pub force_share: bool,
    /// The target format.
    pub dst_format: Format,
    /// The target's creation options (key, value), in order.
    pub options: &'a [(String, String)],
    /// Skip fdatasync while writing the target (qemu-img's cache=unsafe).
    pub unsafe_cache: bool,
    /// Write compressed clusters (`-c`).
    pub compress: bool,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Let the writer apply windows as they complete (`-W`).
    pub out_of_order: bool,
    /// A backing file for the target (`-B`): the target records it (with this format, which
    /// must be given) and holds only what differs from it.
    pub backing: Option<(&'a str, Option<&'a str>)>,
}

/// Convert the image at `src` into a new image at `dst`, as `job` says.
pub fn convert_file(
    src: &Path,
    dst: &Path,
    job: &FileConversion<'_>,
    progress: Progress<'_>,
) -> Result<()> {
    let dst_format = job.dst_format;
    let mut opts = job.options.to_vec();
    let mut src = image::open(
        src,
        &ImageOptions {
            format: job.src_format,
            read_only: true,
            force_share: job.force_share,
            ..Default::default()
        },
    )?;
    let size = src.device.virtual_size();
    if job.compress && !dst_format.supports_compression() {
        // Refused before the output file is created, as qemu-img does.
        return Err(Error::invalid(
            "Compression not supported for this file format",
        ));
    }
    if let Some((b, f)) = job.backing {
        // qemu-img convert -B: the output is an overlay holding only the differences.
        let f =
            f.ok_or_else(|| Error::invalid("convert -B needs -F with the backing file's format"))?;
        opts.push(("backing_file".into(), b.to_string()));
        opts.push(("backing_fmt".into(), f.to_string()));
        // Until the copy succeeds, a failure removes the files the output is made of.
        let files = NewFiles::before_create(dst, dst_format, size, &opts);
        image::create_with_cache(dst, dst_format, Some(size), &opts, job.unsafe_cache)?.close()?;
        let mut out = image::open(
            dst,
            &ImageOptions {
                format: Some(dst_format),
                unsafe_cache: job.unsafe_cache,
                ..Default::default()
            },
        )?;
        crate::ops::chain_ops::copy_differences(
            src.device.as_mut(),
            out.device.as_mut(),
            progress,
        )?;
        out.device.close()?;
        files.keep();
        return Ok(());
    }
    let files = NewFiles::before_create(dst, dst_format, size, &opts);
    let mut out = image::create_with_cache(dst, dst_format, Some(size), &opts, job.unsafe_cache)?;
    let copts = ConvertOptions {
        zero_granularity: 0,
        unallocated_is_zero: true,
        compress: job.compress,
        workers: job.workers,
        out_of_order: job.out_of_order,
        fully_allocate: false,
        target_dirty: false,
        salvage: false,
        rate_limit: 0,
    };
    convert(src.device.as_mut(), out.as_mut(), copts, progress)?;
    files.keep();
    Ok(())
}
