//! `vdisk info [-f FMT] [--output human|json] FILE`

use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format, ImageOptions};
use vdisk::ops::info::{self, ImageInfo};
use vdisk::storage::{FileStorage, OpenOptions, Storage};
use vdisk::{Error, Result};

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Open without taking locks (accepted for qemu-img compatibility).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let _ = a.force_share;
    let json = match a.output.as_str() {
        "json" => true,
        "human" => false,
        o => {
            return Err(Error::invalid(format!(
                "--output must be human or json, not '{o}'"
            )))
        }
    };
    let name = a.file.display().to_string();
    let storage = FileStorage::open(&a.file, OpenOptions::default())
        .map_err(|e| Error::io(format!("could not open '{name}'"), e))?;
    let format: Format = match &a.format {
        Some(f) => f.parse()?,
        None => image::probe(&storage)?,
    };
    let info = match format {
        Format::Qcow2 => {
            let q = vdisk::qcow2::Qcow2::open(
                storage,
                vdisk::qcow2::OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| image::with_path(&a.file, e))?;
            info::qcow2_info(&q, &name)?
        }
        Format::Vmdk => {
            let io = |e| Error::io("reading the file size", e);
            let file = ImageInfo::file_node(
                &name,
                storage.len().map_err(io)?,
                storage.allocated_bytes().map_err(io)?,
            );
            let opts = vdisk::vmdk::VmdkOpenOptions {
                read_only: true,
                allow_outside_extents: false,
            };
            let v = vdisk::vmdk::open(&a.file, &opts).map_err(|e| image::with_path(&a.file, e))?;
            let mut info =
                ImageInfo::new(&name, format, vdisk::BlockDevice::virtual_size(&v), file);
            info.cluster_size = vdisk::BlockDevice::cluster_size(&v);
            let data = serde_json::to_value(v.info()).map_err(|e| Error::invalid(e.to_string()))?;
            info.format_specific = Some(info::FormatSpecific {
                kind: "vmdk".into(),
                data,
            });
            info
        }
        Format::Raw => {
            let io = |e| Error::io("reading the file size", e);
            let file = ImageInfo::file_node(
                &name,
                storage.len().map_err(io)?,
                storage.allocated_bytes().map_err(io)?,
            );
            let img = image::open(
                &a.file,
                &ImageOptions {
                    format: Some(format),
                    read_only: true,
                    ..Default::default()
                },
            )?;
            ImageInfo::new(&name, format, img.device.virtual_size(), file)
        }
    };
    if json {
        println!("{}", info.to_json());
    } else {
        print!("{}", info.to_human());
    }
    Ok(ExitCode::SUCCESS)
}
