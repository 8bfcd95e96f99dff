//! `vdisk rebase [-f FMT] [-u] [-U] [-c] -b NEW [-F NEW_FMT] [-p] FILE`: change an
//! overlay's backing file; safe mode (the default) keeps the guest contents the same.

use crate::flags::{CacheFlag, ForceShareFlag, FormatFlag, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::chain_ops;
use vdisk::{BlockDevice, Error, Result};

/// Arguments of `rebase`.
#[derive(clap::Args)]
pub struct Args {
    // The image's format (probed when absent; only qcow2 records a backing file).
    #[command(flatten)]
    format: FormatFlag,
    /// Unsafe: only rewrite the backing name in the header.
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_mode: bool,
    /// New backing file ("" removes the backing file).
    #[arg(short = 'b', long = "backing", required = true)]
    backing: String,
    /// Format of the new backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    /// Cache mode of the backing files (accepted for qemu-img compatibility).
    #[arg(short = 'T', long = "backing-cache", value_name = "CACHE")]
    backing_cache: Option<String>,
    /// Store the clusters a safe rebase writes compressed.
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    // -U: the new backing file is read without locking out its writers (as qemu-img, the
    // image and its current chain are opened, and locked, as always).
    #[command(flatten)]
    force_share: ForceShareFlag,
    #[command(flatten)]
    progress: ProgressFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    cache: CacheFlag,
    /// Image file.
    file: PathBuf,
}

/// The safe part of a rebase: write into the overlay what the new backing would change.
fn copy_for_new_backing(a: &Args, new_name: Option<&str>, new_fmt: Option<Format>) -> Result<()> {
    let force_share = a.force_share.on();
    // The overlay, writable, with its current chain attached (read-only).
    let mut chain = image::open(
        &a.file,
        &ImageOptions {
            format: Some(Format::QCOW2),
            ..Default::default()
        },
    )?;
    let mut new_backing = match new_name {
        Some(n) => {
            let p = vdisk::chain::resolve(&a.file, n)?;
            let opts = ImageOptions {
                format: new_fmt,
                read_only: true,
                force_share,
                ..Default::default()
            };
            Some(image::open(&p, &opts)?)
        }
        None => None,
    };
    let size = chain.device.virtual_size();
    let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), size);
    let nb: Option<&mut dyn BlockDevice> = match new_backing.as_mut() {
        Some(i) => Some(i.device.as_mut()),
        None => None,
    };
    chain_ops::rebase_copy_with(chain.device.as_mut(), nb, a.compress, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    chain.device.close()
}

/// The image's format: `-f`, else probed (with qemu-img's warning for a probed raw image,
/// which rebase would write).
fn image_format(a: &Args, file: &Path) -> Result<Format> {
    match a.format.get()? {
        Some(f) => Ok(f),
        None => image::probe_for_writing(file),
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = (a.cache.get(), a.backing_cache.as_deref());
    let new_name = (!a.backing.is_empty()).then_some(a.backing.as_str());
    let new_fmt: Option<Format> = a.backing_format.as_deref().map(str::parse).transpose()?;
    vdisk::names::check_new_backing(new_name, new_fmt.map(Format::name))?;
    let format = image_format(&a, &a.file)?;
    if format != Format::QCOW2 {
        // Opened as asked (an image that is not of that format fails here, as in
        // qemu-img); only qcow2 records a backing file. qemu-img first copies what the
        // new backing would change into the image; vdisk refuses before writing.
        let img = image::open(
            &a.file,
            &ImageOptions {
                format: Some(format),
                no_backing: true,
                ..Default::default()
            },
        )?;
        if a.compress && !format.driver().supports_compression {
            return Err(Error::invalid(
                "Compression not supported for this file format",
            ));
        }
        drop(img);
        return Err(Error::invalid(format!(
            "Could not change the backing file to '{}': Operation not supported",
            a.backing
        )));
    }
    if !a.unsafe_mode {
        copy_for_new_backing(&a, new_name, new_fmt)?;
    }
    let mut top = image::open_qcow2_alone(&a.file, false, false, "rebase needs one")?;
    top.set_backing_file(new_name, new_fmt.map(|f| f.name()))?;
    top.close()?;
    Ok(ExitCode::SUCCESS)
}
