//! Guest-to-host mapping: looking up L2 entries, and making L2 tables writable
//! (allocating a new one, or copying one shared with a snapshot).

use super::entry::{self, L2Entry, COPIED};
use super::{Qcow2, Table};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

impl<S: Storage> Qcow2<S> {
    /// The L2 table offset for `l1_index`, or `None` when unallocated.
    pub(crate) fn l2_offset(&self, l1_index: u64) -> Option<u64> {
        let raw = *self.l1.get(l1_index as usize)?;
        let off = entry::l1_l2_offset(raw);
        (off != 0).then_some(off)
    }

    /// The raw L2 entry for guest cluster `gc` (0 when its L2 table is unallocated).
    pub(crate) fn l2_raw(&mut self, gc: u64) -> Result<u64> {
        let l1_index = gc >> self.geo.l2_bits;
        let Some(l2_off) = self.l2_offset(l1_index) else {
            return Ok(0);
        };
        self.load_table(Table::L2, l2_off)?;
        let idx = (gc & (self.geo.l2_entries() - 1)) as usize;
        let table = self.l2_cache.get(l2_off).unwrap_or(&[]);
        Ok(BigEndian::read_u64(
            &table[idx * self.geo.l2_entry_bytes()..],
        ))
    }

    /// The subcluster bitmap of guest cluster `gc` (0 without extended L2 entries).
    fn l2_bitmap(&mut self, gc: u64) -> Result<u64> {
        if !self.geo.extended_l2 {
            return Ok(0);
        }
        let Some(l2_off) = self.l2_offset(gc >> self.geo.l2_bits) else {
            return Ok(0);
        };
        self.load_table(Table::L2, l2_off)?;
        let idx = (gc & (self.geo.l2_entries() - 1)) as usize;
        let table = self.l2_cache.get(l2_off).unwrap_or(&[]);
        Ok(BigEndian::read_u64(&table[idx * 16 + 8..]))
    }

    /// The decoded, validated L2 entry for guest cluster `gc`.
    pub(crate) fn l2_entry(&mut self, gc: u64) -> Result<L2Entry> {
        let raw = self.l2_raw(gc)?;
        let e = if self.geo.extended_l2 {
            let bitmap = self.l2_bitmap(gc)?;
            let external = self.has_external_data();
            let e = super::subcluster::decode_in(raw, bitmap, self.geo.cluster_bits, external);
            let compressed = matches!(e, L2Entry::Compressed { .. });
            let host = e.host_cluster(self.geo.cluster_size);
            if let Some(why) = super::subcluster::invalid(host, bitmap, compressed) {
                let l2 = self.l2_offset(gc >> self.geo.l2_bits).unwrap_or(0);
                return Err(Error::corrupt(
                    "L2 table",
                    l2,
                    format!("entry of guest cluster {gc}: {why}"),
                ));
            }
            e
        } else if self.has_external_data() {
            L2Entry::decode_external(raw, self.geo.cluster_bits)
        } else {
            L2Entry::decode(raw, self.geo.cluster_bits)
        };
        self.validate_l2_entry(gc, raw, e)?;
        Ok(e)
    }

    fn validate_l2_entry(&self, gc: u64, raw: u64, e: L2Entry) -> Result<()> {
        let cs = self.geo.cluster_size;
        let bad = |msg: String| {
            let l2 = self.l2_offset(gc >> self.geo.l2_bits).unwrap_or(0);
            let idx = gc & (self.geo.l2_entries() - 1);
            Err(Error::corrupt(
                "L2 table",
                l2,
                format!("entry {idx} ({raw:#x}): {msg}"),
            ))
        };
        let file_end = self.file_len.div_ceil(cs) * cs;
        match e {
            L2Entry::Normal { host, .. }
            | L2Entry::Sub {
                host: Some(host), ..
            }
            | L2Entry::Zero {
                host: Some(host), ..
            } => {
                if host % cs != 0 {
                    return bad(format!("host offset {host:#x} is not cluster aligned"));
                }
                if self.header.version == 2 && matches!(e, L2Entry::Zero { .. }) {
                    return bad("zero flag in a version 2 image".into());
                }
                if self.has_external_data() {
                    // The data file's clusters: any aligned offset (the file grows as needed).
                    return Ok(());
                }
                if host >= file_end {
                    return bad(format!("host offset {host:#x} is past the end of the file"));
                }
                if host == 0 {
                    return bad("points at the image header".into());
                }
            }
            L2Entry::Compressed { .. } if self.has_external_data() => {
                return bad("compressed cluster in an image with an external data file".into());
            }
            L2Entry::Compressed { host, len }
                if host.saturating_add(len) > file_end.saturating_add(512) || host < cs =>
            {
                return bad(format!(
                    "compressed data at {host:#x}+{len} lies outside the file"
                ));
            }
            // Data smaller than a cluster spans at most cluster_size + 511 bytes of sectors.
            L2Entry::Compressed { host, len } if len > cs + 512 => {
                return bad(format!(
                    "compressed data at {host:#x} claims {len} bytes, more than a cluster needs"
                ));
            }
            L2Entry::Zero { host: None, .. } if self.header.version == 2 => {
                return bad("zero flag in a version 2 image".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Make the L2 table for `l1_index` writable and return its offset: allocate a zeroed
    /// one, or copy one that is shared (L1 entry without COPIED). The old table's reference
    /// is dropped after the new L1 entry is on disk.
    pub(crate) fn l2_for_write(&mut self, l1_index: u64) -> Result<u64> {
        let i = l1_index as usize;
        let raw = *self
            .l1
            .get(i)
            .ok_or_else(|| Error::invalid(format!("L1 index {l1_index} is past the L1 table")))?;
        let old = entry::l1_l2_offset(raw);
        if old != 0 && raw & COPIED != 0 {
            self.load_table(Table::L2, old)?;
            return Ok(old);
        }
        let table = if old == 0 {
            vec![0u8; self.geo.cluster_size as usize]
        } else {
            self.load_table(Table::L2, old)?;
            self.l2_cache
                .peek(old)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        let new = self.alloc_clusters(1)?;
        self.make_room(Table::L2)?;
        self.l2_cache.insert(new, table, true);
        self.set_l1(i, new | COPIED);
        if old != 0 {
            self.queue_free(old);
        }
        Ok(new)
    }

    /// The words that store `e` in this image's L2 tables: the entry, and its subcluster
    /// bitmap (0 without extended L2 entries).
    pub(crate) fn entry_words(&self, e: L2Entry) -> (u64, u64) {
        if self.geo.extended_l2 {
            super::subcluster::encode(e, self.geo.cluster_bits)
        } else {
            (e.encode(self.geo.cluster_bits), 0)
        }
    }

    /// The stored words of guest cluster `gc` (see [`Self::entry_words`]).
    pub(crate) fn l2_words(&mut self, gc: u64) -> Result<(u64, u64)> {
        Ok((self.l2_raw(gc)?, self.l2_bitmap(gc)?))
    }

    /// Set entry `idx` of the (writable, cached) L2 table at `l2_off` to `e` (both words
    /// of an extended entry).
    pub(crate) fn set_l2_entry(&mut self, l2_off: u64, idx: u64, e: L2Entry) -> Result<()> {
        let (raw, bitmap) = self.entry_words(e);
        let width = self.geo.l2_entry_bytes();
        let extended = self.geo.extended_l2;
        self.load_table(Table::L2, l2_off)?;
        if let Some(t) = self.l2_cache.get_mut(l2_off) {
            let at = idx as usize * width;
            BigEndian::write_u64(&mut t[at..], raw);
            if extended {
                BigEndian::write_u64(&mut t[at + 8..], bitmap);
            }
        }
        Ok(())
    }

    /// Drop this image's reference(s) held by an L2 entry that is being replaced.
    pub(crate) fn release_entry(&mut self, e: L2Entry) {
        let cs = self.geo.cluster_size;
        if self.has_external_data() {
            // Data clusters belong to the data file, which has no refcounts.
            return;
        }
        match e {
            L2Entry::Normal { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            }
            | L2Entry::Sub {
                host: Some(host), ..
            } => self.queue_free(host),
            L2Entry::Compressed { host, len } => {
                let first = host & !(cs - 1);
                let last = (host + len - 1) & !(cs - 1);
                let mut c = first;
                while c <= last {
                    self.queue_free(c);
                    c += cs;
                }
            }
            _ => {}
        }
    }
}
