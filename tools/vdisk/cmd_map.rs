//! `vdisk map [-f FMT] [--output human|json] FILE`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, ImageOptions};
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
    let format = a.format.get()?;
    let mut img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: a.force_share.on(),
            ..Default::default()
        },
    )?;
    let entries = map::map(img.device.as_mut())?;
    if json {
        outln!("{}", map::to_json(&entries))?;
    } else {
        let names: Vec<String> = img
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        out!(
            "{}",
            map::to_human(&entries, &|d| names
                .get(d as usize)
                .cloned()
                .unwrap_or_default())
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
