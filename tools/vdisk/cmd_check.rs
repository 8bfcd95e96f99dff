//! `vdisk check [-f FMT] [-r leaks|all] [--output human|json] [-q] FILE`
//!
//! Exit codes as qemu-img's: 0 clean, 1 the check could not complete, 2 corruptions,
//! 3 leaks only, 63 the format does not support checks.

use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::check_report::Repair;
use vdisk::image::{self, Format};
use vdisk::ops::info::to_qemu_json;
use vdisk::storage::HostFiles;
use vdisk::{Error, Result};

/// Arguments of `check`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Repair: `leaks` frees leaked clusters, `all` also fixes corruptions.
    #[arg(short = 'r', long = "repair", value_name = "leaks|all")]
    repair: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Quiet: print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Read-only, without locking out other users of the image (as qemu-img -U).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let json = crate::output::wants_json(&a.output)?;
    let repair = match &a.repair {
        Some(r) => r.parse()?,
        None => Repair::None,
    };
    if a.force_share && repair != Repair::None {
        return Err(Error::invalid(
            "-U/--force-share opens the image read-only and cannot be used with -r",
        ));
    }
    let name = a.file.display().to_string();
    let format: Format = match &a.format {
        Some(f) => f.parse()?,
        None => image::probe_path(&a.file, a.force_share)?,
    };
    let Some(check) = format.driver().check else {
        eprintln!("vdisk: This image format does not support checks");
        return Ok(ExitCode::from(63));
    };
    let report = check(&HostFiles, &a.file, repair, a.force_share)?;
    for m in &report.messages {
        eprintln!("{m}");
    }
    if let Some(why) = &report.failed {
        eprintln!("vdisk: Check failed: {why}");
        return Ok(ExitCode::from(1));
    }
    if !a.quiet {
        if json {
            outln!("{}", to_qemu_json(&report.to_json(&name, format.name())))?;
        } else {
            if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
                out!(
                    "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                    report.leaks_fixed, report.corruptions_fixed
                )?;
            }
            out!("{}", report.to_human())?;
        }
    }
    if report.check_errors > 0 {
        eprintln!("vdisk: Check failed");
    }
    Ok(ExitCode::from(report.exit_code()))
}
