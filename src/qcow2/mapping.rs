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
