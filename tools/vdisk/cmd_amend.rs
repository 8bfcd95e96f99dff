//! `vdisk amend [-f FMT] -o OPTS [-q] FILE`: change compat, lazy_refcounts, refcount_bits
//! or the size of a qcow2 image in place.

use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format};
use vdisk::qcow2::{self, AmendOptions, Qcow2};
use vdisk::storage::{FileStorage, OpenOptions};
use vdisk::{BlockDevice, Error, Result};

/// Arguments of `amend`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Options to change, comma-separated key=value (compat, lazy_refcounts,
    /// refcount_bits, size; backing_file and backing_fmt only as they are).
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// Accepted for qemu-img compatibility (amend prints nothing).
    #[arg(short = 'q')]
    quiet: bool,
    /// Accepted for qemu-img compatibility (no progress bar).
    #[arg(short = 'p')]
    progress: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = (a.quiet, a.progress);
    if a.options.is_empty() {
        return Err(Error::invalid("Must specify options (-o)"));
    }
    let mut opts = AmendOptions::default();
    for o in &a.options {
        for (k, v) in image::parse_options(o)? {
            opts.set(&k, &v)?;
        }
    }
    let storage = FileStorage::open(
        &a.file,
        OpenOptions {
            write: true,
            unsafe_cache: false,
            force_share: false,
        },
    )
    .map_err(|e| Error::io(format!("could not open '{}'", a.file.display()), e))?;
    let format: Format = match &a.format {
        Some(f) => f.parse()?,
        None => image::probe(&storage)?,
    };
    if format != Format::Qcow2 {
        return Err(Error::unsupported(format!(
            "Format driver '{format}' does not support option amendment"
        )));
    }
    let mut img = if opts.size.is_some() {
        // With its backing chain, as qemu-img: growing an overlay must hide what a longer
        // backing image holds in the new area.
        drop(storage);
        image::open_qcow2(
            &a.file,
            &image::ImageOptions {
                format: Some(format),
                ..Default::default()
            },
        )?
        .0
    } else {
        Qcow2::open(storage, qcow2::OpenOptions::default())
            .map_err(|e| image::with_path(&a.file, e))?
    };
    img.amend(&opts)?;
    img.close()?;
    Ok(ExitCode::SUCCESS)
}
