//! `vdisk info [-f FMT] [--output human|json] [-b|--backing-chain] FILE`

use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::info::{image_info_shared, to_qemu_json};
use vdisk::Result;

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Show every image of the backing chain.
    #[arg(short = 'b', long = "backing-chain")]
    backing_chain: bool,
    /// Never open backing files (for untrusted images). Plain `info` only names them; this
    /// makes that explicit and refuses --backing-chain.
    #[arg(long = "no-backing", conflicts_with = "backing_chain")]
    no_backing: bool,
    /// Read-only, without locking out other users of the image (as qemu-img -U).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let json = crate::output::wants_json(&a.output)?;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    if !a.backing_chain || a.no_backing {
        let info = image_info_shared(&a.file, format, a.force_share)?;
        if json {
            outln!("{}", info.to_json())?;
        } else {
            out!("{}", info.to_human())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let img = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: a.force_share,
            ..Default::default()
        },
    )?;
    let mut infos = Vec::new();
    for layer in &img.layers {
        infos.push(image_info_shared(
            &layer.path,
            Some(layer.format),
            a.force_share,
        )?);
    }
    if json {
        outln!("{}", to_qemu_json(&infos))?;
    } else {
        let texts: Vec<String> = infos.iter().map(|i| i.to_human()).collect();
        out!("{}", texts.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}
