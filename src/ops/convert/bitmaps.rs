//! `convert --bitmaps [--skip-broken-bitmaps]`: copy the persistent bitmaps of a qcow2
//! source into the qcow2 (compat 1.1) output, as qemu-img does: with one source only, an
//! inconsistent bitmap refused (or skipped with a warning), read before the output is made
//! and added to it once the data is copied.

use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::qcow2::bitmap::{Bits, DirEntry};
use std::path::Path;

/// The source bitmaps to copy: (entry, bits).
pub(super) type Carried = Vec<(DirEntry, Bits)>;

/// Read the bitmaps of `source` (of format `format`) to copy; inconsistent ones are refused,
/// or with `skip` reported through `warn` and left out (in qemu-img's order: last first).
pub(super) fn collect(
    sources: &[std::path::PathBuf],
    format: Option<Format>,
    skip: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<Carried> {
    let [source] = sources else {
        return Err(Error::invalid(
            "Copying bitmaps only possible with single source",
        ));
    };
    let format = match format {
        Some(f) => f,
        None => image::probe_path(source, true)?,
    };
    if format != Format::QCOW2 {
        return Ok(Vec::new());
    }
    let q = image::open_qcow2_alone(source, true, true, "bitmaps are copied from qcow2")?;
    let mut out = Vec::new();
    for e in q.bitmap_entries().into_iter().rev() {
        if e.in_use() {
            if !skip {
                return Err(Error::invalid(format!(
                    "Cannot copy inconsistent bitmap '{}'\nTry --skip-broken-bitmaps, or use 'vdisk bitmap --remove' to delete it",
                    e.name
                )));
            }
            warn(&format!("Skipping inconsistent bitmap '{}'", e.name));
            continue;
        }
        let bits = q.bitmap_bits(&e.name)?;
        out.push((e, bits));
    }
    out.reverse();
    Ok(out)
}

/// Whether an output of `format` can hold bitmaps, with qemu-img's refusal.
pub(super) fn refuse_target(format: Format, version: u32) -> Result<()> {
    if format != Format::QCOW2 || version < 3 {
        return Err(Error::invalid(format!(
            "Format driver '{}' does not support bitmaps",
            format.name()
        )));
    }
    Ok(())
}

/// Add `carried` to the qcow2 image at `target`.
pub(super) fn add_to(target: &Path, carried: &Carried) -> Result<()> {
    let mut q = image::open_qcow2_alone(target, false, false, "bitmaps are copied into qcow2")?;
    refuse_target(Format::QCOW2, q.header().version)?;
    for (e, bits) in carried {
        q.import_bitmap(&e.name, e.enabled(), bits).map_err(|err| {
            Error::invalid(format!(
                "Failed to create bitmap {}: {}",
                e.name,
                err.bare_message()
            ))
        })?;
    }
    crate::device::BlockDevice::close(&mut q)
}
