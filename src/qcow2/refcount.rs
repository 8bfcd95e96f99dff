//! Refcounts: reading and writing refcount block entries of every width, and cluster
//! allocation and freeing on top of them.
//!
//! Allocation takes the first run of free clusters at or after `free_hint`. When the run
//! needs a refcount block that does not exist yet, the block is placed on the first free
//! cluster it describes (so it counts itself), written and synced, and only then entered
//! in the refcount table. When the refcount table itself is full, a larger table is built
//! past everything the old one covers (see [`Qcow2::grow_refcount_table`]).

use super::entry::{read_refcount, write_refcount};
use super::header::field;
use super::refcount_area::{self, TableSize, VecSpace};
use super::{ioerr, Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

impl<S: Storage> Qcow2<S> {
    /// The refcount of host cluster `cluster` (an index, not an offset).
    pub fn refcount(&mut self, cluster: u64) -> Result<u64> {
        let bi = cluster >> self.geo.rb_bits;
        let Some(&block_off) = self.refcount_table.get(bi as usize) else {
            return Ok(0);
        };
        if block_off == 0 {
            return Ok(0);
        }
        self.load_table(Table::Refcount, block_off)?;
        let idx = (cluster & ((1 << self.geo.rb_bits) - 1)) as usize;
        let block = self.rc_cache.get(block_off).unwrap_or(&[]);
        Ok(read_refcount(block, self.geo.refcount_order, idx))
    }

    /// Set the refcount of `cluster`, whose refcount block must exist.
    fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<()> {
        let bi = (cluster >> self.geo.rb_bits) as usize;
        let block_off = self.refcount_table.get(bi).copied().unwrap_or(0);
        if block_off == 0 {
            return Err(Error::corrupt(
                "refcount table",
                self.header.refcount_table_offset,
                format!("no refcount block for host cluster {cluster:#x}"),
            ));
        }
        self.load_table(Table::Refcount, block_off)?;
        let idx = (cluster & ((1 << self.geo.rb_bits) - 1)) as usize;
        let order = self.geo.refcount_order;
        if let Some(block) = self.rc_cache.get_mut(block_off) {
            write_refcount(block, order, idx, value);
        }
        Ok(())
    }

    /// Add one reference to the cluster at host offset `host` (its refcount block must exist).
    #[allow(dead_code)] // used by internal snapshots (issue 3)
    pub(crate) fn increase_refcount(&mut self, host: u64) -> Result<()> {
        let c = host >> self.geo.cluster_bits;
        let rc = self.refcount(c)?;
        if rc >= self.geo.max_refcount() {
            return Err(Error::corrupt(
                "refcount block",
                host,
                "refcount would overflow",
            ));
        }
        self.set_refcount(c, rc + 1)
    }

    /// Drop one reference to the cluster at host offset `host`.
    pub(crate) fn decrease_refcount(&mut self, host: u64) -> Result<()> {
        let c = host >> self.geo.cluster_bits;
        let rc = self.refcount(c)?;
        if rc == 0 {
            return Err(Error::corrupt(
                "refcount block",
                host,
                format!("freeing host cluster {host:#x} whose refcount is already 0"),
            ));
        }
        self.set_refcount(c, rc - 1)?;
        if rc == 1 && c < self.free_hint {
            self.free_hint = c;
        }
        Ok(())
    }

    /// Queue a reference drop for the next flush, after the L2 tables that dropped it.
    pub(crate) fn queue_free(&mut self, host: u64) {
        self.pending_frees.push(host);
    }

    /// The longest run [`Qcow2::alloc_clusters`] accepts: half a refcount block. A new
    /// refcount block describes itself and sits on the first free cluster of its range, so a
    /// run as long as a whole block could never be found free.
    pub(crate) fn max_alloc_run(&self) -> u64 {
        ((1u64 << self.geo.rb_bits) / 2).max(1)
    }

    /// Allocate `n` contiguous clusters with refcount 1; returns the host offset of the first.
    /// `n` must not exceed [`Qcow2::max_alloc_run`].
    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        self.check_writable()?;
        if n == 0 || n > self.max_alloc_run() {
            return Err(Error::invalid(format!(
                "cannot allocate a run of {n} clusters at once"
            )));
        }
        'search: loop {
            let (start, first_free) = self.scan_free(self.free_hint, n, None)?;
            if (start + n) << self.geo.cluster_bits > super::limits::MAX_HOST_OFFSET {
                return Err(Error::invalid(
                    "qcow2 image would grow past the largest host offset",
                ));
            }
            self.check_allocation(start << self.geo.cluster_bits, n << self.geo.cluster_bits)?;
            // Make sure every cluster of the run has a refcount block.
            let first_block = start >> self.geo.rb_bits;
            let last_block = (start + n - 1) >> self.geo.rb_bits;
            for bi in first_block..=last_block {
                if bi as usize >= self.refcount_table.len() {
                    self.grow_refcount_table(bi)?;
                    continue 'search;
                }
                if self.refcount_table[bi as usize] == 0 {
                    // The new block takes the run's first cluster; the run moves up by one
                    // instead of leaving a gap.
                    self.create_refcount_block(bi, start)?;
                    continue 'search;
                }
            }
            for c in start..start + n {
                self.set_refcount(c, 1)?;
            }
            // Nothing below the first free cluster seen is free.
            self.free_hint = match first_free {
                Some(f) if f < start => f,
                _ => start + n,
            };
            let host = start << self.geo.cluster_bits;
            self.note_allocated(host + (n << self.geo.cluster_bits));
            return Ok(host);
        }
    }

    /// Find the first run of `n` clusters at or after `from` that are free in the refcount
    /// structures (and in `shadow`, a transaction's changed blocks, when given). Returns the
    /// run's start and the first free cluster seen (which may precede a too-short gap).
    pub(crate) fn scan_free(
        &mut self,
        from: u64,
        n: u64,
        shadow: Option<&std::collections::BTreeMap<u64, Vec<u8>>>,
    ) -> Result<(u64, Option<u64>)> {
        let rb_bits = self.geo.rb_bits;
        let order = self.geo.refcount_order;
        let mask = (1u64 << rb_bits) - 1;
        let mut start = from;
        let mut c = from;
        let mut first_free = None;
        while c - start < n {
            let bi = c >> rb_bits;
            let block_end = (bi + 1) << rb_bits;
            let off = self.refcount_table.get(bi as usize).copied().unwrap_or(0);
            let sh = shadow.and_then(|m| m.get(&bi));
            if off == 0 && sh.is_none() {
                first_free.get_or_insert(c);
                c = block_end;
                continue;
            }
            if off != 0 {
                self.load_table(Table::Refcount, off)?;
            }
            let old = if off != 0 {
                self.rc_cache.peek(off)
            } else {
                None
            };
            while c < block_end && c - start < n {
                let i = (c & mask) as usize;
                let used = old.is_some_and(|b| read_refcount(b, order, i) != 0)
                    || sh.is_some_and(|b| read_refcount(b, order, i) != 0);
                c += 1;
                if used {
                    start = c;
                } else {
                    first_free.get_or_insert(c - 1);
                }
            }
        }
        Ok((start, first_free))
    }

    /// Record that the file now extends (logically) to `end`.
    fn note_allocated(&mut self, end: u64) {
        if end > self.file_len {
            self.file_len = end;
        }
    }

    /// Place a new refcount block for block index `bi` on free cluster `at` (which it
    /// describes), write it, sync, then point the refcount table at it.
    fn create_refcount_block(&mut self, bi: u64, at: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let mut block = vec![0u8; cs as usize];
        let host = at << self.geo.cluster_bits;
        let at_block = at >> self.geo.rb_bits;
        if at_block == bi {
            // The block describes its own cluster.
            let own = (at & ((1 << self.geo.rb_bits) - 1)) as usize;
            write_refcount(&mut block, self.geo.refcount_order, own, 1);
        } else {
            // Its cluster is described by an existing block: count it there first, durably,
            // before anything points at the new block.
            self.set_refcount(at, 1)?;
            self.flush_refcount_blocks()?;
        }
        self.storage
            .write_at(&block, host)
            .map_err(ioerr("writing a new refcount block"))?;
        self.note_allocated(host + cs);
        self.sync()?;
        self.refcount_table[bi as usize] = host;
        let mut e = [0u8; 8];
        BigEndian::write_u64(&mut e, host);
        self.storage
            .write_at(&e, self.header.refcount_table_offset + bi * 8)
            .map_err(ioerr("writing a refcount table entry"))?;
        self.sync()?;
        self.make_room(Table::Refcount)?;
        self.rc_cache.insert(host, block, false);
        Ok(())
    }

    /// Replace the refcount table by one with room for block index `needed_bi`.
    ///
    /// The new table and the refcount blocks that describe it go right after everything the
    /// old table can cover (all of which is free by definition), laid out by the refcount-area
    /// planner. Order: write the blocks and the table, sync, switch the header fields with
    /// one write, sync, then free the old table.
    pub(crate) fn grow_refcount_table(&mut self, needed_bi: u64) -> Result<()> {
        let geo = self.geo;
        let old_entries = self.refcount_table.len() as u64;
        // The first cluster the old table cannot describe.
        let p = old_entries << geo.rb_bits;
        let mut space = VecSpace::new(p, Vec::new(), Vec::new(), p, geo);
        let min_entries = (needed_bi + 1).max(old_entries + old_entries / 2);
        let plan =
            refcount_area::plan(&mut space, geo.cluster_bits, min_entries, TableSize::Exact)?;
        let new_table = plan.table_entries(&self.refcount_table, geo.cluster_bits);
        let (order, cs, max) = (geo.refcount_order, geo.cluster_size, geo.max_refcount());
        refcount_area::write_area(&self.storage, &plan, geo.cluster_bits, &new_table, |bi| {
            Ok(space.block_bytes(bi, order, cs, max))
        })?;
        self.note_allocated(space.end() << geo.cluster_bits);
        let mut h = self.header.clone();
        h.refcount_table_offset = plan.table << geo.cluster_bits;
        h.refcount_table_clusters = plan.table_clusters as u32;
        refcount_area::switch_header(&self.storage, &h.write()?, field::REFCOUNT_TABLE)?;
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        self.header = h;
        self.refcount_table = new_table;
        for i in 0..old_clusters {
            self.queue_free(old_offset + i * cs);
        }
        Ok(())
    }
}
