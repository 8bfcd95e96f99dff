//! `qemu-img measure` for qcow2 targets: the metadata of a fully allocated image (header,
//! L1 and L2 tables, refcount table and blocks), and the data clusters an input uses.

use super::CreateOptions;
use crate::driver::{allocated_bytes, BitmapShape, Measurement, Source};
use crate::error::{Error, Result};
use crate::Preallocation;

/// What a qcow2 image created with `options` needs for `source`.
pub fn measure(source: Source<'_>, options: &[(String, String)]) -> Result<Measurement> {
    let mut o = CreateOptions::default();
    for (k, v) in options {
        // qemu-img measure parses these two itself, and words their refusals its own way.
        match k.as_str() {
            "compat" if !matches!(v.as_str(), "0.10" | "v2" | "1.1" | "v3") => {
                return Err(Error::invalid(format!(
                    "Invalid compatibility level: '{v}'"
                )))
            }
            "preallocation" => o.preallocation = v.parse()?,
            _ => o.set(k, v)?,
        }
    }
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::invalid(super::create::CLUSTER_SIZE_RULE));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(Error::invalid(super::create::REFCOUNT_WIDTH_RULE));
    }
    if o.extended_l2 && cs < 1 << super::subcluster::MIN_CLUSTER_BITS {
        return Err(Error::invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if o.backing_file.is_some() && o.preallocation != Preallocation::Off {
        return Err(Error::invalid(
            "backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    let order = o.refcount_bits.trailing_zeros();
    let (virtual_size, mut required, bitmaps) = match source {
        Source::Image { device, bitmaps } => {
            let vs = device.virtual_size().next_multiple_of(cs);
            let req = if o.backing_file.is_some() {
                vs
            } else {
                allocated_bytes(device, cs)?
            };
            let bitmaps = bitmaps.map(|b| bitmaps_size(&b, device.virtual_size(), cs));
            (vs, req, bitmaps)
        }
        Source::Size(s) => (s.next_multiple_of(cs), 0, None),
    };
    let l1 = super::header::l1_entries_for(virtual_size, cs.trailing_zeros(), o.extended_l2);
    if l1.is_none_or(|n| n * 8 > super::limits::MAX_L1_BYTES) {
        return Err(Error::invalid(
            "The image size is too large (try using a larger cluster size)",
        ));
    }
    if matches!(o.preallocation, Preallocation::Full | Preallocation::Falloc) {
        required = virtual_size;
    }
    // A LUKS header region takes whole clusters of its own.
    let luks = o.encrypt.header_region_bytes()?.next_multiple_of(cs);
    let fully_allocated = qcow2_fully_allocated(virtual_size, cs, order, o.extended_l2) + luks;
    Ok(Measurement {
        required: fully_allocated - virtual_size + required,
        fully_allocated,
        bitmaps: bitmaps.filter(|_| o.version >= 3),
    })
}

/// Bytes the bitmaps `b` of a disk of `size` bytes take in an image of `cs`-byte clusters,
/// as qemu-img measure counts them: every data cluster allocated, the tables, and the
/// directory.
fn bitmaps_size(b: &[BitmapShape], size: u64, cs: u64) -> u64 {
    let mut total = 0;
    let mut dir = 0;
    for s in b {
        let bytes = size.div_ceil(s.granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total += clusters * cs + (clusters * 8).next_multiple_of(cs);
        dir += (24 + s.name_len as u64).next_multiple_of(8);
    }
    total + dir.next_multiple_of(cs)
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
pub fn qcow2_fully_allocated(
    size: u64,
    cluster_size: u64,
    refcount_order: u32,
    extended_l2: bool,
) -> u64 {
    let aligned = size.next_multiple_of(cluster_size);
    let mut meta = cluster_size; // header
    let entry = if extended_l2 { 16 } else { 8 };
    let l2_entries = (aligned / cluster_size).next_multiple_of(cluster_size / entry);
    meta += l2_entries * entry;
    let l1_entries = (l2_entries * entry / cluster_size).next_multiple_of(cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_one_gib_image_needs_what_qemu_img_says() {
        // qemu-img measure --size 1G -O qcow2: required 393216, fully allocated 1074135040.
        let m = measure(Source::Size(1 << 30), &[]).unwrap();
        assert_eq!(m.required, 393216);
        assert_eq!(m.fully_allocated, 1074135040);
    }
}
