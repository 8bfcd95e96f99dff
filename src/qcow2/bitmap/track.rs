//! The bitmaps of a writable open: the enabled, consistent ones are loaded at open, marked
//! in use on disk before the first guest write changes them, given the dirty bits of every
//! write, and stored by a clean close (see the module doc of `bitmap`).

use super::store::Commit;
use super::{State, MAX_BITMAP_BYTES};
use crate::error::{Error, Result};
use crate::qcow2::Qcow2;
use crate::storage::Storage;

/// Most bitmap memory one open image may load (all bitmaps together).
pub const MAX_LOADED_BYTES: u64 = 4 * MAX_BITMAP_BYTES;

impl<S: Storage> Qcow2<S> {
    /// Load the enabled, consistent bitmaps (at a writable open).
    pub(crate) fn load_tracking_bitmaps(&mut self) -> Result<()> {
        let wanted: Vec<usize> = (0..self.bitmaps.list.len())
            .filter(|&i| {
                let e = &self.bitmaps.list[i].entry;
                e.enabled() && !e.in_use()
            })
            .collect();
        self.load_bitmaps(&wanted)
    }

    /// Load the bits of the bitmaps `which` (indices) that are not loaded yet; all must be
    /// consistent.
    pub(crate) fn load_bitmaps(&mut self, which: &[usize]) -> Result<()> {
        let mut total: u64 = self
            .bitmaps
            .list
            .iter()
            .filter_map(|b| b.bits.as_ref().map(super::Bits::serialized_len))
            .sum();
        for &i in which {
            if self.bitmaps.list[i].bits.is_some() {
                continue;
            }
            let e = self.bitmaps.list[i].entry.clone();
            let bits = self.load_bitmap_bits(&e)?;
            total += bits.serialized_len();
            if total > MAX_LOADED_BYTES {
                return Err(Error::invalid(format!(
                    "the image's bitmaps need more than {MAX_LOADED_BYTES} bytes of memory"
                )));
            }
            self.bitmaps.list[i].bits = Some(bits);
        }
        Ok(())
    }

    /// Before a guest write, zero or discard of `[offset, offset + len)`: mark the tracking
    /// bitmaps in use on disk (once), then set their bits.
    pub(crate) fn track_guest_write(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.bitmaps.list.is_empty() {
            return Ok(());
        }
        if self.bitmaps.must_arm() {
            self.commit_bitmaps(self.bitmaps.list.clone(), Commit::MarkInUse)?;
        }
        self.bitmaps.mark(offset, len);
        Ok(())
    }

    /// Store what changed in the bitmaps (a clean close), clearing their in-use flags.
    pub(crate) fn store_bitmaps(&mut self) -> Result<()> {
        if self.read_only || !self.bitmaps.must_store() {
            return Ok(());
        }
        self.commit_bitmaps(self.bitmaps.list.clone(), Commit::Store)
    }

    /// The bitmaps of the image as its directory lists them.
    pub fn bitmap_entries(&self) -> Vec<super::DirEntry> {
        self.bitmaps.list.iter().map(|b| b.entry.clone()).collect()
    }

    /// [`crate::device::BlockDevice::dirty_run`] for qcow2: answered from the bitmaps
    /// loaded in memory (the enabled ones a writable open tracks).
    pub(crate) fn bitmap_dirty_run(
        &self,
        name: &str,
        offset: u64,
        max_len: u64,
    ) -> Option<(u64, bool)> {
        let b = &self.bitmaps.list[self.bitmaps.find(name)?];
        let bits = b.bits.as_ref()?;
        (offset < bits.size()).then(|| bits.run_at(offset, max_len))
    }

    /// The bits of the consistent bitmap `name` as they are now.
    pub fn bitmap_bits(&self, name: &str) -> Result<super::Bits> {
        let i = self.bitmaps.get(name)?;
        let b = &self.bitmaps.list[i];
        match &b.bits {
            Some(bits) => Ok(bits.clone()),
            None => self.load_bitmap_bits(&b.entry),
        }
    }

    /// The dirty ranges of the consistent bitmap `name`, merged and in order.
    pub fn bitmap_dirty_ranges(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        Ok(self.bitmap_bits(name)?.dirty_ranges())
    }

    /// The bitmaps of an image that has just been opened: `state`.
    pub(crate) fn set_bitmap_state(&mut self, state: State) {
        self.bitmaps = state;
    }
}
