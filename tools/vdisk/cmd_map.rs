//! `vdisk map [-f FMT] [--output human|json] [-s OFFSET] [-l LENGTH] FILE`

use crate::flags::{ForceShareFlag, FormatFlag, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, ImageOptions};
use vdisk::ops::map;
use vdisk::size::parse_named_size;
use vdisk::Result;

/// Arguments of `map`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
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

pub fn run(a: Args) -> Result<ExitCode> {
    let json = a.output.wants_json()?;
    let format = a.format.get()?;
    let start = match &a.start_offset {
        Some(s) => parse_named_size("start offset", s)?,
        None => 0,
    };
    let max_length = match &a.max_length {
        Some(s) => Some(parse_named_size("max length", s)?),
        None => None,
    };
    let mut img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: a.force_share.on(),
            ..Default::default()
        },
    )?;
    let entries = map::map_range(img.device.as_mut(), start, max_length)?;
    if json {
        outln!("{}", map::to_json(&entries))?;
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<String> = img
        .layers
        .iter()
        .map(|l| l.path.display().to_string())
        .collect();
    let file_of = |d: u32| names.get(d as usize).cloned().unwrap_or_default();
    let human = map::to_human(&entries, &file_of);
    out!("{}", human.text)?;
    match human.error {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}
