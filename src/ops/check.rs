//! `check` of an image by path: the format's own check (its driver's
//! [`crate::driver::Driver::check`]), and the report as qemu-img prints it.

use crate::check_report::{CheckReport, Repair};
use crate::driver::OpenParams;
use crate::error::{Error, Result};
use crate::image::{self, Format};
use crate::ops::info::to_qemu_json;
use crate::storage::HostFiles;
use std::path::Path;

/// A finished check of one image.
pub struct Checked {
    /// What the check found and repaired.
    pub report: CheckReport,
    /// The format it was checked as.
    pub format: Format,
}

impl Checked {
    /// qemu-img's JSON report, naming the image `filename`.
    pub fn to_json(&self, filename: &str) -> String {
        to_qemu_json(&self.report.to_json(filename, self.format.name()))
    }

    /// qemu-img's human report: what was repaired, then the summary.
    pub fn to_human(&self) -> String {
        let r = &self.report;
        let mut s = String::new();
        if r.leaks_fixed > 0 || r.corruptions_fixed > 0 {
            s += &format!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                r.leaks_fixed, r.corruptions_fixed
            );
        }
        s + &r.to_human()
    }
}

/// Check the image at `file` (format `format`, probed when `None`), repairing what
/// `repair` allows; `force_share` reads it without locking out other users (and so cannot
/// repair). `None` when the format has no checks (qemu-img's exit code 63).
pub fn check(
    file: &Path,
    format: Option<Format>,
    repair: Repair,
    force_share: bool,
) -> Result<Option<Checked>> {
    if force_share && repair != Repair::None {
        return Err(Error::invalid(
            "-U/--force-share opens the image read-only and cannot be used with -r",
        ));
    }
    let format = match format {
        Some(f) => f,
        None if repair != Repair::None => image::probe_for_writing(file)?,
        None => image::probe_path(file, force_share)?,
    };
    let driver = format.driver();
    let Some(check) = driver.check else {
        // As qemu-img: the image must open before the format is found to have no check.
        (driver.open)(&HostFiles, file, &OpenParams::read_only(force_share))?;
        return Ok(None);
    };
    if repair != Repair::None && !driver.check_repairs {
        // As qemu-img: the image must open, then the repair is refused as unsupported.
        (driver.open)(&HostFiles, file, &OpenParams::read_only(false))?;
        return Ok(None);
    }
    let report = check(&HostFiles, file, repair, force_share)?;
    Ok(Some(Checked { report, format }))
}
