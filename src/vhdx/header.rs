//! The header section of a VHDX file: the file identifier at offset 0, the two headers at
//! 64 KiB and 128 KiB with their sequence numbers and CRC-32C checksums, and the GUIDs
//! (stored in Microsoft's mixed-endian layout, kept here as the 16 bytes on disk).
//!
//! A header is valid when its checksum over the whole 4 KiB is right, its signature is
//! `head` and its version is 1. The active header is the valid one with the higher
//! sequence number; two valid headers with the same number are accepted only when they
//! are identical (as QEMU does for images made by Disk2VHD).

use crate::error::{Error, Result};
use byteorder::{ByteOrder, LittleEndian as LE};

/// One MiB: the unit of every region offset and of BAT file offsets.
pub const MIB: u64 = 1 << 20;
/// Size of each structure slot of the header section.
pub const SLOT: u64 = 64 * 1024;
/// Where the two headers sit.
pub const HEADER_OFFSETS: [u64; 2] = [SLOT, 2 * SLOT];
/// The bytes a header's checksum covers.
pub const HEADER_LEN: usize = 4096;
/// The end of the header section: the first byte any other structure may use.
pub const HEADER_SECTION_END: u64 = MIB;
/// The file identifier's signature.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
const HEADER_SIGNATURE: &[u8; 4] = b"head";

/// A GUID as its 16 bytes on disk.
pub type Guid = [u8; 16];

/// The all-zero GUID (no log, no parent linkage).
pub const ZERO_GUID: Guid = [0; 16];

/// CRC-32C of `buf` computed with the 4 bytes at `field` taken as zero.
pub fn checksum(buf: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..field]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &buf[field + 4..])
}

/// Whether the checksum stored at `field` matches the rest of `buf`.
pub fn checksum_is_valid(buf: &[u8], field: usize) -> bool {
    buf.len() >= field + 4 && LE::read_u32(&buf[field..]) == checksum(buf, field)
}

/// Store the checksum of `buf` at `field`.
pub fn set_checksum(buf: &mut [u8], field: usize) {
    let crc = checksum(buf, field);
    LE::write_u32(&mut buf[field..], crc);
}

/// A new random GUID (version 4).
pub fn new_guid() -> Guid {
    crate::uuid::random_uuid()
}

/// One of the two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Higher is newer.
    pub sequence_number: u64,
    /// Changed before the first write of a session to any part of the file.
    pub file_write_guid: Guid,
    /// Changed before the first write of a session that the guest can see.
    pub data_write_guid: Guid,
    /// Zero: the log is empty. Otherwise log entries carrying this GUID are live.
    pub log_guid: Guid,
    /// Always 0.
    pub log_version: u16,
    /// Always 1.
    pub version: u16,
    /// Bytes of the log (a multiple of 1 MiB).
    pub log_length: u32,
    /// Where the log starts (a multiple of 1 MiB).
    pub log_offset: u64,
    /// The rest of the 4 KiB, kept and written back unchanged.
    pub rest: Vec<u8>,
}

impl Header {
    /// A header for a new image: log right after the header section.
    pub fn new(log_length: u32) -> Header {
        Header {
            sequence_number: 1,
            file_write_guid: new_guid(),
            data_write_guid: new_guid(),
            log_guid: ZERO_GUID,
            log_version: 0,
            version: 1,
            log_length,
            log_offset: HEADER_SECTION_END,
            rest: vec![0; HEADER_LEN - 80],
        }
    }

    /// The header in `buf` (4 KiB), or `None` when its checksum, signature or version is
    /// wrong.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_LEN || !checksum_is_valid(&buf[..HEADER_LEN], 4) {
            return None;
        }
        if &buf[..4] != HEADER_SIGNATURE || LE::read_u16(&buf[66..]) != 1 {
            return None;
        }
        let guid = |at: usize| -> Guid {
            let mut g = [0; 16];
            g.copy_from_slice(&buf[at..at + 16]);
            g
        };
        Some(Header {
            sequence_number: LE::read_u64(&buf[8..]),
            file_write_guid: guid(16),
            data_write_guid: guid(32),
            log_guid: guid(48),
            log_version: LE::read_u16(&buf[64..]),
            version: LE::read_u16(&buf[66..]),
            log_length: LE::read_u32(&buf[68..]),
            log_offset: LE::read_u64(&buf[72..]),
            rest: buf[80..HEADER_LEN].to_vec(),
        })
    }

    /// The 4 KiB on disk, checksum included.
    pub fn write(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..4].copy_from_slice(HEADER_SIGNATURE);
        LE::write_u64(&mut b[8..], self.sequence_number);
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        LE::write_u16(&mut b[64..], self.log_version);
        LE::write_u16(&mut b[66..], self.version);
        LE::write_u32(&mut b[68..], self.log_length);
        LE::write_u64(&mut b[72..], self.log_offset);
        let n = self.rest.len().min(HEADER_LEN - 80);
        b[80..80 + n].copy_from_slice(&self.rest[..n]);
        set_checksum(&mut b, 4);
        b
    }
}

/// The active header and its slot (0 or 1), chosen from the two read from the file.
pub fn choose_active(first: Option<Header>, second: Option<Header>) -> Result<(usize, Header)> {
    let none = || Error::invalid("No valid VHDX header found");
    match (first, second) {
        (Some(a), None) => Ok((0, a)),
        (None, Some(b)) => Ok((1, b)),
        (None, None) => Err(none()),
        (Some(a), Some(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok((0, a))
            } else if b.sequence_number > a.sequence_number {
                Ok((1, b))
            } else if a == b {
                Ok((0, a))
            } else {
                Err(none())
            }
        }
    }
}

/// The file identifier: the signature and the creator as UTF-16LE text (64 KiB slot).
pub fn file_identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 8 + 512];
    b[..8].copy_from_slice(FILE_SIGNATURE);
    for (i, u) in creator.encode_utf16().take(255).enumerate() {
        LE::write_u16(&mut b[8 + 2 * i..], u);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The CRC-32C of "123456789" is 0xe3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_header_round_trips_and_its_checksum_covers_every_byte() {
        let h = Header::new(1 << 20);
        let mut b = h.write();
        assert_eq!(&b[..4], b"head");
        assert_eq!(Header::parse(&b), Some(h));
        b[4000] ^= 1;
        assert_eq!(Header::parse(&b), None);
    }

    #[test]
    fn the_header_with_the_higher_sequence_number_is_active() {
        let mut a = Header::new(1 << 20);
        let mut b = a.clone();
        b.sequence_number = 7;
        assert_eq!(
            choose_active(Some(a.clone()), Some(b.clone())).unwrap().0,
            1
        );
        a.sequence_number = 8;
        assert_eq!(
            choose_active(Some(a.clone()), Some(b.clone())).unwrap().0,
            0
        );
        assert_eq!(choose_active(None, Some(b.clone())).unwrap().0, 1);
        b.sequence_number = 8;
        // Equal numbers: accepted only when the headers are identical.
        assert_eq!(
            choose_active(Some(a.clone()), Some(b.clone())).unwrap().0,
            0
        );
        b.log_length = 2 << 20;
        assert!(choose_active(Some(a), Some(b)).is_err());
        assert!(choose_active(None, None).is_err());
    }

    #[test]
    fn a_header_with_a_bad_signature_or_version_is_not_valid() {
        let mut b = Header::new(1 << 20).write();
        b[66] = 2;
        set_checksum(&mut b, 4);
        assert_eq!(Header::parse(&b), None);
    }
}
