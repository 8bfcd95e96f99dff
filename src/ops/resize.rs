//! `resize` of an image by path, with qemu-img's rules: the size may be relative (`+1G`,
//! `-512M`), shrinking needs `shrink`, preallocation applies to the added part only. What
//! else a format allows, and how it resizes, is its driver's [`ResizePolicy`].

use crate::create_opts::option_size;
use crate::driver::{ResizeJob, ResizePolicy};
use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::storage::HostFiles;
use crate::Preallocation;
use std::path::Path;

/// Resize the image at `file` (format `format`, probed when `None`) to the size `spec`
/// asks for (absolute, or `+SIZE`/`-SIZE` relative to the current one).
pub fn resize(
    file: &Path,
    format: Option<Format>,
    spec: &str,
    shrink: bool,
    prealloc: Preallocation,
) -> Result<()> {
    let format = image::format_for_writing(file, format)?;
    let Some(policy) = format.driver().resize else {
        return refuse(file, format, spec, shrink, prealloc);
    };
    let mut new_size = |current| {
        let size = new_size(spec, current)?;
        check_policy(&policy, current, size, prealloc)?;
        check_direction(shrink, current, size, prealloc)?;
        Ok(size)
    };
    let mut open_backing = |b: &_| image::open_backing_of(file, format, b);
    let job = ResizeJob {
        new_size: &mut new_size,
        preallocation: prealloc,
        open_backing: &mut open_backing,
    };
    (policy.resize)(&HostFiles, file, job)
}

/// A format that cannot resize, refused as qemu-img refuses it: once the new size has been
/// checked against the current one.
fn refuse(
    file: &Path,
    format: Format,
    spec: &str,
    shrink: bool,
    prealloc: Preallocation,
) -> Result<()> {
    let img = image::open(
        file,
        &image::ImageOptions {
            format: Some(format),
            no_backing: true,
            ..Default::default()
        },
    )?;
    let current = img.device.virtual_size();
    let size = new_size(spec, current)?;
    check_direction(shrink, current, size, prealloc)?;
    // qemu-img's words.
    Err(Error::invalid(
        "Image format driver does not support resize",
    ))
}

/// What the format's policy refuses: a size that is not whole sectors, a preallocation
/// mode it does not have, shrinking.
fn check_policy(
    policy: &ResizePolicy,
    current: u64,
    size: u64,
    prealloc: Preallocation,
) -> Result<()> {
    if policy.whole_sectors && size % 512 != 0 {
        return Err(Error::invalid("The new size must be a multiple of 512"));
    }
    if !policy.preallocation.contains(&prealloc) {
        return Err(Error::invalid(format!(
            "Unsupported preallocation mode: {}",
            prealloc.name()
        )));
    }
    if size < current && !policy.shrink {
        return Err(Error::unsupported(
            "Image format does not support shrinking",
        ));
    }
    Ok(())
}

/// The new size asked for by `spec` (absolute or relative to `current`).
pub fn new_size(spec: &str, current: u64) -> Result<u64> {
    let positive = || Error::invalid("New image size must be positive");
    let size = if let Some(d) = spec.strip_prefix('+') {
        current
            .checked_add(option_size("size", d)?)
            .ok_or_else(|| Error::invalid("New image size is too large"))?
    } else if let Some(d) = spec.strip_prefix('-') {
        current
            .checked_sub(option_size("size", d)?)
            .ok_or_else(positive)?
    } else {
        option_size("size", spec)?
    };
    if size == 0 {
        return Err(positive());
    }
    Ok(size)
}

/// qemu-img's rules: shrinking needs --shrink, and preallocation only applies to growing.
fn check_direction(shrink: bool, current: u64, size: u64, prealloc: Preallocation) -> Result<()> {
    if size < current && !shrink {
        return Err(Error::invalid(
            "Use the --shrink option to perform a shrink operation.\nvdisk: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        ));
    }
    if size < current && prealloc != Preallocation::Off {
        return Err(Error::invalid(
            "Preallocation can only be used for growing images",
        ));
    }
    Ok(())
}
