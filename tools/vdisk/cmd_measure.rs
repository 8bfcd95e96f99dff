//! `vdisk measure [-O FMT] [-o OPTS] (--size SIZE | [-f FMT] [-l SNAPSHOT] FILE)
//! [--output human|json]`

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, OptionsFlag, OutputFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{Format, SnapshotRef};
use vdisk::ops::info::to_qemu_json;
use vdisk::ops::measure::{measure, measure_file, Source};
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
    /// Measure an empty image of this size instead of an input image (qemu-img 10.0.2
    /// documents `-s` too but refuses it; so does vdisk).
    #[arg(long = "size")]
    size: Option<String>,
    /// Measure this internal snapshot of the input (`ID_OR_NAME`, or
    /// `snapshot.id=ID,snapshot.name=NAME`).
    #[arg(short = 'l', long = "snapshot", value_name = "SNAPSHOT")]
    snapshot: Option<String>,
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

pub fn run(mut a: Args) -> Result<ExitCode> {
    let file_only = a.format.name().is_some() || a.snapshot.is_some() || a.spec.image_opts.on();
    if a.size.is_some() && file_only {
        return Err(Error::invalid(
            "--image-opts, -f, and -l require a filename argument.",
        ));
    }
    a.spec.object.registry()?;
    if let Some(f) = a.file.as_mut() {
        a.spec.resolve_in_place(f, &mut a.format)?;
    }
    let json = a.output.wants_json("measure")?;
    let target: Format = a.target.parse()?;
    let options = a.options.pairs()?;
    let snapshot = a.snapshot.as_deref().map(SnapshotRef::parse).transpose()?;
    let m = match (&a.size, &a.file) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "--size N cannot be used together with a filename.",
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                "Either --size N or one filename must be specified.",
            ))
        }
        (Some(s), None) => {
            let size = vdisk::size::parse_size(s).map_err(|_| {
                vdisk::Error::invalid(format!("Invalid image size specified: '{s}'."))
            })?;
            measure(Source::Size(size), target, &options)?
        }
        (None, Some(f)) => measure_file(
            f,
            a.format.get()?,
            snapshot.as_ref(),
            a.force_share.on(),
            target,
            &options,
        )?,
    };
    if json {
        outln!("{}", to_qemu_json(&m.to_json()))?;
    } else {
        out!("{}", m.to_human())?;
    }
    Ok(ExitCode::SUCCESS)
}
