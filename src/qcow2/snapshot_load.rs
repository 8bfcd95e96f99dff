//! Reading an internal snapshot in place of the active disk, without changing the image
//! (QEMU's "temporarily loading" a snapshot, as `qemu-img convert -l` does): the image must
//! be open read-only, and the snapshot's L1 table and disk size replace the active ones in
//! memory only.

use super::Qcow2;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Which snapshot to load: QEMU's `snapshot.id=` / `snapshot.name=` pair (either or both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The ID it must have.
    pub id: Option<String>,
    /// The name it must have.
    pub name: Option<String>,
}

impl<S: Storage> Qcow2<S> {
    /// The first snapshot matching every part of `r` that is given.
    pub fn find_snapshot_ref(&self, r: &SnapshotRef) -> Option<usize> {
        self.snapshots.iter().position(|s| {
            r.id.as_ref().is_none_or(|id| &s.id == id)
                && r.name.as_ref().is_none_or(|n| &s.name == n)
        })
    }

    /// Make reads see snapshot `index` (its L1 table and disk size), as `qemu-img convert
    /// -l` does. Refused on an image open for writing: nothing of this may reach the disk.
    pub fn load_snapshot_read_only(&mut self, index: usize) -> Result<()> {
        self.load_snapshot_tables(index, true)
    }

    /// Make reads see snapshot `index` as `qemu-img measure -l` does: its L1 table
    /// replaces the active one, and the virtual size stays the image's (guest ranges past
    /// the snapshot's L1 table read as unallocated).
    pub fn load_snapshot_keeping_size(&mut self, index: usize) -> Result<()> {
        self.load_snapshot_tables(index, false)
    }

    /// Make reads see the snapshot `id_or_name` (an ID first, then a name) as `qemu-nbd -l`
    /// does: its L1 table replaces the active one, and the virtual size stays the image's
    /// (guest ranges past the snapshot's L1 table read as unallocated).
    pub fn load_snapshot_for_export(&mut self, id_or_name: &str) -> Result<()> {
        let Some(i) = self.find_snapshot(id_or_name) else {
            return Err(Error::invalid(format!("snapshot '{id_or_name}' not found")));
        };
        self.load_snapshot_tables(i, false)
    }

    /// Replace the active L1 table in memory by snapshot `index`'s (and, with
    /// `snapshot_size`, the virtual size by the snapshot's disk size). The L2 cache is keyed
    /// by host offset and nothing was written, so it stays valid.
    fn load_snapshot_tables(&mut self, index: usize, snapshot_size: bool) -> Result<()> {
        if !self.read_only {
            return Err(Error::invalid(
                "a snapshot can only be loaded into an image opened read-only",
            ));
        }
        let (l1, size) = self.snapshot_l1_and_size(index, snapshot_size)?;
        self.replace_l1(l1);
        self.header.size = size;
        Ok(())
    }

    /// Snapshot `index`'s L1 table and the virtual size it is read with: its own disk size
    /// with `snapshot_size` (when recorded; its L1 table must then cover it), else the
    /// image's.
    pub(crate) fn snapshot_l1_and_size(
        &self,
        index: usize,
        snapshot_size: bool,
    ) -> Result<(Vec<u64>, u64)> {
        let snap = self
            .snapshots
            .get(index)
            .ok_or_else(|| Error::invalid("Can't find snapshot"))?;
        let size = if snapshot_size {
            snap.disk_size().unwrap_or(self.header.size)
        } else {
            self.header.size
        };
        if snapshot_size {
            let needed =
                super::header::l1_entries_for(size, self.geo.cluster_bits, self.geo.extended_l2)
                    .unwrap_or(u64::MAX);
            if u64::from(snap.l1_size) < needed {
                return Err(Error::corrupt(
                    "snapshot L1 table",
                    snap.l1_table_offset,
                    "too small for the snapshot's disk size",
                ));
            }
        }
        Ok((self.read_snapshot_l1(snap)?, size))
    }
}
