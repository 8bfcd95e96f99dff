//! `vdisk create [-f FMT] [-o OPTS] [-b BACKING -F FMT] [-u] FILE [SIZE]`

use crate::flags::{FormatFlag, ObjectFlag, OptionsFlag, QuietFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::Format;
use vdisk::ops::create;
use vdisk::size::parse_image_size;
use vdisk::Result;

/// Arguments of `create`.
#[derive(clap::Args)]
pub struct Args {
    // Raw when absent (nothing to probe).
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    object: ObjectFlag,
    #[command(flatten)]
    options: OptionsFlag,
    /// Backing file.
    #[arg(short = 'b', long = "backing")]
    backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    /// Do not open the backing file (size must be given).
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_backing: bool,
    // Suppresses the "Formatting ..." line.
    #[command(flatten)]
    quiet: QuietFlag,
    /// Image file to create (optional with `-o help`).
    file: Option<PathBuf>,
    /// Virtual size (k, M, G, T, P, E suffixes).
    size: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    a.object.registry()?;
    // Raw without -f, as qemu-img create: a default, not a dispatch on the format.
    let format = match (a.format.get(), a.file.as_deref(), a.format.name()) {
        (Ok(f), _, _) => f.unwrap_or(Format::RAW),
        (Err(_), Some(file), Some(name)) => {
            let unknown = vdisk::Error::invalid(format!("Unknown file format '{name}'"));
            return Err(create::refusal(file, unknown));
        }
        (Err(e), _, _) => return Err(e),
    };
    let mut options = a.options.pairs()?;
    if let Some(help) = create::help(format, &options, a.file.is_some()) {
        out!("{help}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = a.file.as_deref() else {
        return Err(crate::flags::usage_error(
            "create",
            "Expecting image file name",
        ));
    };
    // -b and -F are qemu-img's spellings of the backing_file and backing_fmt options.
    if let Some(b) = &a.backing {
        options.push(("backing_file".into(), b.clone()));
    }
    if let Some(f) = &a.backing_format {
        options.push(("backing_fmt".into(), f.clone()));
    }
    let size = a.size.as_deref().map(parse_image_size).transpose()?;
    let plan = create::plan(file, format, options, size, a.unsafe_backing)
        .map_err(|e| create::refusal(file, e))?;
    if !a.quiet.on() {
        outln!("{}", plan.summary())?;
    }
    plan.create().map_err(|e| create::refusal(file, e))?;
    Ok(ExitCode::SUCCESS)
}
