//! How much host space an image would need in a target format, as `qemu-img measure`
//! computes it: the *required* size for the data of an input image (or for an empty image
//! of a given size), and the *fully allocated* size with every cluster allocated. Each
//! format's driver does the arithmetic (`Driver::measure`).

use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions, SnapshotRef};
use crate::storage::HostFiles;
use std::path::Path;

pub use crate::driver::{allocated_bytes, BitmapShape, Measurement, Source};

/// Measure `source` for a `target` image created with qemu-img style `options`.
pub fn measure(
    source: Source<'_>,
    target: Format,
    options: &[(String, String)],
) -> Result<Measurement> {
    match target.driver().measure {
        Some(measure) => measure(source, options),
        // qemu-img's words.
        None => Err(Error::invalid(format!(
            "Block driver '{target}' does not support size measurement"
        ))),
    }
}

/// Measure the image at `file` (format `format`, probed when `None`; `force_share` reads it
/// without locking out other users; its internal snapshot `snapshot` in place of the active
/// disk when given) for a `target` image created with `options`.
pub fn measure_file(
    file: &Path,
    format: Option<Format>,
    snapshot: Option<&SnapshotRef>,
    force_share: bool,
    target: Format,
    options: &[(String, String)],
) -> Result<Measurement> {
    let opts = ImageOptions {
        format,
        read_only: true,
        force_share,
        ..Default::default()
    };
    let mut img = match snapshot {
        Some(snap) => image::open_snapshot(file, &opts, snap)?,
        None => image::open(file, &opts)?,
    };
    let info = (img.format.driver().info)(&HostFiles, file, force_share)?;
    let bitmaps = match info.supports_persistent_bitmaps {
        true => Some(bitmap_shapes(file, force_share)?),
        false => None,
    };
    let source = Source::Image {
        device: img.device.as_mut(),
        bitmaps,
    };
    measure(source, target, options)
}

/// The persistent bitmaps of the qcow2 image at `file`, as measuring needs them.
fn bitmap_shapes(file: &Path, force_share: bool) -> Result<Vec<BitmapShape>> {
    let q = image::open_qcow2_alone(file, true, force_share, "it has bitmaps")?;
    Ok(q.bitmap_entries()
        .iter()
        .map(|e| BitmapShape {
            name_len: e.name.len(),
            granularity: 1 << e.granularity_bits,
        })
        .collect())
}
