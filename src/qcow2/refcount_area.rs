//! The refcount-area planner: where a new refcount table and new refcount blocks go, and
//! the one routine that writes them and switches the header to them.
//!
//! Four operations lay out refcount structures: growing a full refcount table, committing a
//! metadata transaction (its changed refcount blocks are written to new clusters), rebuilding
//! every refcount in `check -r all`, and changing the refcount width in `amend`. They share
//! one difficulty: the clusters that hold the new table and blocks must themselves be
//! counted, which can need another block, which can need a bigger table. [`plan`] settles
//! that fixed point for all of them over a [`Space`] (which clusters are free, which block
//! indices still need a block); [`write_area`] writes what it placed and syncs;
//! [`switch_header`] makes the image use it with one write inside the first sector.
//!
//! Crash safety: everything [`plan`] places lies on clusters that the structure the header
//! points at does not use, so until [`switch_header`] a power cut leaves the old structure
//! intact and the new clusters unreferenced.
//!
//! Termination: a round that changes anything either places a block for an index that had
//! none (there are at most [`MAX_REFTABLE_ENTRIES`] indices) or replaces the table by a
//! strictly larger one (at most [`MAX_REFTABLE_BYTES`] bytes), so the loop ends without an
//! arbitrary round limit; the bound is still checked as an invariant.

use super::entry::write_refcount;
use super::ioerr;
use super::limits::{reftable_too_large, MAX_REFTABLE_BYTES, MAX_REFTABLE_ENTRIES};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::collections::BTreeMap;
use std::ops::Range;

/// Where the planner may put clusters, and which refcount blocks the layout needs.
pub(crate) trait Space {
    /// Take `n` contiguous free clusters and count them as used; returns the first index.
    fn take(&mut self, n: u64) -> Result<u64>;
    /// Give back clusters taken earlier that the plan no longer uses.
    fn give_back(&mut self, first: u64, n: u64) -> Result<()>;
    /// Block indices that need a newly placed refcount block and are not in `placed`.
    fn blocks_to_place(&mut self, placed: &BTreeMap<u64, u64>) -> Result<Vec<u64>>;
    /// Told that the block for index `bi` now goes to cluster `at`.
    fn block_placed(&mut self, _bi: u64, _at: u64) -> Result<()> {
        Ok(())
    }
}

/// How large the new refcount table is, in clusters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TableSize {
    /// Just large enough for the entries in use.
    Exact,
    /// As large as the current table while that suffices; a quarter more than needed once
    /// it does not (so that a transaction does not regrow it every time).
    KeepOrGrow {
        /// Clusters of the current table.
        current: u64,
    },
}

/// The layout [`plan`] settled on (cluster indices, not byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AreaPlan {
    /// Refcount block index → cluster of its new block.
    pub blocks: BTreeMap<u64, u64>,
    /// First cluster of the new refcount table.
    pub table: u64,
    /// Clusters of the new refcount table.
    pub table_clusters: u64,
}

impl AreaPlan {
    /// The new refcount table: `base` (the entries that stay), sized to the planned table,
    /// with every planned block entered.
    pub(crate) fn table_entries(&self, base: &[u64], cluster_bits: u32) -> Vec<u64> {
        let len = ((self.table_clusters << cluster_bits) / 8) as usize;
        let mut t = base.to_vec();
        t.resize(len, 0);
        for (&bi, &at) in &self.blocks {
            if let Some(slot) = t.get_mut(bi as usize) {
                *slot = at << cluster_bits;
            }
        }
        t
    }
}

/// Place refcount blocks for every index `space` asks for and a refcount table of at least
/// `min_entries` entries that covers them all (see the module documentation).
pub(crate) fn plan(
    space: &mut dyn Space,
    cluster_bits: u32,
    min_entries: u64,
    size: TableSize,
) -> Result<AreaPlan> {
    let cs = 1u64 << cluster_bits;
    let per_cluster = cs / 8;
    let max_clusters = MAX_REFTABLE_BYTES / cs;
    let mut blocks: BTreeMap<u64, u64> = BTreeMap::new();
    let mut table: Option<(u64, u64)> = None;
    let mut rounds = 0u64;
    loop {
        rounds += 1;
        if rounds > MAX_REFTABLE_ENTRIES + max_clusters + 2 {
            return Err(Error::invalid(
                "placing the refcount structures did not settle",
            ));
        }
        let wanted = space.blocks_to_place(&blocks)?;
        let top = wanted
            .iter()
            .chain(blocks.keys())
            .max()
            .map_or(0, |&bi| bi.saturating_add(1));
        let entries = top.max(min_entries).max(1);
        if entries > MAX_REFTABLE_ENTRIES {
            return Err(reftable_too_large());
        }
        let mut changed = false;
        for bi in wanted {
            let at = space.take(1)?;
            blocks.insert(bi, at);
            space.block_placed(bi, at)?;
            changed = true;
        }
        let need = entries.div_ceil(per_cluster);
        if table.is_none_or(|(_, have)| have < need) {
            if let Some((at, have)) = table {
                space.give_back(at, have)?;
            }
            let clusters = match size {
                TableSize::KeepOrGrow { current } if current >= need => current,
                TableSize::KeepOrGrow { .. } => (need + need / 4 + 1).min(max_clusters),
                TableSize::Exact => need,
            };
            if clusters < need || clusters > max_clusters {
                return Err(reftable_too_large());
            }
            table = Some((space.take(clusters)?, clusters));
            changed = true;
        }
        if !changed {
            break;
        }
    }
    let (table, table_clusters) =
        table.ok_or_else(|| Error::invalid("refcount table was not placed"))?;
    Ok(AreaPlan {
        blocks,
        table,
        table_clusters,
    })
}

/// Write the planned refcount blocks (`block(bi)` gives each one's bytes, one cluster) and
/// the new refcount table (`table`, from [`AreaPlan::table_entries`]), then sync.
pub(crate) fn write_area<S: Storage + ?Sized>(
    st: &S,
    plan: &AreaPlan,
    cluster_bits: u32,
    table: &[u64],
    mut block: impl FnMut(u64) -> Result<Vec<u8>>,
) -> Result<()> {
    for (&bi, &at) in &plan.blocks {
        let data = block(bi)?;
        st.write_at(&data, at << cluster_bits)
            .map_err(ioerr("writing a refcount block"))?;
    }
    let mut buf = vec![0u8; table.len() * 8];
    BigEndian::write_u64_into(table, &mut buf);
    st.write_at(&buf, plan.table << cluster_bits)
        .map_err(ioerr("writing the refcount table"))?;
    st.flush().map_err(ioerr("flushing"))
}

/// Switch the image to new structures: write `header[span]` (the bytes of a whole header as
/// `Header::write` lays it out, or at least up to `span.end`) with one write, then sync.
pub(crate) fn switch_header<S: Storage + ?Sized>(
    st: &S,
    header: &[u8],
    span: Range<usize>,
) -> Result<()> {
    let bytes = header
        .get(span.clone())
        .ok_or_else(|| Error::invalid("header switch span is outside the header"))?;
    st.write_at(bytes, span.start as u64)
        .map_err(ioerr("switching the header"))?;
    st.flush().map_err(ioerr("flushing"))
}

/// A [`Space`] over refcounts held in memory: clusters at or after `base` (those below it
/// are covered by refcount blocks the plan keeps and are never taken). Used where every
/// refcount of the new structure is known: table growth, repair's rebuild, and refcount
/// width changes.
pub(crate) struct VecSpace {
    base: u64,
    refs: Vec<u64>,
    reserved: Vec<bool>,
    hint: u64,
    rb_bits: u32,
    /// One past the last cluster a host offset can name.
    max_clusters: u64,
    /// Clusters taken since `blocks_to_place` last looked (after its first full scan).
    fresh: Option<Vec<(u64, u64)>>,
}

impl VecSpace {
    /// Refcounts `refs` of clusters `base..`; `reserved` clusters (relative to `base` too)
    /// are never taken though they count 0 (structures still in use until the switch).
    /// Taking starts at cluster `from` (at least `base`).
    pub(crate) fn new(
        base: u64,
        refs: Vec<u64>,
        reserved: Vec<bool>,
        from: u64,
        geo: super::Geometry,
    ) -> Self {
        VecSpace {
            base,
            refs,
            reserved,
            hint: from.max(base),
            rb_bits: geo.rb_bits,
            max_clusters: (super::limits::MAX_HOST_OFFSET >> geo.cluster_bits) + 1,
            fresh: None,
        }
    }

    /// The refcount of cluster `c` as the plan leaves it.
    pub(crate) fn refcount(&self, c: u64) -> u64 {
        c.checked_sub(self.base)
            .and_then(|i| self.refs.get(i as usize))
            .copied()
            .unwrap_or(0)
    }

    /// One past the last cluster taken or given.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.refs.len() as u64
    }

    /// The bytes of refcount block `bi` with entries of 2^`order` bits, each refcount
    /// capped at `max`.
    pub(crate) fn block_bytes(&self, bi: u64, order: u32, cluster_size: u64, max: u64) -> Vec<u8> {
        let mut block = vec![0u8; cluster_size as usize];
        let first = bi << self.rb_bits;
        for k in 0..(1u64 << self.rb_bits) {
            let v = self.refcount(first + k);
            if v != 0 {
                write_refcount(&mut block, order, k as usize, v.min(max));
            }
        }
        block
    }

    fn used(&self, i: usize) -> bool {
        self.refs.get(i).is_some_and(|&v| v > 0) || self.reserved.get(i).copied().unwrap_or(false)
    }
}

impl Space for VecSpace {
    fn take(&mut self, n: u64) -> Result<u64> {
        let mut start = self.hint - self.base;
        let mut c = start;
        let mut first_gap = None;
        while c - start < n {
            let used = self.used(c as usize);
            c += 1;
            if used {
                start = c;
            } else {
                first_gap.get_or_insert(c - 1);
            }
        }
        let end = (start + n) as usize;
        if self.base + start + n > self.max_clusters {
            return Err(Error::invalid(
                "qcow2 image would grow past the largest host offset",
            ));
        }
        if self.refs.len() < end {
            self.refs.resize(end, 0);
        }
        for v in &mut self.refs[start as usize..end] {
            *v = 1;
        }
        self.hint = self.base + first_gap.filter(|&g| g < start).unwrap_or(start + n);
        if let Some(f) = self.fresh.as_mut() {
            f.push((self.base + start, n));
        }
        Ok(self.base + start)
    }

    fn give_back(&mut self, first: u64, n: u64) -> Result<()> {
        for c in first..first + n {
            if let Some(v) = c
                .checked_sub(self.base)
                .and_then(|i| self.refs.get_mut(i as usize))
            {
                *v = 0;
            }
        }
        self.hint = self.hint.min(first.max(self.base));
        Ok(())
    }

    fn blocks_to_place(&mut self, placed: &BTreeMap<u64, u64>) -> Result<Vec<u64>> {
        let mut want = std::collections::BTreeSet::new();
        match self.fresh.take() {
            None => {
                for (i, &v) in self.refs.iter().enumerate() {
                    if v > 0 {
                        want.insert((self.base + i as u64) >> self.rb_bits);
                    }
                }
            }
            Some(ranges) => {
                for (first, n) in ranges {
                    want.extend((first >> self.rb_bits)..=((first + n - 1) >> self.rb_bits));
                }
            }
        }
        self.fresh = Some(Vec::new());
        Ok(want
            .into_iter()
            .filter(|bi| !placed.contains_key(bi))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::Geometry;
    use std::collections::BTreeSet;

    /// 512-byte clusters with 64-bit refcounts: 64 clusters per refcount block and 64
    /// entries per table cluster, so small inputs need many blocks and table growth.
    fn small() -> Geometry {
        Geometry::new(9, 6)
    }

    /// Every cluster the layout counts at or above `base` is described by a placed block,
    /// the table holds every placed block, and nothing reserved was taken.
    fn assert_sound(space: &VecSpace, plan: &AreaPlan, base: u64, reserved: &[bool], min: u64) {
        let g = small();
        let entries = (plan.table_clusters << g.cluster_bits) / 8;
        assert!(entries >= min, "table of {entries} entries, wanted {min}");
        for c in base..space.end() {
            if space.refcount(c) != 0 {
                let bi = c >> g.rb_bits;
                assert!(plan.blocks.contains_key(&bi), "cluster {c} has no block");
                assert!(bi < entries, "block {bi} outside a table of {entries}");
            }
        }
        let mut taken = BTreeSet::new();
        for &at in plan.blocks.values() {
            assert!(taken.insert(at), "two blocks on cluster {at}");
        }
        for c in plan.table..plan.table + plan.table_clusters {
            assert!(taken.insert(c), "table overlaps a block at {c}");
        }
        for &c in &taken {
            assert!(c >= base);
            assert_eq!(
                space.refcount(c),
                1,
                "cluster {c} of the area is not counted"
            );
            assert!(!reserved.get(c as usize).copied().unwrap_or(false));
        }
    }

    #[test]
    fn growth_places_the_table_and_the_blocks_that_count_them_after_the_old_area() {
        let g = small();
        let p = 4 << g.rb_bits; // the old table described four blocks
        let mut space = VecSpace::new(p, Vec::new(), Vec::new(), p, g);
        let plan = plan(&mut space, g.cluster_bits, 6, TableSize::Exact).unwrap();
        assert_eq!(plan.table, p);
        assert_eq!(plan.table_clusters, 1);
        assert_eq!(plan.blocks.len(), 1);
        assert_eq!(plan.blocks[&4], p + 1);
        assert_sound(&space, &plan, p, &[], 6);
        let t = plan.table_entries(&[7 << 9, 8 << 9], g.cluster_bits);
        assert_eq!(t.len(), 64);
        assert_eq!(&t[..2], &[7 << 9, 8 << 9]);
        assert_eq!(t[4], (p + 1) << 9);
    }

    #[test]
    fn a_table_that_outgrows_its_clusters_is_given_back_and_placed_again() {
        let g = small();
        // 4000 clusters in use: 63 blocks, just under one table cluster of 64 entries;
        // placing them pushes the block count past 64.
        let refs = vec![1u64; 4090];
        let mut space = VecSpace::new(0, refs, Vec::new(), 0, g);
        let plan = plan(&mut space, g.cluster_bits, 1, TableSize::Exact).unwrap();
        assert!(plan.table_clusters >= 2);
        assert_sound(&space, &plan, 0, &[], 1);
    }

    #[test]
    fn random_layouts_are_sound_and_avoid_reserved_clusters() {
        let g = small();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let n = (next() % 3000) as usize;
            let refs: Vec<u64> = (0..n).map(|_| u64::from(next() % 3 == 0)).collect();
            let reserved: Vec<bool> = (0..n).map(|i| refs[i] == 0 && next() % 4 == 0).collect();
            let from = next() % (n as u64 + 1);
            let mut space = VecSpace::new(0, refs, reserved.clone(), from, g);
            let sizing = if next() % 2 == 0 {
                TableSize::Exact
            } else {
                TableSize::KeepOrGrow {
                    current: next() % 3,
                }
            };
            let min = next() % 200;
            let plan = plan(&mut space, g.cluster_bits, min, sizing).unwrap();
            assert_sound(&space, &plan, 0, &reserved, min);
        }
    }

    #[test]
    fn keep_or_grow_keeps_a_large_enough_table_and_adds_slack_otherwise() {
        let g = small();
        let mut space = VecSpace::new(0, vec![1; 10], Vec::new(), 0, g);
        let p = plan(
            &mut space,
            g.cluster_bits,
            1,
            TableSize::KeepOrGrow { current: 3 },
        )
        .unwrap();
        assert_eq!(p.table_clusters, 3);
        let mut space = VecSpace::new(0, vec![1; 10], Vec::new(), 0, g);
        let p = plan(
            &mut space,
            g.cluster_bits,
            64 * 8,
            TableSize::KeepOrGrow { current: 3 },
        );
        assert_eq!(p.unwrap().table_clusters, 8 + 2 + 1);
    }

    #[test]
    fn a_table_past_the_limit_is_refused_before_anything_is_taken() {
        let g = small();
        let mut space = VecSpace::new(0, vec![1; 4], Vec::new(), 0, g);
        let err = plan(
            &mut space,
            g.cluster_bits,
            MAX_REFTABLE_ENTRIES + 1,
            TableSize::Exact,
        );
        assert!(err.unwrap_err().to_string().contains("larger than 8 MiB"));
        assert_eq!(space.end(), 4);
    }

    /// A space that wants a new block after every placement, as a hostile image could make
    /// a transaction look: the plan must end in an error, not loop.
    struct Greedy(u64);
    impl Space for Greedy {
        fn take(&mut self, n: u64) -> Result<u64> {
            self.0 += n;
            Ok(self.0 - n)
        }
        fn give_back(&mut self, _: u64, _: u64) -> Result<()> {
            Ok(())
        }
        fn blocks_to_place(&mut self, placed: &BTreeMap<u64, u64>) -> Result<Vec<u64>> {
            Ok(vec![placed.len() as u64 * 4096])
        }
    }

    #[test]
    fn a_space_that_never_settles_ends_in_an_error() {
        let err = plan(&mut Greedy(0), 16, 1, TableSize::Exact).unwrap_err();
        assert!(err.to_string().contains("larger than 8 MiB"), "{err}");
    }
}
