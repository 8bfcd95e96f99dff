//! What `vdisk bitmap` does to the bitmaps of an open image, with qemu-img's rules and
//! messages: operations apply in order to the bitmaps in memory, and one transaction
//! stores the result (what the operations before a failing one did is kept, as qemu-img
//! keeps it). Also what a resize does to the bitmaps.

use super::store::{inconsistent, Commit};
use super::{default_granularity, Bitmap, Bits, DirEntry, AUTO};
use super::{
    MAX_BITMAPS, MAX_BITMAP_BYTES, MAX_DIRECTORY_BYTES, MAX_GRANULARITY_BITS, MAX_NAME_BYTES,
};
use crate::error::{Error, Result};
use crate::qcow2::Qcow2;
use crate::storage::Storage;

/// One operation of `vdisk bitmap`.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create an enabled, empty bitmap (granularity in bytes; default: QEMU's).
    Add {
        /// Bytes per bit.
        granularity: Option<u64>,
    },
    /// Delete the bitmap.
    Remove,
    /// Mark everything clean.
    Clear,
    /// Start tracking writes.
    Enable,
    /// Stop tracking writes.
    Disable,
    /// Set every bit that a bitmap of this image (by name) has set.
    MergeNamed(String),
    /// Set every bit that these bits (of another image's bitmap) have set.
    MergeBits(Bits),
}

impl Op {
    /// The operation as qemu-img names it in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Remove => "remove",
            Op::Clear => "clear",
            Op::Enable => "enable",
            Op::Disable => "disable",
            Op::MergeNamed(_) | Op::MergeBits(_) => "merge",
        }
    }
}

impl<S: Storage> Qcow2<S> {
    /// Apply `ops` in order to the bitmap `name`, then store the result.
    pub fn bitmap_ops(&mut self, name: &str, ops: &[Op]) -> Result<()> {
        self.check_writable()?;
        let mut result = Ok(());
        for op in ops {
            result = self.bitmap_op(name, op).map_err(|e| {
                Error::invalid(format!(
                    "Operation {} on bitmap {name} failed: {}",
                    op.name(),
                    e.bare_message()
                ))
            });
            if result.is_err() {
                break;
            }
        }
        let stored = self.store_bitmaps();
        result.and(stored)
    }

    fn bitmap_op(&mut self, name: &str, op: &Op) -> Result<()> {
        if let Op::Add { granularity } = op {
            return self.bitmap_add(name, *granularity);
        }
        let i = self.bitmaps.get(name)?;
        if let Op::Remove = op {
            let mut next = self.bitmaps.list.clone();
            next.remove(i);
            return self.commit_bitmaps(next, Commit::Store);
        }
        if self.bitmaps.list[i].entry.in_use() {
            return Err(inconsistent(name));
        }
        match op {
            Op::Enable => self.bitmaps.list[i].entry.flags |= AUTO,
            Op::Disable => self.bitmaps.list[i].entry.flags &= !AUTO,
            Op::Clear => self.change_bits(i, Bits::clear)?,
            Op::MergeNamed(src) => {
                let j = self.bitmaps.get(src)?;
                if self.bitmaps.list[j].entry.in_use() {
                    return Err(inconsistent(src));
                }
                self.load_bitmaps(&[j])?;
                let from = self.bitmaps.list[j]
                    .bits
                    .clone()
                    .unwrap_or_else(|| Bits::new(0, 9));
                self.change_bits(i, |b| b.merge_from(&from))?;
            }
            Op::MergeBits(from) => self.change_bits(i, |b| b.merge_from(from))?,
            Op::Add { .. } | Op::Remove => {}
        }
        self.bitmaps.list[i].stale = true;
        Ok(())
    }

    /// Load bitmap `i` and apply `f` to its bits.
    fn change_bits(&mut self, i: usize, f: impl FnOnce(&mut Bits)) -> Result<()> {
        self.load_bitmaps(&[i])?;
        if let Some(b) = self.bitmaps.list[i].bits.as_mut() {
            f(b);
        }
        Ok(())
    }

    /// Add a bitmap called `name` holding `bits` (tracking writes when `enabled`), as
    /// `convert --bitmaps` copies one; stored by the next close.
    pub fn import_bitmap(&mut self, name: &str, enabled: bool, bits: &Bits) -> Result<()> {
        self.check_writable()?;
        self.bitmap_add(name, Some(1u64 << bits.granularity_bits()))?;
        let b = self
            .bitmaps
            .list
            .last_mut()
            .ok_or_else(|| Error::invalid("no bitmap"))?;
        if !enabled {
            b.entry.flags &= !AUTO;
        }
        if let Some(mine) = b.bits.as_mut() {
            mine.merge_from(bits);
        }
        Ok(())
    }

    fn bitmap_add(&mut self, name: &str, granularity: Option<u64>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("Bitmap name cannot be empty"));
        }
        let g = granularity.unwrap_or_else(|| default_granularity(self.geo.cluster_size));
        if g < 512 || g > u64::from(u32::MAX) || !g.is_power_of_two() {
            return Err(Error::invalid(
                "Granularity must be power of 2 and at least 512",
            ));
        }
        if self.bitmaps.find(name).is_some() {
            return Err(Error::invalid(format!("Bitmap already exists: {name}")));
        }
        let cant = |why: &str| {
            Error::invalid(format!(
                "Can't make bitmap '{name}' persistent in the image: {why}"
            ))
        };
        if self.header.version < 3 {
            return Err(cant("Cannot store dirty bitmaps in qcow2 v2 files"));
        }
        if self.bitmaps.list.len() >= MAX_BITMAPS as usize {
            return Err(cant(
                "Maximum number of persistent bitmaps is already reached",
            ));
        }
        let gb = g.trailing_zeros() as u8;
        if gb > MAX_GRANULARITY_BITS {
            return Err(Error::invalid(format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << MAX_GRANULARITY_BITS
            )));
        }
        let entry = DirEntry {
            table_offset: 0,
            table_size: 0,
            flags: AUTO,
            granularity_bits: gb,
            name: name.to_string(),
        };
        let dir: u64 = self
            .bitmaps
            .list
            .iter()
            .map(|b| b.entry.encoded_len())
            .sum();
        if dir + entry.encoded_len() > MAX_DIRECTORY_BYTES {
            return Err(cant("Not enough space in the bitmap directory"));
        }
        if name.len() > usize::from(MAX_NAME_BYTES) {
            return Err(Error::invalid(format!(
                "Name length exceeds maximum ({MAX_NAME_BYTES} characters)"
            )));
        }
        let bits = Bits::new(self.header.size, gb);
        if bits.serialized_len() > MAX_BITMAP_BYTES {
            return Err(Error::invalid(
                "Too much space will be occupied by the bitmap. Use larger granularity",
            ));
        }
        self.bitmaps.list.push(Bitmap {
            entry,
            bits: Some(bits),
            stale: true,
        });
        Ok(())
    }

    /// Before a resize: every bitmap must be consistent (as QEMU requires); load them all
    /// and mark them in use, so that a crash between the new size and the stored bitmaps
    /// leaves them inconsistent rather than too small for the disk.
    pub(crate) fn bitmaps_before_resize(&mut self) -> Result<()> {
        if self.bitmaps.list.is_empty() {
            return Ok(());
        }
        if let Some(b) = self.bitmaps.list.iter().find(|b| b.entry.in_use()) {
            return Err(inconsistent(&b.entry.name));
        }
        let all: Vec<usize> = (0..self.bitmaps.list.len()).collect();
        self.load_bitmaps(&all)?;
        self.commit_bitmaps(self.bitmaps.list.clone(), Commit::MarkInUse)
    }

    /// After a resize to `new_size`: every bitmap follows it (new bits clean), and is
    /// stored.
    pub(crate) fn bitmaps_after_resize(&mut self, new_size: u64) -> Result<()> {
        if self.bitmaps.list.is_empty() {
            return Ok(());
        }
        for b in &mut self.bitmaps.list {
            if let Some(bits) = b.bits.as_mut() {
                bits.resize(new_size);
                b.stale = true;
            }
        }
        self.store_bitmaps()
    }

    /// Before reverting to a snapshot whose disk is `size` bytes: what the guest reads may
    /// change anywhere, so the enabled bitmaps mark the whole disk dirty (QEMU leaves them
    /// as they are, and an incremental backup taken from them would miss the revert). A
    /// snapshot of another size is refused while the image has bitmaps.
    pub(crate) fn bitmaps_before_revert(&mut self, size: u64) -> Result<()> {
        if self.bitmaps.list.is_empty() {
            return Ok(());
        }
        if size != self.header.size {
            return Err(Error::unsupported(
                "reverting to a snapshot of another disk size in an image with persistent dirty bitmaps",
            ));
        }
        self.track_guest_write(0, size)
    }
}
