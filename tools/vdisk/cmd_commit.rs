//! `vdisk commit [-f FMT] [-b BASE] [-d] [-p] FILE`: fold an overlay into its backing.

use crate::output::outln;
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::chain_ops;
use vdisk::qcow2::{OpenOptions, Qcow2};
use vdisk::storage::{FileStorage, OpenOptions as FileOptions};
use vdisk::{Error, Result};

/// Arguments of `commit`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Commit into this image of the chain (default: the direct backing); implies -d.
    #[arg(short = 'b')]
    base: Option<PathBuf>,
    /// Do not empty the image after committing.
    #[arg(short = 'd')]
    keep: bool,
    /// Show a progress bar.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't')]
    cache: Option<String>,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = &a.cache;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let mut chain = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            ..Default::default()
        },
    )?;
    if chain.layers.len() < 2 {
        return Err(Error::invalid(format!(
            "'{}' has no backing file to commit into",
            a.file.display()
        )));
    }
    let base_depth = match &a.base {
        None => 1,
        Some(b) => {
            let want = std::fs::canonicalize(b)
                .map_err(|e| Error::io(format!("could not open '{}'", b.display()), e))?;
            chain
                .layers
                .iter()
                .position(|l| std::fs::canonicalize(&l.path).ok().as_ref() == Some(&want))
                .filter(|&d| d > 0)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "'{}' is not in the backing chain of '{}'",
                        b.display(),
                        a.file.display()
                    ))
                })?
        }
    };
    // Emptying the top image at the end writes it: find out now whether it may be written,
    // before the base is changed.
    let empty_top = !a.keep && a.base.is_none() && !matches!(format, Some(Format::Raw));
    if empty_top && chain.layers[0].format == Format::Qcow2 {
        let s = FileStorage::open(
            &a.file,
            FileOptions {
                write: false,
                unsafe_cache: false,
                force_share: true,
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", a.file.display()), e))?;
        vdisk::qcow2::check_writable_open(&s).map_err(|e| image::with_path(&a.file, e))?;
    }
    let base_layer = chain.layers[base_depth].clone();
    // The base is about to be opened for writing, which its read-only open in `chain`
    // would refuse (image locks, see vdisk::storage::lock). Reopen: the base writable with
    // its own backing chain (read-only locks below it), read-only locks on the layers above
    // it, then the chain itself sharing all.
    //
    // The base needs its backing chain: writing zeros into it must hide what its backing
    // holds (a zero cluster, not an unallocated one), and a write into part of one of its
    // clusters must keep its backing's data in the rest of the cluster.
    let layers = std::mem::take(&mut chain.layers);
    drop(chain);
    let mut base = image::open(
        &base_layer.path,
        &ImageOptions {
            format: Some(base_layer.format),
            read_only: false,
            ..Default::default()
        },
    )?;
    let guards = layers[..base_depth]
        .iter()
        .map(|l| {
            FileStorage::open(&l.path, FileOptions::default())
                .map_err(|e| Error::io(format!("could not open '{}'", l.path.display()), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut chain = image::open(
        &a.file,
        &ImageOptions {
            format,
            read_only: true,
            force_share: true,
            ..Default::default()
        },
    )?;
    if chain.layers != layers || base.layers[..] != layers[base_depth..] {
        return Err(Error::invalid(format!(
            "the backing chain of '{}' changed while it was being opened",
            a.file.display()
        )));
    }
    let size = chain.device.virtual_size();
    let mut bar = Progress::new(a.progress, size);
    chain_ops::commit(
        chain.device.as_mut(),
        base.device.as_mut(),
        base_depth as u32,
        &mut |d, t| bar.update(d, t),
    )?;
    bar.finish();
    drop(base);
    drop(chain);
    drop(guards);
    if empty_top {
        let s = FileStorage::open(
            &a.file,
            FileOptions {
                write: true,
                unsafe_cache: false,
                force_share: false,
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", a.file.display()), e))?;
        if image::probe(&s)? == Format::Qcow2 {
            let mut top =
                Qcow2::open(s, OpenOptions::default()).map_err(|e| image::with_path(&a.file, e))?;
            top.make_empty()?;
        }
    }
    if !a.quiet {
        outln!("Image committed.")?;
    }
    Ok(ExitCode::SUCCESS)
}
