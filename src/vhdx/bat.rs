//! The block allocation table: one 64-bit entry per payload block, with one sector bitmap
//! entry after every `chunk_ratio` payload entries. An entry holds a state (low 3 bits)
//! and a file offset in MiB (high 44 bits).
//!
//! [`Geometry`] turns a guest offset into a BAT index and knows how many entries a disk
//! needs; [`PayloadState`] and [`BitmapState`] are the entry states.

use super::header::MIB;
use super::metadata::Metadata;

/// Bytes of one BAT entry.
pub const ENTRY_LEN: u64 = 8;
const STATE_MASK: u64 = 7;
const OFFSET_MASK: u64 = !0xfffff;
/// Sectors one sector bitmap block describes (2^23, one bit each).
const SECTORS_PER_BITMAP: u64 = 1 << 23;

/// The state of a payload block's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadState {
    /// Not stored here: zeros, or the parent's data for a differencing image.
    NotPresent,
    /// Contents undefined (read as zeros).
    Undefined,
    /// Reads as zeros.
    Zero,
    /// Given back by the guest (read as zeros, or the parent's data).
    Unmapped,
    /// Every sector is stored at the entry's offset.
    FullyPresent,
    /// Some sectors are stored (the sector bitmap says which); differencing images only.
    PartiallyPresent,
    /// A state value the format does not define.
    Invalid(u8),
}

/// The state of a sector bitmap block's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapState {
    /// No bitmap block.
    NotPresent,
    /// The bitmap block is at the entry's offset.
    Present,
    /// Another value.
    Invalid(u8),
}

/// One BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry(pub u64);

impl Entry {
    /// A payload entry in `state` at `offset` (which must be a multiple of 1 MiB; states
    /// without data store offset 0).
    pub fn payload(state: PayloadState, offset: u64) -> Entry {
        let s = match state {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
            PayloadState::Invalid(v) => u64::from(v),
        };
        let offset = match state {
            PayloadState::FullyPresent | PayloadState::PartiallyPresent => offset,
            _ => 0,
        };
        Entry((offset & OFFSET_MASK) | s)
    }

    /// The state, read as a payload entry.
    pub fn payload_state(self) -> PayloadState {
        match (self.0 & STATE_MASK) as u8 {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            // 5 is what drafts of the format (and old QEMU) wrote for unmapped.
            3 | 5 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            v => PayloadState::Invalid(v),
        }
    }

    /// The state, read as a sector bitmap entry.
    pub fn bitmap_state(self) -> BitmapState {
        match (self.0 & STATE_MASK) as u8 {
            0 => BitmapState::NotPresent,
            6 => BitmapState::Present,
            v => BitmapState::Invalid(v),
        }
    }

    /// The file offset in bytes.
    pub fn offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }
}

/// The shape of the BAT of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of a payload block.
    pub block_size: u64,
    /// Bytes of a logical sector.
    pub sector_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks of the disk.
    pub data_blocks: u64,
    /// Entries of the BAT (payload and bitmap).
    pub entries: u64,
}

impl Geometry {
    /// The geometry of a disk with this (validated) metadata.
    pub fn new(md: &Metadata) -> Geometry {
        let block_size = u64::from(md.block_size);
        let sector_size = u64::from(md.logical_sector_size);
        let chunk_ratio = SECTORS_PER_BITMAP * sector_size / block_size;
        let data_blocks = md.virtual_size.div_ceil(block_size);
        let entries = if md.has_parent {
            data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Geometry {
            block_size,
            sector_size,
            chunk_ratio,
            data_blocks,
            entries,
        }
    }

    /// The BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The BAT index of the sector bitmap entry covering payload block `block`.
    pub fn bitmap_index(&self, block: u64) -> u64 {
        (block / self.chunk_ratio) * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Whether BAT index `i` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// The payload block number of payload BAT index `i`.
    pub fn block_of_index(&self, i: u64) -> u64 {
        i - i / (self.chunk_ratio + 1)
    }

    /// Bytes of the BAT region of a new image (whole MiB).
    pub fn bat_bytes(&self) -> u64 {
        (self.entries * ENTRY_LEN).next_multiple_of(MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(size: u64, bs: u32, parent: bool) -> Metadata {
        let p = if parent {
            vec![("k".into(), "v".into())]
        } else {
            vec![]
        };
        Metadata::new(size, bs, false, p)
    }

    #[test]
    fn a_sector_bitmap_entry_follows_every_chunk_of_payload_entries() {
        // 512-byte sectors, 1 MiB blocks: 4096 payload blocks per bitmap block.
        let g = Geometry::new(&md(5000 << 20, 1 << 20, false));
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.entries, 5000 + 1);
        assert_eq!(g.payload_index(4095), 4095);
        assert_eq!(g.payload_index(4096), 4097);
        assert_eq!(g.bitmap_index(10), 4096);
        assert!(g.is_bitmap_index(4096));
        assert_eq!(g.block_of_index(4097), 4096);
        let d = Geometry::new(&md(5000 << 20, 1 << 20, true));
        assert_eq!(d.entries, 2 * 4097);
    }

    #[test]
    fn entries_keep_state_and_whole_mib_offsets() {
        let e = Entry::payload(PayloadState::FullyPresent, 7 * MIB);
        assert_eq!(e.0, (7 * MIB) | 6);
        assert_eq!(
            (e.payload_state(), e.offset()),
            (PayloadState::FullyPresent, 7 * MIB)
        );
        assert_eq!(Entry::payload(PayloadState::Zero, 7 * MIB).0, 2);
        assert_eq!(Entry(4).payload_state(), PayloadState::Invalid(4));
        assert_eq!(Entry(6).bitmap_state(), BitmapState::Present);
    }
}
