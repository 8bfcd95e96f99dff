//! Dirty bitmaps as NBD metadata: the `qemu:dirty-bitmap:NAME` context, whose
//! `NBD_CMD_BLOCK_STATUS` extents say which ranges changed since the bitmap was started
//! (value 1, `NBD_STATE_DIRTY`) and which did not (0).
//!
//! The server does not know where dirty bits are kept: a [`DirtySource`] answers for one
//! run at a time, with the export's device at hand (a qcow2 persistent bitmap is part of
//! the image). [`StaticRanges`] is the source of a bitmap that cannot change while served
//! (`vdisk serve -B` on a read-only export, or of a disabled bitmap); [`LiveBitmap`] reads
//! the device's own bits, for an enabled bitmap under a writable export.

use crate::device::BlockDevice;
use crate::error::Result;

/// The `qemu:dirty-bitmap:` extent flag of a dirty range.
pub const STATE_DIRTY: u32 = 1;

/// The context name of the bitmap `name`.
pub fn context_name(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

/// Where the dirty bits of one exported bitmap come from.
pub trait DirtySource: Send {
    /// The bitmap's name (what follows `qemu:dirty-bitmap:`).
    fn name(&self) -> &str;

    /// The run of equal dirtiness starting at guest `offset`: its length (from 1 to
    /// `max_len` bytes) and whether it is dirty. `dev` is the exported device, locked for
    /// the duration of the call, so that the answer is consistent with completed writes.
    fn run(&mut self, dev: &mut dyn BlockDevice, offset: u64, max_len: u64) -> Result<(u64, bool)>;
}

/// A bitmap whose dirty ranges are fixed while it is served: read once when the server
/// starts, for an export nothing writes (read-only) or a disabled bitmap, which writes do
/// not change.
pub struct StaticRanges {
    name: String,
    /// Sorted, disjoint `(start, length)` ranges.
    ranges: Vec<(u64, u64)>,
}

impl StaticRanges {
    /// The bitmap `name`, dirty where `ranges` say (sorted and merged here).
    pub fn new(name: impl Into<String>, mut ranges: Vec<(u64, u64)>) -> StaticRanges {
        ranges.retain(|&(_, len)| len > 0);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, len) in ranges {
            match merged.last_mut() {
                Some((s, l)) if *s + *l >= start => *l = (*l).max(start + len - *s),
                _ => merged.push((start, len)),
            }
        }
        StaticRanges {
            name: name.into(),
            ranges: merged,
        }
    }
}

impl DirtySource for StaticRanges {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, _: &mut dyn BlockDevice, offset: u64, max_len: u64) -> Result<(u64, bool)> {
        // The first range that ends after `offset`.
        let i = self.ranges.partition_point(|&(s, l)| s + l <= offset);
        let max_len = max_len.max(1);
        Ok(match self.ranges.get(i) {
            Some(&(s, l)) if s <= offset => ((s + l - offset).min(max_len), true),
            Some(&(s, _)) => ((s - offset).min(max_len), false),
            None => (max_len, false),
        })
    }
}

/// An enabled bitmap under a writable export: each answer comes from the bits the served
/// image keeps in memory, so that writes made through the export show at once (as
/// qemu-nbd serves them).
pub struct LiveBitmap {
    name: String,
}

impl LiveBitmap {
    /// The bitmap `name` of the exported device.
    pub fn new(name: impl Into<String>) -> LiveBitmap {
        LiveBitmap { name: name.into() }
    }
}

impl DirtySource for LiveBitmap {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, dev: &mut dyn BlockDevice, offset: u64, max_len: u64) -> Result<(u64, bool)> {
        dev.dirty_run(&self.name, offset, max_len).ok_or_else(|| {
            crate::error::Error::invalid(format!(
                "bitmap '{}' is not kept by the exported image",
                self.name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::Raw;
    use crate::storage::MemStorage;

    #[test]
    fn static_ranges_answer_runs_of_equal_dirtiness() {
        let mut dev = Raw::open(MemStorage::from_vec(vec![0; 8192]), true).unwrap();
        let mut r = StaticRanges::new("b", vec![(300, 50), (100, 100), (150, 100), (9, 0)]);
        let mut ask = |o, l| r.run(&mut dev, o, l).unwrap();
        assert_eq!(ask(0, 1000), (100, false));
        assert_eq!(ask(100, 1000), (150, true)); // 100..250 merged
        assert_eq!(ask(120, 10), (10, true));
        assert_eq!(ask(250, 1000), (50, false));
        assert_eq!(ask(320, 1000), (30, true));
        assert_eq!(ask(350, 1000), (1000, false));
    }
}
