//! Opening images by path: format probing, choosing the driver, and creating new images.
//!
//! Probing looks at the first bytes only: the qcow2 magic, a VMDK sparse header or text
//! descriptor, otherwise raw. `-f` (an explicit [`Format`]) always wins over probing.

use crate::chain::{self, Layer, Visited};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::qcow2::{self, Qcow2};
use crate::raw::Raw;
use crate::storage::{FileStorage, OpenOptions as FileOpenOptions, Storage};
use std::path::{Path, PathBuf};

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

    /// Whether the format can store compressed data at all (QEMU's driver-level check for
    /// `convert -c`, made before the target is created): raw cannot.
    pub fn supports_compression(self) -> bool {
        !matches!(self, Format::Raw)
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
    /// Do not open backing files (reads of unallocated clusters then return zeros).
    pub no_backing: bool,
    /// Read-only opens only: take no lock that keeps other processes from writing the
    /// image or its backing files (qemu-img `-U`). See [`crate::storage::lock`].
    pub force_share: bool,
}

fn open_file(path: &Path, opts: &ImageOptions) -> Result<FileStorage> {
    FileStorage::open(
        path,
        FileOpenOptions {
            write: !opts.read_only,
            unsafe_cache: opts.unsafe_cache,
            force_share: opts.force_share,
        },
    )
    .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))
}

/// An open image of any format.
pub struct Image {
    /// The guest-visible device (with its backing chain attached).
    pub device: Box<dyn BlockDevice>,
    /// The format it was opened as.
    pub format: Format,
    /// The chain, top first (one layer when there is no backing file).
    pub layers: Vec<Layer>,
}

/// Open the image at `path`, with its backing chain unless `opts.no_backing`.
pub fn open(path: &Path, opts: &ImageOptions) -> Result<Image> {
    let mut visited = Visited::default();
    let mut layers = Vec::new();
    let device = open_layer(path, opts.format, opts, &mut visited, &mut layers, false)?;
    let format = layers
        .first()
        .map(|l: &Layer| l.format)
        .unwrap_or(Format::Raw);
    Ok(Image {
        device,
        format,
        layers,
    })
}

fn open_layer(
    path: &Path,
    format: Option<Format>,
    opts: &ImageOptions,
    visited: &mut Visited,
    layers: &mut Vec<Layer>,
    probed_backing: bool,
) -> Result<Box<dyn BlockDevice>> {
    visited.enter(path)?;
    let probed = format.is_none();
    let format = match format {
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
    let layer = Layer {
        path: path.to_path_buf(),
        format,
        backing_name: None,
        backing_format: None,
    };
    let device: Box<dyn BlockDevice> = match format {
        Format::Raw => {
            let raw: Box<dyn BlockDevice> =
                Box::new(Raw::open(open_file(path, opts)?, opts.read_only)?);
            if probed && !opts.read_only {
                Box::new(crate::probed_raw::ProbedRaw::new(raw))
            } else {
                raw
            }
        }
        Format::Qcow2 => {
            return Ok(Box::new(open_qcow2_layer(
                path,
                opts,
                visited,
                layers,
                probed_backing,
            )?))
        }
        Format::Vmdk => {
            if probed_backing {
                refuse_probed_vmdk_descriptor(path)?;
            }
            crate::vmdk::open_device(path, opts.read_only, opts.force_share)?
        }
    };
    layers.push(layer);
    Ok(device)
}

/// Open the qcow2 image at `path` as the driver itself, for the operations that need more
/// than a [`BlockDevice`] (resize with preallocation, amend), with its backing chain
/// attached read-only unless `opts.no_backing`. Returns the image and its chain, top first.
pub fn open_qcow2(path: &Path, opts: &ImageOptions) -> Result<(Qcow2<FileStorage>, Vec<Layer>)> {
    let mut visited = Visited::default();
    visited.enter(path)?;
    let mut layers = Vec::new();
    let q = open_qcow2_layer(path, opts, &mut visited, &mut layers, false)?;
    Ok((q, layers))
}

/// Open one qcow2 layer of a chain and, unless `opts.no_backing`, the layers below it.
fn open_qcow2_layer(
    path: &Path,
    opts: &ImageOptions,
    visited: &mut Visited,
    layers: &mut Vec<Layer>,
    probed_backing: bool,
) -> Result<Qcow2<FileStorage>> {
    let s = open_file(path, opts)?;
    let ro = qcow2::OpenOptions {
        read_only: opts.read_only,
        ..Default::default()
    };
    let mut q = Qcow2::open(s, ro).map_err(|e| with_path(path, e))?;
    let layer = Layer {
        path: path.to_path_buf(),
        format: Format::Qcow2,
        backing_name: q.header().backing_file.clone(),
        backing_format: q.header().backing_format(),
    };
    let Some(name) = layer.backing_name.clone() else {
        layers.push(layer);
        return Ok(q);
    };
    if probed_backing {
        return Err(Error::unsupported(format!(
            "'{}' was probed as a backing image (no backing format recorded) and has a backing file itself; record the format with 'vdisk rebase -u -F'",
            path.display()
        )));
    }
    layers.push(layer.clone());
    if opts.no_backing {
        return Ok(q);
    }
    let bpath = chain::resolve(path, &name)?;
    let bfmt = match &layer.backing_format {
        Some(f) => Some(chain::parse_backing_format(f, path)?),
        None => None,
    };
    if !bpath.exists() {
        return Err(Error::invalid(format!(
            "could not open backing file '{}' of '{}': no such file",
            bpath.display(),
            path.display()
        )));
    }
    let bopts = ImageOptions {
        format: None,
        read_only: true,
        unsafe_cache: false,
        no_backing: false,
        force_share: opts.force_share,
    };
    let backing = open_layer(&bpath, bfmt, &bopts, visited, layers, bfmt.is_none())?;
    if bfmt.is_none() {
        eprintln!(
            "vdisk: note: '{}' records no backing format; probed '{}' as {}",
            path.display(),
            bpath.display(),
            layers.last().map(|l| l.format.name()).unwrap_or("raw")
        );
    }
    q.set_backing(Some(backing));
    Ok(q)
}

/// A backing file with no recorded format that probes as VMDK is opened only when it is a
/// self-contained sparse extent: a descriptor would make vdisk open the files it names,
/// chosen by whoever wrote the backing file's first sector.
fn refuse_probed_vmdk_descriptor(path: &Path) -> Result<()> {
    let f = open_file(
        path,
        &ImageOptions {
            read_only: true,
            force_share: true,
            ..Default::default()
        },
    )?;
    let mut first = [0u8; 512];
    f.read_at(&mut first, 0)
        .map_err(|e| Error::io("probing the image format", e))?;
    let sparse = &first[..4] == b"KDMV" || &first[..4] == b"COWD";
    // A sparse file of capacity 0 only carries a descriptor naming other extents.
    let capacity = u64::from_le_bytes(first[12..20].try_into().unwrap_or_default());
    if sparse && (capacity != 0 || &first[..4] == b"COWD") {
        return Ok(());
    }
    Err(Error::unsupported(format!(
        "backing file '{}' was probed as a VMDK descriptor naming extent files; record its format with 'vdisk rebase -u -F vmdk' to open it",
        path.display()
    )))
}

/// Name the file an image error came from.
pub fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::ReadOnly(message) => Error::ReadOnly(format!("'{}': {message}", path.display())),
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
    create_with_cache(path, format, size, options, false)
}

/// [`create`], optionally without fdatasync on flush (qemu-img convert's cache=unsafe).
/// When it fails, the files it made are removed (see [`NewFiles`]).
pub fn create_with_cache(
    path: &Path,
    format: Format,
    size: Option<u64>,
    options: &[(String, String)],
    unsafe_cache: bool,
) -> Result<Box<dyn BlockDevice>> {
    let files = NewFiles::before_create(path, format, size.unwrap_or(0), options);
    let device = create_files(path, format, size, options, unsafe_cache)?;
    files.keep();
    Ok(device)
}

/// The files a new image is made of that did not exist before it was created. Dropped
/// without [`keep`](Self::keep), it removes them: a failed create or convert leaves nothing
/// behind, and never removes a file that was there before (that one stays, truncated or
/// partly written, as qemu-img leaves it).
#[must_use = "dropping NewFiles removes the files it lists"]
pub struct NewFiles {
    paths: Vec<PathBuf>,
}

impl NewFiles {
    /// The files creating a `format` image of `size` bytes at `path` with `options` would
    /// make, less those that exist now. Call it before creating the image.
    pub fn before_create(
        path: &Path,
        format: Format,
        size: u64,
        options: &[(String, String)],
    ) -> NewFiles {
        let all = match format {
            // Options that do not parse make creation fail before any file is made.
            Format::Vmdk => crate::vmdk::new_image_files(path, size, options)
                .unwrap_or_else(|_| vec![path.to_path_buf()]),
            Format::Raw | Format::Qcow2 => vec![path.to_path_buf()],
        };
        let absent = |p: &PathBuf| match std::fs::symlink_metadata(p) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => false,
        };
        NewFiles {
            paths: all.into_iter().filter(absent).collect(),
        }
    }

    /// The image is complete: keep its files.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for NewFiles {
    fn drop(&mut self) {
        for p in &self.paths {
            // Best effort: the operation's own error is the one to report.
            let _ = std::fs::remove_file(p);
        }
    }
}

fn create_files(
    path: &Path,
    format: Format,
    size: Option<u64>,
    options: &[(String, String)],
    unsafe_cache: bool,
) -> Result<Box<dyn BlockDevice>> {
    let new_file = |path: &Path| -> Result<FileStorage> {
        let mut s = FileStorage::create(path)
            .map_err(|e| Error::io(format!("could not create '{}'", path.display()), e))?;
        s.set_unsafe_cache(unsafe_cache);
        Ok(s)
    };
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
            Ok(Box::new(Raw::create(new_file(path)?, size, prealloc)?))
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
            Ok(Box::new(qcow2::create(new_file(path)?, &o)?))
        }
        Format::Vmdk => crate::vmdk::create_device(path, size.unwrap_or(0), options),
    }
}

/// The virtual size a new image at `path` gets from the size argument `size_arg` and the
/// `size` options (the last one wins). As qemu-img, giving both is refused: "The image size
/// must be specified only once".
pub fn create_size(
    path: &Path,
    size_arg: Option<u64>,
    options: &[(String, String)],
) -> Result<Option<u64>> {
    let option = match options.iter().rev().find(|(k, _)| k == "size") {
        Some((_, v)) => Some(crate::size::parse_size(v)?),
        None => None,
    };
    match (size_arg, option) {
        (Some(_), Some(_)) => Err(Error::invalid(format!(
            "{}: The image size must be specified only once",
            path.display()
        ))),
        (a, o) => Ok(a.or(o)),
    }
}

/// Check that every `-o` option is one `format` knows with a well-formed value, without
/// creating anything (qemu-img reports these before it prints "Formatting ...").
pub fn check_create_options(format: Format, options: &[(String, String)]) -> Result<()> {
    match format {
        Format::Raw => {
            for (k, v) in options {
                let _ = v;
                match k.as_str() {
                    "preallocation" | "size" => {}
                    _ => return Err(Error::invalid(format!("invalid parameter '{k}' for raw"))),
                }
            }
        }
        Format::Qcow2 => {
            let mut o = qcow2::CreateOptions::default();
            // String-typed options are only checked when the image is created.
            const STRINGS: [&str; 5] = [
                "compat",
                "preallocation",
                "compression_type",
                "backing_file",
                "backing_fmt",
            ];
            for (k, v) in options
                .iter()
                .filter(|(k, _)| !STRINGS.contains(&k.as_str()))
            {
                o.set(k, v)?;
            }
        }
        Format::Vmdk => {
            let mut o = crate::vmdk::VmdkCreateOptions::default();
            for (k, v) in options.iter().filter(|(k, _)| k != "size") {
                o.parse_option(k, v)?;
            }
        }
    }
    Ok(())
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
