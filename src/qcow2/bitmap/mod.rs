//! Persistent dirty bitmaps, stored as QEMU stores them (the qcow2 bitmaps extension).
//!
//! | file | owns |
//! | --- | --- |
//! | [`directory`] | the extension and directory bytes, and QEMU's rules for them |
//! | [`bits`] | one bitmap in memory, and its serialized form |
//! | `store` | loading a bitmap's table and data, and writing a new bitmap set (one transaction) |
//! | `track` | the life of a writable open: in-use marking before the first guest write, dirty bits on every write, storing on close |
//! | `ops` | what `vdisk bitmap` does: add, remove, clear, enable, disable, merge |
//! | `usage` | the host ranges the bitmaps use, read tolerantly for `check` |
//!
//! # Life of the bitmaps of a writable open
//!
//! At open, every enabled bitmap that is consistent (not marked in use) is loaded into
//! memory. Before the first guest write, zero or discard, one transaction marks them in
//! use on disk; each write then sets their bits in memory; a clean close stores them in new
//! clusters and clears the flag, in one transaction. A crash in between leaves them marked
//! in use, as QEMU does: they are then inconsistent, reported as such and can only be
//! removed. Every change to the directory is a metadata transaction (new clusters, then
//! one header write), so a power cut leaves the old bitmap set or the new one.

pub mod bits;
pub mod directory;
mod ops;
mod store;
mod track;
pub(crate) mod usage;

pub use bits::Bits;
pub use directory::{read_directory, DirEntry, AUTO, IN_USE};
pub use ops::Op;

use crate::error::{Error, Result};
use crate::qcow2::header::Header;

/// Most bitmaps in one image.
pub const MAX_BITMAPS: u32 = 65_535;
/// Largest bitmap directory.
pub const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// Most entries in one bitmap table.
pub const MAX_TABLE_ENTRIES: u32 = 0x0800_0000;
/// Largest serialized bitmap (QEMU's limit on bitmap memory).
pub const MAX_BITMAP_BYTES: u64 = 0x2000_0000;
/// Longest bitmap name, in bytes.
pub const MAX_NAME_BYTES: u16 = 1023;
/// Smallest granularity: one bit per 512 bytes.
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// Largest granularity: one bit per 2 GiB.
pub const MAX_GRANULARITY_BITS: u8 = 31;

/// The fields of the bitmaps extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ext {
    pub count: u32,
    pub dir_size: u64,
    pub dir_offset: u64,
}

/// Whether the image whose header is `h` has persistent bitmaps: a bitmaps extension that
/// the autoclear bit vouches for.
pub fn has_persistent_bitmaps(h: &Header) -> bool {
    h.autoclear_features & crate::qcow2::header::autoclear::BITMAPS != 0
        && h.extension(crate::qcow2::header::ext::BITMAPS).is_some()
}

/// QEMU's default granularity for a new bitmap of an image with `cluster_size` clusters:
/// the cluster size, at most 64 KiB and at least 4 KiB.
pub fn default_granularity(cluster_size: u64) -> u64 {
    cluster_size.clamp(4096, 65536)
}

/// One persistent bitmap of an open image.
#[derive(Debug, Clone)]
pub(crate) struct Bitmap {
    /// The entry: flags as they are to be stored (in use only when inconsistent), table
    /// as on disk (0 for a bitmap never stored).
    pub entry: DirEntry,
    /// The bits, when loaded.
    pub bits: Option<Bits>,
    /// The bits in memory differ from the table on disk: store them.
    pub stale: bool,
}

impl Bitmap {
    /// Whether guest writes set this bitmap's bits now.
    pub fn tracking(&self) -> bool {
        self.bits.is_some() && self.entry.enabled() && !self.entry.in_use()
    }
}

/// The persistent bitmaps of an open image.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// In directory order.
    pub list: Vec<Bitmap>,
    /// The directory on disk marks the loaded consistent bitmaps in use (a guest write or
    /// a resize has begun).
    pub armed: bool,
}

impl State {
    /// The bitmaps of a directory, none loaded.
    pub fn from_directory(dir: Vec<DirEntry>) -> State {
        State {
            list: dir
                .into_iter()
                .map(|entry| Bitmap {
                    entry,
                    bits: None,
                    stale: false,
                })
                .collect(),
            armed: false,
        }
    }

    /// Whether a guest write must first mark bitmaps in use.
    pub fn must_arm(&self) -> bool {
        !self.armed && self.list.iter().any(Bitmap::tracking)
    }

    /// Whether anything must be stored on close.
    pub fn must_store(&self) -> bool {
        self.armed || self.list.iter().any(|b| b.stale)
    }

    /// Set the bits of `[offset, offset + len)` in every tracking bitmap.
    pub fn mark(&mut self, offset: u64, len: u64) {
        for b in self.list.iter_mut().filter(|b| b.tracking()) {
            if let Some(bits) = b.bits.as_mut() {
                bits.set_range(offset, len);
                b.stale = true;
            }
        }
    }

    /// The index of the bitmap called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|b| b.entry.name == name)
    }

    /// The bitmap called `name`, or QEMU's error.
    pub fn get(&self, name: &str) -> Result<usize> {
        self.find(name)
            .ok_or_else(|| Error::invalid(format!("Dirty bitmap '{name}' not found")))
    }
}
