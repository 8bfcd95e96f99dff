//! Changing the virtual size: growing (with a larger L1 table when needed) and shrinking
//! (freeing every cluster past the new end), and filling the area a growth adds.
//!
//! A power cut leaves the old size or the new one, and the new size only with its new area
//! filled. A shrink frees the clusters past the new end, then one header write through a
//! metadata transaction switches size and L1 table together. A growth first switches in a
//! larger L1 table when one is needed, through a transaction of its own (an L1 table longer
//! than the size needs is valid), which also sets the new size when nothing needs writing
//! into the new area. Otherwise whatever goes into the new area is written past the old
//! end, where the guest cannot see it, and flushed; then one write of the size field
//! (inside the first sector) makes the new size take effect.
//!
//! What the new area reads, as in QEMU (`bdrv_co_truncate` and `qcow2_co_truncate`):
//!
//! * An overlay whose attached backing image is longer than the overlay was would show the
//!   backing's data there. The whole clusters of the new area become zero clusters
//!   (version 3; a version 2 image refuses, as QEMU does) and the rest of the old last
//!   cluster gets explicit zeros.
//! * Preallocation `full` and `falloc` give the new area fresh clusters of zeros, which
//!   hides the backing too; the rest of a partial old last cluster (left, say, by an
//!   earlier shrink) is zeroed as well.
//! * Preallocation `metadata` allocates clusters whose contents read as zeros (and which
//!   carry the zero flag when they must hide the backing).
//! * Otherwise the new area stays unallocated. The tail of a partial old last cluster keeps
//!   whatever it held, as it does in QEMU.

use super::entry::{self, L2Entry};
use super::header::{field, l1_entries_for};
use super::{ioerr, Qcow2};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::Preallocation;

impl<S: Storage> Qcow2<S> {
    /// Grow or shrink the guest disk to `new_size` bytes (rounded up to 512).
    pub fn resize_to(&mut self, new_size: u64) -> Result<()> {
        self.resize_preallocated(new_size, Preallocation::Off)
    }

    /// [`resize_to`](Self::resize_to), preallocating the area a growth adds as `prealloc`
    /// says (`qemu-img resize --preallocation`). Shrinking takes only [`Preallocation::Off`].
    pub fn resize_preallocated(&mut self, new_size: u64, prealloc: Preallocation) -> Result<()> {
        self.check_writable()?;
        let new_size = new_size.next_multiple_of(512);
        let old_size = self.header.size;
        if new_size > super::limits::MAX_VIRTUAL_SIZE {
            return Err(Error::invalid("new size is too large"));
        }
        if new_size == old_size {
            return Ok(());
        }
        // As QEMU: v3 snapshots record their own disk size, v2 ones do not.
        if !self.snapshots.is_empty() && self.header.version < 3 {
            return Err(Error::unsupported(
                "Can't resize a v2 image which has snapshots",
            ));
        }
        let needed = l1_entries_for(new_size, self.geo.cluster_bits, self.geo.extended_l2)
            .filter(|&n| n * 8 <= super::limits::MAX_L1_BYTES)
            .ok_or_else(|| Error::invalid("new size needs an L1 table larger than 32 MiB"))?;
        if new_size < old_size && prealloc != Preallocation::Off {
            return Err(Error::invalid(
                "Preallocation can only be used for growing images",
            ));
        }
        // Bitmaps follow the size, as in QEMU; they are marked in use across the change.
        self.bitmaps_before_resize()?;
        if new_size > old_size {
            self.grow(new_size, needed, prealloc)?;
        } else {
            self.shrink(new_size, needed)?;
        }
        self.resize_data_file(new_size)?;
        self.bitmaps_after_resize(new_size)
    }

    /// Free everything past the new end (whole clusters), then drop the L2 tables that map
    /// only the freed range, with the new size.
    fn shrink(&mut self, new_size: u64, needed: u64) -> Result<()> {
        let old_size = self.header.size;
        let from = new_size.next_multiple_of(self.geo.cluster_size);
        if from < old_size {
            self.full_discard(from, old_size - from)?;
        }
        let old_l1 = self.l1.clone();
        let keep = (needed as usize).min(old_l1.len());
        let mut txn = self.txn_begin()?;
        let mut new_l1 = old_l1[..keep].to_vec();
        new_l1.resize(needed as usize, 0);
        for &raw in &old_l1[keep..] {
            let t = entry::l1_l2_offset(raw);
            if t != 0 {
                self.txn_add(&mut txn, t, -1)?;
            }
        }
        let l1_off = self.txn_write_active_l1(&mut txn, &new_l1)?;
        let n = new_l1.len() as u32;
        self.txn_commit(txn, |h| {
            h.size = new_size;
            h.l1_size = n;
            h.l1_table_offset = l1_off;
        })?;
        self.replace_l1(new_l1);
        Ok(())
    }

    /// Whether the attached backing image is longer than the image, so that growing the
    /// image must hide the backing's data in the new area.
    fn growth_hides_backing(&self) -> bool {
        let size = self.header.size;
        self.backing
            .as_ref()
            .is_some_and(|b| b.virtual_size() > size)
    }

    /// Whether growing to `new_size` with `prealloc` makes zero clusters (to hide the
    /// backing in whole new clusters that preallocation does not fill with fresh zeros).
    pub(crate) fn growth_needs_zero_clusters(
        &self,
        new_size: u64,
        prealloc: Preallocation,
    ) -> bool {
        let fresh = matches!(prealloc, Preallocation::Full | Preallocation::Falloc);
        let whole_from = self.header.size.next_multiple_of(self.geo.cluster_size);
        self.growth_hides_backing() && !fresh && new_size > whole_from
    }

    /// Grow to `new_size` (an L1 table of `needed` entries), filling the new area as the
    /// module documentation describes.
    fn grow(&mut self, new_size: u64, needed: u64, prealloc: Preallocation) -> Result<()> {
        let old_size = self.header.size;
        let cs = self.geo.cluster_size;
        let hide_backing = self.growth_hides_backing();
        // The new area's whole clusters start here; before, the rest of the old last one.
        let whole_from = old_size.next_multiple_of(cs);
        let zero_clusters = self.growth_needs_zero_clusters(new_size, prealloc);
        if zero_clusters && self.header.version < 3 {
            return Err(no_zero_clusters_in_v2());
        }
        let fills = hide_backing || prealloc != Preallocation::Off;
        if needed > self.l1.len() as u64 {
            // With nothing to write into the new area, the size changes with the L1 table.
            self.grow_l1(needed, (!fills).then_some(new_size))?;
            if !fills {
                return Ok(());
            }
        }
        if fills {
            let head_end = whole_from.min(new_size);
            if head_end > old_size && self.zero_head(old_size, hide_backing, prealloc)? {
                self.do_write(&vec![0u8; (head_end - old_size) as usize], old_size)?;
            }
            if new_size > whole_from {
                match prealloc {
                    // Filling without preallocation: the backing must be hidden.
                    Preallocation::Off => {
                        let n = (new_size - whole_from).div_ceil(cs);
                        self.set_clusters(whole_from / cs, n, true)?;
                    }
                    mode => self.preallocate_new_area(whole_from, new_size, mode, zero_clusters)?,
                }
            }
        }
        self.commit_size(new_size)
    }

    /// Make `new_size` the virtual size once everything written so far is durable: one
    /// write of the size field (inside the first sector), then a sync. No refcount changes,
    /// so no transaction (which would move the refcount structures) is needed.
    fn commit_size(&mut self, new_size: u64) -> Result<()> {
        self.flush_metadata()?;
        self.sync()?;
        let mut h = self.header.clone();
        h.size = new_size;
        let bytes = h.write()?;
        self.storage
            .write_at(&bytes[field::SIZE.range()], field::SIZE.file_offset())
            .map_err(ioerr("writing the new size"))?;
        self.sync()?;
        self.header = h;
        Ok(())
    }

    /// Whether the rest of the old last cluster, from `old_size`, gets explicit zeros: to
    /// hide the backing, for fresh preallocated clusters, and for metadata preallocation
    /// when the cluster holds no data yet (it is then allocated, its head copied).
    fn zero_head(
        &mut self,
        old_size: u64,
        hide_backing: bool,
        prealloc: Preallocation,
    ) -> Result<bool> {
        Ok(match prealloc {
            _ if hide_backing => true,
            Preallocation::Full | Preallocation::Falloc => true,
            Preallocation::Metadata => matches!(
                self.l2_entry(old_size >> self.geo.cluster_bits)?,
                L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
            ),
            Preallocation::Off => false,
        })
    }

    /// Switch to an active L1 table of `needed` entries (the old entries, then unallocated
    /// ones) through a transaction; with `new_size`, the size changes in the same write.
    fn grow_l1(&mut self, needed: u64, new_size: Option<u64>) -> Result<()> {
        let mut new_l1 = self.l1.clone();
        new_l1.resize(needed as usize, 0);
        let mut txn = self.txn_begin()?;
        let l1_off = self.txn_write_active_l1(&mut txn, &new_l1)?;
        let n = new_l1.len() as u32;
        self.txn_commit(txn, |h| {
            if let Some(s) = new_size {
                h.size = s;
            }
            h.l1_size = n;
            h.l1_table_offset = l1_off;
        })?;
        self.replace_l1(new_l1);
        Ok(())
    }

    /// Allocate the guest clusters of `[from, to)` (`from` cluster aligned) that hold no
    /// host cluster yet, as preallocation `mode` does for a new image; with `zero_flag` the
    /// new entries also carry the zero flag (version 3 only).
    fn preallocate_new_area(
        &mut self,
        from: u64,
        to: u64,
        mode: Preallocation,
        zero_flag: bool,
    ) -> Result<()> {
        if mode == Preallocation::Off || from >= to {
            return Ok(());
        }
        let cs = self.geo.cluster_size;
        let per_table = self.geo.l2_entries();
        let unallocated =
            |e: L2Entry| matches!(e, L2Entry::Unallocated | L2Entry::Zero { host: None, .. });
        let mut gc = from / cs;
        let end = to.div_ceil(cs);
        while gc < end {
            if !unallocated(self.l2_entry(gc)?) {
                gc += 1;
                continue;
            }
            let table_end = ((gc / per_table) + 1) * per_table;
            let mut n = 1;
            while gc + n < end.min(table_end)
                && n < self.max_alloc_run()
                && unallocated(self.l2_entry(gc + n)?)
            {
                n += 1;
            }
            let l2_off = self.l2_for_write(gc / per_table)?;
            let host = self.alloc_clusters(n)?;
            let io = |e| Error::io("qcow2: preallocating", e);
            // Clusters reused inside the file may hold old bytes: they must read as zeros.
            let file_len = self.storage.len().map_err(io)?;
            if host < file_len && mode != Preallocation::Full {
                let stale = (file_len - host).min(n * cs);
                crate::storage::write_zero_bytes(&self.storage, host, stale).map_err(io)?;
            }
            match mode {
                Preallocation::Off => {}
                Preallocation::Metadata => {
                    let e = host + n * cs;
                    if e > self.storage.len().map_err(io)? {
                        self.storage.set_len(e).map_err(io)?;
                    }
                }
                Preallocation::Falloc => self.storage.allocate(host, n * cs).map_err(io)?,
                Preallocation::Full => {
                    crate::storage::write_zero_bytes(&self.storage, host, n * cs).map_err(io)?
                }
            }
            for k in 0..n {
                let e = self.preallocated_entry(host + k * cs, zero_flag);
                self.set_l2_entry(l2_off, (gc + k) % per_table, e)?;
            }
            gc += n;
        }
        self.flush_metadata()
    }
}

/// qemu-img's refusal to grow a version 2 overlay over a longer backing image, with why.
pub(crate) fn no_zero_clusters_in_v2() -> Error {
    Error::unsupported(
        "Failed to zero out new clusters: a compat=0.10 image has no zero clusters to hide its backing file's data in the area a resize adds (compat=1.1 has)",
    )
}
