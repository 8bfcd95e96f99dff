//! `vdisk map [-f FMT] [--output human|json] [-s OFFSET] [-l LENGTH] FILE`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::map;
use vdisk::size::parse_named_size;
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
    /// First guest byte to map (a size: 64k, 1M, 0x1000).
    #[arg(short = 's', long = "start-offset", allow_hyphen_values = true)]
    start_offset: Option<String>,
    /// Map at most this many bytes.
    #[arg(short = 'l', long = "max-length", allow_hyphen_values = true)]
    max_length: Option<String>,
    /// Image file.
    file: PathBuf,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let json = a.output.wants_json("map")?;
    let format = a.format.get_for(&a.file)?;
    let start = match &a.start_offset {
        Some(s) => parse_named_size("start offset", s)?,
        None => 0,
    };
    let max_length = match &a.max_length {
        Some(s) => Some(parse_named_size("max length", s)?),
        None => None,
    };
    let m = map::map_file(&a.file, format, a.force_share.on(), start, max_length)?;
    if json {
        outln!("{}", m.to_json())?;
        return Ok(ExitCode::SUCCESS);
    }
    let human = m.to_human();
    out!("{}", human.text)?;
    match human.error {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}
