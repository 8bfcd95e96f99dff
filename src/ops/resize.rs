//! `resize` of an image by path, with qemu-img's rules: the size may be relative (`+1G`,
//! `-512M`), shrinking needs `shrink`, preallocation applies to the added part only. qcow2
//! grows with its backing chain attached (the new area of an overlay must hide a longer
//! backing image); raw resizes the file; VMDK resizes its extents.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::size::parse_size;
use crate::storage::{HostFiles, Namespace, OpenOptions};
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
    let storage = HostFiles
        .open(
            file,
            OpenOptions {
                write: true,
                ..Default::default()
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", file.display()), e))?;
    let format = match format {
        Some(f) => f,
        None => image::probe(&*storage)?,
    };
    // The formats differ in how they resize (qcow2: with its backing chain and
    // preallocation; raw: the file itself; VMDK: its extents).
    if format == Format::QCOW2 {
        {
            // With its backing chain, as qemu-img: the new area of an overlay must hide
            // what a longer backing image holds there.
            drop(storage);
            let (mut img, _) = image::open_qcow2(
                file,
                &image::ImageOptions {
                    format: Some(format),
                    ..Default::default()
                },
            )?;
            let current = img.virtual_size();
            let size = new_size(spec, current)?;
            if size % 512 != 0 {
                return Err(Error::invalid("The new size must be a multiple of 512"));
            }
            check_direction(shrink, current, size, prealloc)?;
            img.resize_preallocated(size, prealloc)?;
            img.close()?;
        }
    } else if format == Format::RAW {
        {
            let current = storage
                .len()
                .map_err(|e| Error::io("raw image: reading the file length", e))?;
            let size = new_size(spec, current)?;
            if prealloc == Preallocation::Metadata {
                return Err(Error::unsupported(
                    "Unsupported preallocation mode: metadata",
                ));
            }
            check_direction(shrink, current, size, prealloc)?;
            let io = |e| Error::io("raw image: resizing", e);
            if size > current {
                match prealloc {
                    Preallocation::Falloc => {
                        storage.allocate(current, size - current).map_err(io)?
                    }
                    Preallocation::Full => {
                        crate::storage::write_zero_bytes(&*storage, current, size - current)
                            .map_err(io)?
                    }
                    _ => {}
                }
            }
            storage.set_len(size).map_err(io)?;
            storage.flush().map_err(io)?;
        }
    } else {
        {
            drop(storage);
            let mut img = image::open(
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
            img.device.resize(size)?;
            img.device.close()?;
        }
    }
    Ok(())
}

/// The new size asked for by `spec` (absolute or relative to `current`).
pub fn new_size(spec: &str, current: u64) -> Result<u64> {
    let positive = || Error::invalid("New image size must be positive");
    let size = if let Some(d) = spec.strip_prefix('+') {
        current
            .checked_add(parse_size(d)?)
            .ok_or_else(|| Error::invalid("New image size is too large"))?
    } else if let Some(d) = spec.strip_prefix('-') {
        current.checked_sub(parse_size(d)?).ok_or_else(positive)?
    } else {
        parse_size(spec)?
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
