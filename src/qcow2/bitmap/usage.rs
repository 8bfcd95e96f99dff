//! What `check` needs of the persistent bitmaps: the host ranges they use (directory,
//! tables, data clusters), read tolerantly: a broken directory or table is reported as a
//! finding, and everything that can still be read is counted.

use super::directory::{self, DirEntry};
use crate::qcow2::header::Header;
use crate::qcow2::limits::MAX_L1_BYTES;
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// Bits 9–55 of a bitmap table entry: a data cluster.
const ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// What the bitmaps of an image use, and what is wrong with them.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Host ranges (offset, length) in use.
    pub ranges: Vec<(u64, u64)>,
    /// Problems with the directory (it could not be read whole).
    pub errors: Vec<String>,
    /// Bitmap table entries that break the format's rules.
    pub corruptions: Vec<String>,
}

/// The host ranges the bitmaps of the image with header `h` use, in a file of `file_len`
/// bytes (nothing when the bitmaps extension is not valid).
pub(crate) fn host_ranges<St: Storage + ?Sized>(st: &St, h: &Header, file_len: u64) -> Usage {
    let mut u = Usage::default();
    let x = match directory::read_ext(h) {
        Ok(Some(x)) => x,
        Ok(None) => return u,
        Err(e) => {
            u.errors.push(e.to_string());
            return u;
        }
    };
    u.ranges.push((x.dir_offset, x.dir_size));
    let mut dir = vec![0u8; x.dir_size as usize];
    if x.dir_offset.saturating_add(x.dir_size) > file_len
        || st.read_at(&mut dir, x.dir_offset).is_err()
    {
        u.errors
            .push("bitmap directory lies past the end of the file".into());
        return u;
    }
    match directory::parse(&dir, x.count, x.dir_offset) {
        Ok(entries) => tables(st, &entries, h.cluster_size(), file_len, &mut u),
        Err(e) => u.errors.push(e.to_string()),
    }
    u
}

/// Add the tables of `entries` and their data clusters to `u`. Tables are read one at a
/// time, up to as much as the largest L1 table in all: a hostile directory could name the
/// same big table thousands of times.
fn tables<St: Storage + ?Sized>(
    st: &St,
    entries: &[DirEntry],
    cs: u64,
    file_len: u64,
    u: &mut Usage,
) {
    let mut budget = MAX_L1_BYTES;
    for e in entries {
        let bytes = u64::from(e.table_size) * 8;
        u.ranges.push((e.table_offset, bytes));
        if bytes > budget || e.table_offset.saturating_add(bytes) > file_len {
            continue;
        }
        budget -= bytes;
        let mut buf = vec![0u8; bytes as usize];
        if st.read_at(&mut buf, e.table_offset).is_err() {
            continue;
        }
        for (i, raw) in buf.chunks_exact(8).map(BigEndian::read_u64).enumerate() {
            let off = raw & ENTRY_OFFSET;
            let reserved = raw & !ENTRY_OFFSET & !1 != 0;
            if reserved || (off != 0 && (raw & 1 != 0 || off % cs != 0)) {
                u.corruptions.push(format!(
                    "bitmap '{}': table entry {i} ({raw:#x}) is not valid",
                    e.name
                ));
            }
            // A cluster the entry names stays counted even when the entry is broken, so
            // that a repair does not free it under the bitmap.
            if off != 0 && off % cs == 0 {
                u.ranges.push((off, cs));
            }
        }
    }
}
