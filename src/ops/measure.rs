//! How much host space an image would need in a target format, as `qemu-img measure`
//! computes it: the *required* size for the data of an input image (or for an empty image
//! of a given size), and the *fully allocated* size with every cluster allocated.
//!
//! For qcow2 the metadata of a fully allocated image is counted (header, L1 and L2 tables,
//! refcount table and blocks) and the data clusters the input does not use are subtracted,
//! so the required size is an upper bound, as QEMU's.

use crate::device::{BlockDevice, ExtentKind};
use crate::error::{Error, Result};
use crate::image::Format;
use crate::qcow2::CreateOptions;
use crate::Preallocation;

/// The result of a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes the image needs for its current data.
    pub required: u64,
    /// Bytes the image needs with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for persistent bitmaps (shown for a qcow2 v3 target measured from a qcow2
    /// input); vdisk copies no bitmaps, so this is 0 when present.
    pub bitmaps: Option<u64>,
}

impl Measurement {
    /// qemu-img's human output.
    pub fn to_human(&self) -> String {
        let mut s = format!(
            "required size: {}\nfully allocated size: {}\n",
            self.required, self.fully_allocated
        );
        if let Some(b) = self.bitmaps {
            s.push_str(&format!("bitmaps size: {b}\n"));
        }
        s
    }

    /// qemu-img's JSON object (keys in qemu-img's order).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(b) = self.bitmaps {
            m.insert("bitmaps".into(), b.into());
        }
        m.insert("required".into(), self.required.into());
        m.insert("fully-allocated".into(), self.fully_allocated.into());
        serde_json::Value::Object(m)
    }
}

/// Refcount table and block bytes needed to count `clusters` clusters and themselves.
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let per_table_cluster = cluster_size / 8;
    let per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks) = (0u64, 0u64);
    let mut n = 0u64;
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            break;
        }
    }
    (blocks + table) * cluster_size
}

/// Host bytes of a fully allocated qcow2 image of `size` guest bytes.
pub fn qcow2_fully_allocated(size: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let aligned = size.next_multiple_of(cluster_size);
    let mut meta = cluster_size; // header
    let l2_entries = (aligned / cluster_size).next_multiple_of(cluster_size / 8);
    meta += l2_entries * 8;
    let l1_entries = (l2_entries * 8 / cluster_size).next_multiple_of(cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

/// Guest bytes of `input` that a copy must store, rounded out to `cluster_size` clusters
/// (zero and unallocated runs are skipped).
pub fn allocated_bytes(input: &mut dyn BlockDevice, cluster_size: u64) -> Result<u64> {
    let size = input.virtual_size();
    let mut required = 0;
    let mut pos = 0;
    while pos < size {
        let ext = input.block_status(pos, size - pos)?;
        let mut len = ext.length;
        if ext.kind == ExtentKind::Data {
            len = (pos + len).next_multiple_of(cluster_size) - pos;
            required += pos % cluster_size + len;
        }
        pos += len;
    }
    Ok(required)
}

/// What to measure: an input image, or an empty one of a given size.
pub enum Source<'a> {
    /// An open input image.
    Image {
        /// The guest device (with its backing chain).
        device: &'a mut dyn BlockDevice,
        /// The input can carry persistent bitmaps (a qcow2 version 3 image); qemu-img
        /// then reports a bitmaps size.
        bitmaps_capable: bool,
    },
    /// A virtual size in bytes.
    Size(u64),
}

/// Measure `source` for a `target` image created with qemu-img style `options`.
pub fn measure(
    source: Source<'_>,
    target: Format,
    options: &[(String, String)],
) -> Result<Measurement> {
    match target {
        Format::Raw => {
            for (k, _) in options {
                if k != "preallocation" && k != "size" {
                    return Err(Error::invalid(format!("invalid parameter '{k}' for raw")));
                }
            }
            let required = match source {
                Source::Image { device, .. } => device.virtual_size(),
                Source::Size(s) => s.next_multiple_of(512),
            };
            Ok(Measurement {
                required,
                fully_allocated: required,
                bitmaps: None,
            })
        }
        Format::Qcow2 => {
            let mut o = CreateOptions::default();
            for (k, v) in options {
                o.set(k, v)?;
            }
            let cs = o.cluster_size;
            if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
                return Err(Error::invalid(format!(
                    "cluster size must be a power of two between 512 and 2048k, not {cs}"
                )));
            }
            if o.backing_file.is_some() && o.preallocation != Preallocation::Off {
                return Err(Error::invalid(
                    "backing file and preallocation can only be used at the same time if extended_l2 is on",
                ));
            }
            let order = o.refcount_bits.trailing_zeros();
            let (virtual_size, mut required, from_qcow2) = match source {
                Source::Image {
                    device,
                    bitmaps_capable,
                } => {
                    let vs = device.virtual_size().next_multiple_of(cs);
                    let req = if o.backing_file.is_some() {
                        vs
                    } else {
                        allocated_bytes(device, cs)?
                    };
                    (vs, req, bitmaps_capable)
                }
                Source::Size(s) => (s.next_multiple_of(cs), 0, false),
            };
            let l1 = crate::qcow2::header::l1_entries_for(virtual_size, cs.trailing_zeros());
            if l1.is_none_or(|n| n * 8 > crate::qcow2::limits::MAX_L1_BYTES) {
                return Err(Error::invalid(
                    "The image size is too large (try using a larger cluster size)",
                ));
            }
            if matches!(o.preallocation, Preallocation::Full | Preallocation::Falloc) {
                required = virtual_size;
            }
            let fully_allocated = qcow2_fully_allocated(virtual_size, cs, order);
            Ok(Measurement {
                required: fully_allocated - virtual_size + required,
                fully_allocated,
                bitmaps: (o.version >= 3 && from_qcow2).then_some(0),
            })
        }
        Format::Vmdk => Err(Error::unsupported("measure for vmdk targets")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_one_gib_image_needs_what_qemu_img_says() {
        // qemu-img measure --size 1G -O qcow2: required 393216, fully allocated 1074135040.
        let m = measure(Source::Size(1 << 30), Format::Qcow2, &[]).unwrap();
        assert_eq!(m.required, 393216);
        assert_eq!(m.fully_allocated, 1074135040);
    }
}
