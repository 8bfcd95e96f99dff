//! The region table (at 192 KiB, with a copy at 256 KiB): where the BAT and the metadata
//! region sit in the file. Each copy is 64 KiB with a CRC-32C over all of it.
//!
//! Every structure of the file (header section, log, BAT, metadata, payload blocks) is
//! registered in [`Regions`] as it is read, and a new one that overlaps an earlier one is
//! refused with QEMU's message.

use super::header::{checksum_is_valid, set_checksum, Guid, MIB, SLOT};
use crate::error::{Error, Result};
use byteorder::{ByteOrder, LittleEndian as LE};

/// Where the region table and its copy sit.
pub const TABLE_OFFSETS: [u64; 2] = [3 * SLOT, 4 * SLOT];
/// Bytes of one region table.
pub const TABLE_LEN: usize = SLOT as usize;
/// The most entries the format allows.
pub const MAX_ENTRIES: u32 = 2047;
const SIGNATURE: &[u8; 4] = b"regi";
const ENTRY_REQUIRED: u32 = 1;

/// A GUID from its text form's fields, laid out as on disk.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// A GUID from its text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), laid out as on
/// disk. For constants: a text without 32 hex digits fails the build.
pub const fn guid_from_text(text: &str) -> Guid {
    let t = text.as_bytes();
    let mut nibbles = [0u8; 32];
    let (mut i, mut n) = (0, 0);
    while i < t.len() {
        let c = t[i];
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 16,
        };
        if v < 16 {
            nibbles[n] = v;
            n += 1;
        }
        i += 1;
    }
    let mut b = [0u8; 16];
    let mut k = 0;
    while k < 16 {
        b[k] = nibbles[2 * k] << 4 | nibbles[2 * k + 1];
        k += 1;
    }
    guid(
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
        [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
    )
}

/// The BAT region.
pub const BAT_GUID: Guid = guid_from_text("2dc27766-f623-4200-9d64-115e9bfd4a08");
/// The metadata region.
pub const METADATA_GUID: Guid = guid_from_text("8b7ca206-4790-4b9a-b8fe-575f050f886e");

/// One region: a range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Start (a multiple of 1 MiB).
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

/// The two regions an image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionTable {
    /// The block allocation table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// File ranges already in use, for QEMU's overlap check.
#[derive(Debug, Default, Clone)]
pub struct Regions(Vec<(u64, u64)>);

impl Regions {
    /// Fail if `[start, start+len)` overlaps a registered range (QEMU's message).
    pub fn check(&self, start: u64, len: u64) -> Result<()> {
        let end = start.saturating_add(len);
        for &(s, e) in &self.0 {
            if start < e && end > s {
                return Err(Error::invalid(format!(
                    "VHDX region {start}-{end} overlaps with region {s}-{e}"
                )));
            }
        }
        Ok(())
    }

    /// Register `[start, start+len)`.
    pub fn add(&mut self, start: u64, len: u64) {
        self.0.push((start, start.saturating_add(len)));
    }

    /// Check, then register.
    pub fn claim(&mut self, start: u64, len: u64) -> Result<()> {
        self.check(start, len)?;
        self.add(start, len);
        Ok(())
    }
}

fn bad(msg: &str) -> Error {
    Error::corrupt("VHDX region table", TABLE_OFFSETS[0], msg)
}

impl RegionTable {
    /// Parse the 64 KiB table, registering each entry in `regions`.
    pub fn parse(buf: &[u8], regions: &mut Regions) -> Result<RegionTable> {
        if buf.len() < TABLE_LEN || !checksum_is_valid(&buf[..TABLE_LEN], 4) {
            return Err(bad("bad checksum"));
        }
        if &buf[..4] != SIGNATURE {
            return Err(bad("bad signature"));
        }
        let count = LE::read_u32(&buf[8..]);
        if count > MAX_ENTRIES {
            return Err(bad(&format!("{count} entries, more than {MAX_ENTRIES}")));
        }
        let (mut bat, mut metadata) = (None, None);
        for i in 0..count as usize {
            let e = &buf[16 + 32 * i..16 + 32 * (i + 1)];
            let region = Region {
                offset: LE::read_u64(&e[16..]),
                length: LE::read_u32(&e[24..]),
            };
            regions.claim(region.offset, u64::from(region.length))?;
            let slot = if e[..16] == BAT_GUID {
                &mut bat
            } else if e[..16] == METADATA_GUID {
                &mut metadata
            } else if LE::read_u32(&e[28..]) & ENTRY_REQUIRED != 0 {
                return Err(Error::unsupported(
                    "VHDX region table: a required region of an unknown kind",
                ));
            } else {
                continue;
            };
            if slot.replace(region).is_some() {
                return Err(bad("a region is listed twice"));
            }
        }
        match (bat, metadata) {
            (Some(bat), Some(metadata)) => Ok(RegionTable { bat, metadata }),
            _ => Err(bad("the BAT or the metadata region is missing")),
        }
    }

    /// The 64 KiB table on disk.
    pub fn write(&self) -> Vec<u8> {
        let mut b = vec![0u8; TABLE_LEN];
        b[..4].copy_from_slice(SIGNATURE);
        LE::write_u32(&mut b[8..], 2);
        for (i, (g, r)) in [(BAT_GUID, self.bat), (METADATA_GUID, self.metadata)]
            .iter()
            .enumerate()
        {
            let e = &mut b[16 + 32 * i..16 + 32 * (i + 1)];
            e[..16].copy_from_slice(g);
            LE::write_u64(&mut e[16..], r.offset);
            LE::write_u32(&mut e[24..], r.length);
            // The required bit stays clear, as in the images qemu-img makes.
        }
        set_checksum(&mut b, 4);
        b
    }

    /// The layout QEMU gives a new image: BAT after the log, metadata (1 MiB) after it.
    pub fn for_new_image(log_end: u64, bat_bytes: u64) -> RegionTable {
        let bat_offset = log_end.next_multiple_of(MIB);
        let bat_len = bat_bytes.next_multiple_of(MIB);
        RegionTable {
            bat: Region {
                offset: bat_offset,
                length: bat_len as u32,
            },
            metadata: Region {
                offset: (bat_offset + bat_len).next_multiple_of(MIB),
                length: MIB as u32,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_with_their_first_three_fields_little_endian() {
        assert_eq!(
            BAT_GUID,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
        assert_eq!(
            METADATA_GUID,
            [
                0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f,
                0x88, 0x6e
            ]
        );
    }

    #[test]
    fn a_table_round_trips_and_registers_its_regions() {
        let t = RegionTable::for_new_image(2 * MIB, 8);
        let mut regions = Regions::default();
        assert_eq!(RegionTable::parse(&t.write(), &mut regions).unwrap(), t);
        assert!(regions.check(2 * MIB, 1).is_err());
        assert!(regions.check(4 * MIB, 1).is_ok());
    }

    #[test]
    fn overlapping_entries_and_bad_checksums_are_refused() {
        let mut t = RegionTable::for_new_image(2 * MIB, 8);
        t.metadata.offset = t.bat.offset;
        let e = RegionTable::parse(&t.write(), &mut Regions::default()).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let mut b = RegionTable::for_new_image(2 * MIB, 8).write();
        b[100] = 1;
        assert!(RegionTable::parse(&b, &mut Regions::default()).is_err());
    }
}
