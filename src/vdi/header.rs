//! The VDI header: the 512 bytes at the start of the file, their little-endian fields,
//! and the checks QEMU makes before it trusts them (with QEMU's messages).
//!
//! Layout (offsets in bytes): a 64-byte text banner; at 0x40 the signature `0xbeda107f`;
//! 0x44 version (major in the high half, 1.1 is the only one written); 0x48 the length of
//! the header that follows the banner and signature (0x180); 0x4c image type (1 dynamic,
//! 2 static, 3 undo, 4 differencing); 0x50 flags; 0x54 a 256-byte description; 0x154 the
//! block map offset; 0x158 the data offset; 0x15c–0x16b a legacy geometry whose last field
//! is the sector size (512); 0x170 the disk size (u64); 0x178 the block size; 0x17c extra
//! bytes per block; 0x180 blocks in the image; 0x184 blocks allocated; 0x188 this image's
//! UUID; 0x198 the UUID of the last snapshot; 0x1a8 the link UUID (the parent image's UUID,
//! for undo and differencing images); 0x1b8 the parent's modification UUID.

use crate::error::{Error, Result};
use byteorder::{ByteOrder, LittleEndian as LE};

/// The header occupies the first sector.
pub const HEADER_LEN: usize = 512;
/// The signature at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the only one QEMU reads and vdisk writes.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// The header length field QEMU and VirtualBox write.
pub const HEADER_SIZE_FIELD: u32 = 0x180;
/// The banner vdisk writes (QEMU's; VirtualBox writes its own name).
pub const BANNER: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";
/// Sector size; offsets must be multiples of it.
pub const SECTOR: u64 = 512;
/// The only block size QEMU accepts (and the VirtualBox default): 1 MiB.
pub const BLOCK_SIZE: u32 = 1 << 20;
/// Most blocks QEMU accepts: the block map must stay under 2 GiB.
pub const MAX_BLOCKS: u32 = ((i32::MAX as u32) + 1 - SECTOR as u32) / 4;
/// The largest disk size: [`MAX_BLOCKS`] blocks of 1 MiB.
pub const MAX_DISK_SIZE: u64 = MAX_BLOCKS as u64 * BLOCK_SIZE as u64;
/// A block map entry for a block that was never written (reads as the parent, or zeros).
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// A block map entry for a block that reads as zeros without data in the file.
pub const DISCARDED: u32 = 0xffff_fffe;

/// What kind of image the header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// Blocks are allocated as they are written.
    Dynamic,
    /// Every block was allocated at creation.
    Static,
    /// An undo image: changes over a parent, found by UUID.
    Undo,
    /// A differencing image: changes over a parent, found by UUID.
    Differencing,
    /// A type this reader does not know (QEMU reads such images as dynamic ones).
    Other(u32),
}

impl ImageType {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => ImageType::Dynamic,
            2 => ImageType::Static,
            3 => ImageType::Undo,
            4 => ImageType::Differencing,
            other => ImageType::Other(other),
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            ImageType::Dynamic => 1,
            ImageType::Static => 2,
            ImageType::Undo => 3,
            ImageType::Differencing => 4,
            ImageType::Other(v) => v,
        }
    }

    /// Whether unallocated blocks read from a parent image.
    pub fn has_parent(self) -> bool {
        matches!(self, ImageType::Undo | ImageType::Differencing)
    }
}

/// A parsed VDI header; `raw` keeps every byte so that unknown fields are written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Version field.
    pub version: u32,
    /// Image type.
    pub image_type: ImageType,
    /// Block map offset.
    pub offset_bmap: u32,
    /// Offset of data block 0.
    pub offset_data: u32,
    /// Sector size of the legacy geometry.
    pub sector_size: u32,
    /// Disk size in bytes as stored.
    pub disk_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Extra bytes before each block's data.
    pub block_extra: u32,
    /// Entries of the block map.
    pub blocks_in_image: u32,
    /// Data blocks in the file.
    pub blocks_allocated: u32,
    /// This image's UUID.
    pub uuid_image: [u8; 16],
    /// The UUID of the last snapshot.
    pub uuid_last_snap: [u8; 16],
    /// The parent image's UUID (undo and differencing images).
    pub uuid_link: [u8; 16],
    /// The parent's modification UUID.
    pub uuid_parent: [u8; 16],
    /// The signature field.
    pub signature: u32,
    raw: [u8; HEADER_LEN],
}

fn uuid(b: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    u
}

impl Header {
    /// Decode the first sector (no checks beyond its length).
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(Error::corrupt(
                "VDI header",
                0,
                "the file is shorter than one sector",
            ));
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&b[..HEADER_LEN]);
        Ok(Header {
            signature: LE::read_u32(&b[0x40..]),
            version: LE::read_u32(&b[0x44..]),
            image_type: ImageType::from_u32(LE::read_u32(&b[0x4c..])),
            offset_bmap: LE::read_u32(&b[0x154..]),
            offset_data: LE::read_u32(&b[0x158..]),
            sector_size: LE::read_u32(&b[0x168..]),
            disk_size: LE::read_u64(&b[0x170..]),
            block_size: LE::read_u32(&b[0x178..]),
            block_extra: LE::read_u32(&b[0x17c..]),
            blocks_in_image: LE::read_u32(&b[0x180..]),
            blocks_allocated: LE::read_u32(&b[0x184..]),
            uuid_image: uuid(b, 0x188),
            uuid_last_snap: uuid(b, 0x198),
            uuid_link: uuid(b, 0x1a8),
            uuid_parent: uuid(b, 0x1b8),
            raw,
        })
    }

    /// A header for a new image of `disk_size` bytes (rounded up to whole sectors).
    pub fn new(
        disk_size: u64,
        image_type: ImageType,
        uuid_image: [u8; 16],
        snap: [u8; 16],
    ) -> Header {
        let disk_size = disk_size.next_multiple_of(SECTOR);
        let blocks = disk_size.div_ceil(u64::from(BLOCK_SIZE)) as u32;
        let bmap_len = (u64::from(blocks) * 4).next_multiple_of(SECTOR) as u32;
        let mut raw = [0u8; HEADER_LEN];
        raw[..BANNER.len()].copy_from_slice(BANNER);
        LE::write_u32(&mut raw[0x48..], HEADER_SIZE_FIELD);
        Header {
            signature: SIGNATURE,
            version: VERSION_1_1,
            image_type,
            offset_bmap: SECTOR as u32,
            offset_data: SECTOR as u32 + bmap_len,
            sector_size: SECTOR as u32,
            disk_size,
            block_size: BLOCK_SIZE,
            block_extra: 0,
            blocks_in_image: blocks,
            blocks_allocated: if image_type == ImageType::Static {
                blocks
            } else {
                0
            },
            uuid_image,
            uuid_last_snap: snap,
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
            raw,
        }
    }

    /// Encode the header (fields over the bytes it was read from).
    pub fn write(&self) -> [u8; HEADER_LEN] {
        let mut b = self.raw;
        LE::write_u32(&mut b[0x40..], self.signature);
        LE::write_u32(&mut b[0x44..], self.version);
        LE::write_u32(&mut b[0x4c..], self.image_type.to_u32());
        LE::write_u32(&mut b[0x154..], self.offset_bmap);
        LE::write_u32(&mut b[0x158..], self.offset_data);
        LE::write_u32(&mut b[0x168..], self.sector_size);
        LE::write_u64(&mut b[0x170..], self.disk_size);
        LE::write_u32(&mut b[0x178..], self.block_size);
        LE::write_u32(&mut b[0x17c..], self.block_extra);
        LE::write_u32(&mut b[0x180..], self.blocks_in_image);
        LE::write_u32(&mut b[0x184..], self.blocks_allocated);
        b[0x188..0x198].copy_from_slice(&self.uuid_image);
        b[0x198..0x1a8].copy_from_slice(&self.uuid_last_snap);
        b[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        b[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        b
    }

    /// The guest-visible size: the disk size rounded up to whole sectors, as QEMU does
    /// (VirtualBox can write odd sizes).
    pub fn virtual_size(&self) -> u64 {
        self.disk_size.next_multiple_of(SECTOR)
    }

    /// Bytes of the block map as stored (whole sectors).
    pub fn bmap_bytes(&self) -> u64 {
        (u64::from(self.blocks_in_image) * 4).next_multiple_of(SECTOR)
    }

    /// Where data block `index` starts in the file.
    pub fn block_offset(&self, index: u32) -> u64 {
        u64::from(self.offset_data)
            + u64::from(index) * u64::from(self.block_size)
            + u64::from(self.block_extra)
    }

    /// QEMU's checks, in QEMU's order and words; then the ones that keep a hostile header
    /// from sizing buffers: the block map must lie inside a file of `file_len` bytes.
    /// Undo and differencing images (link UUID set) are accepted here: vdisk reads them
    /// through their parent, where QEMU refuses them.
    pub fn validate(&self, file_len: u64) -> Result<()> {
        let unsupported = |m: String| Err(Error::invalid(m));
        if self.disk_size > MAX_DISK_SIZE {
            return unsupported(format!(
                "Unsupported VDI image size (size is {:#x}, max supported is {:#x})",
                self.disk_size, MAX_DISK_SIZE
            ));
        }
        if self.signature != SIGNATURE {
            return Err(Error::not_format(format!(
                "Image not in VDI format (bad signature {:08x})",
                self.signature
            )));
        }
        if self.version != VERSION_1_1 {
            return unsupported(format!(
                "unsupported VDI image (version {}.{})",
                self.version >> 16,
                self.version & 0xffff
            ));
        }
        if u64::from(self.offset_bmap) % SECTOR != 0 {
            return unsupported(format!(
                "unsupported VDI image (unaligned block map offset {:#x})",
                self.offset_bmap
            ));
        }
        if u64::from(self.offset_data) % SECTOR != 0 {
            return unsupported(format!(
                "unsupported VDI image (unaligned data offset {:#x})",
                self.offset_data
            ));
        }
        if u64::from(self.sector_size) != SECTOR {
            return unsupported(format!(
                "unsupported VDI image (sector size {} is not {SECTOR})",
                self.sector_size
            ));
        }
        if self.block_size != BLOCK_SIZE {
            return unsupported(format!(
                "unsupported VDI image (block size {} is not {BLOCK_SIZE})",
                self.block_size
            ));
        }
        let room = u64::from(self.blocks_in_image) * u64::from(self.block_size);
        if self.virtual_size() > room {
            return unsupported(format!(
                "unsupported VDI image (disk size {}, image bitmap has room for {room})",
                self.virtual_size()
            ));
        }
        if !self.image_type.has_parent() && self.uuid_link != [0; 16] {
            return unsupported("unsupported VDI image (non-NULL link UUID)".into());
        }
        if !self.image_type.has_parent() && self.uuid_parent != [0; 16] {
            return unsupported("unsupported VDI image (non-NULL parent UUID)".into());
        }
        if self.blocks_in_image > MAX_BLOCKS {
            return unsupported(format!(
                "unsupported VDI image (too many blocks {}, max is {MAX_BLOCKS})",
                self.blocks_in_image
            ));
        }
        self.validate_layout(file_len)
    }

    /// The block map lies inside the file and before the data; extra bytes per block are
    /// not used by any writer and are refused.
    fn validate_layout(&self, file_len: u64) -> Result<()> {
        let bmap_end = u64::from(self.offset_bmap) + self.bmap_bytes();
        if u64::from(self.offset_bmap) < HEADER_LEN as u64 || bmap_end > file_len {
            return Err(Error::corrupt(
                "VDI block map",
                u64::from(self.offset_bmap),
                format!(
                    "{} entries do not fit in the file ({file_len} bytes) after the header",
                    self.blocks_in_image
                ),
            ));
        }
        if u64::from(self.offset_data) < bmap_end {
            return Err(Error::corrupt(
                "VDI header",
                0x158,
                format!(
                    "data offset {:#x} lies inside the block map (which ends at {bmap_end:#x})",
                    self.offset_data
                ),
            ));
        }
        if self.block_extra != 0 {
            return Err(Error::invalid(format!(
                "unsupported VDI image ({} extra bytes per block)",
                self.block_extra
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first sector of `qemu-img create -f vdi a.vdi 5M` (UUIDs replaced).
    fn qemu_5m() -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..BANNER.len()].copy_from_slice(BANNER);
        b[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]); // signature
        b[0x44..0x48].copy_from_slice(&[1, 0, 1, 0]); // version 1.1
        b[0x48..0x4c].copy_from_slice(&[0x80, 1, 0, 0]); // header size 0x180
        b[0x4c] = 1; // dynamic
        b[0x154..0x158].copy_from_slice(&[0, 2, 0, 0]); // block map at 0x200
        b[0x158..0x15c].copy_from_slice(&[0, 4, 0, 0]); // data at 0x400
        b[0x168..0x16c].copy_from_slice(&[0, 2, 0, 0]); // sector size 512
        b[0x170..0x178].copy_from_slice(&[0, 0, 0x50, 0, 0, 0, 0, 0]); // 5 MiB
        b[0x178..0x17c].copy_from_slice(&[0, 0, 0x10, 0]); // block size 1 MiB
        b[0x180] = 5; // blocks in image
        b[0x188] = 0xaa; // image UUID
        b[0x198] = 0xbb; // last snapshot UUID
        b
    }

    #[test]
    fn a_qemu_header_parses_field_by_field_and_writes_back_the_same_bytes() {
        let b = qemu_5m();
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.image_type, ImageType::Dynamic);
        assert_eq!((h.offset_bmap, h.offset_data), (0x200, 0x400));
        assert_eq!(h.disk_size, 5 << 20);
        assert_eq!((h.blocks_in_image, h.blocks_allocated), (5, 0));
        assert_eq!(h.block_offset(2), 0x400 + (2 << 20));
        h.validate(0x400).unwrap();
        assert_eq!(h.write(), b);
        let mut fresh = Header::new(5 << 20, ImageType::Dynamic, h.uuid_image, h.uuid_last_snap);
        fresh.uuid_image = h.uuid_image;
        assert_eq!(fresh.write(), b);
    }

    #[test]
    fn each_bad_field_gets_qemus_message() {
        let cases: &[(usize, &[u8], &str)] = &[
            (
                0x40,
                &[0, 0, 0, 0],
                "Image not in VDI format (bad signature 00000000)",
            ),
            (0x44, &[0, 0, 2, 0], "unsupported VDI image (version 2.0)"),
            (0x154, &[1, 2, 0, 0], "unaligned block map offset 0x201"),
            (0x158, &[1, 4, 0, 0], "unaligned data offset 0x401"),
            (0x168, &[0, 1, 0, 0], "sector size 256 is not 512"),
            (0x178, &[0, 0, 0x20, 0], "block size 2097152 is not 1048576"),
            (
                0x180,
                &[4],
                "disk size 5242880, image bitmap has room for 4194304",
            ),
            (0x1a8, &[1], "non-NULL link UUID"),
            (
                0x170,
                &[0, 0, 0, 0, 0, 0, 0, 0x40],
                "Unsupported VDI image size",
            ),
            (
                0x180,
                &[0x81, 0xff, 0xff, 0x1f],
                "too many blocks 536870785",
            ),
        ];
        for (at, bytes, want) in cases {
            let mut b = qemu_5m();
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
            let err = Header::parse(&b).unwrap().validate(1 << 40).unwrap_err();
            assert!(err.to_string().contains(want), "{at:#x}: {err}");
        }
    }

    #[test]
    fn a_block_map_past_the_end_of_the_file_is_refused_before_it_is_read() {
        let mut b = qemu_5m();
        b[0x180..0x184].copy_from_slice(&[0, 0, 0, 0x10]);
        let err = Header::parse(&b).unwrap().validate(0x400).unwrap_err();
        assert!(err.to_string().contains("VDI block map"), "{err}");
    }

    #[test]
    fn a_differencing_image_may_name_its_parent() {
        let mut b = qemu_5m();
        b[0x4c] = 4;
        b[0x1a8] = 7;
        let h = Header::parse(&b).unwrap();
        assert!(h.image_type.has_parent());
        h.validate(0x400).unwrap();
        assert_eq!(
            crate::uuid::to_string(&h.uuid_link),
            "07000000-0000-0000-0000-000000000000"
        );
    }
}
