//! Opening images by path: format probing, choosing the driver, and creating new images.
//!
//! Probing looks at the first bytes only: the qcow2 magic, a VMDK sparse header or text
//! descriptor, otherwise raw. `-f` (an explicit [`Format`]) always wins over probing.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::qcow2::{self, Qcow2};
use crate::raw::Raw;
use crate::storage::{FileStorage, OpenOptions as FileOpenOptions, Storage};
use std::path::Path;

/// The image formats vdisk knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw bytes.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            _ => Err(Error::invalid(format!(
                "unknown or unsupported format '{s}' (vdisk knows raw, qcow2 and vmdk)"
            ))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Guess the format of an image from its first bytes.
pub fn probe_bytes(first: &[u8]) -> Format {
    if first.len() >= 4 && first[..4] == qcow2::header::QCOW2_MAGIC.to_be_bytes() {
        Format::Qcow2
    } else if crate::vmdk::probe(first) {
        Format::Vmdk
    } else {
        Format::Raw
    }
}

/// Guess the format of the image in `storage`.
pub fn probe<S: Storage + ?Sized>(storage: &S) -> Result<Format> {
    let mut first = [0u8; 512];
    storage
        .read_at(&mut first, 0)
        .map_err(|e| Error::io("probing the image format", e))?;
    Ok(probe_bytes(&first))
}

/// How to open an image by path.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The format; `None` probes it.
    pub format: Option<Format>,
    /// Open read-only.
    pub read_only: bool,
    /// Skip fdatasync on flush (qemu-img's cache=unsafe).
    pub unsafe_cache: bool,
}

fn open_file(path: &Path, opts: &ImageOptions) -> Result<FileStorage> {
    FileStorage::open(
        path,
        FileOpenOptions {
            write: !opts.read_only,
            unsafe_cache: opts.unsafe_cache,
        },
    )
    .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))
}

/// An open image of any format.
pub struct Image {
    /// The guest-visible device.
    pub device: Box<dyn BlockDevice>,
    /// The format it was opened as.
    pub format: Format,
}

/// Open the image at `path`.
pub fn open(path: &Path, opts: &ImageOptions) -> Result<Image> {
    let format = match opts.format {
        Some(f) => f,
        None => {
            let f = open_file(
                path,
                &ImageOptions {
                    read_only: true,
                    ..opts.clone()
                },
            )?;
            probe(&f)?
        }
    };
    let device: Box<dyn BlockDevice> = match format {
        Format::Raw => Box::new(Raw::open(open_file(path, opts)?, opts.read_only)?),
        Format::Qcow2 => {
            let s = open_file(path, opts)?;
            let q = Qcow2::open(
                s,
                qcow2::OpenOptions {
                    read_only: opts.read_only,
                    ..Default::default()
                },
            )
            .map_err(|e| with_path(path, e))?;
            if q.header().backing_file.is_some() {
                return Err(Error::unsupported(format!(
                    "'{}' has a backing file; backing chains are not supported yet",
                    path.display()
                )));
            }
            Box::new(q)
        }
        Format::Vmdk => crate::vmdk::open_device(path, opts.read_only)?,
    };
    Ok(Image { device, format })
}

/// Prefix an image error with the file it came from.
pub fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Corrupt {
            structure,
            offset,
            message,
        } => Error::Corrupt {
            structure,
            offset,
            message: format!("{message} (in '{}')", path.display()),
        },
        other => other,
    }
}

/// Create a new image of `format` at `path` with qemu-img style `options` (key, value).
pub fn create(
    path: &Path,
    format: Format,
    size: Option<u64>,
    options: &[(String, String)],
) -> Result<Box<dyn BlockDevice>> {
    match format {
        Format::Raw => {
            let mut prealloc = crate::Preallocation::Off;
            for (k, v) in options {
                match k.as_str() {
                    "preallocation" => prealloc = v.parse()?,
                    "size" => {}
                    _ => return Err(Error::invalid(format!("invalid parameter '{k}' for raw"))),
                }
            }
            let size = size.ok_or_else(|| Error::invalid("image size must be specified"))?;
            let s = FileStorage::create(path)
                .map_err(|e| Error::io(format!("could not create '{}'", path.display()), e))?;
            Ok(Box::new(Raw::create(s, size, prealloc)?))
        }
        Format::Qcow2 => {
            let mut o = qcow2::CreateOptions::default();
            for (k, v) in options {
                o.set(k, v)?;
            }
            if let Some(s) = size {
                o.size = s;
            }
            o.validate()?;
            let s = FileStorage::create(path)
                .map_err(|e| Error::io(format!("could not create '{}'", path.display()), e))?;
            Ok(Box::new(qcow2::create(s, &o)?))
        }
        Format::Vmdk => crate::vmdk::create_device(path, size.unwrap_or(0), options),
    }
}

/// Split a qemu-img `-o` string (`a=1,b=2`; `,,` escapes a comma) into pairs.
pub fn parse_options(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        match p.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                return Err(Error::invalid(format!(
                    "invalid option '{p}' (expected key=value)"
                )))
            }
        }
    }
    Ok(out)
}
