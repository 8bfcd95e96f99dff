//! Opening the device an export serves: the image as it is, one of its internal snapshots
//! (read-only, `-l`), or a throwaway overlay over it that takes the writes (`-s`).

use super::dirty::{DirtySource, LiveBitmap, StaticRanges};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions};
use std::path::{Path, PathBuf};

/// What of the image is exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Source {
    /// The image itself.
    #[default]
    Image,
    /// An internal snapshot, by ID or name (qcow2 only; always read-only).
    Snapshot(String),
    /// The image under a temporary qcow2 overlay that receives the writes and is deleted
    /// when the server exits (its file is unlinked as soon as it is open).
    TemporaryOverlay,
}

/// How to open the exported image.
#[derive(Debug, Clone, Default)]
pub struct OpenExport {
    /// The image format; probed when `None`.
    pub format: Option<Format>,
    /// Open read-only.
    pub read_only: bool,
    /// Skip fdatasync on flush.
    pub unsafe_cache: bool,
    /// What to export.
    pub source: Source,
}

/// Open the device for exporting the image at `path`.
pub fn open_device(path: &Path, opts: &OpenExport) -> Result<Box<dyn BlockDevice>> {
    let image_opts = ImageOptions {
        format: opts.format,
        read_only: opts.read_only,
        unsafe_cache: opts.unsafe_cache,
        ..Default::default()
    };
    match &opts.source {
        Source::Image => Ok(image::open(path, &image_opts)?.device),
        Source::Snapshot(name) => open_snapshot(path, opts.format, name),
        Source::TemporaryOverlay => open_overlay(path, opts),
    }
}

fn open_snapshot(path: &Path, format: Option<Format>, name: &str) -> Result<Box<dyn BlockDevice>> {
    let format = match format {
        Some(f) => f,
        None => image::probe_path(path, false)?,
    };
    if format != Format::QCOW2 {
        return Err(Error::unsupported(format!(
            "'{}' is a {} image; internal snapshots exist only in qcow2 images",
            path.display(),
            format.name()
        )));
    }
    let opts = ImageOptions {
        format: Some(format),
        read_only: true,
        ..Default::default()
    };
    let (mut q, _) = image::open_qcow2(path, &opts)?;
    q.load_snapshot_for_export(name)
        .map_err(|e| image::with_path(path, e))?;
    Ok(Box::new(q))
}

fn open_overlay(path: &Path, opts: &OpenExport) -> Result<Box<dyn BlockDevice>> {
    if opts.read_only {
        return Err(Error::invalid(
            "a temporary overlay (-s) takes the writes: it makes no sense read-only",
        ));
    }
    let format = match opts.format {
        Some(f) => f,
        None => image::probe_path(path, false)?,
    };
    let base = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    let size = {
        let ro = ImageOptions {
            format: Some(format),
            read_only: true,
            ..Default::default()
        };
        image::open(&base, &ro)?.device.virtual_size()
    };
    let overlay = temporary_path();
    let options = [
        ("backing_file".to_string(), path_text(&base)?),
        ("backing_fmt".to_string(), format.name().to_string()),
    ];
    let mut created = image::create(&overlay, Format::QCOW2, Some(size), &options)?;
    created.close()?;
    drop(created);
    let rw = ImageOptions {
        format: Some(Format::QCOW2),
        unsafe_cache: opts.unsafe_cache,
        ..Default::default()
    };
    let opened = image::open(&overlay, &rw);
    // Open or not, the overlay's name is no longer needed: the open file lives on.
    let _ = std::fs::remove_file(&overlay);
    Ok(opened?.device)
}

/// A fresh name for a temporary overlay in the system's temporary directory.
fn temporary_path() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "vdisk-serve-{}-{nanos:09}.qcow2",
        std::process::id()
    ))
}

fn path_text(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::invalid(format!("'{}' is not a UTF-8 path", p.display())))
}

/// The source of the persistent bitmap `name` of the qcow2 image at `path`, for `serve
/// -B`: its dirty ranges read now when nothing changes them while they are served (a
/// read-only export, or a disabled bitmap), or the served image's own bits for an enabled
/// bitmap under a writable export.
pub fn bitmap_source(path: &Path, name: &str, read_only: bool) -> Result<Box<dyn DirtySource>> {
    let why = "-B exports a qcow2 persistent bitmap";
    let q = image::open_qcow2_alone(path, true, false, why)?;
    let Some(entry) = q.bitmap_entries().into_iter().find(|e| e.name == name) else {
        return Err(Error::invalid(format!("Bitmap '{name}' is not found")));
    };
    if entry.in_use() {
        return Err(Error::invalid(format!(
            "Bitmap '{name}' is inconsistent (it was in use when its image was last closed)"
        )));
    }
    if entry.enabled() && !read_only {
        // Writes through the export change it: answered from the served image's bits.
        return Ok(Box::new(LiveBitmap::new(name)));
    }
    let ranges = q.bitmap_dirty_ranges(name)?;
    Ok(Box::new(StaticRanges::new(name, ranges)))
}
