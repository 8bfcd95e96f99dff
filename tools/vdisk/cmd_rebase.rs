//! `vdisk rebase [-f FMT] [-u] -b NEW [-F NEW_FMT] [-p] FILE`: change an overlay's backing
//! file; safe mode (the default) keeps the guest contents the same.

use crate::flags::{CacheFlag, FormatFlag, ImageSpecFlags, ProgressFlag, QuietFlag};
use crate::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::chain_ops;
use vdisk::qcow2::driver::SharedQcow2;
use vdisk::{BlockDevice, Result};

/// Arguments of `rebase`.
#[derive(clap::Args)]
pub struct Args {
    // Accepted for qemu-img compatibility: the image must be qcow2.
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Unsafe: only rewrite the backing name in the header.
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_mode: bool,
    /// New backing file ("" removes the backing file).
    #[arg(short = 'b', long = "backing", required = true)]
    backing: String,
    /// Format of the new backing file.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    #[command(flatten)]
    progress: ProgressFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    #[command(flatten)]
    cache: CacheFlag,
    /// Image file.
    file: PathBuf,
}

fn open_top(path: &std::path::Path) -> Result<SharedQcow2> {
    image::open_qcow2_alone(path, false, false, "rebase needs one")
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let _ = (a.cache.get(), a.format.name());
    let new_name = (!a.backing.is_empty()).then_some(a.backing.as_str());
    let new_fmt: Option<Format> = a.backing_format.as_deref().map(str::parse).transpose()?;
    vdisk::names::check_new_backing(new_name, new_fmt.map(Format::name))?;
    if !a.unsafe_mode {
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
                Some(image::open(
                    &p,
                    &ImageOptions {
                        format: new_fmt,
                        read_only: true,
                        ..Default::default()
                    },
                )?)
            }
            None => None,
        };
        let size = chain.device.virtual_size();
        let mut bar = Progress::new(a.progress.on() && !a.quiet.on(), size);
        let nb: Option<&mut dyn BlockDevice> = match new_backing.as_mut() {
            Some(i) => Some(i.device.as_mut()),
            None => None,
        };
        chain_ops::rebase_copy(chain.device.as_mut(), nb, &mut |d, t| bar.update(d, t))?;
        bar.finish();
        chain.device.close()?;
    }
    let mut top = open_top(&a.file)?;
    let fmt_name = new_fmt.map(|f| f.name());
    top.set_backing_file(new_name, fmt_name)?;
    top.close()?;
    Ok(ExitCode::SUCCESS)
}
