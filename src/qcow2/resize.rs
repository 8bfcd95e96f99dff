//! Changing the virtual size: growing (with a larger L1 table when needed) and shrinking
//! (freeing every cluster past the new end). Both end in one header write through a
//! metadata transaction, so a power cut leaves the old size or the new one.

use super::entry;
use super::header::l1_entries_for;
use super::Qcow2;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::storage::Storage;

impl<S: Storage> Qcow2<S> {
    /// Grow or shrink the guest disk to `new_size` bytes (rounded up to 512).
    pub fn resize_to(&mut self, new_size: u64) -> Result<()> {
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
        let needed = l1_entries_for(new_size, self.geo.cluster_bits)
            .filter(|&n| n * 8 <= super::limits::MAX_L1_BYTES)
            .ok_or_else(|| Error::invalid("new size needs an L1 table larger than 32 MiB"))?;
        if new_size < old_size {
            // Free everything past the new end (whole clusters), then drop the L2 tables
            // that map only the freed range.
            let cs = self.geo.cluster_size;
            let from = new_size.next_multiple_of(cs);
            if from < old_size {
                let b = self.backing.take();
                let r = BlockDevice::discard(self, from, old_size - from);
                self.backing = b;
                r?;
            }
        }
        let old_l1 = self.l1.clone();
        let keep = if new_size < old_size {
            needed as usize
        } else {
            old_l1.len()
        };
        if new_size > old_size && needed <= old_l1.len() as u64 {
            // The L1 table already covers the new size: only the size field changes.
            let txn = self.txn_begin()?;
            return self.txn_commit(txn, |h| h.size = new_size);
        }
        let mut txn = self.txn_begin()?;
        let mut new_l1 = old_l1[..keep.min(old_l1.len())].to_vec();
        new_l1.resize(needed.max(keep as u64) as usize, 0);
        for &raw in &old_l1[keep.min(old_l1.len())..] {
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
}
