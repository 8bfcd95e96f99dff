//! `amend` of an image by path: change format options in place (qemu-img amend), through
//! the format's [`crate::driver::Driver::amend`].

use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::storage::HostFiles;
use std::path::Path;

/// Apply the qemu-img style `options` (key, value) to the image at `file` (format
/// `format`, probed when `None`).
pub fn amend(file: &Path, format: Option<Format>, options: &[(String, String)]) -> Result<()> {
    if options.is_empty() {
        return Err(Error::invalid("Must specify options (-o)"));
    }
    let format = match format {
        Some(f) => f,
        None => image::probe_for_writing(file)?,
    };
    let Some(amend) = format.driver().amend else {
        return Err(Error::invalid(format!(
            "Format driver '{format}' does not support option amendment"
        )));
    };
    let mut open_backing = |b: &_| image::open_backing_of(file, format, b);
    amend(&HostFiles, file, options, &mut open_backing)
}
