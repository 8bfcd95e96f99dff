//! The sequential layout: a new qcow2 image written front to back, every byte once, for a
//! storage that takes writes only in increasing offset order (an upload stream; see
//! [`Storage::sequential`]), and a compact file anywhere else.
//!
//! The caller plans first: which guest clusters will hold data and which read as zeros
//! over a backing file ([`ClusterPlan`]). From that plan [`SequentialImage::start`] places
//! every structure and writes the metadata at once:
//!
//! ```text
//! header | refcount table | refcount blocks | L1 table | L2 tables | data clusters
//! ```
//!
//! Every cluster up to the end of the data is in use exactly once, so the refcount blocks
//! say 1 for the clusters `[0, total)` and nothing else, and the data clusters follow in
//! guest order, the n-th planned data cluster at `data_offset + n * cluster_size`. The
//! returned [`SequentialImage`] is a write-only [`BlockDevice`] that takes the guest data
//! in guest order and puts it there; a planned cluster nothing is written to stays a gap,
//! which reads as zeros. Writing zeros into a cluster that is not planned is accepted and
//! ignored; writing data there is an error.
//!
//! Zero clusters of the plan become zero-flag entries in version 3 images (with extended
//! L2 entries: all subclusters marked as reading zeros); version 2 has no zero flag, so
//! there they are data clusters left as gaps. A data cluster with extended L2 entries has
//! all its subclusters allocated.

use super::create::{new_header, CreateOptions};
use super::entry::{write_refcount, COPIED, ZERO_FLAG};
use super::header;
use super::limits::{MAX_HOST_OFFSET, MAX_L1_BYTES, MAX_REFTABLE_BYTES};
use super::subcluster::{ALL_ALLOC, ALL_ZERO};
use crate::device::{BlockDevice, Extent};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::Preallocation;
use byteorder::{BigEndian, ByteOrder};
use std::sync::Arc;

/// Bytes of metadata assembled in memory before one write (refcount blocks, L2 tables).
const EMIT_BYTES: usize = 4 << 20;

/// What a planned run of guest clusters holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedKind {
    /// Allocated data clusters, written later in guest order.
    Data,
    /// Clusters that read as zeros whatever the backing file holds.
    Zero,
}

/// A run of guest clusters of one kind: `first`, `first + 1`, ... `first + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRun {
    /// First guest cluster index.
    pub first: u64,
    /// Number of clusters (never 0).
    pub count: u64,
    /// What they hold.
    pub kind: PlannedKind,
}

/// The guest clusters an image will map, in order; everything else stays unallocated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPlan {
    runs: Vec<PlannedRun>,
}

impl ClusterPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `count` clusters from `first` (at or after every cluster added so far; a
    /// cluster already planned is planned once, as its first kind).
    pub fn push(&mut self, first: u64, count: u64, kind: PlannedKind) {
        let mut first = first;
        let end = first.saturating_add(count);
        if let Some(last) = self.runs.last_mut() {
            let last_end = last.first + last.count;
            first = first.max(last_end);
            if first >= end {
                return;
            }
            if last.kind == kind && last_end == first {
                last.count += end - first;
                return;
            }
        }
        if end > first {
            self.runs.push(PlannedRun {
                first,
                count: end - first,
                kind,
            });
        }
    }

    /// The runs, in guest order.
    pub fn runs(&self) -> &[PlannedRun] {
        &self.runs
    }

    /// How many clusters of `kind` are planned.
    pub fn count(&self, kind: PlannedKind) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.count)
            .sum()
    }
}

/// Where every structure of a sequentially laid out image goes (byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequentialLayout {
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// The refcount table: offset and clusters.
    pub rt_offset: u64,
    pub rt_clusters: u64,
    /// The refcount blocks: offset of the first, and how many.
    pub blocks_offset: u64,
    pub blocks: u64,
    /// The L1 table: offset and entries.
    pub l1_offset: u64,
    pub l1_size: u64,
    /// The L2 tables: offset of the first, and how many.
    pub l2_offset: u64,
    pub l2_tables: u64,
    /// The first data cluster, and how many there are.
    pub data_offset: u64,
    pub data_clusters: u64,
    /// Clusters in the file: all of the above.
    pub total_clusters: u64,
}

/// Options the sequential layout cannot honour, refused with the reason.
fn refuse_options(opts: &CreateOptions) -> Result<()> {
    let refuse = |what: &str, why: &str| {
        Err(Error::unsupported(format!(
            "{what} in a qcow2 image written sequentially (to an upload stream): {why}"
        )))
    };
    if opts.preallocation != Preallocation::Off {
        return refuse(
            "preallocation",
            "the output holds only the source's data; convert to a local file instead",
        );
    }
    if opts.data_file.is_some() {
        return refuse("an external data file", "it is a second file to write");
    }
    if opts.encrypt.format.is_some() {
        return refuse(
            "encryption",
            "the LUKS header and key slots are set up by rewriting the image",
        );
    }
    Ok(())
}

impl SequentialLayout {
    /// Place the structures of an image with `opts` (validated) mapping `plan`.
    pub fn plan(opts: &CreateOptions, plan: &ClusterPlan) -> Result<SequentialLayout> {
        let cs = opts.cluster_size;
        let cluster_bits = cs.trailing_zeros();
        let l2_bits = cluster_bits - entry_bits(opts.extended_l2);
        let l1_size = header::l1_entries_for(
            opts.size.next_multiple_of(512),
            cluster_bits,
            opts.extended_l2,
        )
        .filter(|&n| n * 8 <= MAX_L1_BYTES)
        .ok_or_else(|| Error::invalid("image size is too large for this cluster size"))?;
        let guest_clusters = opts.size.div_ceil(cs);
        let mut l2_tables = 0u64;
        let mut last_l1 = None;
        for r in plan.runs() {
            if r.first.saturating_add(r.count) > guest_clusters {
                return Err(Error::invalid(format!(
                    "sequential qcow2: planned cluster {} is past the end of the {}-byte disk",
                    r.first + r.count - 1,
                    opts.size
                )));
            }
            let (a, b) = (r.first >> l2_bits, (r.first + r.count - 1) >> l2_bits);
            l2_tables += b - a + 1 - u64::from(last_l1 == Some(a));
            last_l1 = Some(b);
        }
        let data_clusters = data_clusters(opts, plan);
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let rb_entries = cs * 8 / u64::from(opts.refcount_bits);
        let fixed = 1 + l1_clusters + l2_tables + data_clusters;
        // Fixed point: the refcount blocks describe every cluster, themselves included.
        let (mut rt_clusters, mut blocks) = (1u64, 1u64);
        loop {
            let total = fixed + rt_clusters + blocks;
            let b = total.div_ceil(rb_entries);
            let r = (b * 8).div_ceil(cs).max(1);
            if b <= blocks && r <= rt_clusters {
                break;
            }
            (blocks, rt_clusters) = (b.max(blocks), r.max(rt_clusters));
        }
        let total_clusters = fixed + rt_clusters + blocks;
        if rt_clusters * cs > MAX_REFTABLE_BYTES
            || total_clusters
                .checked_mul(cs)
                .is_none_or(|e| e > MAX_HOST_OFFSET)
        {
            return Err(Error::invalid(
                "sequential qcow2: the image would be too large for its refcount table",
            ));
        }
        let rt_offset = cs;
        let blocks_offset = rt_offset + rt_clusters * cs;
        let l1_offset = blocks_offset + blocks * cs;
        let l2_offset = l1_offset + l1_clusters * cs;
        Ok(SequentialLayout {
            cluster_size: cs,
            rt_offset,
            rt_clusters,
            blocks_offset,
            blocks,
            l1_offset,
            l1_size,
            l2_offset,
            l2_tables,
            data_offset: l2_offset + l2_tables * cs,
            data_clusters,
            total_clusters,
        })
    }

    /// Bytes in the finished file.
    pub fn file_len(&self) -> u64 {
        self.total_clusters * self.cluster_size
    }
}

/// log2 of the bytes of one L2 entry: 8, or 16 with extended L2 entries.
fn entry_bits(extended_l2: bool) -> u32 {
    if extended_l2 {
        4
    } else {
        3
    }
}

/// Data clusters the image holds: the data runs, and in version 2 (no zero flag) the zero
/// runs as well.
fn data_clusters(opts: &CreateOptions, plan: &ClusterPlan) -> u64 {
    match opts.version {
        2 => plan.count(PlannedKind::Data) + plan.count(PlannedKind::Zero),
        _ => plan.count(PlannedKind::Data),
    }
}

/// A new image laid out sequentially, its metadata written, taking its data in guest
/// order (see the module documentation).
pub struct SequentialImage {
    storage: Arc<dyn Storage>,
    layout: SequentialLayout,
    size: u64,
    /// The runs that get data clusters (zero runs too in version 2), each with the host
    /// offset of its first cluster.
    data_runs: Vec<(PlannedRun, u64)>,
    /// The run the last write went to.
    cursor: usize,
    /// End of the last write, in host bytes.
    written_to: u64,
}

impl SequentialImage {
    /// Lay out an image with `opts` mapping `plan`, and write its header and metadata to
    /// the empty `storage`.
    pub fn start(
        storage: Arc<dyn Storage>,
        opts: &CreateOptions,
        plan: &ClusterPlan,
    ) -> Result<SequentialImage> {
        opts.validate()?;
        refuse_options(opts)?;
        let layout = SequentialLayout::plan(opts, plan)?;
        let header_bytes = new_header(
            opts,
            layout.l1_size,
            layout.l1_offset,
            layout.rt_offset,
            layout.rt_clusters,
        )
        .write()?;
        let emit = Emitter {
            storage: storage.as_ref(),
            layout: &layout,
            refcount_order: opts.refcount_bits.trailing_zeros(),
            v2: opts.version == 2,
            extended_l2: opts.extended_l2,
        };
        // The file's whole length is known before its first byte: an upload stream sends
        // such an object as one PUT (see storage::s3).
        storage
            .set_len(layout.file_len())
            .map_err(|e| Error::io("qcow2: sizing the sequential output", e))?;
        emit.at(&header_bytes, 0)?;
        emit.refcounts()?;
        emit.l1(plan)?;
        let data_runs = emit.l2(plan)?;
        Ok(SequentialImage {
            written_to: layout.data_offset,
            storage,
            size: opts.size,
            layout,
            data_runs,
            cursor: 0,
        })
    }

    /// The layout the metadata was written with.
    pub fn layout(&self) -> &SequentialLayout {
        &self.layout
    }

    /// The host offset of guest cluster `gc` and the guest clusters after it, in the same
    /// run, that follow it on the host; `None` when it is not planned to hold data.
    fn locate(&mut self, gc: u64) -> Result<Option<(u64, u64)>> {
        while let Some((r, host)) = self.data_runs.get(self.cursor) {
            if gc < r.first {
                return Ok(None);
            }
            if gc < r.first + r.count {
                let at = host + (gc - r.first) * self.layout.cluster_size;
                return Ok(Some((at, r.first + r.count - gc)));
            }
            self.cursor += 1;
        }
        Ok(None)
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io("sequential qcow2: writing the data", e)
    }
}

/// Writes the metadata of a layout, front to back.
struct Emitter<'a> {
    storage: &'a dyn Storage,
    layout: &'a SequentialLayout,
    refcount_order: u32,
    v2: bool,
    /// 16-byte L2 entries: the entry word, then the subcluster bitmap.
    extended_l2: bool,
}

impl Emitter<'_> {
    fn at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.storage
            .write_at(buf, offset)
            .map_err(|e| Error::io("sequential qcow2: writing the metadata", e))
    }

    /// The refcount table, then the refcount blocks: refcount 1 for every cluster of the
    /// file.
    fn refcounts(&self) -> Result<()> {
        let l = self.layout;
        let cs = l.cluster_size;
        let mut rt = vec![0u8; (l.rt_clusters * cs) as usize];
        for b in 0..l.blocks {
            BigEndian::write_u64(&mut rt[(b * 8) as usize..], l.blocks_offset + b * cs);
        }
        self.at(&rt, l.rt_offset)?;
        let rb_entries = cs * 8 / (1u64 << self.refcount_order);
        let per_write = (EMIT_BYTES as u64 / cs).max(1);
        let mut b = 0;
        while b < l.blocks {
            let n = per_write.min(l.blocks - b);
            let mut buf = vec![0u8; (n * cs) as usize];
            for (k, block) in buf.chunks_mut(cs as usize).enumerate() {
                let first = (b + k as u64) * rb_entries;
                let used = l.total_clusters.saturating_sub(first).min(rb_entries);
                for i in 0..used {
                    write_refcount(block, self.refcount_order, i as usize, 1);
                }
            }
            self.at(&buf, l.blocks_offset + b * cs)?;
            b += n;
        }
        Ok(())
    }

    /// The L1 table: one L2 table, in order, for each L1 index a planned run touches.
    fn l1(&self, plan: &ClusterPlan) -> Result<()> {
        let l = self.layout;
        let l2_bits = l.cluster_size.trailing_zeros() - entry_bits(self.extended_l2);
        let mut l1 = vec![0u8; (l.l1_size * 8).next_multiple_of(l.cluster_size) as usize];
        let mut next = l.l2_offset;
        let mut last = None;
        for r in plan.runs() {
            for i in r.first >> l2_bits..=(r.first + r.count - 1) >> l2_bits {
                if last != Some(i) {
                    BigEndian::write_u64(&mut l1[(i * 8) as usize..], COPIED | next);
                    next += l.cluster_size;
                    last = Some(i);
                }
            }
        }
        if !l1.is_empty() {
            self.at(&l1, l.l1_offset)?;
        }
        Ok(())
    }

    /// The L2 tables, in L1 order; returns the runs given data clusters with the host
    /// offset of each one's first cluster.
    fn l2(&self, plan: &ClusterPlan) -> Result<Vec<(PlannedRun, u64)>> {
        let l = self.layout;
        let cs = l.cluster_size;
        let per_table = cs >> entry_bits(self.extended_l2);
        let mut tables = L2Writer::new(self, l.l2_offset);
        let mut host = l.data_offset;
        let mut data_runs = Vec::new();
        for r in plan.runs() {
            let data = r.kind == PlannedKind::Data || self.v2;
            if data {
                data_runs.push((*r, host));
            }
            for gc in r.first..r.first + r.count {
                // With extended L2 entries the subcluster bitmap says "all data" or "all
                // zeros"; the entry word has no zero flag then.
                let words = match (data, self.extended_l2) {
                    (true, false) => [COPIED | host, 0],
                    (true, true) => [COPIED | host, ALL_ALLOC],
                    (false, false) => [ZERO_FLAG, 0],
                    (false, true) => [0, ALL_ZERO],
                };
                if data {
                    host += cs;
                }
                tables.set(gc / per_table, (gc % per_table) as usize, words)?;
            }
        }
        tables.finish()?;
        Ok(data_runs)
    }
}

/// Assembles L2 tables one after another and writes them in batches.
struct L2Writer<'a, 'b> {
    emit: &'a Emitter<'b>,
    /// Where the first table of `buf` goes.
    offset: u64,
    buf: Vec<u8>,
    /// The L1 index of the table at the end of `buf`.
    current: Option<u64>,
}

impl<'a, 'b> L2Writer<'a, 'b> {
    fn new(emit: &'a Emitter<'b>, offset: u64) -> Self {
        L2Writer {
            emit,
            offset,
            buf: Vec::new(),
            current: None,
        }
    }

    /// Set entry `index` of the table for L1 index `l1` (at or after the current one): its
    /// word, and with extended L2 entries its subcluster bitmap.
    fn set(&mut self, l1: u64, index: usize, words: [u64; 2]) -> Result<()> {
        let cs = self.emit.layout.cluster_size as usize;
        if self.current != Some(l1) {
            if self.buf.len() + cs > EMIT_BYTES.max(cs) {
                self.flush()?;
            }
            self.buf.resize(self.buf.len() + cs, 0);
            self.current = Some(l1);
        }
        let table = self.buf.len() - cs;
        if self.emit.extended_l2 {
            let at = table + index * 16;
            BigEndian::write_u64(&mut self.buf[at..], words[0]);
            BigEndian::write_u64(&mut self.buf[at + 8..], words[1]);
        } else {
            BigEndian::write_u64(&mut self.buf[table + index * 8..], words[0]);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.emit.at(&self.buf, self.offset)?;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

impl BlockDevice for SequentialImage {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, _buf: &mut [u8], offset: u64) -> Result<()> {
        Err(Error::invalid(format!(
            "sequential qcow2: the output is written once and cannot be read back (read at {offset:#x})"
        )))
    }
    /// Write guest data at `offset`, after everything written so far, into planned data
    /// clusters; all-zero parts outside them are skipped (they read as zeros already).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        crate::device::check_range(self.size, offset, buf.len() as u64)?;
        let cs = self.layout.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let gc = pos / cs;
            let in_cluster = pos % cs;
            let (host, len) = match self.locate(gc)? {
                Some((host, clusters)) => (Some(host + in_cluster), clusters * cs - in_cluster),
                None => (None, cs - in_cluster),
            };
            let n = (len.min((buf.len() - done) as u64)) as usize;
            let part = &buf[done..done + n];
            match host {
                None if part.iter().any(|&b| b != 0) => {
                    return Err(Error::invalid(format!(
                        "sequential qcow2: data at guest offset {pos:#x} is in a cluster the layout did not plan, or came after later data"
                    )));
                }
                None => {}
                Some(host) if host < self.written_to => {
                    return Err(Error::invalid(format!(
                        "sequential qcow2: guest offset {pos:#x} written out of order"
                    )));
                }
                Some(host) => {
                    self.storage.write_at(part, host).map_err(|e| self.io(e))?;
                    self.written_to = host + n as u64;
                }
            }
            done += n;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        Err(Error::unsupported(format!(
            "sequential qcow2: zeroing {offset:#x}+{len:#x} after the layout is written"
        )))
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        self.storage.flush().map_err(|e| self.io(e))
    }
    /// Extend the file over the data clusters never written (they read as zeros), then
    /// finish the storage (an upload completes its object there).
    fn close(&mut self) -> Result<()> {
        // What was written is known here: an upload stream need not report its length.
        let end = self.layout.file_len();
        if self.written_to < end {
            self.storage.set_len(end).map_err(|e| self.io(e))?;
        }
        self.storage
            .finish()
            .map_err(|e| Error::io("sequential qcow2: finishing the image", e))
    }
    fn block_status(&mut self, offset: u64, _max_len: u64) -> Result<Extent> {
        Err(Error::unsupported(format!(
            "sequential qcow2: the allocation of {offset:#x} is not known while it is written"
        )))
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn cluster_size(&self) -> Option<u64> {
        Some(self.layout.cluster_size)
    }
    fn requires_sequential_writes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn opts(size: u64, cluster_size: u64, refcount_bits: u32) -> CreateOptions {
        CreateOptions {
            size,
            cluster_size,
            refcount_bits,
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_merges_neighbours_and_plans_a_cluster_once() {
        let mut p = ClusterPlan::new();
        p.push(0, 2, PlannedKind::Data);
        p.push(2, 3, PlannedKind::Data);
        p.push(4, 2, PlannedKind::Zero); // cluster 4 is data already
        p.push(9, 0, PlannedKind::Data);
        assert_eq!(
            p.runs(),
            &[
                PlannedRun {
                    first: 0,
                    count: 5,
                    kind: PlannedKind::Data
                },
                PlannedRun {
                    first: 5,
                    count: 1,
                    kind: PlannedKind::Zero
                }
            ]
        );
        assert_eq!(
            (p.count(PlannedKind::Data), p.count(PlannedKind::Zero)),
            (5, 1)
        );
    }

    #[test]
    fn the_layout_places_header_refcounts_l1_l2_then_data() {
        const CS: u64 = 65536;
        let mut p = ClusterPlan::new();
        p.push(0, 3, PlannedKind::Data);
        p.push(8192, 1, PlannedKind::Data); // the second L2 table
        let l = SequentialLayout::plan(&opts(1 << 30, CS, 16), &p).unwrap();
        assert_eq!((l.rt_offset, l.rt_clusters), (CS, 1));
        assert_eq!((l.blocks_offset, l.blocks), (2 * CS, 1));
        assert_eq!((l.l1_offset, l.l1_size), (3 * CS, 2));
        assert_eq!((l.l2_offset, l.l2_tables), (4 * CS, 2));
        assert_eq!((l.data_offset, l.data_clusters), (6 * CS, 4));
        assert_eq!(l.total_clusters, 10);
    }

    #[test]
    fn the_refcount_blocks_cover_the_whole_file_themselves_included() {
        // 512-byte clusters with 64-bit refcounts: 64 entries a block, many blocks.
        let mut p = ClusterPlan::new();
        p.push(0, 20_000, PlannedKind::Data);
        let l = SequentialLayout::plan(&opts(20 << 20, 512, 64), &p).unwrap();
        assert!(l.blocks * 64 >= l.total_clusters);
        assert!(l.rt_clusters * 64 >= l.blocks);
        assert!((l.blocks - 1) * 64 < l.total_clusters, "no spare block");
        assert_eq!(
            l.total_clusters,
            1 + l.rt_clusters + l.blocks + l.l1_size.div_ceil(64) + l.l2_tables + 20_000
        );
    }

    #[test]
    fn a_plan_past_the_end_of_the_disk_is_refused() {
        let mut p = ClusterPlan::new();
        p.push(15, 2, PlannedKind::Data);
        assert!(SequentialLayout::plan(&opts(1 << 20, 65536, 16), &p).is_err());
    }

    #[test]
    fn data_goes_only_into_planned_clusters_in_order() {
        const CS: u64 = 4096;
        let mut p = ClusterPlan::new();
        p.push(2, 2, PlannedKind::Data);
        let mem = Arc::new(MemStorage::new());
        let mut img = SequentialImage::start(mem.clone(), &opts(16 * CS, CS, 16), &p).unwrap();
        let data_offset = img.layout().data_offset;
        // Zeros outside the plan are accepted and dropped; data there is refused.
        img.write_at(&[0u8; 4096], 0).unwrap();
        assert!(img.write_at(&[1u8; 10], CS).is_err());
        img.write_at(&[7u8; 100], 3 * CS).unwrap();
        assert!(img.write_at(&[8u8; 100], 2 * CS).is_err(), "out of order");
        assert!(img.read_at(&mut [0u8; 4], 0).is_err());
        img.close().unwrap();
        let bytes = mem.to_vec();
        assert_eq!(bytes.len() as u64, data_offset + 2 * CS);
        let at = (data_offset + CS) as usize;
        assert!(bytes[at..at + 100].iter().all(|&b| b == 7));
        assert!(bytes[data_offset as usize..at].iter().all(|&b| b == 0));
    }
}
