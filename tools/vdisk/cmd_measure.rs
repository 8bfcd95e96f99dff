//! `vdisk measure [-O FMT] [-o OPTS] (--size SIZE | [-f FMT] FILE) [--output human|json]`

use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::info::to_qemu_json;
use vdisk::ops::measure::{measure, Source};
use vdisk::{Error, Result};

/// Arguments of `measure`.
#[derive(clap::Args)]
pub struct Args {
    /// Target format (default raw).
    #[arg(short = 'O', long = "target-format", default_value = "raw")]
    target: String,
    /// Target creation options (`key=value,...`).
    #[arg(short = 'o')]
    options: Option<String>,
    /// Measure an empty image of this size instead of an input image.
    #[arg(long = "size")]
    size: Option<String>,
    /// Input image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Read-only, without locking out other users of the image (as qemu-img -U).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Input image.
    file: Option<PathBuf>,
}

/// The version field of a qcow2 header.
fn qcow2_version(path: &std::path::Path, force_share: bool) -> Result<u32> {
    let img = image::open_qcow2_alone(path, true, force_share, "measuring it as one")?;
    Ok(img.header().version)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let json = crate::output::wants_json(&a.output)?;
    let target: Format = a.target.parse()?;
    let options = match &a.options {
        Some(o) => image::parse_options(o)?,
        None => Vec::new(),
    };
    let m = match (&a.size, &a.file) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "--size N cannot be used together with a filename",
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                "Either --size N or one filename must be specified",
            ))
        }
        (Some(s), None) => measure(Source::Size(vdisk::size::parse_size(s)?), target, &options)?,
        (None, Some(f)) => {
            let opts = ImageOptions {
                format: a.format.as_deref().map(str::parse).transpose()?,
                read_only: true,
                force_share: a.force_share,
                ..Default::default()
            };
            let mut img = image::open(f, &opts)?;
            let bitmaps_capable =
                img.format == Format::QCOW2 && qcow2_version(f, a.force_share)? >= 3;
            let source = Source::Image {
                device: img.device.as_mut(),
                bitmaps_capable,
            };
            measure(source, target, &options)?
        }
    };
    if json {
        outln!("{}", to_qemu_json(&m.to_json()))?;
    } else {
        out!("{}", m.to_human())?;
    }
    Ok(ExitCode::SUCCESS)
}
