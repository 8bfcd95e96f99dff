//! `vdisk map [-f FMT] [--output human|json] FILE`

use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::map;
use vdisk::{Error, Result};

/// Arguments of `map`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Open without locks (accepted for qemu-img compatibility).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.force_share;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let mut img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            ..Default::default()
        },
    )?;
    let entries = map::map(img.device.as_mut())?;
    match a.output.as_str() {
        "json" => println!("{}", map::to_json(&entries)),
        "human" => {
            let names: Vec<String> = img
                .layers
                .iter()
                .map(|l| l.path.display().to_string())
                .collect();
            print!(
                "{}",
                map::to_human(&entries, &|d| names
                    .get(d as usize)
                    .cloned()
                    .unwrap_or_default())
            );
        }
        o => {
            return Err(Error::invalid(format!(
                "--output must be human or json, not '{o}'"
            )))
        }
    }
    Ok(ExitCode::SUCCESS)
}
