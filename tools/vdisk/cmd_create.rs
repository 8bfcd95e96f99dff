//! `vdisk create [-f FMT] [-o OPTS] [-b BACKING -F FMT] [-u] FILE [SIZE]`

use crate::flags::{FormatFlag, ObjectFlag, OptionsFlag, QuietFlag};
use crate::output::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format};
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
    /// Image file to create.
    file: PathBuf,
    /// Virtual size (k, M, G, T, P, E suffixes).
    size: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    a.object.registry()?;
    // Raw without -f, as qemu-img create: a default, not a dispatch on the format.
    let format = a.format.get()?.unwrap_or(Format::RAW);
    let mut opts = a.options.pairs()?;
    if let Some(b) = &a.backing {
        opts.push(("backing_file".into(), b.clone()));
    }
    if let Some(f) = &a.backing_format {
        opts.push(("backing_fmt".into(), f.clone()));
    }
    let size_arg = match &a.size {
        Some(s) => Some(parse_image_size(s)?),
        None => None,
    };
    let mut size = image::create_size(&a.file, size_arg, &opts)?;
    let backing = opts
        .iter()
        .find(|(k, _)| k == "backing_file")
        .map(|(_, v)| v.clone());
    let backing_fmt = opts
        .iter()
        .find(|(k, _)| k == "backing_fmt")
        .map(|(_, v)| v.clone());
    if let Some(b) = &backing {
        vdisk::names::check_backing_name(b)?;
        let path = vdisk::chain::resolve(&a.file, b)?;
        if backing_fmt.is_none() {
            let detected = image::probe_path(&path, false)?;
            return Err(vdisk::Error::invalid(format!(
                "{}: Backing file specified without backing format (detected format of {}: {}); use -F",
                a.file.display(),
                b,
                detected
            )));
        }
        if !a.unsafe_backing {
            let fmt: Format = backing_fmt.as_deref().unwrap_or("raw").parse()?;
            let chain = image::open(
                &path,
                &image::ImageOptions {
                    format: Some(fmt),
                    read_only: true,
                    ..Default::default()
                },
            )?;
            if size.is_none() {
                size = Some(chain.device.virtual_size());
            }
        }
    }
    if size.is_none() {
        return Err(vdisk::Error::invalid(
            "Image creation needs a size parameter",
        ));
    }
    image::check_create_options(&a.file, format, &opts)?;
    if !a.quiet.on() {
        let mut line = format!("Formatting '{}', fmt={}", a.file.display(), format);
        for (k, v) in &opts {
            line += &format!(" {k}={v}");
        }
        line += &format!(" size={}", size.unwrap_or(0));
        outln!("{line}")?;
    }

    // Until the image is closed, a failure removes the files it is made of.
    let files = image::NewFiles::before_create(&a.file, format, size.unwrap_or(0), &opts);
    let mut dev = image::create(&a.file, format, size, &opts)?;
    dev.close()?;
    files.keep();
    Ok(ExitCode::SUCCESS)
}
