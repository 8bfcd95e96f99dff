//! Dirty bitmaps as NBD metadata: the `qemu:dirty-bitmap:NAME` context, whose
//! `NBD_CMD_BLOCK_STATUS` extents say which ranges changed since the bitmap was started
//! (value 1, `NBD_STATE_DIRTY`) and which did not (0).
//!
//! The server does not know where dirty bits are kept: a [`DirtySource`] answers for one
//! run at a time, with the export's device at hand (a qcow2 persistent bitmap is part of
//! the image). `vdisk serve -B` will give the export a source once persistent bitmaps can
//! be opened; until then the CLI refuses `-B`.

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

#[cfg(test)]
pub mod fake {
    //! A dirty source over a fixed list of dirty ranges, for tests.
    use super::*;

    /// Dirty where `ranges` (sorted, disjoint `(start, length)`) say, clean elsewhere.
    pub struct Ranges {
        pub name: String,
        pub ranges: Vec<(u64, u64)>,
    }

    impl DirtySource for Ranges {
        fn name(&self) -> &str {
            &self.name
        }

        fn run(
            &mut self,
            _: &mut dyn BlockDevice,
            offset: u64,
            max_len: u64,
        ) -> Result<(u64, bool)> {
            for &(start, len) in &self.ranges {
                if offset < start {
                    return Ok(((start - offset).min(max_len), false));
                }
                if offset < start + len {
                    return Ok(((start + len - offset).min(max_len), true));
                }
            }
            Ok((max_len, false))
        }
    }
}
