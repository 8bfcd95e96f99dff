//! Refcounts: reading and writing refcount block entries of every width, and cluster
//! allocation and freeing on top of them.
//!
//! Allocation takes the first run of free clusters at or after `free_hint`. When the run
//! needs a refcount block that does not exist yet, the block is placed on the first free
//! cluster it describes (so it counts itself), written and synced, and only then entered
//! in the refcount table. When the refcount table itself is full, a larger table is built
//! past everything the old one covers (see [`Qcow2::grow_refcount_table`]).

use super::limits::MAX_REFTABLE_BYTES;
use super::{ioerr, Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// Read entry `index` of a refcount block with 2^`order`-bit entries.
pub fn get_entry(block: &[u8], order: u32, index: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[index / per_byte];
            let shift = (index % per_byte) * bits;
            u64::from((byte >> shift) & ((1u8 << bits) - 1))
        }
        3 => u64::from(block[index]),
        4 => u64::from(BigEndian::read_u16(&block[index * 2..])),
        5 => u64::from(BigEndian::read_u32(&block[index * 4..])),
        _ => BigEndian::read_u64(&block[index * 8..]),
    }
}

/// Write entry `index` of a refcount block with 2^`order`-bit entries (`value` must fit).
pub fn set_entry(block: &mut [u8], order: u32, index: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (index % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let b = &mut block[index / per_byte];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[index] = value as u8,
        4 => BigEndian::write_u16(&mut block[index * 2..], value as u16),
        5 => BigEndian::write_u32(&mut block[index * 4..], value as u32),
        _ => BigEndian::write_u64(&mut block[index * 8..], value),
    }
}

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
        Ok(get_entry(block, self.geo.refcount_order, idx))
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
            set_entry(block, order, idx, value);
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
                let used = old.is_some_and(|b| get_entry(b, order, i) != 0)
                    || sh.is_some_and(|b| get_entry(b, order, i) != 0);
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
            set_entry(&mut block, self.geo.refcount_order, own, 1);
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
    /// old table can cover (all of which is free by definition). Order: write the blocks and
    /// the table, sync, switch the header fields with one write, sync, free the old table.
    pub(crate) fn grow_refcount_table(&mut self, needed_bi: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let rb_bits = self.geo.rb_bits;
        let old_entries = self.refcount_table.len() as u64;
        let p = old_entries << rb_bits; // first cluster the old table cannot describe
        let first_bi = p >> rb_bits;
        let mut nb = 1u64;
        let rt_clusters = loop {
            let entries = (needed_bi + 1)
                .max(old_entries + old_entries / 2)
                .max(first_bi + nb);
            let rt_clusters = (entries * 8).div_ceil(cs);
            // p is block aligned, so the blocks covering [p, p + nb + rt_clusters) are:
            let blocks_needed = (nb + rt_clusters).div_ceil(1 << rb_bits);
            if blocks_needed <= nb {
                break rt_clusters;
            }
            nb = blocks_needed;
        };
        let entries = rt_clusters * cs / 8;
        if rt_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(Error::invalid(
                "qcow2 image would need a refcount table larger than 8 MiB",
            ));
        }
        let order = self.geo.refcount_order;
        let mut new_table = self.refcount_table.clone();
        new_table.resize(entries as usize, 0);
        for k in 0..nb {
            let mut block = vec![0u8; cs as usize];
            let block_first = (first_bi + k) << rb_bits;
            for c in p..p + nb + rt_clusters {
                if c >> rb_bits == first_bi + k {
                    set_entry(&mut block, order, (c - block_first) as usize, 1);
                }
            }
            let host = (p + k) << self.geo.cluster_bits;
            self.storage
                .write_at(&block, host)
                .map_err(ioerr("writing a refcount block"))?;
            new_table[(first_bi + k) as usize] = host;
        }
        let table_host = (p + nb) << self.geo.cluster_bits;
        let mut buf = vec![0u8; (rt_clusters * cs) as usize];
        BigEndian::write_u64_into(&new_table, &mut buf);
        self.storage
            .write_at(&buf, table_host)
            .map_err(ioerr("writing the refcount table"))?;
        self.note_allocated(table_host + rt_clusters * cs);
        self.sync()?;
        // Switch the header: refcount_table_offset and refcount_table_clusters in one write.
        use super::header::field;
        let span = field::REFCOUNT_TABLE;
        let mut head = [0u8; field::REFCOUNT_TABLE.end];
        field::REFCOUNT_TABLE_OFFSET.put(&mut head, table_host);
        field::REFCOUNT_TABLE_CLUSTERS.put(&mut head, u64::from(rt_clusters as u32));
        self.storage
            .write_at(&head[span.clone()], span.start as u64)
            .map_err(ioerr("switching to the new refcount table"))?;
        self.sync()?;
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        self.header.refcount_table_offset = table_host;
        self.header.refcount_table_clusters = rt_clusters as u32;
        self.refcount_table = new_table;
        for i in 0..old_clusters {
            self.queue_free(old_offset + i * cs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_refcounts_pack_lowest_index_into_the_lowest_bits() {
        let mut b = [0u8; 2];
        set_entry(&mut b, 0, 0, 1);
        set_entry(&mut b, 0, 9, 1);
        assert_eq!(b, [0b0000_0001, 0b0000_0010]);
        let mut b = [0u8; 1];
        set_entry(&mut b, 1, 1, 3);
        assert_eq!(b, [0b0000_1100]);
        assert_eq!(get_entry(&b, 1, 1), 3);
        let mut b = [0u8; 1];
        set_entry(&mut b, 2, 1, 0xa);
        assert_eq!(b, [0xa0]);
        assert_eq!(get_entry(&b, 2, 0), 0);
    }

    #[test]
    fn wide_refcounts_are_big_endian() {
        let mut b = [0u8; 16];
        set_entry(&mut b, 4, 1, 0x1234);
        assert_eq!(&b[2..4], &[0x12, 0x34]);
        set_entry(&mut b, 6, 1, 0x0102_0304_0506_0708);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(get_entry(&b, 6, 1), 0x0102_0304_0506_0708);
        set_entry(&mut b, 5, 0, 7);
        assert_eq!(get_entry(&b, 5, 0), 7);
        set_entry(&mut b, 3, 0, 200);
        assert_eq!(get_entry(&b, 3, 0), 200);
    }
}
