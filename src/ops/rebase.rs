//! `rebase` of an image by path: give an overlay another backing file (or none). Safe mode
//! first copies into the overlay every range where the new backing file differs from the
//! old chain, so the guest contents stay the same; unsafe mode only rewrites the name.

use crate::device::BlockDevice;
use crate::error::Result;
use crate::image::{self, Format, ImageOptions};
use crate::ops::chain_ops;
use crate::ops::convert::Progress;
use std::path::Path;

/// Make `new_backing` (a name as the overlay will record it, relative to its directory;
/// `None`: no backing file) of format `new_format` the backing file of the image at
/// `file`. Unless `unsafe_mode`, the data that would change is copied into it first.
pub fn rebase(
    file: &Path,
    new_backing: Option<&str>,
    new_format: Option<Format>,
    unsafe_mode: bool,
    progress: Progress<'_>,
) -> Result<()> {
    crate::names::check_new_backing(new_backing, new_format.map(Format::name))?;
    if !unsafe_mode {
        copy_what_changes(file, new_backing, new_format, progress)?;
    }
    let mut top = image::open_qcow2_alone(file, false, false, "rebase needs one")?;
    top.set_backing_file(new_backing, new_format.map(Format::name))?;
    top.close()
}

/// Safe mode's copy: the overlay, writable with its current chain attached (read-only),
/// takes every range where the new backing file reads differently.
fn copy_what_changes(
    file: &Path,
    new_backing: Option<&str>,
    new_format: Option<Format>,
    progress: Progress<'_>,
) -> Result<()> {
    // Only qcow2 images have backing files to change.
    let mut chain = image::open(
        file,
        &ImageOptions {
            format: Some(Format::QCOW2),
            ..Default::default()
        },
    )?;
    let mut new_chain = match new_backing {
        Some(n) => {
            let p = crate::chain::resolve(file, n)?;
            Some(image::open(
                &p,
                &ImageOptions {
                    format: new_format,
                    read_only: true,
                    ..Default::default()
                },
            )?)
        }
        None => None,
    };
    let nb: Option<&mut dyn BlockDevice> = match new_chain.as_mut() {
        Some(i) => Some(i.device.as_mut()),
        None => None,
    };
    chain_ops::rebase_copy(chain.device.as_mut(), nb, progress)?;
    chain.device.close()
}
