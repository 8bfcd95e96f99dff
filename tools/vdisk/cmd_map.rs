//! `vdisk map [-f FMT] [--output human|json] FILE`

use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::map;
use vdisk::Result;

/// Arguments of `map`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Read-only, without locking out other users of the image (as qemu-img -U).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let json = crate::output::wants_json(&a.output)?;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let mut img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: a.force_share,
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
