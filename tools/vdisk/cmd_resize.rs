//! `vdisk resize [-f FMT] [--shrink] [--preallocation MODE] [-q] FILE [+|-]SIZE`
//!
//! As qemu-img: the size may be relative (`+1G`, `-512M`), shrinking needs `--shrink`,
//! preallocation applies to the added part only, and success prints "Image resized.".

use crate::output::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format};
use vdisk::size::parse_size;
use vdisk::storage::{self, FileStorage, OpenOptions, Storage};
use vdisk::{BlockDevice, Error, Preallocation, Result};

/// Arguments of `resize`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Allow the image to become smaller (data past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// Preallocation for the added part: off, metadata (qcow2), falloc, full.
    #[arg(long, value_name = "MODE")]
    preallocation: Option<String>,
    /// Do not print "Image resized.".
    #[arg(short = 'q')]
    quiet: bool,
    /// Image file.
    file: PathBuf,
    /// New size, or `+SIZE` / `-SIZE` relative to the current one (k, M, G, T suffixes).
    #[arg(allow_hyphen_values = true)]
    size: String,
}

/// The new size asked for by `spec` (absolute or relative to `current`).
fn new_size(spec: &str, current: u64) -> Result<u64> {
    let positive = || Error::invalid("New image size must be positive");
    let size = if let Some(d) = spec.strip_prefix('+') {
        current
            .checked_add(parse_size(d)?)
            .ok_or_else(|| Error::invalid("New image size is too large"))?
    } else if let Some(d) = spec.strip_prefix('-') {
        current.checked_sub(parse_size(d)?).ok_or_else(positive)?
    } else {
        parse_size(spec)?
    };
    if size == 0 {
        return Err(positive());
    }
    Ok(size)
}

fn open_storage(a: &Args) -> Result<FileStorage> {
    FileStorage::open(
        &a.file,
        OpenOptions {
            write: true,
            unsafe_cache: false,
            force_share: false,
        },
    )
    .map_err(|e| Error::io(format!("could not open '{}'", a.file.display()), e))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let prealloc: Preallocation = match &a.preallocation {
        Some(p) => p
            .parse()
            .map_err(|_| Error::invalid(format!("Invalid preallocation mode '{p}'")))?,
        None => Preallocation::Off,
    };
    let storage = open_storage(&a)?;
    let format = match &a.format {
        Some(f) => f.parse()?,
        None => image::probe(&storage)?,
    };
    match format {
        Format::Qcow2 => {
            // With its backing chain, as qemu-img: the new area of an overlay must hide
            // what a longer backing image holds there.
            drop(storage);
            let (mut img, _) = image::open_qcow2(
                &a.file,
                &image::ImageOptions {
                    format: Some(format),
                    ..Default::default()
                },
            )?;
            let current = img.virtual_size();
            let size = new_size(&a.size, current)?;
            if size % 512 != 0 {
                return Err(Error::invalid("The new size must be a multiple of 512"));
            }
            check_direction(&a, current, size, prealloc)?;
            img.resize_preallocated(size, prealloc)?;
            img.close()?;
        }
        Format::Raw => {
            let current = storage
                .len()
                .map_err(|e| Error::io("raw image: reading the file length", e))?;
            let size = new_size(&a.size, current)?;
            if prealloc == Preallocation::Metadata {
                return Err(Error::unsupported(
                    "Unsupported preallocation mode: metadata",
                ));
            }
            check_direction(&a, current, size, prealloc)?;
            let io = |e| Error::io("raw image: resizing", e);
            if size > current {
                match prealloc {
                    Preallocation::Falloc => {
                        storage.allocate(current, size - current).map_err(io)?
                    }
                    Preallocation::Full => {
                        storage::write_zero_bytes(&storage, current, size - current).map_err(io)?
                    }
                    _ => {}
                }
            }
            storage.set_len(size).map_err(io)?;
            storage.flush().map_err(io)?;
        }
        Format::Vmdk => {
            drop(storage);
            let mut img = image::open(
                &a.file,
                &image::ImageOptions {
                    format: Some(format),
                    no_backing: true,
                    ..Default::default()
                },
            )?;
            let current = img.device.virtual_size();
            let size = new_size(&a.size, current)?;
            check_direction(&a, current, size, prealloc)?;
            img.device.resize(size)?;
            img.device.close()?;
        }
    }
    if !a.quiet {
        outln!("Image resized.")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// qemu-img's rules: shrinking needs --shrink, and preallocation only applies to growing.
fn check_direction(a: &Args, current: u64, size: u64, prealloc: Preallocation) -> Result<()> {
    if size < current && !a.shrink {
        return Err(Error::invalid(
            "Use the --shrink option to perform a shrink operation.\nvdisk: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        ));
    }
    if size < current && prealloc != Preallocation::Off {
        return Err(Error::invalid(
            "Preallocation can only be used for growing images",
        ));
    }
    Ok(())
}
