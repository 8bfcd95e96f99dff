//! Internal snapshots: create, apply (roll back) and delete, each as one metadata
//! transaction (see `txn`), so a power cut leaves either the old or the new state.
//!
//! Reference rules (the same as QEMU's): every L1 table (the active one and each
//! snapshot's) holds one reference to each L2 table it points at, and one reference to each
//! data cluster per L2 entry reached through it. COPIED flags in the active tables are exact:
//! set exactly where the refcount is 1.

use super::snapshot::{encode_table, Snapshot};
use super::txn::Txn;
use super::{ioerr, Qcow2};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// What a snapshot operation needs to know about "now".
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotTime {
    /// Seconds since the epoch.
    pub sec: u32,
    /// Nanoseconds.
    pub nsec: u32,
}

impl SnapshotTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        SnapshotTime {
            sec: d.as_secs() as u32,
            nsec: d.subsec_nanos(),
        }
    }
}

impl<S: Storage> Qcow2<S> {
    /// The internal snapshots, in table order.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// Find a snapshot by ID first, then by name, the first in table order (QEMU's rule
    /// for applying a snapshot, `find_snapshot_by_id_or_name`).
    pub fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        self.find_snapshot_by_id(id_or_name)
            .or_else(|| self.find_snapshot_by_name(id_or_name))
    }

    /// The first snapshot in table order named `name` (QEMU's rule for deleting a
    /// snapshot, `bdrv_snapshot_find`: names only, never IDs; names need not be unique).
    pub fn find_snapshot_by_name(&self, name: &str) -> Option<usize> {
        self.snapshots.iter().position(|s| s.name == name)
    }

    /// The snapshot whose ID is `id`.
    pub fn find_snapshot_by_id(&self, id: &str) -> Option<usize> {
        self.snapshots.iter().position(|s| s.id == id)
    }

    /// The first snapshot whose ID is `id` (when given) and whose name is `name` (when
    /// given), as QEMU looks up a snapshot to read it (`bdrv_snapshot_load_tmp`).
    pub fn find_snapshot_matching(&self, id: Option<&str>, name: Option<&str>) -> Option<usize> {
        if id.is_none() && name.is_none() {
            return None;
        }
        self.snapshots
            .iter()
            .position(|s| id.is_none_or(|i| s.id == i) && name.is_none_or(|n| s.name == n))
    }

    /// Read snapshot `s`'s L1 table, refusing one whose table entry or L2 offsets are
    /// broken (the snapshot cannot be applied or deleted without corrupting the image).
    pub(crate) fn read_snapshot_l1(&self, s: &Snapshot) -> Result<Vec<u64>> {
        s.validate_l1(self.geo.cluster_size, self.file_len)?;
        self.read_l1_at(s.l1_table_offset, s.l1_size)
    }

    fn read_l1_at(&self, offset: u64, size: u32) -> Result<Vec<u64>> {
        let mut l1 = vec![0u64; size as usize];
        if size > 0 {
            let mut buf = vec![0u8; size as usize * 8];
            self.storage
                .read_at(&mut buf, offset)
                .map_err(ioerr("reading a snapshot L1 table"))?;
            BigEndian::read_u64_into(&buf, &mut l1);
        }
        let cs = self.geo.cluster_size;
        for (i, &e) in l1.iter().enumerate() {
            let t = super::entry::l1_l2_offset(e);
            if t % cs != 0 || (t != 0 && t >= self.file_len) {
                return Err(Error::corrupt(
                    "snapshot L1 table",
                    offset,
                    format!("entry {i} ({e:#x}) is not a valid L2 table offset"),
                ));
            }
        }
        Ok(l1)
    }

    /// Write the snapshot table to new clusters in `txn`, freeing the old one.
    fn txn_replace_snapshot_table(&mut self, txn: &mut Txn, snaps: &[Snapshot]) -> Result<u64> {
        let old_off = self.header.snapshots_offset;
        let old_len: u64 = self.snapshots.iter().map(|s| s.encoded_len() as u64).sum();
        if self.header.nb_snapshots > 0 {
            self.txn_free_range(txn, old_off, old_len)?;
        }
        if snaps.is_empty() {
            return Ok(0);
        }
        let bytes = encode_table(snaps);
        if bytes.len() as u64 > super::limits::MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::invalid("the snapshot table would exceed 64 MiB"));
        }
        self.txn_write_bytes(txn, &bytes)
    }

    /// Take a snapshot of the active disk named `name`. Deliberately stricter than QEMU,
    /// which also takes empty names and the name of an existing snapshot: a name must be
    /// 1 to 65535 bytes long and unique, so that `-a NAME` and `-d NAME` always mean one
    /// snapshot. (Images QEMU made with such names still open and work.)
    pub fn snapshot_create(&mut self, name: &str, time: SnapshotTime) -> Result<()> {
        // As QEMU: the data file has one copy of each cluster, so nothing can be shared.
        self.refuse_with_data_file("internal snapshots")?;
        self.check_writable()?;
        if name.is_empty() || name.len() > u16::MAX as usize {
            return Err(Error::invalid(
                "snapshot name must be 1 to 65535 bytes long",
            ));
        }
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(Error::invalid(format!(
                "a snapshot named '{name}' already exists"
            )));
        }
        if self.snapshots.len() as u64 >= super::limits::MAX_SNAPSHOTS {
            return Err(Error::invalid(
                "the image already has the maximum number of snapshots (65536)",
            ));
        }
        let id = self
            .snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut txn = self.txn_begin()?;
        let active = self.l1.clone();
        // The snapshot's L1 is a copy of the active one and takes its own references.
        let snap_l1 = self.txn_write_u64_table(&mut txn, &active)?;
        self.txn_add_l1_refs(&mut txn, &active, 1)?;
        // The active L1 moves to a new table with exact COPIED flags.
        let mut new_active = active.clone();
        self.txn_fix_active_flags(&mut txn, &mut new_active)?;
        let new_l1_off = self.txn_write_active_l1(&mut txn, &new_active)?;
        let mut snaps = self.snapshots.clone();
        snaps.push(Snapshot {
            l1_table_offset: snap_l1,
            l1_size: active.len() as u32,
            id: id.to_string(),
            name: name.to_string(),
            date_sec: time.sec,
            date_nsec: time.nsec,
            vm_clock_nsec: 0,
            vm_state_size32: 0,
            extra: Snapshot::new_extra(self.virtual_size()),
        });
        let table = self.txn_replace_snapshot_table(&mut txn, &snaps)?;
        let n = snaps.len() as u32;
        self.txn_commit(txn, |h| {
            h.l1_table_offset = new_l1_off;
            h.nb_snapshots = n;
            h.snapshots_offset = table;
        })?;
        self.replace_l1(new_active);
        self.snapshots = snaps;
        Ok(())
    }

    /// Make the active disk the contents of snapshot `id_or_name` (including its size),
    /// found as [`find_snapshot`](Self::find_snapshot) does: by ID first, then by name.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<()> {
        self.check_writable()?;
        let idx = self.find_snapshot(id_or_name).ok_or_else(|| {
            Error::invalid(format!("no snapshot has the ID or name '{id_or_name}'"))
        })?;
        let snap = self.snapshots[idx].clone();
        snap.validate_l1(self.geo.cluster_size, self.file_len)?;
        let size = snap.disk_size().unwrap_or(self.header.size);
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
        let snap_l1 = self.read_snapshot_l1(&snap)?;
        self.bitmaps_before_revert(size)?;
        let mut txn = self.txn_begin()?;
        let old_active = self.l1.clone();
        self.txn_add_l1_refs(&mut txn, &snap_l1, 1)?;
        self.txn_add_l1_refs(&mut txn, &old_active, -1)?;
        let mut new_active = snap_l1.clone();
        self.txn_fix_active_flags(&mut txn, &mut new_active)?;
        let new_l1_off = self.txn_write_active_l1(&mut txn, &new_active)?;
        let l1_size = new_active.len() as u32;
        self.txn_commit(txn, |h| {
            h.l1_table_offset = new_l1_off;
            h.l1_size = l1_size;
            h.size = size;
        })?;
        self.replace_l1(new_active);
        Ok(())
    }

    /// Delete the snapshots named in `names`, in one transaction. Each name is looked up
    /// as [`find_snapshot_by_name`](Self::find_snapshot_by_name) does (never as an ID, as
    /// `qemu-img snapshot -d`): with several snapshots of one name, the first goes.
    pub fn snapshot_delete(&mut self, names: &[&str]) -> Result<()> {
        let doomed = self.lookup_all(names, Self::find_snapshot_by_name, "named")?;
        self.delete_snapshots_at(&doomed)
    }

    /// Delete the snapshots with the IDs in `ids`, in one transaction.
    pub fn snapshot_delete_by_id(&mut self, ids: &[&str]) -> Result<()> {
        let doomed = self.lookup_all(ids, Self::find_snapshot_by_id, "with the ID")?;
        self.delete_snapshots_at(&doomed)
    }

    /// The table indices of `keys` found by `find`, each once.
    fn lookup_all(
        &self,
        keys: &[&str],
        find: fn(&Self, &str) -> Option<usize>,
        what: &str,
    ) -> Result<Vec<usize>> {
        let mut found = Vec::new();
        for k in keys {
            let i =
                find(self, k).ok_or_else(|| Error::invalid(format!("no snapshot {what} '{k}'")))?;
            if !found.contains(&i) {
                found.push(i);
            }
        }
        Ok(found)
    }

    /// Delete the snapshots at table indices `doomed`, in one transaction.
    fn delete_snapshots_at(&mut self, doomed: &[usize]) -> Result<()> {
        self.check_writable()?;
        let mut txn = self.txn_begin()?;
        for &i in doomed {
            let s = self.snapshots[i].clone();
            let l1 = self.read_snapshot_l1(&s)?;
            self.txn_add_l1_refs(&mut txn, &l1, -1)?;
            self.txn_free_range(&mut txn, s.l1_table_offset, u64::from(s.l1_size) * 8)?;
        }
        let snaps: Vec<Snapshot> = self
            .snapshots
            .iter()
            .enumerate()
            .filter(|(i, _)| !doomed.contains(i))
            .map(|(_, s)| s.clone())
            .collect();
        let active = self.l1.clone();
        let mut new_active = active.clone();
        self.txn_fix_active_flags(&mut txn, &mut new_active)?;
        let l1_changed = new_active != active;
        let new_l1_off = if l1_changed {
            self.txn_write_active_l1(&mut txn, &new_active)?
        } else {
            self.header.l1_table_offset
        };
        let table = self.txn_replace_snapshot_table(&mut txn, &snaps)?;
        let n = snaps.len() as u32;
        self.txn_commit(txn, |h| {
            h.l1_table_offset = new_l1_off;
            h.nb_snapshots = n;
            h.snapshots_offset = table;
        })?;
        self.replace_l1(new_active);
        self.snapshots = snaps;
        Ok(())
    }

    /// Host bytes that deleting the snapshots with the IDs in `ids` would give back
    /// (clusters whose refcount would drop to zero), without changing anything.
    pub fn snapshot_delete_gain(&mut self, ids: &[&str]) -> Result<u64> {
        let doomed = self.lookup_all(ids, Self::find_snapshot_by_id, "with the ID")?;
        self.flush_metadata()?;
        let mut txn = Txn::scratch(self.free_hint);
        let mut freed = 0u64;
        for i in doomed {
            let s = self.snapshots[i].clone();
            let l1 = self.read_snapshot_l1(&s)?;
            self.txn_add_l1_refs(&mut txn, &l1, -1)?;
            self.txn_free_range(&mut txn, s.l1_table_offset, u64::from(s.l1_size) * 8)?;
        }
        freed += txn.freed_clusters() << self.geo.cluster_bits;
        Ok(freed)
    }
}
