//! `vdisk info [-f FMT] [--output human|json] [--backing-chain] FILE`

use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::info::{image_info, to_qemu_json};
use vdisk::{Error, Result};

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Show every image of the backing chain.
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    /// Open without taking locks (accepted for qemu-img compatibility).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.force_share;
    let json = match a.output.as_str() {
        "json" => true,
        "human" => false,
        o => {
            return Err(Error::invalid(format!(
                "--output must be human or json, not '{o}'"
            )))
        }
    };
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    if !a.backing_chain {
        let info = image_info(&a.file, format)?;
        if json {
            println!("{}", info.to_json());
        } else {
            print!("{}", info.to_human());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            ..Default::default()
        },
    )?;
    let mut infos = Vec::new();
    for layer in &img.layers {
        infos.push(image_info(&layer.path, Some(layer.format))?);
    }
    if json {
        println!("{}", to_qemu_json(&infos));
    } else {
        let texts: Vec<String> = infos.iter().map(|i| i.to_human()).collect();
        print!("{}", texts.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}
