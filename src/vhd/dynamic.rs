//! The dynamic disk header (1024 big-endian bytes at the footer's data offset) with its
//! parent fields and eight parent locators, QEMU's checks of it, and the layout checks
//! that keep a hostile block allocation table (BAT) from sizing buffers or pointing blocks
//! into the headers.
//!
//! Layout (offsets in bytes): 0x000 cookie `cxsparse`; 0x008 data offset (unused, all
//! ones); 0x010 table offset (the BAT); 0x018 header version 1.0; 0x01c max table entries;
//! 0x020 block size; 0x024 checksum; 0x028 parent UUID; 0x038 parent timestamp; 0x040
//! parent name (256 UTF-16BE units); 0x240 eight parent locators of 24 bytes (platform
//! code, data space, data length, reserved, data offset); 0x300 reserved.

use super::footer::{checksum, SECTOR};
use crate::error::{Error, Result};
use byteorder::{BigEndian as BE, ByteOrder};

/// Bytes of the dynamic header.
pub const HEADER_LEN: usize = 1024;
/// The cookie of the dynamic header.
pub const COOKIE: &[u8; 8] = b"cxsparse";
/// Header version 1.0.
pub const VERSION: u32 = 0x0001_0000;
/// The block size QEMU, Hyper-V and vdisk write: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// QEMU's smallest block size (a power of two of at least one sector).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// QEMU's limit on BAT entries (the table must stay under 2 GiB).
pub const MAX_TABLE_ENTRIES: u32 = i32::MAX as u32 / 4;
/// A BAT entry for a block that is not in the file.
pub const UNALLOCATED: u32 = u32::MAX;
/// A locator holding a path relative to the child, in UTF-16LE (Windows).
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// A locator holding an absolute path, in UTF-16LE (Windows).
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Locator slots in the header.
pub const LOCATORS: usize = 8;
/// Offset of the parent name field, and its length in bytes.
const PARENT_NAME: (usize, usize) = (0x40, 512);
/// Offset of the first locator entry.
const LOCATOR_TABLE: usize = 0x240;

/// One parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// Platform code (`W2ru`, `W2ku`, ...; 0 for an unused slot).
    pub platform: u32,
    /// Space reserved for the data: sectors as the specification says, though some
    /// writers store bytes (a value of 512 or more that is a multiple of 512).
    pub data_space: u32,
    /// Bytes of locator data.
    pub data_length: u32,
    /// Where the data is in the file.
    pub data_offset: u64,
}

impl ParentLocator {
    /// Bytes reserved for the data, read either way writers store it.
    pub fn space_bytes(&self) -> u64 {
        let space = u64::from(self.data_space);
        if space < SECTOR {
            space * SECTOR
        } else {
            space
        }
    }

    /// The platform code as text.
    pub fn platform_name(&self) -> String {
        String::from_utf8_lossy(&self.platform.to_be_bytes()).into_owned()
    }
}

/// A parsed dynamic header; `raw` keeps every byte so that reserved fields are written
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Offset of the BAT.
    pub table_offset: u64,
    /// Header version.
    pub version: u32,
    /// Entries of the BAT.
    pub max_table_entries: u32,
    /// Guest bytes per block.
    pub block_size: u32,
    /// The checksum as stored (QEMU does not check it).
    pub checksum: u32,
    /// The parent's unique id (differencing disks).
    pub parent_uuid: [u8; 16],
    /// The parent's modification time, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// The parent's name (UTF-16BE in the file).
    pub parent_name: String,
    /// The parent locators.
    pub locators: [ParentLocator; LOCATORS],
    raw: [u8; HEADER_LEN],
}

impl DynamicHeader {
    /// Decode the header; QEMU's "Invalid header magic" when the cookie is missing.
    pub fn parse(b: &[u8]) -> Result<DynamicHeader> {
        if b.len() < HEADER_LEN || &b[..8] != COOKIE {
            return Err(Error::invalid("Invalid header magic"));
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&b[..HEADER_LEN]);
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&b[0x28..0x38]);
        let mut locators = [ParentLocator::default(); LOCATORS];
        for (i, l) in locators.iter_mut().enumerate() {
            let e = &b[LOCATOR_TABLE + i * 24..];
            *l = ParentLocator {
                platform: BE::read_u32(e),
                data_space: BE::read_u32(&e[4..]),
                data_length: BE::read_u32(&e[8..]),
                data_offset: BE::read_u64(&e[16..]),
            };
        }
        let (at, len) = PARENT_NAME;
        Ok(DynamicHeader {
            table_offset: BE::read_u64(&b[0x10..]),
            version: BE::read_u32(&b[0x18..]),
            max_table_entries: BE::read_u32(&b[0x1c..]),
            block_size: BE::read_u32(&b[0x20..]),
            checksum: BE::read_u32(&b[0x24..]),
            parent_uuid,
            parent_timestamp: BE::read_u32(&b[0x38..]),
            parent_name: utf16_to_string(&b[at..at + len], true),
            locators,
            raw,
        })
    }

    /// A header for a new image of `entries` blocks of `block_size` bytes, its BAT at
    /// `table_offset`, as QEMU writes it.
    pub fn new(table_offset: u64, entries: u32, block_size: u32) -> DynamicHeader {
        let mut raw = [0u8; HEADER_LEN];
        raw[..8].copy_from_slice(COOKIE);
        // The unused data offset: all ones (Microsoft's tools expect all 64 bits).
        raw[0x08..0x10].fill(0xff);
        DynamicHeader {
            table_offset,
            version: VERSION,
            max_table_entries: entries,
            block_size,
            checksum: 0,
            parent_uuid: [0; 16],
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: [ParentLocator::default(); LOCATORS],
            raw,
        }
    }

    /// Encode the header with a fresh checksum (the parent name is written back only
    /// when it changed, so that odd encodings survive).
    pub fn write(&self) -> [u8; HEADER_LEN] {
        let mut b = self.raw;
        BE::write_u64(&mut b[0x10..], self.table_offset);
        BE::write_u32(&mut b[0x18..], self.version);
        BE::write_u32(&mut b[0x1c..], self.max_table_entries);
        BE::write_u32(&mut b[0x20..], self.block_size);
        BE::write_u32(&mut b[0x24..], 0);
        b[0x28..0x38].copy_from_slice(&self.parent_uuid);
        BE::write_u32(&mut b[0x38..], self.parent_timestamp);
        let (at, len) = PARENT_NAME;
        if utf16_to_string(&b[at..at + len], true) != self.parent_name {
            b[at..at + len].fill(0);
            let name = string_to_utf16(&self.parent_name, true);
            let n = name.len().min(len);
            b[at..at + n].copy_from_slice(&name[..n]);
        }
        for (i, l) in self.locators.iter().enumerate() {
            let e = &mut b[LOCATOR_TABLE + i * 24..LOCATOR_TABLE + (i + 1) * 24];
            BE::write_u32(e, l.platform);
            BE::write_u32(&mut e[4..], l.data_space);
            BE::write_u32(&mut e[8..], l.data_length);
            BE::write_u32(&mut e[12..], 0);
            BE::write_u64(&mut e[16..], l.data_offset);
        }
        let sum = checksum(&b);
        BE::write_u32(&mut b[0x24..], sum);
        b
    }

    /// The checksum the stored bytes should carry.
    pub fn computed_checksum(&self) -> u32 {
        let mut b = self.raw;
        BE::write_u32(&mut b[0x24..], 0);
        checksum(&b)
    }

    /// Bytes of each block's sector bitmap: one bit per sector, padded to whole sectors.
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / (8 * SECTOR)).next_multiple_of(SECTOR)
    }

    /// Bytes of the BAT as stored (whole sectors).
    pub fn table_bytes(&self) -> u64 {
        (u64::from(self.max_table_entries) * 4).next_multiple_of(SECTOR)
    }

    /// QEMU's checks, in QEMU's order and words, for a disk of `virtual_size` bytes; then
    /// that the BAT lies inside a file of `file_len` bytes, so that it can be read.
    pub fn validate(&self, virtual_size: u64, file_len: u64) -> Result<()> {
        if !self.block_size.is_power_of_two() || self.block_size < MIN_BLOCK_SIZE {
            return Err(Error::invalid(format!(
                "Invalid block size {}",
                self.block_size
            )));
        }
        if virtual_size / u64::from(self.block_size) > u64::from(u32::MAX) {
            return Err(Error::invalid("Too many blocks"));
        }
        if u64::from(self.max_table_entries) * u64::from(self.block_size) < virtual_size {
            return Err(Error::invalid("Page table too small"));
        }
        if self.max_table_entries > MAX_TABLE_ENTRIES {
            return Err(Error::invalid(format!(
                "Max Table Entries too large ({})",
                self.max_table_entries as i32
            )));
        }
        let end = self.table_offset.checked_add(self.table_bytes());
        if end.is_none_or(|e| e > file_len) {
            return Err(Error::corrupt(
                "VHD block allocation table",
                self.table_offset,
                format!(
                    "{} entries do not fit in the file ({file_len} bytes)",
                    self.max_table_entries
                ),
            ));
        }
        Ok(())
    }
}

/// Decode UTF-16 text (big-endian when `be`), up to the first NUL.
pub fn utf16_to_string(b: &[u8], be: bool) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| {
            if be {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Encode text as UTF-16 (big-endian when `be`), without a terminator.
pub fn string_to_utf16(s: &str, be: bool) -> Vec<u8> {
    s.encode_utf16()
        .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
        .collect()
}

/// A region of the file that holds metadata, which no data block may overlap.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// What it holds.
    pub what: &'static str,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Check every allocated BAT entry of a file of `file_len` bytes: QEMU refuses a block
/// that ends past the end of the file (its words); vdisk also refuses blocks that overlap
/// the metadata `regions` or each other, which a write would corrupt. Returns the offset
/// past the last block and the metadata (where the next block goes).
pub fn validate_blocks(
    bat: &[u32],
    bitmap_size: u64,
    block_size: u64,
    regions: &[Region],
    file_len: u64,
) -> Result<u64> {
    let span = bitmap_size + block_size;
    let mut free = regions.iter().map(|r| r.end).max().unwrap_or(0);
    let mut starts: Vec<(u64, usize)> = Vec::new();
    for (i, &e) in bat.iter().enumerate() {
        if e != UNALLOCATED {
            let start = u64::from(e) * SECTOR;
            free = free.max(start + span);
            starts.push((start, i));
        }
    }
    free = free.next_multiple_of(SECTOR);
    if free > file_len {
        return Err(Error::invalid(
            "block-vpc: free_data_block_offset points after the end of file. The image has \
             been truncated.",
        ));
    }
    starts.sort_unstable();
    for (n, &(start, i)) in starts.iter().enumerate() {
        if let Some(r) = regions
            .iter()
            .find(|r| start < r.end && r.start < start + span)
        {
            return Err(Error::corrupt(
                "VHD block allocation table",
                u64::from(e_offset(i)),
                format!("block {i} at {start:#x} overlaps the {}", r.what),
            ));
        }
        if let Some(&(next, j)) = starts.get(n + 1) {
            if next < start + span {
                return Err(Error::corrupt(
                    "VHD block allocation table",
                    u64::from(e_offset(j)),
                    format!("block {j} at {next:#x} overlaps block {i} at {start:#x}"),
                ));
            }
        }
    }
    Ok(free)
}

/// Byte offset of entry `i` within the BAT (for messages).
fn e_offset(i: usize) -> u32 {
    (i as u32).saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dynamic header of `qemu-img create -f vpc a.vhd 64M`.
    fn qemu_64m() -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(b"cxsparse");
        b[0x08..0x10].fill(0xff); // data offset: none
        b[0x16] = 0x06; // BAT at 0x600
        b[0x18..0x1c].copy_from_slice(&[0, 1, 0, 0]); // version 1.0
        b[0x1f] = 33; // 33 entries
        b[0x20..0x24].copy_from_slice(&[0, 0x20, 0, 0]); // 2 MiB blocks
        let sum = checksum(&b);
        b[0x24..0x28].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn a_qemu_header_parses_and_writes_back_the_same_bytes() {
        let b = qemu_64m();
        let h = DynamicHeader::parse(&b).unwrap();
        assert_eq!((h.table_offset, h.max_table_entries), (0x600, 33));
        assert_eq!(
            (h.block_size, h.bitmap_size(), h.table_bytes()),
            (2 << 20, 512, 512)
        );
        assert_eq!(h.computed_checksum(), h.checksum);
        h.validate(67_125_248, 0xa00).unwrap();
        assert_eq!(h.write(), b);
        assert_eq!(DynamicHeader::new(0x600, 33, 2 << 20).write(), b);
    }

    #[test]
    fn each_bad_field_gets_qemus_message() {
        let cases: &[(usize, &[u8], &str)] = &[
            (0x20, &[0, 0, 1, 0], "Invalid block size 256"),
            (0x20, &[0, 0x30, 0, 0], "Invalid block size 3145728"),
            (0x1c, &[0, 0, 0, 0], "Page table too small"),
            (
                0x1c,
                &[0x7f, 0xff, 0xff, 0xff],
                "Max Table Entries too large (2147483647)",
            ),
            (
                0x10,
                &[0, 0, 0, 1, 0, 0, 0, 0],
                "VHD block allocation table",
            ),
            (0, b"x", "Invalid header magic"),
        ];
        for (at, bytes, want) in cases {
            let mut b = qemu_64m();
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
            let err = DynamicHeader::parse(&b)
                .and_then(|h| h.validate(64 << 20, 1 << 30))
                .unwrap_err();
            assert!(err.to_string().contains(want), "{at:#x}: {err}");
        }
    }

    #[test]
    fn parent_fields_and_locators_round_trip() {
        let mut h = DynamicHeader::new(0x800, 4, 2 << 20);
        h.parent_uuid = [7; 16];
        h.parent_timestamp = 1234;
        h.parent_name = "parent.vhd".into();
        h.locators[0] = ParentLocator {
            platform: PLATFORM_W2RU,
            data_space: 512,
            data_length: 28,
            data_offset: 0x600,
        };
        let b = h.write();
        assert_eq!(&b[0x40..0x44], &[0, b'p', 0, b'a']);
        let back = DynamicHeader::parse(&b).unwrap();
        assert_eq!(back.parent_name, "parent.vhd");
        assert_eq!(back.locators[0].platform_name(), "W2ru");
        assert_eq!(back.locators[0].space_bytes(), 512);
        assert_eq!(back.computed_checksum(), back.checksum);
        assert_eq!(
            utf16_to_string(&string_to_utf16(".\\p.vhd", false), false),
            ".\\p.vhd"
        );
    }

    #[test]
    fn blocks_past_the_end_into_the_headers_or_onto_each_other_are_refused() {
        let regions = [Region {
            what: "BAT",
            start: 0x600,
            end: 0x800,
        }];
        let span = 512 + 4096;
        let ok = [4u32, UNALLOCATED, 4 + 9];
        assert_eq!(
            validate_blocks(&ok, 512, 4096, &regions, 1 << 20).unwrap(),
            13 * 512 + span
        );
        let past = [1000u32];
        let err = validate_blocks(&past, 512, 4096, &regions, 1 << 16).unwrap_err();
        assert!(err.to_string().contains("free_data_block_offset"), "{err}");
        let into = [2u32];
        let err = validate_blocks(&into, 512, 4096, &regions, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("overlaps the BAT"), "{err}");
        let twice = [4u32, 5];
        let err = validate_blocks(&twice, 512, 4096, &regions, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("overlaps block 0"), "{err}");
    }
}
