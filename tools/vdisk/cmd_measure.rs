//! `vdisk measure [-O FMT] [-o OPTS] (--size SIZE | [-f FMT] FILE) [--output human|json]`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OptionsFlag, OutputFlag};
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
    // The target's creation options.
    #[command(flatten)]
    options: OptionsFlag,
    /// Measure an empty image of this size instead of an input image.
    #[arg(long = "size")]
    size: Option<String>,
    // The input image's format.
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    #[command(flatten)]
    output: OutputFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Input image.
    file: Option<PathBuf>,
}

/// The version field of a qcow2 header.
fn qcow2_version(path: &std::path::Path, force_share: bool) -> Result<u32> {
    let img = image::open_qcow2_alone(path, true, force_share, "measuring it as one")?;
    Ok(img.header().version)
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    if let Some(f) = a.file.as_mut() {
        a.spec.resolve_in_place(f, &mut a.format)?;
    }
    let json = a.output.wants_json()?;
    let target: Format = a.target.parse()?;
    let options = a.options.pairs()?;
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
                format: a.format.get()?,
                read_only: true,
                force_share: a.force_share.on(),
                ..Default::default()
            };
            let mut img = image::open(f, &opts)?;
            let bitmaps_capable =
                img.format == Format::QCOW2 && qcow2_version(f, a.force_share.on())? >= 3;
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
