//! `vdisk check [-f FMT] [-r leaks|all] [--output human|json] [-q] FILE`
//!
//! Exit codes as qemu-img's: 0 clean, 1 the check could not complete, 2 corruptions,
//! 3 leaks only, 63 the format does not support checks.

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OutputFlag, QuietFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::check_report::{stream_messages, Repair};
use vdisk::ops::check;
use vdisk::Result;

/// Arguments of `check`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Repair: `leaks` frees leaked clusters, `all` also fixes corruptions.
    #[arg(short = 'r', long = "repair", value_name = "leaks|all")]
    repair: Option<String>,
    #[command(flatten)]
    output: OutputFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let json = a.output.wants_json("check")?;
    let repair = match &a.repair {
        Some(r) => r
            .parse()
            .map_err(|e: vdisk::Error| crate::flags::usage_error("check", e.bare_message()))?,
        None => Repair::None,
    };
    let format = a.format.get_for(&a.file)?;
    // Findings are printed as they are found: there is no limit on how many there are.
    let print = Box::new(|m: &str| eprintln!("{m}"));
    let checked = stream_messages(print, || {
        check::check(&a.file, format, repair, a.force_share.on())
    })?;
    let Some(checked) = checked else {
        eprintln!("vdisk: This image format does not support checks");
        return Ok(ExitCode::from(63));
    };
    let report = &checked.report;
    for m in &report.messages {
        eprintln!("{m}");
    }
    if let Some(why) = &report.failed {
        eprintln!("vdisk: Check failed: {why}");
        return Ok(ExitCode::from(1));
    }
    if !a.quiet.on() {
        if json {
            outln!("{}", checked.to_json(&a.file.display().to_string()))?;
        } else {
            out!("{}", checked.to_human())?;
        }
    }
    if report.check_errors > 0 {
        eprintln!("vdisk: Check failed");
    }
    Ok(ExitCode::from(report.exit_code()))
}
