//! Reading a bitmap's table and data clusters into memory, and writing a new bitmap set:
//! data clusters, tables and directory in new clusters, then one header write that points
//! the bitmaps extension at them (a metadata transaction), then the old ones are free.
//!
//! A bitmap table entry holds the offset of a data cluster (bits 9–55); 0 means the
//! cluster's bits are all clean, and bit 0 alone means they are all dirty. QEMU writes
//! clean clusters as 0 and every other cluster as data, and so does vdisk.

use super::directory::{self, DirEntry, IN_USE};
use super::{Bitmap, Bits, Ext, MAX_BITMAP_BYTES, MAX_DIRECTORY_BYTES, MAX_TABLE_ENTRIES};
use crate::error::{Error, Result};
use crate::qcow2::header::{autoclear, ext};
use crate::qcow2::tables::read_u64_table;
use crate::qcow2::txn::Txn;
use crate::qcow2::{ioerr, Qcow2};
use crate::storage::Storage;

/// Bits of a table entry that must be zero.
const ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// The data cluster offset of a table entry.
const ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
/// A table entry whose cluster is all dirty.
const ENTRY_ALL_ONES: u64 = 1;

const T: &str = "bitmap table";

/// How a new bitmap set is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Write the stale bitmaps' data and store every flag as the entries say.
    Store,
    /// Write no data: mark the loaded consistent bitmaps in use (before their bits change).
    MarkInUse,
}

/// Table entries needed for a bitmap of `bits` in clusters of `cs` bytes.
pub(crate) fn table_entries(bits: &Bits, cs: u64) -> u64 {
    bits.serialized_len().div_ceil(cs).max(1)
}

impl<S: Storage> Qcow2<S> {
    /// The table of `e`, every entry checked.
    fn read_bitmap_table(&self, e: &DirEntry) -> Result<Vec<u64>> {
        let cs = self.geo.cluster_size;
        if e.table_size > MAX_TABLE_ENTRIES {
            return Err(Error::corrupt(T, e.table_offset, "too many entries"));
        }
        let mut table = vec![0u64; e.table_size as usize];
        read_u64_table(&self.storage, e.table_offset, &mut table, T)?;
        for (i, &t) in table.iter().enumerate() {
            let off = t & ENTRY_OFFSET;
            let bad = t & ENTRY_RESERVED != 0
                || (off != 0
                    && (t & ENTRY_ALL_ONES != 0
                        || off % cs != 0
                        || off + cs > self.file_len.next_multiple_of(cs)));
            if bad {
                return Err(Error::corrupt(
                    T,
                    e.table_offset,
                    format!("bitmap '{}': entry {i} ({t:#x}) is not valid", e.name),
                ));
            }
        }
        Ok(table)
    }

    /// Load the bits of the consistent bitmap `e`.
    pub(crate) fn load_bitmap_bits(&self, e: &DirEntry) -> Result<Bits> {
        if e.in_use() {
            return Err(inconsistent(&e.name));
        }
        let cs = self.geo.cluster_size;
        let mut bits = Bits::new(self.header.size, e.granularity_bits);
        if bits.serialized_len() > MAX_BITMAP_BYTES {
            return Err(Error::corrupt(T, e.table_offset, "bitmap is too large"));
        }
        if table_entries(&bits, cs) != u64::from(e.table_size) {
            return Err(Error::corrupt(
                T,
                e.table_offset,
                format!(
                    "bitmap '{}' has {} table entries; its size needs {}",
                    e.name,
                    e.table_size,
                    table_entries(&bits, cs)
                ),
            ));
        }
        let table = self.read_bitmap_table(e)?;
        let mut buf = vec![0u8; cs as usize];
        for (i, &t) in table.iter().enumerate() {
            let at = i as u64 * cs;
            let off = t & ENTRY_OFFSET;
            if off != 0 {
                self.storage
                    .read_at(&mut buf, off)
                    .map_err(ioerr("reading bitmap data"))?;
                bits.deserialize_from(at, &buf);
            } else if t & ENTRY_ALL_ONES != 0 {
                bits.fill_serialized(at, cs);
            }
        }
        Ok(bits)
    }

    /// Write `bits` as data clusters and a table in the transaction; returns the table's
    /// offset and size.
    fn txn_write_bitmap(&mut self, txn: &mut Txn, bits: &Bits) -> Result<(u64, u32)> {
        let cs = self.geo.cluster_size;
        let n = table_entries(bits, cs);
        if n > u64::from(MAX_TABLE_ENTRIES) || bits.serialized_len() > MAX_BITMAP_BYTES {
            return Err(Error::invalid(
                "Too much space will be occupied by the bitmap. Use larger granularity",
            ));
        }
        let mut table = vec![0u64; n as usize];
        let mut buf = vec![0u8; cs as usize];
        for (i, slot) in table.iter_mut().enumerate() {
            bits.serialize_into(i as u64 * cs, &mut buf);
            if buf.iter().any(|&b| b != 0) {
                *slot = self.txn_write_bytes(txn, &buf)?;
            }
        }
        let off = self.txn_write_u64_table(txn, &table)?;
        Ok((off, n as u32))
    }

    /// Free the table of `e` and its data clusters in the transaction.
    fn txn_free_bitmap(&mut self, txn: &mut Txn, e: &DirEntry) -> Result<()> {
        if e.table_offset == 0 {
            return Ok(());
        }
        for t in self.read_bitmap_table(e)? {
            let off = t & ENTRY_OFFSET;
            if off != 0 {
                self.txn_add(txn, off, -1)?;
            }
        }
        self.txn_free_range(txn, e.table_offset, u64::from(e.table_size) * 8)
    }

    /// Replace the image's bitmaps by `next` in one transaction (see [`Commit`]); on
    /// success the in-memory state is `next`, with tables as written.
    pub(crate) fn commit_bitmaps(&mut self, mut next: Vec<Bitmap>, how: Commit) -> Result<()> {
        self.check_writable()?;
        if next.len() > super::MAX_BITMAPS as usize {
            return Err(Error::invalid("Too many persistent bitmaps"));
        }
        let mut txn = self.txn_begin()?;
        txn.switch_whole_header();
        let mut on_disk: Vec<DirEntry> = next.iter().map(|b| b.entry.clone()).collect();
        if how == Commit::Store {
            for (b, e) in next.iter().zip(on_disk.iter_mut()) {
                if let (true, Some(bits)) = (b.stale, b.bits.as_ref()) {
                    (e.table_offset, e.table_size) = self.txn_write_bitmap(&mut txn, bits)?;
                }
            }
        } else {
            for (b, e) in next.iter().zip(on_disk.iter_mut()) {
                let Some(bits) = b.bits.as_ref() else {
                    continue;
                };
                if e.table_offset == 0 {
                    // Never stored: the directory needs a table for it all the same.
                    (e.table_offset, e.table_size) = self.txn_write_bitmap(&mut txn, bits)?;
                }
                if !b.entry.in_use() {
                    e.flags |= IN_USE;
                }
            }
        }
        self.txn_free_replaced(&mut txn, &on_disk)?;
        let x = self.txn_write_directory(&mut txn, &on_disk)?;
        self.txn_commit(txn, |h| {
            h.set_extension(ext::BITMAPS, directory::ext_bytes(x));
            if x.is_some() {
                h.autoclear_features |= autoclear::BITMAPS;
            } else {
                h.autoclear_features &= !autoclear::BITMAPS;
            }
        })?;
        for (b, e) in next.iter_mut().zip(on_disk) {
            (b.entry.table_offset, b.entry.table_size) = (e.table_offset, e.table_size);
            if how == Commit::Store {
                b.stale = false;
            }
        }
        self.bitmaps.armed = how == Commit::MarkInUse;
        self.bitmaps.list = next;
        Ok(())
    }

    /// Free, in the transaction, the tables (with their data) of the current bitmaps that
    /// `next` no longer uses, and the current directory.
    fn txn_free_replaced(&mut self, txn: &mut Txn, next: &[DirEntry]) -> Result<()> {
        let old: Vec<DirEntry> = self.bitmaps.list.iter().map(|b| b.entry.clone()).collect();
        for e in &old {
            if !next.iter().any(|n| n.table_offset == e.table_offset) {
                self.txn_free_bitmap(txn, e)?;
            }
        }
        if let Some(x) = directory::read_ext(&self.header)? {
            self.txn_free_range(txn, x.dir_offset, x.dir_size)?;
        }
        Ok(())
    }

    /// Write the directory for `entries` to new clusters; the extension fields to record
    /// (`None` when there are no bitmaps).
    fn txn_write_directory(&mut self, txn: &mut Txn, entries: &[DirEntry]) -> Result<Option<Ext>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let dir = directory::encode(entries);
        if dir.len() as u64 > MAX_DIRECTORY_BYTES {
            return Err(Error::invalid("Bitmap directory is too large"));
        }
        let dir_offset = self.txn_write_bytes(txn, &dir)?;
        Ok(Some(Ext {
            count: entries.len() as u32,
            dir_size: dir.len() as u64,
            dir_offset,
        }))
    }
}

/// QEMU's refusal to use an inconsistent bitmap.
pub(crate) fn inconsistent(name: &str) -> Error {
    Error::invalid(format!(
        "Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
    ))
}
