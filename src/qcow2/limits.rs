//! Hard limits on everything sized from a qcow2 image, in one place, and the one helper
//! that checks a table against them before any buffer is sized from it.
//!
//! The numbers follow QEMU's so that every image QEMU accepts opens here and a hostile
//! header cannot make vdisk allocate gigabytes.

use super::header_fields as field;
use crate::error::{Error, Result};

/// Smallest cluster: 512 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster: 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest active or snapshot L1 table in bytes (QEMU's `QCOW_MAX_L1_SIZE`).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table in bytes (QEMU's `QCOW_MAX_REFTABLE_SIZE`).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most entries of a refcount table (8-byte entries in [`MAX_REFTABLE_BYTES`]).
pub const MAX_REFTABLE_ENTRIES: u64 = MAX_REFTABLE_BYTES / 8;
/// Most internal snapshots (QEMU's `QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u64 = 65_536;
/// Largest snapshot table in bytes.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Largest extra-data area of one snapshot table entry.
pub const MAX_SNAPSHOT_EXTRA_DATA: u64 = 1024;
/// Longest backing file name (QEMU's limit is 1023 bytes).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest refcount order: 64-bit refcounts.
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// Largest virtual size: QEMU caps images at 2^63 - 512 bytes; L1 limits bite first.
pub const MAX_VIRTUAL_SIZE: u64 = (1 << 63) - 512;
/// Host offsets are 56 bits wide in L1/L2 entries and refcount tables.
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;
/// The unit QEMU counts a virtual size in: a size field is rounded down to it.
pub const SECTOR_SIZE: u64 = 512;
/// Length of a version 2 header (72: up to and including `snapshots_offset`).
pub const V2_HEADER_LEN: u32 = field::SNAPSHOTS_OFFSET.end() as u32;
/// Smallest version 3 header (104: up to and including `header_length`).
pub const V3_MIN_HEADER_LEN: u32 = field::HEADER_LENGTH.end() as u32;

/// The error for a layout whose refcount table would exceed [`MAX_REFTABLE_BYTES`].
pub fn reftable_too_large() -> Error {
    Error::invalid(format!(
        "qcow2 image would need a refcount table larger than {} MiB",
        MAX_REFTABLE_BYTES >> 20
    ))
}

/// Check a table of `entries` entries of `entry_len` bytes at `offset` before reading it:
/// the size must not exceed `max_bytes`, the offset must be cluster-aligned, and the table
/// must end inside a file of `file_len` bytes. `name` names the table in the error.
pub fn validate_table(
    name: &'static str,
    offset: u64,
    entries: u64,
    entry_len: u64,
    max_bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if entries > max_bytes / entry_len {
        return Err(Error::corrupt(
            name,
            offset,
            format!("{entries} entries exceed the limit of {max_bytes} bytes"),
        ));
    }
    if entries == 0 {
        return Ok(());
    }
    if offset > MAX_HOST_OFFSET {
        return Err(Error::corrupt(
            name,
            offset,
            "offset is beyond the largest host offset",
        ));
    }
    if offset % cluster_size != 0 {
        return Err(Error::corrupt(
            name,
            offset,
            "offset is not cluster aligned",
        ));
    }
    let size = entries * entry_len;
    match offset.checked_add(size) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::corrupt(
            name,
            offset,
            format!("table of {size} bytes extends past the end of the file ({file_len} bytes)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_table_rejects_oversize_unaligned_and_out_of_file_tables() {
        assert!(validate_table("L1 table", 0x10000, 2, 8, MAX_L1_BYTES, 0x10000, 0x20000).is_ok());
        assert!(validate_table(
            "L1 table",
            0x10000,
            1 << 40,
            8,
            MAX_L1_BYTES,
            0x10000,
            u64::MAX
        )
        .is_err());
        assert!(validate_table("L1 table", 0x10008, 2, 8, MAX_L1_BYTES, 0x10000, 0x20000).is_err());
        assert!(validate_table("L1 table", 0x20000, 2, 8, MAX_L1_BYTES, 0x10000, 0x20000).is_err());
        assert!(validate_table(
            "L1 table",
            u64::MAX - 0xffff,
            4,
            8,
            MAX_L1_BYTES,
            0x10000,
            u64::MAX
        )
        .is_err());
    }
}
