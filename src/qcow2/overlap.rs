//! Refusing metadata writes that would overwrite other metadata (QEMU's overlap check).
//!
//! Before an L2 table or refcount block reaches the disk its target cluster is compared
//! with the header, the active L1 table, the refcount table, the snapshot table and the
//! snapshot L1 tables, and with the structures of the other kind (refcount blocks for an
//! L2 table, active L2 tables for a refcount block). An overlap means the metadata is
//! already inconsistent: the corrupt bit is set, the image becomes read-only, and the
//! write is refused with an error that points at `vdisk check -r all`.

use super::header::{field, incompat};
use super::{entry, Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;

impl<S: Storage> Qcow2<S> {
    /// What the cluster at `offset` (about to be written as a `what`) would overwrite.
    fn metadata_overlap(&self, offset: u64, what: Table) -> Option<&'static str> {
        let cs = self.geo.cluster_size;
        let hit = |start: u64, len: u64| {
            len > 0 && offset < start.saturating_add(len) && start < offset.saturating_add(cs)
        };
        let h = &self.header;
        if offset < cs {
            return Some("the image header");
        }
        if hit(h.l1_table_offset, u64::from(h.l1_size) * 8) {
            return Some("the active L1 table");
        }
        if hit(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        ) {
            return Some("the refcount table");
        }
        let table_len: u64 = self.snapshots.iter().map(|s| s.encoded_len() as u64).sum();
        if h.nb_snapshots > 0 && hit(h.snapshots_offset, table_len) {
            return Some("the snapshot table");
        }
        if self
            .snapshots
            .iter()
            .any(|s| hit(s.l1_table_offset, u64::from(s.l1_size) * 8))
        {
            return Some("a snapshot L1 table");
        }
        match what {
            Table::L2 if self.refcount_table.iter().any(|&e| e != 0 && hit(e, cs)) => {
                Some("a refcount block")
            }
            Table::Refcount
                if self.l1.iter().any(|&e| {
                    let t = entry::l1_l2_offset(e);
                    t != 0 && hit(t, cs)
                }) =>
            {
                Some("an active L2 table")
            }
            _ => None,
        }
    }

    /// Refuse (and mark the image corrupt) when the allocator hands out `[host, host+len)`
    /// although it holds the header, the active L1 table or the refcount table: their
    /// refcounts are wrong (zero), and writing there would destroy them. (Found by the
    /// `qcow2_ops` fuzz target: with refcount block 0 missing, cluster 0 was chosen for a
    /// new refcount block, overwriting the header, again and again.)
    pub(super) fn check_allocation(&mut self, host: u64, len: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let h = &self.header;
        let hit =
            |start: u64, l: u64| l > 0 && host < start.saturating_add(l) && start < host + len;
        let victim = if hit(0, cs) {
            "the image header"
        } else if hit(h.l1_table_offset, u64::from(h.l1_size) * 8) {
            "the active L1 table"
        } else if hit(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        ) {
            "the refcount table"
        } else {
            return Ok(());
        };
        self.refuse_overlap("cluster allocation", host, victim)
    }

    /// Refuse (and mark the image corrupt) when writing a `what` at `offset` would
    /// overwrite other metadata.
    pub(super) fn check_metadata_write(&mut self, offset: u64, what: Table) -> Result<()> {
        let Some(victim) = self.metadata_overlap(offset, what) else {
            return Ok(());
        };
        let name = match what {
            Table::L2 => "L2 table",
            Table::Refcount => "refcount block",
        };
        self.refuse_overlap(name, offset, victim)
    }

    fn refuse_overlap(&mut self, name: &'static str, offset: u64, victim: &str) -> Result<()> {
        if self.header.version >= 3 {
            self.header.incompatible_features |= incompat::CORRUPT;
            let b = self.header.incompatible_features.to_be_bytes();
            let _ = self
                .storage
                .write_at(&b, field::INCOMPATIBLE_FEATURES.file_offset());
            let _ = self.storage.flush();
        }
        self.read_only = true;
        Err(Error::corrupt(
            name,
            offset,
            format!(
                "refusing to write the {name}: it would overwrite {victim}; the image is marked corrupt, repair it with 'vdisk check -r all'"
            ),
        ))
    }
}
