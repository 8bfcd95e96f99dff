//! `vdisk map [-f FMT] [--output human|json] FILE`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::map;
use vdisk::Result;

/// Arguments of `map`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    #[command(flatten)]
    output: OutputFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let json = a.output.wants_json()?;
    let m = map::map_file(&a.file, a.format.get()?, a.force_share.on())?;
    if json {
        outln!("{}", m.to_json())?;
    } else {
        out!("{}", m.to_human())?;
    }
    Ok(ExitCode::SUCCESS)
}
