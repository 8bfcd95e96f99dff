//! `amend` of an image by path: change format options in place (qemu-img amend), through
//! the format's [`crate::driver::Driver::amend`]; the `-o help` listing and the progress
//! steps qemu-img reports.

use crate::create_opts;
use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::storage::HostFiles;
use std::path::Path;

/// What `amend -o help` (or `?`) prints, when `options` ask for it: the amend options of
/// `format` (`-f`), else of the format probed from `file`.
pub fn help(
    file: Option<&Path>,
    format: Option<Format>,
    options: &[(String, String)],
) -> Result<Option<String>> {
    if !create_opts::wants_help(options) {
        return Ok(None);
    }
    let format = match (format, file) {
        (Some(f), _) => f,
        (None, Some(file)) => image::probe_path(file, false)?,
        (None, None) => return Err(Error::invalid("Expecting one image file name")),
    };
    if format.driver().amend.is_none() {
        return Err(unsupported(format));
    }
    Ok(Some(create_opts::amend_help(
        format.name(),
        format.driver().amend_options,
    )))
}

fn unsupported(format: Format) -> Error {
    Error::invalid(format!(
        "Format driver '{format}' does not support option amendment"
    ))
}

/// Apply the qemu-img style `options` (key, value) to the image at `file` (format
/// `format`, probed when `None`). With `progress`, it is given the percentages qemu-img's
/// `amend -p` reports: a qcow2 upgrade in two halves then done, a downgrade as one step.
/// `force` (`--force`) allows the changes qemu-img calls unsafe: for qcow2, overwriting an
/// active LUKS key slot, erasing the last one, erasing a free one.
pub fn amend(
    file: &Path,
    format: Option<Format>,
    options: &[(String, String)],
    force: bool,
    progress: Option<&mut dyn FnMut(f64)>,
) -> Result<()> {
    if options.is_empty() {
        return Err(Error::invalid("Must specify options (-o)"));
    }
    let format = match format {
        Some(f) => f,
        None => image::probe_for_writing(file)?,
    };
    let Some(amend) = format.driver().amend else {
        return Err(unsupported(format));
    };
    let before = match progress.is_some() {
        true => qcow2_version(file, format),
        false => 0,
    };
    let mut open_backing = |b: &_| image::open_backing_of(file, format, b);
    amend(&HostFiles, file, options, force, &mut open_backing)?;
    if let Some(step) = progress {
        let after = qcow2_version(file, format);
        if before == 2 && after == 3 {
            step(0.0);
            step(50.0);
        }
        if before != after {
            step(100.0);
        }
    }
    Ok(())
}

/// The qcow2 version of the image at `path` (0 for other formats or when unreadable: it
/// only shapes the progress steps).
fn qcow2_version(path: &Path, format: Format) -> u32 {
    if format != Format::QCOW2 {
        return 0;
    }
    image::open_qcow2_alone(path, true, true, "amend")
        .map(|q| q.header().version)
        .unwrap_or(0)
}
