//! The overlap check: refusing writes that would overwrite metadata (QEMU's overlap check).
//!
//! One routine, [`Qcow2::overlapped_metadata`], compares a host range with the image's
//! metadata. Three kinds of write use it, each against a different set of structures:
//!
//! * a guest data write (in place) and a cluster allocation are compared with the fixed
//!   structures: the header, the active L1 table and the refcount table;
//! * an L2 table or refcount block about to reach the disk is compared with those, the
//!   snapshot table and the snapshot L1 tables, and with the structures of the other kind
//!   (refcount blocks for an L2 table, active L2 tables for a refcount block).
//!
//! An overlap means the metadata is already inconsistent. A refused data write is an
//! error; a refused allocation or metadata write also sets the corrupt bit and makes the
//! image read-only, with an error that points at `vdisk check -r all`.

use super::header::{field, incompat};
use super::{entry, Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// A metadata structure a write would overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metadata {
    Header,
    ActiveL1,
    RefcountTable,
    SnapshotTable,
    SnapshotL1,
    RefcountBlock,
    ActiveL2,
}

impl Metadata {
    fn name(self) -> &'static str {
        match self {
            Metadata::Header => "the image header",
            Metadata::ActiveL1 => "the active L1 table",
            Metadata::RefcountTable => "the refcount table",
            Metadata::SnapshotTable => "the snapshot table",
            Metadata::SnapshotL1 => "a snapshot L1 table",
            Metadata::RefcountBlock => "a refcount block",
            Metadata::ActiveL2 => "an active L2 table",
        }
    }
}

impl<S: Storage> Qcow2<S> {
    /// The first metadata structure that `[host, host + len)` overlaps: the fixed ones
    /// (header, active L1 table, refcount table), and with `table` (the kind of table about
    /// to be written there) also the snapshot structures and the tables of the other kind.
    fn overlapped_metadata(&self, host: u64, len: u64, table: Option<Table>) -> Option<Metadata> {
        let cs = self.geo.cluster_size;
        let hit = |start: u64, size: u64| {
            size > 0 && host < start.saturating_add(size) && start < host.saturating_add(len)
        };
        let h = &self.header;
        if hit(0, cs) {
            return Some(Metadata::Header);
        }
        if hit(h.l1_table_offset, u64::from(h.l1_size) * 8) {
            return Some(Metadata::ActiveL1);
        }
        if hit(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        ) {
            return Some(Metadata::RefcountTable);
        }
        let table = table?;
        let snapshot_table_len: u64 = self.snapshots.iter().map(|s| s.encoded_len() as u64).sum();
        if h.nb_snapshots > 0 && hit(h.snapshots_offset, snapshot_table_len) {
            return Some(Metadata::SnapshotTable);
        }
        if self
            .snapshots
            .iter()
            .any(|s| hit(s.l1_table_offset, u64::from(s.l1_size) * 8))
        {
            return Some(Metadata::SnapshotL1);
        }
        let other_kind = match table {
            Table::L2 => self.refcount_table.iter().any(|&e| e != 0 && hit(e, cs)),
            Table::Refcount => self.l1.iter().any(|&e| {
                let t = entry::l1_l2_offset(e);
                t != 0 && hit(t, cs)
            }),
        };
        other_kind.then_some(match table {
            Table::L2 => Metadata::RefcountBlock,
            Table::Refcount => Metadata::ActiveL2,
        })
    }

    /// Refuse a guest data write to `[host, host + len)` that would land on the header,
    /// the active L1 table or the refcount table.
    pub(super) fn check_data_write(&self, host: u64, len: u64) -> Result<()> {
        let Some(victim) = self.overlapped_metadata(host, len, None) else {
            return Ok(());
        };
        // A refused data write names the active L1 table "the L1 table".
        let w = match victim {
            Metadata::ActiveL1 => "the L1 table",
            v => v.name(),
        };
        Err(Error::corrupt(
            "L2 table",
            host,
            format!("guest data write at host offset {host:#x} would overwrite {w}"),
        ))
    }

    /// Refuse (and mark the image corrupt) when the allocator hands out `[host, host+len)`
    /// although it holds the header, the active L1 table or the refcount table: their
    /// refcounts are wrong (zero), and writing there would destroy them. (Found by the
    /// `qcow2_ops` fuzz target: with refcount block 0 missing, cluster 0 was chosen for a
    /// new refcount block, overwriting the header, again and again.)
    pub(super) fn check_allocation(&mut self, host: u64, len: u64) -> Result<()> {
        match self.overlapped_metadata(host, len, None) {
            Some(victim) => self.refuse_overlap("cluster allocation", host, victim),
            None => Ok(()),
        }
    }

    /// Refuse (and mark the image corrupt) when writing a `what` at `offset` would
    /// overwrite other metadata.
    pub(super) fn check_metadata_write(&mut self, offset: u64, what: Table) -> Result<()> {
        let cs = self.geo.cluster_size;
        match self.overlapped_metadata(offset, cs, Some(what)) {
            Some(victim) => self.refuse_overlap(what.name(), offset, victim),
            None => Ok(()),
        }
    }

    fn refuse_overlap(&mut self, name: &'static str, offset: u64, victim: Metadata) -> Result<()> {
        if self.header.version >= 3 {
            self.header.incompatible_features |= incompat::CORRUPT;
            let b = self.header.incompatible_features.to_be_bytes();
            let _ = self
                .storage
                .write_at(&b, field::INCOMPATIBLE_FEATURES.file_offset());
            let _ = self.storage.flush();
        }
        self.read_only = true;
        let victim = victim.name();
        Err(Error::corrupt(
            name,
            offset,
            format!(
                "refusing to write the {name}: it would overwrite {victim}; the image is marked corrupt, repair it with 'vdisk check -r all'"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;
    use crate::qcow2::{create, CreateOptions};
    use crate::storage::MemStorage;

    fn image() -> Qcow2<MemStorage> {
        let opts = CreateOptions {
            size: 1 << 20,
            ..Default::default()
        };
        let mut img = create(MemStorage::new(), &opts).unwrap();
        img.write_at(&[1; 512], 0).unwrap();
        img.flush().unwrap();
        img
    }

    #[test]
    fn a_data_write_onto_the_l1_table_is_refused_without_marking_the_image() {
        let img = image();
        let l1 = img.header.l1_table_offset;
        let err = img.check_data_write(l1 - 512, 1024).unwrap_err();
        assert!(
            err.to_string().contains("would overwrite the L1 table"),
            "{err}"
        );
        assert!(!img.read_only);
        assert!(img.check_data_write(l1 + img.geo.cluster_size, 512).is_ok());
    }

    #[test]
    fn an_allocation_of_the_header_marks_the_image_corrupt_and_read_only() {
        let mut img = image();
        let err = img.check_allocation(0, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("it would overwrite the image header"),
            "{err}"
        );
        assert!(img.read_only);
        assert_ne!(img.header.incompatible_features & incompat::CORRUPT, 0);
    }

    #[test]
    fn a_metadata_write_is_compared_with_the_tables_of_the_other_kind() {
        let mut img = image();
        let block = img.refcount_table[0];
        let l2 = entry::l1_l2_offset(img.l1[0]);
        assert!(img.check_metadata_write(l2, Table::L2).is_ok());
        assert!(img.check_metadata_write(block, Table::Refcount).is_ok());
        let err = img.check_metadata_write(block, Table::L2).unwrap_err();
        assert!(
            err.to_string().contains("overwrite a refcount block"),
            "{err}"
        );
        let err = img.check_metadata_write(l2, Table::Refcount).unwrap_err();
        assert!(
            err.to_string().contains("overwrite an active L2 table"),
            "{err}"
        );
    }
}
