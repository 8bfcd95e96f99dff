//! What changed between two states of one image (an internal snapshot, or the active
//! disk), found from their L1 and L2 tables alone: no guest data is read.
//!
//! Every state holds a reference to each host cluster it maps, and a cluster shared by two
//! states is never written in place (copy-on-write), so a guest cluster whose L2 entries
//! in both states name the same host cluster (of the same kind) reads the same in both,
//! and a range whose L1 entries name the same L2 table is unchanged as a whole (that table
//! is not even read). Entries are compared by what a guest reads ([`Reads`]): every way of
//! reading zeros is one kind, so a zero cluster where the other state has an unallocated
//! one (and no backing file shows through) is no change. Extended L2 entries are compared
//! with their subcluster bitmaps.
//!
//! The result is a list of [`ChangedExtent`]s: guest ranges of the `to` state that differ,
//! each marked as reading zeros there or not. Guest bytes past the `from` state's size
//! count as zeros in `from` (a copy of that state, grown to the `to` size, reads zeros
//! there).

use super::entry::{self, L2Entry, COPIED};
use super::{Qcow2, Table};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// Most changed extents one comparison lists (192 MiB of them): an image whose states
/// differ in more separate runs than this (every other cluster of a 1 TiB disk of 64 KiB
/// clusters) is refused rather than listed in unbounded memory.
pub const MAX_CHANGED_EXTENTS: usize = 1 << 23;

/// One state of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The active disk.
    Active,
    /// The internal snapshot at this index of the snapshot table.
    Snapshot(usize),
}

/// A guest range that changed, as the changed-block delta records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedExtent {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes (never 0).
    pub length: u64,
    /// Whether the range reads as zeros in the new state (else it holds data, its own or
    /// its backing file's).
    pub zero: bool,
}

impl ChangedExtent {
    /// One past the last guest byte.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// Append `e` to `out`, merging it into the last extent when it continues it with the same
/// kind.
pub fn push_merged(out: &mut Vec<ChangedExtent>, e: ChangedExtent) {
    if e.length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end() == e.start && last.zero == e.zero => last.length += e.length,
        _ => out.push(e),
    }
}

/// What a guest reads from one L2 entry, for comparing two states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Zeros: a zero cluster, or unallocated past the backing file (or with none).
    Zero,
    /// Unallocated: the backing file's data.
    Backing,
    /// Stored in the image: the entry without its COPIED flag (a host offset, or a
    /// compressed descriptor).
    Stored(u64),
    /// Subclusters of different kinds (extended L2 entries): the entry without its COPIED
    /// flag, and its subcluster bitmap.
    Subclusters(u64, u64),
    /// A cluster only partly inside the `from` state: never the same as anything.
    Partial,
}

impl<S: Storage> Qcow2<S> {
    /// The L1 table and virtual size of `state` (a snapshot with its own disk size, as
    /// `qemu-img convert -l` reads it).
    pub fn state_tables(&self, state: State) -> Result<(Vec<u64>, u64)> {
        match state {
            State::Active => Ok((self.l1.clone(), self.header.size)),
            State::Snapshot(i) => self.snapshot_l1_and_size(i, true),
        }
    }

    /// The guest ranges of state `to` that read differently from state `from`, in order,
    /// adjacent ranges of one kind merged; found from the tables only (see the module
    /// documentation).
    pub fn changed_extents(&mut self, from: State, to: State) -> Result<Vec<ChangedExtent>> {
        let (from_l1, from_size) = self.state_tables(from)?;
        let (to_l1, to_size) = self.state_tables(to)?;
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let l2e = self.geo.l2_entries();
        let clusters = to_size.div_ceil(cs);
        // Clusters wholly inside the `from` state.
        let from_whole = from_size >> cb;
        let l1_at = |l1: &[u64], i: u64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| l1.get(i))
                .map_or(0, |&raw| entry::l1_l2_offset(raw))
        };
        let mut out = Vec::new();
        for l1_index in 0..clusters.div_ceil(l2e) {
            let first = l1_index * l2e;
            let last = (first + l2e).min(clusters);
            let (f_off, t_off) = (l1_at(&from_l1, l1_index), l1_at(&to_l1, l1_index));
            if f_off == t_off && last <= from_whole {
                continue; // one L2 table (or none) for both: nothing changed here
            }
            let f_table = self.l2_table_copy(f_off)?;
            let t_table = self.l2_table_copy(t_off)?;
            for gc in first..last {
                let i = (gc - first) as usize;
                let f = if gc < from_whole {
                    self.reads(f_table[i], gc, f_off)?
                } else if gc << cb >= from_size {
                    Reads::Zero
                } else {
                    Reads::Partial
                };
                let t = self.reads(t_table[i], gc, t_off)?;
                if f != t {
                    let start = gc << cb;
                    let length = cs.min(to_size - start);
                    let zero = t == Reads::Zero;
                    push_merged(
                        &mut out,
                        ChangedExtent {
                            start,
                            length,
                            zero,
                        },
                    );
                    if out.len() > MAX_CHANGED_EXTENTS {
                        return Err(Error::unsupported(format!(
                            "a delta of more than {MAX_CHANGED_EXTENTS} separate changed ranges"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The entries of the L2 table at `offset` (all unallocated for offset 0), each with
    /// its subcluster bitmap (0 without extended L2 entries).
    fn l2_table_copy(&mut self, offset: u64) -> Result<Vec<(u64, u64)>> {
        let n = self.geo.l2_entries() as usize;
        let width = self.geo.l2_entry_bytes();
        let mut entries = vec![(0u64, 0u64); n];
        if offset != 0 {
            self.load_table(Table::L2, offset)?;
            let table = self.l2_cache.peek(offset).unwrap_or(&[]);
            for (e, bytes) in entries.iter_mut().zip(table.chunks_exact(width)) {
                e.0 = BigEndian::read_u64(bytes);
                if width == 16 {
                    e.1 = BigEndian::read_u64(&bytes[8..]);
                }
            }
        }
        Ok(entries)
    }

    /// What the guest reads at cluster `gc` through the L2 entry `raw` with subcluster
    /// bitmap `bitmap` (of the table at `table`, named in errors).
    fn reads(&self, (raw, bitmap): (u64, u64), gc: u64, table: u64) -> Result<Reads> {
        let cb = self.geo.cluster_bits;
        let e = match self.geo.extended_l2 {
            true => super::subcluster::decode(raw, bitmap, cb),
            false => L2Entry::decode(raw, cb),
        };
        Ok(match e {
            L2Entry::Zero { .. } if self.header.version < 3 => {
                let idx = gc & (self.geo.l2_entries() - 1);
                return Err(Error::corrupt(
                    "L2 table",
                    table,
                    format!("entry {idx} ({raw:#x}): zero flag in a version 2 image"),
                ));
            }
            L2Entry::Zero { .. } => Reads::Zero,
            L2Entry::Unallocated if gc << cb < self.backing_end() => Reads::Backing,
            L2Entry::Unallocated => Reads::Zero,
            L2Entry::Normal { host, .. } => Reads::Stored(host),
            L2Entry::Compressed { .. } => Reads::Stored(raw & !COPIED),
            // Without a host cluster no subcluster is allocated: zeros or unallocated.
            L2Entry::Sub { host: None, .. } if gc << cb >= self.backing_end() => Reads::Zero,
            L2Entry::Sub { .. } => Reads::Subclusters(raw & !COPIED, bitmap),
        })
    }

    /// Where unallocated clusters stop showing the backing file: its size when it is
    /// attached, everywhere when the image names one that is not attached, nowhere without.
    fn backing_end(&self) -> u64 {
        match (&self.backing, &self.header.backing_file) {
            (Some(b), _) => b.virtual_size(),
            (None, Some(_)) => u64::MAX,
            (None, None) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;
    use crate::qcow2::{create, CreateOptions, SnapshotTime};
    use crate::storage::MemStorage;

    const CS: u64 = 4096;

    fn image(size: u64) -> Qcow2<MemStorage> {
        let o = CreateOptions {
            size,
            cluster_size: CS,
            ..Default::default()
        };
        create(MemStorage::new(), &o).unwrap()
    }

    fn ext(start: u64, length: u64, zero: bool) -> ChangedExtent {
        ChangedExtent {
            start,
            length,
            zero,
        }
    }

    #[test]
    fn writes_zeroes_and_discards_after_a_snapshot_are_the_changed_extents() {
        let mut q = image(64 * CS);
        q.write_at(&[1; 8 * CS as usize], 0).unwrap();
        q.snapshot_create("A", SnapshotTime::default()).unwrap();
        q.write_at(&[2; 100], CS + 5).unwrap(); // cluster 1, partly
        q.write_at(&[3; CS as usize], 2 * CS).unwrap(); // cluster 2
        q.write_zeroes(4 * CS, 2 * CS).unwrap(); // clusters 4, 5
        q.discard(7 * CS, CS).unwrap(); // cluster 7
        q.write_zeroes(20 * CS, CS).unwrap(); // zeros over zeros: no change
        q.write_at(&[4; 10], 30 * CS).unwrap(); // a new cluster
        let a = q.find_snapshot("A").unwrap();
        let got = q
            .changed_extents(State::Snapshot(a), State::Active)
            .unwrap();
        assert_eq!(
            got,
            vec![
                ext(CS, 2 * CS, false),
                ext(4 * CS, 2 * CS, true),
                ext(7 * CS, CS, true),
                ext(30 * CS, CS, false),
            ]
        );
        // The other way round: what was there in A comes back as data.
        let back = q
            .changed_extents(State::Active, State::Snapshot(a))
            .unwrap();
        assert_eq!(
            back,
            vec![
                ext(CS, 2 * CS, false),
                ext(4 * CS, 2 * CS, false),
                ext(7 * CS, CS, false),
                ext(30 * CS, CS, true),
            ]
        );
        assert!(q
            .changed_extents(State::Snapshot(a), State::Snapshot(a))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_grown_disk_changes_only_where_the_new_area_holds_data() {
        let mut q = image(16 * CS);
        q.write_at(&[1; CS as usize], 0).unwrap();
        q.snapshot_create("A", SnapshotTime::default()).unwrap();
        q.resize(40 * CS).unwrap();
        q.write_at(&[5; 10], 33 * CS).unwrap();
        let got = q
            .changed_extents(State::Snapshot(0), State::Active)
            .unwrap();
        assert_eq!(got, vec![ext(33 * CS, CS, false)]);
    }

    #[test]
    fn merged_extents_keep_kinds_apart() {
        let mut v = Vec::new();
        push_merged(&mut v, ext(0, 10, false));
        push_merged(&mut v, ext(10, 5, false));
        push_merged(&mut v, ext(15, 5, true));
        push_merged(&mut v, ext(30, 0, true));
        push_merged(&mut v, ext(40, 5, true));
        assert_eq!(
            v,
            vec![ext(0, 15, false), ext(15, 5, true), ext(40, 5, true)]
        );
    }
}
