//! `commit` of a whole image by path: fold an overlay into an image of its backing chain,
//! holding the locks in the order that lets the base be written while the chain above it
//! is read, then empty the overlay (as qemu-img commit).

use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions};
use crate::ops::chain_ops;
use crate::ops::convert::Progress;
use crate::storage::HostFiles;
use std::path::Path;

/// Commit the image at `file` (format `format`, probed when `None`) into its direct
/// backing file, or into `base_path` further down its chain. Unless `keep` (or a
/// `base_path` is named, or its format keeps its data: no `Driver::make_empty`), the image
/// is emptied afterwards. With `rate`, data is copied no faster than it allows.
pub fn commit(
    file: &Path,
    format: Option<Format>,
    base_path: Option<&Path>,
    keep: bool,
    rate: Option<chain_ops::RateLimit>,
    progress: Progress<'_>,
) -> Result<()> {
    let mut chain = image::open(
        file,
        &ImageOptions {
            format,
            read_only: true,
            ..Default::default()
        },
    )?;
    if format.is_none() && chain.format == Format::RAW {
        // Opened read-only here, but committing writes the image (qemu-img opens it
        // writable, and warns).
        crate::probed_raw::warn(file);
    }
    if chain.layers.len() < 2 {
        return Err(Error::invalid("Image does not have a backing file"));
    }
    let base_depth = base_depth(&chain.layers, file, base_path)?;
    // Emptying the top image at the end writes it: find out now whether it may be written,
    // before the base is changed.
    let make_empty = match keep || base_path.is_some() {
        true => None,
        false => chain.layers[0].format.driver().make_empty,
    };
    if let Some(m) = &make_empty {
        (m.check_writable)(&HostFiles, file)?;
    }
    let base_layer = chain.layers[base_depth].clone();
    // The base is about to be opened for writing, which its read-only open in `chain`
    // would refuse (image locks, see vdisk::storage::lock). Reopen: the base writable with
    // its own backing chain (read-only locks below it), read-only locks on the layers above
    // it, then the chain itself sharing all.
    //
    // The base needs its backing chain: writing zeros into it must hide what its backing
    // holds (a zero cluster, not an unallocated one), and a write into part of one of its
    // clusters must keep its backing's data in the rest of the cluster.
    let layers = std::mem::take(&mut chain.layers);
    drop(chain);
    let mut base = image::open(
        &base_layer.path,
        &ImageOptions {
            format: Some(base_layer.format),
            read_only: false,
            ..Default::default()
        },
    )?;
    let guards = layers[..base_depth]
        .iter()
        .map(|l| crate::driver::open_read_only(&HostFiles, &l.path, false))
        .collect::<Result<Vec<_>>>()?;
    let mut chain = image::open(
        file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: true,
            ..Default::default()
        },
    )?;
    if chain.layers != layers || base.layers[..] != layers[base_depth..] {
        return Err(Error::invalid(format!(
            "the backing chain of '{}' changed while it was being opened",
            file.display()
        )));
    }
    chain_ops::commit_limited(
        chain.device.as_mut(),
        base.device.as_mut(),
        base_depth as u32,
        rate,
        progress,
    )?;
    drop(base);
    drop(chain);
    drop(guards);
    if let Some(m) = make_empty {
        (m.run)(&HostFiles, file)?;
    }
    Ok(())
}

/// Where in `layers` (the chain of `file`, top first) the commit goes: the direct backing
/// file, or `base_path` further down.
fn base_depth(
    layers: &[crate::chain::Layer],
    file: &Path,
    base_path: Option<&Path>,
) -> Result<usize> {
    let Some(b) = base_path else {
        return Ok(1);
    };
    // As qemu-img: a base that cannot be found (missing file included) is not in the chain.
    let want = std::fs::canonicalize(b).ok();
    layers
        .iter()
        .position(|l| want.is_some() && std::fs::canonicalize(&l.path).ok() == want)
        .filter(|&d| d > 0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "Did not find '{}' in the backing chain of '{}'",
                b.display(),
                file.display()
            ))
        })
}
