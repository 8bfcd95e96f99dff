//! The metadata tables layer: loading L2 tables and refcount blocks into their caches,
//! evicting them, keeping the active L1 table's dirty entries, and writing all of it back
//! in the one order that keeps the image consistent.
//!
//! Every metadata write of a cached table goes through this file, and the write order is
//! enforced here (the reasons are rules 1–6 of `format-spec/qcow2.md`, section 7):
//!
//! 1. **Refcount blocks before the L2 tables that use their clusters.** A flush writes the
//!    dirty refcount blocks and syncs first; that sync also makes the guest data written so
//!    far durable before any L2 entry points at it.
//! 2. **L2 tables before L1.** The dirty L2 tables are written and synced next, and only
//!    then the dirty L1 entries, then sync.
//! 3. **Frees last.** Refcount decreases wait in `pending_frees` until the L2/L1 change
//!    that dropped the reference is durable; they are applied and written (refcount
//!    blocks, sync) as the last step of the flush.
//! 4. **Evicting a dirty L2 table syncs the refcount blocks first** (step 1 above), then
//!    writes the table. A dirty refcount block is written on eviction without more: a
//!    refcount reaching the disk early is never harmful. Evicting never writes L1 entries.
//!
//! Structures that replace others (a new refcount block or refcount table, a new L1 or
//! snapshot table) are written and synced by their owners before anything points at them.
//! Each cached table is checked against the other metadata (`overlap`) before it is
//! written.

use super::cache::TableCache;
use super::{ioerr, Qcow2};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// The two kinds of cluster-sized metadata table held in a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    L2,
    Refcount,
}

impl Table {
    /// The table's name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::L2 => "L2 table",
            Table::Refcount => "refcount block",
        }
    }
}

impl<S: Storage> Qcow2<S> {
    fn cache(&self, which: Table) -> &TableCache {
        match which {
            Table::L2 => &self.l2_cache,
            Table::Refcount => &self.rc_cache,
        }
    }

    fn cache_mut(&mut self, which: Table) -> &mut TableCache {
        match which {
            Table::L2 => &mut self.l2_cache,
            Table::Refcount => &mut self.rc_cache,
        }
    }

    /// Write all dirty metadata in the crash-safe order (see the module documentation).
    pub fn flush_metadata(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_refcount_blocks()?;
        self.flush_l2_tables()?;
        if self.l1_any_dirty {
            self.write_dirty_l1()?;
            self.sync()?;
        }
        if !self.pending_frees.is_empty() {
            let frees = std::mem::take(&mut self.pending_frees);
            for host in frees {
                self.decrease_refcount(host)?;
            }
            self.flush_refcount_blocks()?;
        }
        Ok(())
    }

    /// Make every write so far durable (an external data file's first: metadata written
    /// after a sync may point at its clusters).
    pub(crate) fn sync(&self) -> Result<()> {
        self.flush_data_file()?;
        self.storage.flush().map_err(ioerr("flushing"))
    }

    /// Write dirty refcount blocks and sync (a sync is done even when none is dirty, so that
    /// guest data written so far is durable before any L2 table that points at it).
    pub(crate) fn flush_refcount_blocks(&mut self) -> Result<()> {
        self.write_dirty(Table::Refcount)?;
        self.sync()
    }

    /// Write dirty L2 tables and sync, when there are any.
    pub(crate) fn flush_l2_tables(&mut self) -> Result<()> {
        if self.write_dirty(Table::L2)? {
            self.sync()?;
        }
        Ok(())
    }

    /// Write every dirty table of one kind in ascending offset order and mark it clean;
    /// returns whether there was any.
    fn write_dirty(&mut self, which: Table) -> Result<bool> {
        let dirty = self.cache(which).dirty_offsets();
        for &off in &dirty {
            self.check_metadata_write(off, which)?;
            let data = self
                .cache(which)
                .peek(off)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let what = match which {
                Table::L2 => "writing an L2 table",
                Table::Refcount => "writing a refcount block",
            };
            self.storage.write_at(&data, off).map_err(ioerr(what))?;
            self.cache_mut(which).mark_clean(off);
        }
        Ok(!dirty.is_empty())
    }

    /// Write the dirty entries of the active L1 table, one write per run of dirty entries.
    pub(crate) fn write_dirty_l1(&mut self) -> Result<()> {
        let base = self.header.l1_table_offset;
        let mut i = 0;
        while i < self.l1.len() {
            if !self.l1_dirty[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.l1.len() && self.l1_dirty[i] {
                self.l1_dirty[i] = false;
                i += 1;
            }
            let mut buf = vec![0u8; (i - start) * 8];
            BigEndian::write_u64_into(&self.l1[start..i], &mut buf);
            self.storage
                .write_at(&buf, base + start as u64 * 8)
                .map_err(ioerr("writing the L1 table"))?;
        }
        self.l1_any_dirty = false;
        Ok(())
    }

    /// Set entry `index` of the active L1 table; it reaches the disk with the next flush,
    /// after the L2 tables.
    pub(crate) fn set_l1(&mut self, index: usize, value: u64) {
        self.l1[index] = value;
        self.l1_dirty[index] = true;
        self.l1_any_dirty = true;
    }

    /// Load the table of kind `which` at `offset` into its cache (evicting first if full).
    pub(crate) fn load_table(&mut self, which: Table, offset: u64) -> Result<()> {
        if self.cache(which).contains(offset) {
            return Ok(());
        }
        let cs = self.geo.cluster_size;
        let name = which.name();
        if offset % cs != 0 || offset == 0 {
            return Err(Error::corrupt(
                name,
                offset,
                "table offset is not a valid cluster offset",
            ));
        }
        if offset
            .checked_add(cs)
            .is_none_or(|end| end > self.file_len.div_ceil(cs) * cs)
        {
            return Err(Error::corrupt(
                name,
                offset,
                format!(
                    "table lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        let mut data = vec![0u8; cs as usize];
        self.storage
            .read_at(&mut data, offset)
            .map_err(ioerr("reading a metadata table"))?;
        self.make_room(which)?;
        self.cache_mut(which).insert(offset, data, false);
        Ok(())
    }

    /// Evict the least recently used table from a full cache, writing it if dirty (after
    /// syncing the refcount blocks, for an L2 table).
    pub(crate) fn make_room(&mut self, which: Table) -> Result<()> {
        let cache = self.cache(which);
        if !cache.is_full() {
            return Ok(());
        }
        let Some((victim, dirty)) = cache.lru_victim() else {
            return Ok(());
        };
        if !dirty {
            self.cache_mut(which).remove(victim);
            return Ok(());
        }
        if which == Table::L2 {
            self.flush_refcount_blocks()?;
        }
        self.check_metadata_write(victim, which)?;
        let data = self.cache_mut(which).remove(victim).unwrap_or_default();
        self.storage
            .write_at(&data, victim)
            .map_err(ioerr("writing an evicted table"))
    }
}

/// Read a big-endian u64 table that `validate_table` has already checked.
pub(super) fn read_u64_table<S: Storage>(
    storage: &S,
    offset: u64,
    out: &mut [u64],
    name: &str,
) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let mut buf = vec![0u8; out.len() * 8];
    storage
        .read_at(&mut buf, offset)
        .map_err(|e| Error::io(format!("qcow2: reading the {name}"), e))?;
    BigEndian::read_u64_into(&buf, out);
    Ok(())
}
