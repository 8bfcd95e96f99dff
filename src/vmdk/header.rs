//! The headers of sparse extent files: the hosted sparse header (magic `KDMV`, 512 bytes,
//! little-endian) and the older ESX sparse header (magic `COWD`), plus the checks that turn
//! either into a validated [`SparseGeometry`].
//!
//! Hosted sparse header layout (byte offsets):
//!
//! | off | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `KDMV` |
//! | 4 | 4 | version (1, 2 or 3) |
//! | 8 | 4 | flags |
//! | 12 | 8 | capacity, sectors |
//! | 20 | 8 | grain size, sectors |
//! | 28 | 8 | descriptor offset, sectors |
//! | 36 | 8 | descriptor size, sectors |
//! | 44 | 4 | grain table entries per grain table |
//! | 48 | 8 | redundant grain directory offset, sectors |
//! | 56 | 8 | grain directory offset, sectors (all ones: in the footer) |
//! | 64 | 8 | overhead: sectors before the first grain |
//! | 72 | 1 | unclean shutdown |
//! | 73 | 4 | newline test bytes `\n \r\n` |
//! | 77 | 2 | compression algorithm (1 = deflate) |

use super::limits::{
    MAX_EXTENT_SECTORS, MAX_GD_ENTRIES, MAX_GRAIN_SECTORS, MAX_GTES_PER_GT, MAX_SPARSE_VERSION,
    SECTOR_SIZE,
};
use crate::error::{Error, Result};
use byteorder::{ByteOrder, LittleEndian as LE};
use nom::bytes::complete::{tag, take};
use nom::number::complete::{le_u16, le_u32, le_u64, u8 as byte};
use nom::IResult;

const STRUCTURE: &str = "VMDK sparse header";

/// Magic of a hosted sparse extent.
pub const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
/// Magic of an ESX sparse (VMFSSPARSE) extent.
pub const COWD_MAGIC: &[u8; 4] = b"COWD";
/// Size of the header sector.
pub const HEADER_SIZE: usize = 512;

/// Flag: the newline test bytes are valid.
pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Flag: a redundant grain directory and grain tables exist.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Flag: grain table entry 1 means "this grain reads as zeros".
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the extent contains markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;

/// `compressAlgorithm` value for deflate (zlib).
pub const COMPRESSION_DEFLATE: u16 = 1;
/// Grain directory offset meaning "read the footer at the end of the file".
pub const GD_AT_END: u64 = u64::MAX;
/// The newline test bytes every writer puts at offset 73.
pub const NEWLINE_TEST: [u8; 4] = [b'\n', b' ', b'\r', b'\n'];

/// A hosted sparse extent header, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    /// Guest size of the extent, in sectors.
    pub capacity: u64,
    /// Grain size, in sectors.
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    pub unclean_shutdown: u8,
    pub newline_test: [u8; 4],
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Decode the header from the first bytes of an extent file (at least 79 are needed).
    pub fn parse(buf: &[u8]) -> Result<SparseHeader> {
        match sparse_header(buf) {
            Ok((_, h)) => Ok(h),
            Err(_) if buf.len() >= 4 && &buf[..4] != SPARSE_MAGIC => {
                Err(Error::corrupt(STRUCTURE, 0, "bad magic (expected KDMV)"))
            }
            Err(_) => Err(Error::corrupt(STRUCTURE, 0, "header is truncated")),
        }
    }

    /// Encode into a 512-byte sector (the rest of `out` is zeroed).
    pub fn write(&self, out: &mut [u8; HEADER_SIZE]) {
        out.fill(0);
        out[0..4].copy_from_slice(SPARSE_MAGIC);
        LE::write_u32(&mut out[4..8], self.version);
        LE::write_u32(&mut out[8..12], self.flags);
        LE::write_u64(&mut out[12..20], self.capacity);
        LE::write_u64(&mut out[20..28], self.grain_size);
        LE::write_u64(&mut out[28..36], self.descriptor_offset);
        LE::write_u64(&mut out[36..44], self.descriptor_size);
        LE::write_u32(&mut out[44..48], self.num_gtes_per_gt);
        LE::write_u64(&mut out[48..56], self.rgd_offset);
        LE::write_u64(&mut out[56..64], self.gd_offset);
        LE::write_u64(&mut out[64..72], self.overhead);
        out[72] = self.unclean_shutdown;
        out[73..77].copy_from_slice(&self.newline_test);
        LE::write_u16(&mut out[77..79], self.compress_algorithm);
    }

    /// Whether grains are deflate-compressed (QEMU decides by the algorithm field alone).
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Check every field that sizes a table or an offset, against the limits and the
    /// extent file length. `header_offset` locates the header (or footer) for messages.
    pub fn geometry(&self, file_len: u64, header_offset: u64) -> Result<SparseGeometry> {
        let bad = |msg: String| Error::corrupt(STRUCTURE, header_offset, msg);
        if self.version > MAX_SPARSE_VERSION {
            return Err(Error::unsupported(format!(
                "VMDK sparse extent version {} (at most {MAX_SPARSE_VERSION} is supported)",
                self.version
            )));
        }
        if self.num_gtes_per_gt == 0 || self.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(format!(
                "{} grain table entries per grain table (must be 1 to {MAX_GTES_PER_GT})",
                self.num_gtes_per_gt
            )));
        }
        if self.grain_size == 0 || self.grain_size > MAX_GRAIN_SECTORS {
            return Err(bad(format!(
                "invalid grain size of {} sectors (must be 1 to {MAX_GRAIN_SECTORS})",
                self.grain_size
            )));
        }
        if self.capacity > MAX_EXTENT_SECTORS {
            return Err(bad(format!(
                "capacity of {} sectors is too large",
                self.capacity
            )));
        }
        let gt_coverage = self.grain_size * u64::from(self.num_gtes_per_gt);
        let gd_entries = self.capacity.div_ceil(gt_coverage);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(bad(format!(
                "grain directory of {gd_entries} entries is too large (at most {MAX_GD_ENTRIES})"
            )));
        }
        let file_sectors = file_len.div_ceil(SECTOR_SIZE);
        if self.overhead > file_sectors {
            return Err(bad(format!(
                "file truncated: expected at least {} bytes, found {file_len}",
                self.overhead.saturating_mul(SECTOR_SIZE)
            )));
        }
        let gd_bytes = gd_entries * 4;
        let table_in_file = |sector: u64, what: &str| -> Result<u64> {
            let start = sector
                .checked_mul(SECTOR_SIZE)
                .filter(|s| s.checked_add(gd_bytes).is_some_and(|end| end <= file_len))
                .ok_or_else(|| {
                    bad(format!(
                        "{what} at sector {sector} lies past the end of the file"
                    ))
                })?;
            Ok(start)
        };
        let gd_offset = if gd_entries == 0 {
            0
        } else {
            table_in_file(self.gd_offset, "grain directory")?
        };
        let rgd_offset = if self.flags & FLAG_REDUNDANT_GD != 0 && self.rgd_offset != 0 {
            if gd_entries == 0 {
                None
            } else {
                Some(table_in_file(self.rgd_offset, "redundant grain directory")?)
            }
        } else {
            None
        };
        Ok(SparseGeometry {
            capacity: self.capacity,
            grain_sectors: self.grain_size,
            gtes_per_gt: self.num_gtes_per_gt,
            gd_entries,
            gd_offset,
            rgd_offset,
            overhead: self.overhead,
            zeroed_grain: self.flags & FLAG_ZEROED_GRAIN != 0,
            compressed: self.compressed(),
            markers: self.flags & FLAG_MARKERS != 0,
        })
    }
}

fn sparse_header(i: &[u8]) -> IResult<&[u8], SparseHeader> {
    let (i, _) = tag(&SPARSE_MAGIC[..])(i)?;
    let (i, version) = le_u32(i)?;
    let (i, flags) = le_u32(i)?;
    let (i, capacity) = le_u64(i)?;
    let (i, grain_size) = le_u64(i)?;
    let (i, descriptor_offset) = le_u64(i)?;
    let (i, descriptor_size) = le_u64(i)?;
    let (i, num_gtes_per_gt) = le_u32(i)?;
    let (i, rgd_offset) = le_u64(i)?;
    let (i, gd_offset) = le_u64(i)?;
    let (i, overhead) = le_u64(i)?;
    let (i, unclean_shutdown) = byte(i)?;
    let (i, nl) = take(4usize)(i)?;
    let (i, compress_algorithm) = le_u16(i)?;
    Ok((
        i,
        SparseHeader {
            version,
            flags,
            capacity,
            grain_size,
            descriptor_offset,
            descriptor_size,
            num_gtes_per_gt,
            rgd_offset,
            gd_offset,
            overhead,
            unclean_shutdown,
            newline_test: [nl[0], nl[1], nl[2], nl[3]],
            compress_algorithm,
        },
    ))
}

/// An ESX sparse (COWD) header, as stored (all fields little-endian `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowdHeader {
    pub version: u32,
    pub flags: u32,
    /// Guest size, in sectors.
    pub capacity: u32,
    /// Grain size, in sectors.
    pub grain_size: u32,
    /// Grain directory offset, in sectors.
    pub gd_offset: u32,
    /// Grain directory entries.
    pub gd_entries: u32,
    /// Next free sector.
    pub free_sector: u32,
}

/// Grain table entries per grain table in a COWD extent (fixed by the format).
pub const COWD_GTES_PER_GT: u32 = 4096;

impl CowdHeader {
    /// Decode from the first bytes of the extent file.
    pub fn parse(buf: &[u8]) -> Result<CowdHeader> {
        fn fields(i: &[u8]) -> IResult<&[u8], CowdHeader> {
            let (i, _) = tag(&COWD_MAGIC[..])(i)?;
            let (i, version) = le_u32(i)?;
            let (i, flags) = le_u32(i)?;
            let (i, capacity) = le_u32(i)?;
            let (i, grain_size) = le_u32(i)?;
            let (i, gd_offset) = le_u32(i)?;
            let (i, gd_entries) = le_u32(i)?;
            let (i, free_sector) = le_u32(i)?;
            Ok((
                i,
                CowdHeader {
                    version,
                    flags,
                    capacity,
                    grain_size,
                    gd_offset,
                    gd_entries,
                    free_sector,
                },
            ))
        }
        fields(buf)
            .map(|(_, h)| h)
            .map_err(|_| Error::corrupt("VMDK COWD header", 0, "bad magic or truncated header"))
    }

    /// Validate against the limits and the file length.
    pub fn geometry(&self, file_len: u64) -> Result<SparseGeometry> {
        let bad = |msg: String| Error::corrupt("VMDK COWD header", 0, msg);
        let grain = u64::from(self.grain_size);
        if grain == 0 || grain > MAX_GRAIN_SECTORS {
            return Err(bad(format!("invalid grain size of {grain} sectors")));
        }
        let gd_entries = u64::from(self.gd_entries);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(bad(format!(
                "grain directory of {gd_entries} entries is too large"
            )));
        }
        let capacity = u64::from(self.capacity);
        if capacity.div_ceil(grain * u64::from(COWD_GTES_PER_GT)) > gd_entries {
            return Err(bad("grain directory too small for the capacity".into()));
        }
        let gd_offset = u64::from(self.gd_offset) * SECTOR_SIZE;
        if gd_offset + gd_entries * 4 > file_len {
            return Err(bad("grain directory lies past the end of the file".into()));
        }
        Ok(SparseGeometry {
            capacity,
            grain_sectors: grain,
            gtes_per_gt: COWD_GTES_PER_GT,
            gd_entries,
            gd_offset,
            rgd_offset: None,
            overhead: 0,
            zeroed_grain: false,
            compressed: false,
            markers: false,
        })
    }
}

/// The checked shape of a sparse extent: everything needed to map guest offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseGeometry {
    /// Guest size, in sectors.
    pub capacity: u64,
    /// Grain size, in sectors.
    pub grain_sectors: u64,
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Grain directory entries.
    pub gd_entries: u64,
    /// Byte offset of the grain directory.
    pub gd_offset: u64,
    /// Byte offset of the redundant grain directory, if there is one.
    pub rgd_offset: Option<u64>,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Grain table entry 1 means a zero grain.
    pub zeroed_grain: bool,
    /// Grains are deflate-compressed.
    pub compressed: bool,
    /// Compressed grains start with a 12-byte grain marker.
    pub markers: bool,
}

impl SparseGeometry {
    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR_SIZE
    }

    /// Guest bytes covered by one grain table.
    pub fn gt_coverage_bytes(&self) -> u64 {
        self.grain_bytes() * u64::from(self.gtes_per_gt)
    }

    /// Bytes of one grain table on disk.
    pub fn gt_bytes(&self) -> u64 {
        u64::from(self.gtes_per_gt) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 80 bytes of a 5 MiB monolithicSparse extent made by qemu-img 10.
    const QEMU_HEADER: [u8; 80] = [
        b'K', b'D', b'M', b'V', // magic
        0x01, 0, 0, 0, // version 1
        0x03, 0, 0, 0, // flags: newline test, redundant GD
        0x00, 0x28, 0, 0, 0, 0, 0, 0, // capacity 10240 sectors
        0x80, 0, 0, 0, 0, 0, 0, 0, // grain 128 sectors
        0x01, 0, 0, 0, 0, 0, 0, 0, // descriptor at sector 1
        0x14, 0, 0, 0, 0, 0, 0, 0, // descriptor 20 sectors
        0x00, 0x02, 0, 0, // 512 entries per grain table
        0x15, 0, 0, 0, 0, 0, 0, 0, // redundant GD at sector 21
        0x1a, 0, 0, 0, 0, 0, 0, 0, // GD at sector 26
        0x80, 0, 0, 0, 0, 0, 0, 0,    // overhead 128 sectors
        0x00, // clean
        b'\n', b' ', b'\r', b'\n', // newline test
        0x00, 0x00, // no compression
        0x00,
    ];

    fn qemu_header() -> SparseHeader {
        SparseHeader::parse(&QEMU_HEADER).unwrap()
    }

    #[test]
    fn a_qemu_sparse_header_decodes_field_by_field() {
        let h = qemu_header();
        assert_eq!(h.version, 1);
        assert_eq!(h.flags, FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD);
        assert_eq!(h.capacity, 10240);
        assert_eq!(h.grain_size, 128);
        assert_eq!((h.descriptor_offset, h.descriptor_size), (1, 20));
        assert_eq!(h.num_gtes_per_gt, 512);
        assert_eq!((h.rgd_offset, h.gd_offset, h.overhead), (21, 26, 128));
        assert_eq!(h.newline_test, NEWLINE_TEST);
        assert!(!h.compressed());
    }

    #[test]
    fn encoding_a_decoded_header_gives_back_the_same_bytes() {
        let mut out = [0u8; HEADER_SIZE];
        qemu_header().write(&mut out);
        assert_eq!(&out[..80], &QEMU_HEADER[..]);
        assert!(out[80..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_qemu_header_has_a_valid_geometry() {
        let g = qemu_header().geometry(65536, 0).unwrap();
        assert_eq!(g.gd_entries, 1);
        assert_eq!(g.gd_offset, 26 * 512);
        assert_eq!(g.rgd_offset, Some(21 * 512));
        assert_eq!(g.grain_bytes(), 65536);
    }

    #[test]
    fn header_rejects_a_bad_magic_and_a_truncated_sector() {
        let mut bytes = QEMU_HEADER;
        bytes[0] = b'X';
        assert!(SparseHeader::parse(&bytes)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(SparseHeader::parse(&QEMU_HEADER[..40])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn header_rejects_a_grain_size_of_zero_or_over_one_gibibyte() {
        for grain in [0, MAX_GRAIN_SECTORS + 1, u64::MAX] {
            let h = SparseHeader {
                grain_size: grain,
                ..qemu_header()
            };
            let err = h.geometry(65536, 0).unwrap_err().to_string();
            assert!(err.contains("grain size"), "{err}");
        }
    }

    #[test]
    fn header_rejects_grain_tables_of_more_than_512_entries() {
        for n in [0, 513, u32::MAX] {
            let h = SparseHeader {
                num_gtes_per_gt: n,
                ..qemu_header()
            };
            assert!(h
                .geometry(65536, 0)
                .unwrap_err()
                .to_string()
                .contains("grain table"));
        }
    }

    #[test]
    fn header_rejects_version_four() {
        let h = SparseHeader {
            version: 4,
            ..qemu_header()
        };
        assert!(matches!(h.geometry(65536, 0), Err(Error::Unsupported(_))));
    }

    #[test]
    fn header_rejects_a_grain_directory_past_the_end_of_the_file() {
        let h = SparseHeader {
            gd_offset: 1 << 40,
            ..qemu_header()
        };
        let err = h.geometry(65536, 0).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
        let h = SparseHeader {
            gd_offset: u64::MAX / 2,
            ..qemu_header()
        };
        assert!(h.geometry(65536, 0).is_err());
    }

    #[test]
    fn header_rejects_a_huge_grain_directory_before_allocating_it() {
        let h = SparseHeader {
            capacity: MAX_EXTENT_SECTORS,
            grain_size: 1,
            num_gtes_per_gt: 1,
            ..qemu_header()
        };
        assert!(h
            .geometry(65536, 0)
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn header_rejects_a_file_shorter_than_its_overhead() {
        let err = qemu_header().geometry(4096, 0).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
