//! Consistency check: rebuild the refcount every host cluster should have from the
//! metadata, compare it with the stored refcounts, and report (or repair, see `repair`)
//! the differences.
//!
//! The walk follows QEMU's `qemu-img check` so that both tools report the same numbers:
//! the header cluster; the active L1 table, its L2 tables and their data clusters; each
//! snapshot's L1 table likewise; the snapshot table; the refcount table; the bitmap
//! directory and tables; and finally every refcount block. On the way it reports L1/L2
//! entries with reserved bits, unaligned L2 tables and data clusters, references that end
//! a cluster or more past the end of the file, COPIED flags on compressed descriptors and
//! refcount overflows. Comparing then finds leaks (stored count too high) and corruptions
//! (too low); a cluster in use whose stored count is 0, or a broken refcount block, means
//! the refcount structure must be rebuilt. Last, the COPIED flags of the active tables are
//! checked against the stored refcounts.
//!
//! The check works on the raw storage, not on an open [`super::Qcow2`], so it also reads
//! images that `Qcow2::open` refuses (unaligned table entries, the dirty or corrupt bit).
//!
//! Besides counting, the walk records which kind of structure claims each host cluster, to
//! name metadata that overlaps other metadata or guest data (QEMU counts such a cluster
//! only as a refcount mismatch; vdisk also warns what collides), to keep repairs out of
//! clusters with two uses, and to feed `dump`'s host-cluster map. Like QEMU, repair keeps
//! such overlapping references: their refcount counts every user.

use super::entry::read_refcount;
use super::entry::{self, L2Entry, COMPRESSED, COPIED, ZERO_FLAG};
use super::header::{field, Header};
use super::limits::*;
use super::snapshot::{self, Snapshot};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::check_report::{CheckReport, ClusterUse, Repair, REFT_RESERVED_MASK};

/// What `-r all` does with the L2 table an L1 entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableFate {
    /// The table stays and its broken entries may be rewritten.
    Repairable,
    /// The table stays but the L1 entry itself is rewritten first (reserved bits): its
    /// entries are left for the next check.
    Kept,
    /// The L1 entry is cleared (no offset, unaligned, past the end of the file).
    Lost,
}

/// One L2 entry as the check sees it: where it is, what it holds, and how the walk treats
/// the table it is in.
#[derive(Debug, Clone, Copy)]
struct L2Slot {
    /// Offset of the L2 table.
    table: u64,
    /// The entry's index in the table.
    index: usize,
    /// The entry as stored.
    raw: u64,
    /// The table belongs to the active L1 table (it counts in the allocation statistics).
    active: bool,
    /// `-r all` may rewrite the entry ([`TableFate::Repairable`]).
    repairable: bool,
    /// The entry claims the clusters it points at (the table is not [`TableFate::Lost`]).
    claims: bool,
    /// Entries are extended: 16 bytes, the second word the subcluster bitmap.
    extended: bool,
}

impl L2Slot {
    /// File offset of the entry.
    fn at(self) -> u64 {
        self.table + self.index as u64 * if self.extended { 16 } else { 8 }
    }
}

/// Everything the walk learned about the image.
pub(crate) struct Scan {
    pub header: Header,
    pub snapshots: Vec<Snapshot>,
    pub snapshots_size: u64,
    pub file_len: u64,
    pub cb: u32,
    pub cs: u64,
    /// The active L1 table.
    pub l1: Vec<u64>,
    /// The refcount table.
    pub reftable: Vec<u64>,
    /// Expected refcount of each host cluster (QEMU's in-memory refcount table).
    pub refs: Vec<u32>,
    /// Which structure first claimed each host cluster.
    pub owner: Vec<u8>,
    /// L1 and L2 entries `-r all` rewrites because what they point at cannot be used:
    /// host offset of the entry → the value to write instead. A map, so that a later
    /// finding on the same entry replaces an earlier one in constant time (an L2 table full
    /// of broken entries must not make the walk quadratic).
    pub bad: BTreeMap<u64, u64>,
    /// Host clusters claimed by two different kinds of structure (an L2 table that is also
    /// guest data, ...). Entries inside them are not rewritten: the bytes mean something
    /// else to the other user.
    pub contested: BTreeSet<u64>,
    /// L1 tables that cannot be read (a snapshot's unaligned or too large, or one past the
    /// end of the file), by name: clusters only they use look leaked, so repairs must not
    /// free leaks.
    pub unreadable_l1s: Vec<String>,
    /// The refcount structure itself is broken.
    pub rebuild: bool,
    /// A refcount table entry points past the end of the file (`-r all` rebuilds).
    pub blocks_outside: bool,
    max_refcount: u64,
}

/// Read `buf.len()` bytes at `offset`; bytes past the end of the file read as zeros.
fn read<S: Storage>(st: &S, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    st.read_at(buf, offset)
        .map_err(|e| Error::io(format!("qcow2 check: reading {what}"), e))
}

pub(crate) fn read_u64s<S: Storage>(st: &S, offset: u64, n: usize, what: &str) -> Result<Vec<u64>> {
    let mut buf = vec![0u8; n * 8];
    read(st, &mut buf, offset, what)?;
    let mut v = vec![0u64; n];
    BigEndian::read_u64_into(&buf, &mut v);
    Ok(v)
}

/// Read and parse the header of the image in `st`; also returns the file length.
pub fn read_header<S: Storage>(st: &S) -> Result<(Header, u64)> {
    let file_len = st
        .len()
        .map_err(|e| Error::io("qcow2 check: reading the file length", e))?;
    let mut first = vec![0u8; 512];
    read(st, &mut first, 0, "the header")?;
    let cluster_bits = field::CLUSTER_BITS.get(&first) as u32;
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        let want = (1usize << cluster_bits).min(file_len.max(512) as usize);
        first.resize(want.max(512), 0);
        read(st, &mut first, 0, "the header")?;
    }
    // Tables running past the end of the file are a corruption for the walk to count (it
    // reads them as zeros, as QEMU does), not a reason to refuse the check: the header is
    // validated as if the file were unbounded.
    Ok((Header::parse(&first, u64::MAX)?, file_len))
}

/// Host ranges used by persistent bitmaps, when the bitmaps extension is valid; what is
/// wrong with them is reported.
pub(crate) fn bitmap_ranges<S: Storage>(
    st: &S,
    h: &Header,
    report: &mut CheckReport,
) -> Result<Vec<(u64, u64)>> {
    let file_len = st
        .len()
        .map_err(|e| Error::io("qcow2: reading the file length", e))?;
    let u = super::bitmap::usage::host_ranges(st, h, file_len);
    for e in u.errors {
        report.check_errors += 1;
        report.msg(format!("ERROR {e}"));
    }
    for c in u.corruptions {
        report.corruptions += 1;
        report.msg(format!("ERROR {c}"));
    }
    Ok(u.ranges)
}

impl Scan {
    /// Read the structures the walk starts from.
    pub fn load<S: Storage>(st: &S) -> Result<Scan> {
        let (header, file_len) = read_header(st)?;
        let cs = header.cluster_size();
        let snapshots = snapshot::read_table(
            st,
            header.snapshots_offset,
            header.nb_snapshots,
            cs,
            file_len,
            header.version,
        )?;
        let snapshots_size = snapshots.iter().map(|s| s.encoded_len() as u64).sum();
        let l1 = read_u64s(
            st,
            header.l1_table_offset,
            header.l1_size as usize,
            "the L1 table",
        )?;
        let rt_entries = (u64::from(header.refcount_table_clusters) * cs / 8) as usize;
        let reftable = read_u64s(
            st,
            header.refcount_table_offset,
            rt_entries,
            "the refcount table",
        )?;
        let nb_clusters = file_len.div_ceil(cs) as usize;
        let max_refcount = if header.refcount_order == 6 {
            u64::from(u32::MAX)
        } else {
            ((1u64 << (1 << header.refcount_order)) - 1).min(u64::from(u32::MAX))
        };
        Ok(Scan {
            cb: header.cluster_bits,
            cs,
            header,
            snapshots,
            snapshots_size,
            file_len,
            l1,
            reftable,
            refs: vec![0; nb_clusters],
            owner: vec![0; nb_clusters],
            bad: BTreeMap::new(),
            contested: BTreeSet::new(),
            unreadable_l1s: Vec::new(),
            rebuild: false,
            blocks_outside: false,
            max_refcount,
        })
    }

    /// Count one reference to every cluster of `[offset, offset+size)`, as QEMU's
    /// `qcow2_inc_refcounts_imrt` does (including its end-of-file rule).
    pub fn inc(&mut self, r: &mut CheckReport, offset: u64, size: u64) {
        if size == 0 {
            return;
        }
        if offset.saturating_add(size) >= self.file_len.saturating_add(self.cs) {
            r.msg(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            r.corruptions += 1;
            return;
        }
        let first = offset >> self.cb;
        let last = (offset + size - 1) >> self.cb;
        if last as usize >= self.refs.len() {
            self.refs.resize(last as usize + 1, 0);
            self.owner.resize(last as usize + 1, 0);
        }
        for k in first..=last {
            let v = &mut self.refs[k as usize];
            if u64::from(*v) >= self.max_refcount {
                r.msg(format!(
                    "ERROR: overflow cluster offset={:#x}",
                    k << self.cb
                ));
                r.corruptions += 1;
                continue;
            }
            *v += 1;
        }
    }

    /// Record that `kind` occupies `[offset, offset+size)`; returns the metadata kind it
    /// collides with, if any (the first claimant keeps the cluster).
    fn claim(&mut self, offset: u64, size: u64, kind: ClusterUse) -> Option<ClusterUse> {
        if size == 0 {
            return None;
        }
        let first = offset >> self.cb;
        let last = offset.saturating_add(size - 1) >> self.cb;
        let mut clash = None;
        for k in first..=last.min(self.owner.len() as u64 - 1) {
            let cur = ClusterUse::from_u8(self.owner[k as usize]);
            if cur == ClusterUse::Free {
                self.owner[k as usize] = kind as u8;
            } else if cur != kind {
                clash.get_or_insert(cur);
                self.contested.insert(k);
            }
        }
        clash
    }

    /// The LUKS header region, when the encryption header extension names a valid one.
    fn crypto_region(&self) -> Option<(u64, u64)> {
        if self.header.crypt_method != super::encryption::CRYPT_LUKS {
            return None;
        }
        super::encryption::luks_region(&self.header, self.file_len).ok()
    }

    /// Mark the fixed metadata (everything not reached through an L1 table) in `owner`.
    fn claim_fixed(&mut self, r: &mut CheckReport, bitmaps: &[(u64, u64)]) {
        let h = self.header.clone();
        let mut areas: Vec<(u64, u64, ClusterUse)> = vec![
            (0, self.cs, ClusterUse::Header),
            (h.l1_table_offset, u64::from(h.l1_size) * 8, ClusterUse::L1),
            (
                h.refcount_table_offset,
                self.reftable.len() as u64 * 8,
                ClusterUse::RefcountTable,
            ),
            (
                h.snapshots_offset,
                self.snapshots_size,
                ClusterUse::SnapshotTable,
            ),
        ];
        // A snapshot table entry whose L1 table is broken says nothing reliable about
        // which clusters hold it.
        for s in self
            .snapshots
            .iter()
            .filter(|s| s.validate_l1(self.cs, self.file_len).is_ok())
        {
            areas.push((
                s.l1_table_offset,
                u64::from(s.l1_size) * 8,
                ClusterUse::SnapshotL1,
            ));
        }
        for &raw in &self.reftable {
            let off = raw & !REFT_RESERVED_MASK;
            if off != 0 && raw & REFT_RESERVED_MASK == 0 && off % self.cs == 0 {
                areas.push((off, self.cs, ClusterUse::RefcountBlock));
            }
        }
        for &(off, len) in bitmaps {
            areas.push((off, len, ClusterUse::Bitmap));
        }
        if let Some((off, len)) = self.crypto_region() {
            areas.push((off, len, ClusterUse::CryptoHeader));
        }
        for (off, len, kind) in areas {
            if off >= self.file_len {
                continue;
            }
            if let Some(other) = self.claim(off, len, kind) {
                if !(kind == ClusterUse::SnapshotL1 && other == ClusterUse::SnapshotL1) {
                    r.msg(format!(
                        "ERROR the {} at {off:#x} overlaps the {}",
                        kind.name(),
                        other.name()
                    ));
                }
            }
        }
    }

    /// Walk the whole image in QEMU's order, filling `refs`, `owner` and `bad`.
    pub fn walk<S: Storage>(&mut self, st: &S, r: &mut CheckReport) -> Result<()> {
        let bitmaps = bitmap_ranges(st, &self.header, r)?;
        self.claim_fixed(r, &bitmaps);
        let h = self.header.clone();
        r.total_clusters = h.size.div_ceil(self.cs);
        // Snapshot L1 tables are read up front so that every L2 table can be claimed
        // before any data cluster is.
        let mut l1s: Vec<(u64, Vec<u64>, bool)> = vec![(h.l1_table_offset, self.l1.clone(), true)];
        for s in &self.snapshots {
            let l1 = if s.l1_table_offset % self.cs != 0 || u64::from(s.l1_size) > MAX_L1_BYTES / 8
            {
                Vec::new()
            } else if s.l1_table_offset >= self.file_len {
                // Past the end of the file it reads as zeros (as QEMU reads it).
                vec![0; s.l1_size as usize]
            } else {
                read_u64s(
                    st,
                    s.l1_table_offset,
                    s.l1_size as usize,
                    "a snapshot L1 table",
                )?
            };
            l1s.push((s.l1_table_offset, l1, false));
        }
        for (l1_off, l1, _) in &l1s {
            for (i, &raw) in l1.iter().enumerate() {
                let l2 = entry::l1_l2_offset(raw);
                if l2 == 0 || l2 % self.cs != 0 {
                    continue;
                }
                if l2 >= self.file_len {
                    // Nothing to keep: the table reads as zeros (unallocated), as in QEMU.
                    self.bad.insert(l1_off + i as u64 * 8, 0);
                    continue;
                }
                // An L2 table that other metadata also claims is kept, as QEMU keeps it: its
                // refcount counts both users (so the L1 entry loses COPIED and writes copy
                // the table), and a refcount block there makes the refcount structure be
                // rebuilt elsewhere.
                if let Some(other) = self.claim(l2, self.cs, ClusterUse::L2) {
                    r.msg(format!(
                        "Warning: L1 entry {i} of the L1 table at {l1_off:#x} points its L2 table at {l2:#x}, which holds the {}",
                        other.name()
                    ));
                }
            }
        }
        self.inc(r, 0, self.cs);
        let l1_end = h.l1_table_offset.saturating_add(u64::from(h.l1_size) * 8);
        if h.l1_size > 0 && l1_end > self.file_len {
            self.unreadable_l1s.push("the active L1 table".into());
        }
        for (k, (l1_off, l1, active)) in l1s.iter().enumerate() {
            if k > 0 {
                let s = &self.snapshots[k - 1];
                if s.validate_l1(self.cs, self.file_len).is_err() {
                    self.unreadable_l1s
                        .push(format!("snapshot {} ({})", s.id, s.name));
                }
                if s.l1_table_offset % self.cs != 0 {
                    r.msg(format!(
                        "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                        s.id, s.name, s.l1_table_offset
                    ));
                    r.corruptions += 1;
                    continue;
                }
                if u64::from(s.l1_size) > MAX_L1_BYTES / 8 {
                    r.msg(format!(
                        "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                        s.id, s.name, s.l1_size
                    ));
                    r.corruptions += 1;
                    continue;
                }
            }
            self.walk_l1(st, r, *l1_off, l1, *active)?;
        }
        self.inc(r, h.snapshots_offset, self.snapshots_size);
        self.inc(r, h.refcount_table_offset, self.reftable.len() as u64 * 8);
        for (off, len) in bitmaps {
            self.inc(r, off, len);
        }
        if let Some((off, len)) = self.crypto_region() {
            self.inc(r, off, len);
        }
        self.walk_refblocks(r);
        let (cb, contested) = (self.cb, &self.contested);
        self.bad.retain(|at, _| !contested.contains(&(at >> cb)));
        Ok(())
    }

    fn walk_l1<S: Storage>(
        &mut self,
        st: &S,
        r: &mut CheckReport,
        l1_off: u64,
        l1: &[u64],
        active: bool,
    ) -> Result<()> {
        if l1.is_empty() {
            return Ok(());
        }
        self.inc(r, l1_off, l1.len() as u64 * 8);
        let mut next_contiguous = 0u64;
        for (i, &raw) in l1.iter().enumerate() {
            if raw == 0 {
                continue;
            }
            let at = l1_off + i as u64 * 8;
            let l2 = entry::l1_l2_offset(raw);
            if raw & entry::L1_RESERVED_MASK != 0 {
                r.msg(format!(
                    "ERROR found L1 entry with reserved bits set: {raw:x}"
                ));
                r.corruptions += 1;
                let kept = raw & !entry::L1_RESERVED_MASK;
                self.bad.insert(at, if l2 == 0 { 0 } else { kept });
            }
            if l2 == 0 {
                // Not zero, yet no L2 table (only COPIED or reserved bits): QEMU counts a
                // reference to cluster 0 and walks the header as if it were an L2 table, so
                // vdisk does too (same counts). Readers see an unallocated range; `-r all`
                // clears the entry, which keeps exactly that.
                r.msg(format!(
                    "ERROR L1 entry {i} of the L1 table at {l1_off:#x} ({raw:x}) is not zero but has no L2 table offset"
                ));
                self.bad.insert(at, 0);
            }
            self.inc(r, l2, self.cs);
            if l2 % self.cs != 0 {
                r.msg(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                r.corruptions += 1;
                self.bad.insert(at, 0);
            }
            let fate = if l2 == 0 || l2 % self.cs != 0 || l2 >= self.file_len {
                TableFate::Lost
            } else if self.bad.contains_key(&at) {
                TableFate::Kept
            } else {
                TableFate::Repairable
            };
            self.walk_l2(st, r, l2, active, fate, &mut next_contiguous)?;
        }
        Ok(())
    }

    fn walk_l2<S: Storage>(
        &mut self,
        st: &S,
        r: &mut CheckReport,
        l2: u64,
        active: bool,
        fate: TableFate,
        next_contiguous: &mut u64,
    ) -> Result<()> {
        let table = read_u64s(st, l2, (self.cs / 8) as usize, "an L2 table")?;
        // QEMU tracks contiguity per L2 table.
        *next_contiguous = 0;
        // Extended entries are pairs: the entry, then its subcluster bitmap.
        let ext = self.extended_l2();
        let stride = if ext { 2 } else { 1 };
        for index in 0..table.len() / stride {
            let raw = table[index * stride];
            let slot = L2Slot {
                table: l2,
                index,
                raw,
                active,
                repairable: fate == TableFate::Repairable,
                // What a table that `-r all` drops points at says nothing about who owns
                // a cluster.
                claims: fate != TableFate::Lost,
                extended: ext,
            };
            let e = if ext {
                let bitmap = table[index * stride + 1];
                let e = super::subcluster::decode_in(raw, bitmap, self.cb, self.external_data());
                let compressed = matches!(e, L2Entry::Compressed { .. });
                let host = e.host_cluster(self.cs);
                if let Some(why) = super::subcluster::invalid(host, bitmap, compressed) {
                    r.msg(super::subcluster::check_message(
                        index, raw, host, bitmap, why,
                    ));
                    r.corruptions += 1;
                }
                e
            } else if self.external_data() {
                L2Entry::decode_external(raw, self.cb)
            } else {
                L2Entry::decode(raw, self.cb)
            };
            if raw & COMPRESSED == 0 && raw & entry::L2_RESERVED_MASK != 0 {
                r.msg(format!(
                    "ERROR found l2 entry with reserved bits set: {raw:x}"
                ));
                r.corruptions += 1;
                if slot.repairable {
                    self.bad.insert(slot.at(), raw & !entry::L2_RESERVED_MASK);
                }
            }
            match e {
                L2Entry::Compressed { host, len } => {
                    self.check_compressed_entry(r, slot, host, len)
                }
                L2Entry::Normal { host, .. }
                | L2Entry::Sub {
                    host: Some(host), ..
                }
                | L2Entry::Zero {
                    host: Some(host), ..
                } if self.external_data() => {
                    // The data file's clusters: counted in the statistics, not refcounted.
                    if slot.active {
                        r.allocated_clusters += 1;
                        if *next_contiguous != 0 && host != *next_contiguous {
                            r.fragmented_clusters += 1;
                        }
                        *next_contiguous = host + self.cs;
                    }
                }
                L2Entry::Normal { host, .. }
                | L2Entry::Sub {
                    host: Some(host), ..
                } => self.check_allocated_entry(r, slot, host, true, next_contiguous),
                L2Entry::Zero {
                    host: Some(host), ..
                } => self.check_allocated_entry(r, slot, host, false, next_contiguous),
                L2Entry::Zero { host: None, .. }
                | L2Entry::Sub { host: None, .. }
                | L2Entry::Unallocated => {}
            }
        }
        Ok(())
    }

    /// Whether L2 entries are extended (16 bytes with a subcluster bitmap).
    pub(crate) fn extended_l2(&self) -> bool {
        self.header.incompatible_features & super::header::incompat::EXTENDED_L2 != 0
    }

    /// Whether guest data lives in an external data file (and so is not refcounted here).
    pub(crate) fn external_data(&self) -> bool {
        self.header.incompatible_features & super::header::incompat::EXTERNAL_DATA != 0
    }

    /// A compressed cluster: no COPIED flag, its bytes counted and claimed; an entry that
    /// nothing can read (past the end of the file, in the header) is cleared by `-r all`.
    fn check_compressed_entry(&mut self, r: &mut CheckReport, slot: L2Slot, host: u64, len: u64) {
        let (l2, i, at) = (slot.table, slot.index, slot.at());
        if slot.raw & COPIED != 0 {
            r.msg(format!(
                "ERROR: coffset={host:#x}: copied flag must never be set for compressed clusters"
            ));
            r.corruptions += 1;
            if slot.repairable {
                self.bad.insert(at, slot.raw & !COPIED);
            }
        }
        let before = r.corruptions;
        self.inc(r, host, len);
        let clash = if slot.claims && host < self.file_len {
            self.claim(host, len, ClusterUse::Compressed)
        } else {
            None
        };
        // Data that lies in other metadata is kept, as QEMU keeps it: the
        // refcount counts both users (see `walk`).
        if let Some(other) = clash.filter(|o| o.is_metadata()) {
            r.msg(format!(
                "Warning: compressed data at {host:#x} (L2 table {l2:#x} entry {i}) lies in the {}",
                other.name()
            ));
        }
        // Past the end of the file, or in the header: nothing can read it.
        let broken = r.corruptions > before || host < self.cs;
        if broken && slot.repairable {
            self.bad.insert(at, 0);
            if slot.extended {
                self.bad.insert(at + 8, 0);
            }
        }
        if slot.active {
            r.allocated_clusters += 1;
            r.compressed_clusters += 1;
            r.fragmented_clusters += 1;
        }
    }

    /// A data cluster (`has_data`) or a preallocated zero cluster at `host`: counted in the
    /// allocation statistics, aligned, its refcount counted and claimed; a broken entry is
    /// replaced by `-r all` with one that reads as zeros. (Inlined: it runs once per L2
    /// entry, and the call alone cost `check` about 10% of its instructions.)
    #[inline(always)]
    fn check_allocated_entry(
        &mut self,
        r: &mut CheckReport,
        slot: L2Slot,
        host: u64,
        has_data: bool,
        next_contiguous: &mut u64,
    ) {
        let (l2, i) = (slot.table, slot.index);
        if slot.active {
            r.allocated_clusters += 1;
            if *next_contiguous != 0 && host != *next_contiguous {
                r.fragmented_clusters += 1;
            }
            *next_contiguous = host + self.cs;
        }
        let mut broken = false;
        if host % self.cs != 0 {
            r.corruptions += 1;
            broken = true;
            if has_data {
                r.msg(format!(
                    "ERROR offset={host:x}: Data cluster is not properly aligned; L2 entry corrupted."
                ));
            } else {
                r.msg(format!(
                    "ERROR offset={host:x}: Preallocated cluster is not properly aligned; L2 entry corrupted."
                ));
            }
        }
        let before = r.corruptions;
        self.inc(r, host, self.cs);
        broken |= r.corruptions > before;
        if slot.claims && host < self.file_len && host % self.cs == 0 {
            if let Some(other) = self.claim(host, self.cs, ClusterUse::Data) {
                if other.is_metadata() {
                    r.msg(format!(
                        "Warning: data cluster {host:#x} (L2 table {l2:#x} entry {i}) lies in the {}",
                        other.name()
                    ));
                }
            }
        }
        if broken && slot.repairable {
            // Keep the guest cluster reading as zeros where the format can say so.
            let replacement = if self.header.version >= 3 && !has_data {
                ZERO_FLAG
            } else {
                0
            };
            if slot.extended {
                // No host cluster, every subcluster zero (the bitmap is the next word).
                self.bad.insert(slot.at(), 0);
                self.bad.insert(slot.at() + 8, super::subcluster::ALL_ZERO);
            } else {
                self.bad.insert(slot.at(), replacement);
            }
        }
    }

    fn walk_refblocks(&mut self, r: &mut CheckReport) {
        for i in 0..self.reftable.len() {
            let raw = self.reftable[i];
            let off = raw & !REFT_RESERVED_MASK;
            if raw & REFT_RESERVED_MASK != 0 {
                r.msg(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                r.corruptions += 1;
                self.rebuild = true;
                continue;
            }
            if off % self.cs != 0 {
                r.msg(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                r.corruptions += 1;
                self.rebuild = true;
                continue;
            }
            let cluster = off >> self.cb;
            if cluster as usize >= self.refs.len() {
                r.msg(format!("ERROR refcount block {i} is outside image"));
                r.corruptions += 1;
                self.blocks_outside = true;
                continue;
            }
            if off != 0 {
                self.inc(r, off, self.cs);
                let n = self.refs[cluster as usize];
                if n != 1 {
                    r.msg(format!("ERROR refcount block {i} refcount={n}"));
                    r.corruptions += 1;
                    self.rebuild = true;
                }
            }
        }
    }

    /// Refcount block entries per block, as a shift.
    pub fn rb_bits(&self) -> u32 {
        self.cb + 3 - self.header.refcount_order
    }

    /// The stored refcounts of clusters `0..n`, read block by block; `None` for clusters
    /// whose refcount block cannot be read (unaligned table entry).
    pub fn stored_refcounts<S: Storage>(&self, st: &S, n: usize) -> Result<Vec<Option<u32>>> {
        let rb_bits = self.rb_bits();
        let per_block = 1usize << rb_bits;
        let order = self.header.refcount_order;
        let mut out = vec![Some(0u32); n];
        let mut block = vec![0u8; self.cs as usize];
        for (bi, &raw) in self.reftable.iter().enumerate() {
            let first = bi << rb_bits;
            if first >= n {
                break;
            }
            let off = raw & !REFT_RESERVED_MASK;
            if off == 0 {
                continue;
            }
            let end = (first + per_block).min(n);
            if off % self.cs != 0 {
                out[first..end].fill(None);
                continue;
            }
            read(st, &mut block, off, "a refcount block")?;
            for (k, slot) in out[first..end].iter_mut().enumerate() {
                let v = read_refcount(&block, order, k);
                *slot = Some(v.min(u64::from(u32::MAX)) as u32);
            }
        }
        Ok(out)
    }

    /// Who uses each host cluster, merging in leaks from the stored refcounts.
    pub fn usage(&self, stored: &[Option<u32>]) -> Vec<ClusterUse> {
        let n = self.owner.len().max(stored.len());
        (0..n)
            .map(|c| {
                let o = ClusterUse::from_u8(self.owner.get(c).copied().unwrap_or(0));
                let expected = self.refs.get(c).copied().unwrap_or(0);
                let s = stored.get(c).copied().flatten().unwrap_or(0);
                if o == ClusterUse::Free && expected == 0 && s > 0 {
                    ClusterUse::Leaked
                } else {
                    o
                }
            })
            .collect()
    }
}

/// The host-cluster usage map of the image in `st` (what each cluster holds).
pub fn cluster_usage<S: Storage>(st: &S) -> Result<Vec<ClusterUse>> {
    let mut scan = Scan::load(st)?;
    let mut r = CheckReport::default();
    scan.walk(st, &mut r)?;
    let stored = scan.stored_refcounts(st, scan.refs.len())?;
    Ok(scan.usage(&stored))
}
