//! Run-level mapping: a guest range as runs of guest clusters whose L2 entries are of one
//! kind with contiguous host offsets (unallocated, zero, data at a host offset, compressed),
//! built on the validated lookup `l2_entry` of `cluster`.
//!
//! Read, write and block status walk a guest range run by run, so each run is one I/O:
//! one read or write of contiguous host clusters, one fill with zeros, one backing read.
//! A run never looks past the limit its caller gives (the end of the request, or of the
//! clusters a write may allocate at once), so it loads no L2 table the request does not
//! need; a whole unallocated L2 table is passed over without reading any entry.

use super::entry::L2Entry;
use super::Qcow2;
use crate::error::Result;
use crate::storage::Storage;

/// Which clusters may join a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Join {
    /// Clusters a guest read sees alike: data at contiguous host offsets (whether the
    /// cluster is shared or not), zero clusters (preallocated or not), unallocated clusters.
    /// A compressed cluster is a run of its own.
    Reads,
    /// Clusters whose entries are the run's first entry moved on by one cluster each: the
    /// same kind and flags, and contiguous host offsets (for data and preallocated zero
    /// clusters), so that [`Run::entry`] gives every cluster's entry.
    Entries,
}

/// A run of guest clusters `[gc, gc + n)` of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    /// The first guest cluster.
    pub gc: u64,
    /// The number of clusters (at least one).
    pub n: u64,
    /// The entry of the first cluster.
    pub first: L2Entry,
}

impl Run {
    /// The guest cluster after the run.
    pub fn end(&self) -> u64 {
        self.gc + self.n
    }

    /// The entry of cluster `k` of the run (exact for a [`Join::Entries`] run).
    pub fn entry(&self, k: u64, cluster_size: u64) -> L2Entry {
        let moved = |host: u64| host + k * cluster_size;
        match self.first {
            L2Entry::Normal { host, copied } => L2Entry::Normal {
                host: moved(host),
                copied,
            },
            L2Entry::Zero { host, copied } => L2Entry::Zero {
                host: host.map(moved),
                copied,
            },
            e => e,
        }
    }
}

/// Whether `next`, the entry `k` clusters after a run's first entry `first`, joins the run.
fn joins(first: L2Entry, k: u64, next: L2Entry, join: Join, cluster_size: u64) -> bool {
    let at = |host: u64| {
        k.checked_mul(cluster_size)
            .and_then(|d| host.checked_add(d))
    };
    match (first, next) {
        (L2Entry::Unallocated, L2Entry::Unallocated) => true,
        (L2Entry::Normal { host, copied }, L2Entry::Normal { host: h, copied: c }) => {
            at(host) == Some(h) && (join == Join::Reads || c == copied)
        }
        (L2Entry::Zero { host, copied }, L2Entry::Zero { host: h, copied: c }) => {
            join == Join::Reads || (c == copied && host.and_then(at) == h)
        }
        _ => false,
    }
}

impl<S: Storage> Qcow2<S> {
    /// The run that starts at guest cluster `gc` and ends before cluster `limit` at the
    /// latest.
    pub(super) fn map_run(&mut self, gc: u64, limit: u64, join: Join) -> Result<Run> {
        let first = self.l2_entry(gc)?;
        self.extend_run(gc, first, limit, join)
    }

    /// The run that starts at guest cluster `gc`, whose entry `first` the caller has
    /// looked up already, and ends before cluster `limit` at the latest.
    pub(super) fn extend_run(
        &mut self,
        gc: u64,
        first: L2Entry,
        limit: u64,
        join: Join,
    ) -> Result<Run> {
        let cs = self.geo.cluster_size;
        let l2_bits = self.geo.l2_bits;
        let mut g = gc + 1;
        while g < limit {
            if first == L2Entry::Unallocated && self.l2_offset(g >> l2_bits).is_none() {
                g = (((g >> l2_bits) + 1) << l2_bits).min(limit);
                continue;
            }
            if !joins(first, g - gc, self.l2_entry(g)?, join, cs) {
                break;
            }
            g += 1;
        }
        Ok(Run {
            gc,
            n: g - gc,
            first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;
    use crate::qcow2::{create, CreateOptions};
    use crate::storage::MemStorage;

    const CS: u64 = 65536;

    fn normal(host: u64, copied: bool) -> L2Entry {
        L2Entry::Normal { host, copied }
    }

    fn zero(host: Option<u64>) -> L2Entry {
        L2Entry::Zero {
            host,
            copied: false,
        }
    }

    #[test]
    fn reads_join_data_at_contiguous_host_offsets_whether_shared_or_not() {
        let first = normal(0x50000, true);
        for join in [Join::Reads, Join::Entries] {
            assert!(joins(first, 2, normal(0x70000, true), join, CS));
            assert!(!joins(first, 2, normal(0x80000, true), join, CS));
            assert!(!joins(first, 1, L2Entry::Unallocated, join, CS));
        }
        assert!(joins(first, 1, normal(0x60000, false), Join::Reads, CS));
        assert!(!joins(first, 1, normal(0x60000, false), Join::Entries, CS));
    }

    #[test]
    fn entries_join_zero_clusters_only_with_the_same_preallocation() {
        let first = zero(Some(0x50000));
        assert!(joins(first, 1, zero(Some(0x60000)), Join::Entries, CS));
        assert!(!joins(first, 1, zero(None), Join::Entries, CS));
        assert!(!joins(first, 1, zero(Some(0x90000)), Join::Entries, CS));
        assert!(joins(first, 1, zero(None), Join::Reads, CS));
        assert!(joins(zero(None), 3, zero(None), Join::Entries, CS));
    }

    #[test]
    fn a_compressed_cluster_is_a_run_of_its_own() {
        let c = L2Entry::Compressed {
            host: 0x50000,
            len: 512,
        };
        for join in [Join::Reads, Join::Entries] {
            assert!(!joins(c, 1, c, join, CS));
            assert!(!joins(normal(0x40000, true), 1, c, join, CS));
        }
    }

    #[test]
    fn a_run_gives_each_cluster_its_entry() {
        let run = Run {
            gc: 7,
            n: 3,
            first: zero(Some(0x50000)),
        };
        assert_eq!(run.end(), 10);
        assert_eq!(run.entry(2, CS), zero(Some(0x70000)));
        let run = Run {
            first: normal(0x50000, false),
            ..run
        };
        assert_eq!(run.entry(1, CS), normal(0x60000, false));
    }

    #[test]
    fn a_guest_range_splits_into_runs_of_one_kind_at_contiguous_host_offsets() {
        let opts = CreateOptions {
            size: 1 << 20,
            ..Default::default()
        };
        let mut img = create(MemStorage::new(), &opts).unwrap();
        let cluster = vec![7u8; CS as usize];
        img.write_at(&vec![1; 5 * CS as usize], 0).unwrap();
        img.write_zeroes(3 * CS, 2 * CS).unwrap();
        img.store_compressed(8 * CS, &[1; 300]).unwrap();
        for gc in [9, 10, 12, 11] {
            img.write_at(&cluster, gc * CS).unwrap();
        }
        let mut kinds = Vec::new();
        let mut gc = 0;
        while gc < 16 {
            let run = img.map_run(gc, 16, Join::Reads).unwrap();
            let kind = match run.first {
                L2Entry::Normal { .. } => "data",
                L2Entry::Zero { .. } => "zero",
                L2Entry::Unallocated => "unallocated",
                L2Entry::Compressed { .. } => "compressed",
                L2Entry::Sub { .. } => "subclusters",
            };
            kinds.push((run.gc, run.n, kind));
            gc = run.end();
        }
        assert_eq!(
            kinds,
            [
                (0, 3, "data"),
                (3, 2, "zero"),
                (5, 3, "unallocated"),
                (8, 1, "compressed"),
                (9, 2, "data"),
                (11, 1, "data"),
                (12, 1, "data"),
                (13, 3, "unallocated"),
            ]
        );
        // A run stops at the caller's limit.
        assert_eq!(img.map_run(0, 2, Join::Reads).unwrap().n, 2);
        assert_eq!(img.map_run(13, 14, Join::Entries).unwrap().n, 1);
    }
}
