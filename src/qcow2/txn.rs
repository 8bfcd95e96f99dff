//! Metadata transactions: change refcounts and tables without touching anything the
//! current header reaches, then switch to the new state with one header write.
//!
//! A [`Txn`] keeps shadow copies of every refcount block it changes. Clusters it allocates
//! are free in both the old and the new state, so until the header is switched they are
//! unreferenced garbage. [`Qcow2::txn_commit`] places the shadow blocks and a new refcount
//! table on such clusters, writes and syncs them, then rewrites the header bytes of
//! [`field::SWITCH`] (virtual size, L1 table, refcount table and snapshot table fields, all
//! in the first sector) in a single write. A power cut before that write leaves the old image; after it, the new one.
//! Snapshot create, apply and delete are built on this.

use super::entry::{self, L2Entry, COPIED};
use super::entry::{read_refcount, write_refcount};
use super::header::field;
use super::refcount_area::{self, Space, TableSize};
use super::{ioerr, Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::collections::BTreeMap;

/// An open metadata transaction (see the module documentation).
pub(crate) struct Txn {
    blocks: BTreeMap<u64, Vec<u8>>,
    hint: u64,
    min_freed: u64,
    freed: u64,
    /// Switch with a write of the whole header (extensions and backing name included)
    /// instead of the fixed fields of [`field::SWITCH`]: for a change to an extension.
    whole_header: bool,
}

impl Txn {
    /// A transaction used only to compute refcounts (never committed).
    pub(crate) fn scratch(hint: u64) -> Txn {
        Txn {
            blocks: BTreeMap::new(),
            hint,
            min_freed: u64::MAX,
            freed: 0,
            whole_header: false,
        }
    }

    /// Make the commit rewrite the whole header (see the field).
    pub(crate) fn switch_whole_header(&mut self) {
        self.whole_header = true;
    }

    /// Clusters whose refcount this transaction dropped to zero.
    pub(crate) fn freed_clusters(&self) -> u64 {
        self.freed
    }
}

impl<S: Storage> Qcow2<S> {
    /// Start a transaction; all cached metadata is flushed first.
    pub(crate) fn txn_begin(&mut self) -> Result<Txn> {
        self.check_writable()?;
        self.flush_metadata()?;
        Ok(Txn::scratch(self.free_hint))
    }

    fn txn_block(&mut self, txn: &mut Txn, bi: u64) -> Result<()> {
        if txn.blocks.contains_key(&bi) {
            return Ok(());
        }
        let off = self.refcount_table.get(bi as usize).copied().unwrap_or(0);
        let data = if off == 0 {
            vec![0u8; self.geo.cluster_size as usize]
        } else {
            self.load_table(Table::Refcount, off)?;
            self.rc_cache
                .peek(off)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        txn.blocks.insert(bi, data);
        Ok(())
    }

    /// The refcount of host cluster index `c` as the transaction sees it.
    pub(crate) fn txn_refcount(&mut self, txn: &Txn, c: u64) -> Result<u64> {
        let bi = c >> self.geo.rb_bits;
        match txn.blocks.get(&bi) {
            Some(b) => Ok(read_refcount(
                b,
                self.geo.refcount_order,
                (c & ((1 << self.geo.rb_bits) - 1)) as usize,
            )),
            None => self.refcount(c),
        }
    }

    fn txn_set(&mut self, txn: &mut Txn, c: u64, v: u64) -> Result<()> {
        let bi = c >> self.geo.rb_bits;
        self.txn_block(txn, bi)?;
        let order = self.geo.refcount_order;
        let idx = (c & ((1 << self.geo.rb_bits) - 1)) as usize;
        if let Some(b) = txn.blocks.get_mut(&bi) {
            write_refcount(b, order, idx, v);
        }
        Ok(())
    }

    /// Add `delta` (+1 or -1) to the refcount of the cluster at host offset `host`.
    pub(crate) fn txn_add(&mut self, txn: &mut Txn, host: u64, delta: i64) -> Result<()> {
        let c = host >> self.geo.cluster_bits;
        let rc = self.txn_refcount(txn, c)?;
        let new = if delta < 0 {
            rc.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                Error::corrupt(
                    "refcount block",
                    host,
                    format!("refcount of host cluster {host:#x} would drop below zero"),
                )
            })?
        } else {
            rc.checked_add(delta as u64)
                .filter(|&v| v <= self.geo.max_refcount())
                .ok_or_else(|| {
                    Error::corrupt(
                        "refcount block",
                        host,
                        format!("refcount of host cluster {host:#x} would overflow"),
                    )
                })?
        };
        if new == 0 {
            txn.min_freed = txn.min_freed.min(c);
            txn.freed += 1;
        }
        self.txn_set(txn, c, new)
    }

    /// Allocate `n` contiguous clusters free in both the old and the new state.
    pub(crate) fn txn_alloc(&mut self, txn: &mut Txn, n: u64) -> Result<u64> {
        let (start, first_free) = self.scan_free(txn.hint, n, Some(&txn.blocks))?;
        if (start + n) << self.geo.cluster_bits > super::limits::MAX_HOST_OFFSET {
            return Err(Error::invalid(
                "qcow2 image would grow past the largest host offset",
            ));
        }
        for k in start..start + n {
            self.txn_set(txn, k, 1)?;
        }
        txn.hint = match first_free {
            Some(f) if f < start => f,
            _ => start + n,
        };
        let host = start << self.geo.cluster_bits;
        let end = host + (n << self.geo.cluster_bits);
        if end > self.file_len {
            self.file_len = end;
        }
        Ok(host)
    }

    /// Add `delta` to every reference an L1 table holds: each L2 table once, and each data
    /// cluster once per L2 entry (compressed data: each host cluster it touches).
    pub(crate) fn txn_add_l1_refs(&mut self, txn: &mut Txn, l1: &[u64], delta: i64) -> Result<()> {
        let cs = self.geo.cluster_size;
        for &raw in l1 {
            let t = entry::l1_l2_offset(raw);
            if t == 0 {
                continue;
            }
            self.txn_add(txn, t, delta)?;
            let stride = self.geo.l2_stride();
            for &e in self.read_l2_entries(t)?.iter().step_by(stride) {
                match L2Entry::decode(e, self.geo.cluster_bits) {
                    L2Entry::Normal { host, .. }
                    | L2Entry::Zero {
                        host: Some(host), ..
                    } => self.txn_add(txn, host, delta)?,
                    L2Entry::Compressed { host, len } => {
                        let mut c = host & !(cs - 1);
                        while c < host + len {
                            self.txn_add(txn, c, delta)?;
                            c += cs;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The words of the L2 table at `t` (with extended L2 entries, each entry is followed
    /// by its subcluster bitmap: see [`super::Geometry::l2_stride`]), the entries validated
    /// for alignment and range.
    pub(crate) fn read_l2_entries(&mut self, t: u64) -> Result<Vec<u64>> {
        self.load_table(Table::L2, t)?;
        let data = self.l2_cache.peek(t).unwrap_or(&[]);
        let mut v = vec![0u64; data.len() / 8];
        BigEndian::read_u64_into(data, &mut v);
        let cs = self.geo.cluster_size;
        let file_end = self.file_len.div_ceil(cs) * cs;
        for (i, &e) in v.iter().step_by(self.geo.l2_stride()).enumerate() {
            if let Some(h) = L2Entry::decode(e, self.geo.cluster_bits).host_cluster(cs) {
                if e & entry::COMPRESSED == 0 && (h % cs != 0 || h >= file_end || h == 0) {
                    return Err(Error::corrupt(
                        "L2 table",
                        t,
                        format!("entry {i} ({e:#x}) points outside the image"),
                    ));
                }
            }
        }
        Ok(v)
    }

    /// Make the COPIED flags of an L1 table that is to become active exact under the
    /// transaction's refcounts: L1 entries carry COPIED when their L2 table's refcount is 1,
    /// L2 entries when their data cluster's is. An L2 table whose entries need new flags is
    /// never edited in place: a corrected copy is written to a new cluster and the L1 entry
    /// moved to it.
    pub(crate) fn txn_fix_active_flags(&mut self, txn: &mut Txn, l1: &mut [u64]) -> Result<()> {
        let cb = self.geo.cluster_bits;
        for slot in l1.iter_mut() {
            let t = entry::l1_l2_offset(*slot);
            if t == 0 {
                *slot = 0;
                continue;
            }
            let entries = self.read_l2_entries(t)?;
            let mut fixed = entries.clone();
            // (The bitmap words of extended entries stay as they are.)
            for e in fixed.iter_mut().step_by(self.geo.l2_stride()) {
                *e = match L2Entry::decode(*e, cb) {
                    L2Entry::Normal { host, .. } => {
                        let copied = self.txn_refcount(txn, host >> cb)? == 1;
                        L2Entry::Normal { host, copied }.encode(cb)
                    }
                    L2Entry::Zero {
                        host: Some(host), ..
                    } => {
                        let copied = self.txn_refcount(txn, host >> cb)? == 1;
                        L2Entry::Zero {
                            host: Some(host),
                            copied,
                        }
                        .encode(cb)
                    }
                    L2Entry::Zero { host: None, .. } => L2Entry::Zero {
                        host: None,
                        copied: false,
                    }
                    .encode(cb),
                    other => other.encode(cb),
                };
            }
            let shared = self.txn_refcount(txn, t >> cb)? != 1;
            if fixed == entries {
                *slot = if shared { t } else { t | COPIED };
                continue;
            }
            let new = self.txn_alloc(txn, 1)?;
            let mut buf = vec![0u8; self.geo.cluster_size as usize];
            BigEndian::write_u64_into(&fixed, &mut buf);
            self.storage
                .write_at(&buf, new)
                .map_err(ioerr("writing an L2 table copy"))?;
            self.txn_add(txn, t, -1)?;
            *slot = new | COPIED;
        }
        Ok(())
    }

    /// Write a table of u64 entries to new clusters in the transaction; returns its offset.
    pub(crate) fn txn_write_u64_table(&mut self, txn: &mut Txn, entries: &[u64]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut buf = vec![0u8; entries.len() * 8];
        BigEndian::write_u64_into(entries, &mut buf);
        self.txn_write_bytes(txn, &buf)
    }

    /// Move the active L1 table to new clusters holding `new_l1`, freeing the current
    /// table's clusters. Returns the offset the header must record (for an empty table, the
    /// old one: it is never read).
    pub(crate) fn txn_write_active_l1(&mut self, txn: &mut Txn, new_l1: &[u64]) -> Result<u64> {
        let old_off = self.header.l1_table_offset;
        let off = self.txn_write_u64_table(txn, new_l1)?;
        self.txn_free_range(txn, old_off, self.l1.len() as u64 * 8)?;
        Ok(if new_l1.is_empty() { old_off } else { off })
    }

    /// Write bytes to new clusters in the transaction; returns their offset.
    pub(crate) fn txn_write_bytes(&mut self, txn: &mut Txn, buf: &[u8]) -> Result<u64> {
        let cs = self.geo.cluster_size;
        let n = (buf.len() as u64).div_ceil(cs).max(1);
        let off = self.txn_alloc(txn, n)?;
        let mut padded = buf.to_vec();
        padded.resize((n * cs) as usize, 0);
        self.storage
            .write_at(&padded, off)
            .map_err(ioerr("writing a new table"))?;
        Ok(off)
    }

    /// Free the clusters of a table of `bytes` bytes at `offset` in the transaction.
    pub(crate) fn txn_free_range(&mut self, txn: &mut Txn, offset: u64, bytes: u64) -> Result<()> {
        if offset == 0 || bytes == 0 {
            return Ok(());
        }
        let cs = self.geo.cluster_size;
        for k in 0..bytes.div_ceil(cs) {
            self.txn_add(txn, offset + k * cs, -1)?;
        }
        Ok(())
    }

    /// Place the shadow refcount blocks and a new refcount table (with the refcount-area
    /// planner), sync, then switch the header (as changed by `update`) with one write and
    /// sync again.
    pub(crate) fn txn_commit(
        &mut self,
        mut txn: Txn,
        update: impl FnOnce(&mut super::Header),
    ) -> Result<()> {
        let geo = self.geo;
        let cs = geo.cluster_size;
        let old_table_clusters = u64::from(self.header.refcount_table_clusters);
        self.txn_free_range(
            &mut txn,
            self.header.refcount_table_offset,
            old_table_clusters * cs,
        )?;
        let used = self
            .refcount_table
            .iter()
            .rposition(|&e| e != 0)
            .map_or(0, |i| i as u64 + 1);
        let size = TableSize::KeepOrGrow {
            current: old_table_clusters,
        };
        let plan = {
            let mut space = TxnSpace {
                img: self,
                txn: &mut txn,
            };
            refcount_area::plan(&mut space, geo.cluster_bits, used, size)?
        };
        let new_table = plan.table_entries(&self.refcount_table, geo.cluster_bits);
        refcount_area::write_area(&self.storage, &plan, geo.cluster_bits, &new_table, |bi| {
            txn.blocks
                .get(&bi)
                .cloned()
                .ok_or_else(|| Error::invalid("a placed refcount block has no contents"))
        })?;
        let mut h = self.header.clone();
        h.refcount_table_offset = plan.table << geo.cluster_bits;
        h.refcount_table_clusters = plan.table_clusters as u32;
        update(&mut h);
        let bytes = h.write()?;
        let span = if txn.whole_header {
            0..bytes.len()
        } else {
            field::SWITCH
        };
        refcount_area::switch_header(&self.storage, &bytes, span)?;

        self.header = h;
        self.refcount_table = new_table;
        self.rc_cache.clear();
        self.l2_cache.clear();
        self.free_hint = self.free_hint.min(txn.min_freed).min(txn.hint);
        Ok(())
    }

    /// Replace the in-memory active L1 table (after a commit that switched it).
    pub(crate) fn replace_l1(&mut self, l1: Vec<u64>) {
        self.l1_dirty = vec![false; l1.len()];
        self.l1_any_dirty = false;
        self.l1 = l1;
    }
}

/// The planner's view of a transaction: clusters free in both the old and the new state,
/// and a new block for every refcount block the transaction changed.
struct TxnSpace<'a, S: Storage> {
    img: &'a mut Qcow2<S>,
    txn: &'a mut Txn,
}

impl<S: Storage> Space for TxnSpace<'_, S> {
    fn take(&mut self, n: u64) -> Result<u64> {
        Ok(self.img.txn_alloc(self.txn, n)? >> self.img.geo.cluster_bits)
    }

    fn give_back(&mut self, first: u64, n: u64) -> Result<()> {
        let cb = self.img.geo.cluster_bits;
        self.img.txn_free_range(self.txn, first << cb, n << cb)
    }

    fn blocks_to_place(&mut self, placed: &BTreeMap<u64, u64>) -> Result<Vec<u64>> {
        Ok(self
            .txn
            .blocks
            .keys()
            .filter(|b| !placed.contains_key(b))
            .copied()
            .collect())
    }

    /// The block's old cluster is free once the header points at the new one.
    fn block_placed(&mut self, bi: u64, _at: u64) -> Result<()> {
        let old = self
            .img
            .refcount_table
            .get(bi as usize)
            .copied()
            .unwrap_or(0);
        if old != 0 {
            self.img.txn_add(self.txn, old, -1)?;
        }
        Ok(())
    }
}
