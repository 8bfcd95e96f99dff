//! The VHD footer: the 512 big-endian bytes at the end of every VHD file (and, for dynamic
//! and differencing disks, their copy at offset 0), its checksum, the CHS geometry and
//! the rule QEMU follows to choose between the geometry and the stored size.
//!
//! Layout (offsets in bytes): 0x00 cookie `conectix`; 0x08 features (bit 1 always set);
//! 0x0c format version 1.0; 0x10 data offset (the dynamic header; all ones for fixed
//! disks); 0x18 timestamp (seconds since 2000-01-01 UTC); 0x1c creator application (four
//! bytes); 0x20 creator version; 0x24 creator host OS; 0x28 original size; 0x30 current
//! size; 0x38 geometry (cylinders u16, heads u8, sectors per track u8); 0x3c disk type
//! (2 fixed, 3 dynamic, 4 differencing); 0x40 checksum; 0x44 unique id (16 bytes); 0x54
//! saved-state flag; the rest is reserved and kept as found.

use crate::error::{Error, Result};
use byteorder::{BigEndian as BE, ByteOrder};

/// Bytes of the footer.
pub const FOOTER_LEN: usize = 512;
/// The cookie every footer starts with.
pub const COOKIE: &[u8; 8] = b"conectix";
/// The features field every writer sets (bit 1, "reserved", must be on).
pub const FEATURES: u32 = 2;
/// Format version 1.0.
pub const VERSION: u32 = 0x0001_0000;
/// The data offset of a fixed disk: no further structure.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// The Unix time of the footer's epoch, 2000-01-01 00:00:00 UTC.
pub const TIMESTAMP_BASE: u64 = 946_684_800;
/// The largest disk QEMU opens or creates, in sectors (2040 GiB).
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// The largest geometry: 65535 cylinders, 16 heads, 255 sectors per track. An image with
/// this geometry is sized by its current-size field whatever wrote it.
pub const MAX_GEOMETRY: Geometry = Geometry {
    cylinders: 65535,
    heads: 16,
    sectors_per_track: 255,
};
/// Sector size.
pub const SECTOR: u64 = 512;
/// The creator application QEMU writes when the size follows the geometry.
pub const APP_CHS: &[u8; 4] = b"qemu";
/// The creator application QEMU writes with `force_size=on` (the current size counts).
pub const APP_CURRENT_SIZE: &[u8; 4] = b"qem2";
/// The creator version QEMU writes (that of Virtual PC 2007: 5.3).
pub const CREATOR_VERSION: u32 = 0x0005_0003;
/// The creator host OS QEMU writes.
pub const CREATOR_OS: &[u8; 4] = b"Wi2k";

/// What kind of disk the footer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// The data is the file itself, followed by the footer.
    Fixed,
    /// Blocks are allocated as they are written.
    Dynamic,
    /// A dynamic disk whose clear bitmap bits read from a parent.
    Differencing,
    /// Anything else (QEMU reads a footer at offset 0 as dynamic whatever it says).
    Other(u32),
}

impl DiskType {
    /// Decode the type field.
    pub fn from_u32(v: u32) -> Self {
        match v {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => DiskType::Other(other),
        }
    }

    /// Encode the type field.
    pub fn to_u32(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
            DiskType::Other(v) => v,
        }
    }
}

/// A cylinder/head/sector geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Sectors the geometry addresses.
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// The geometry the VHD specification gives `total_sectors` (which it may round down):
    /// 17, 31 or 63 sectors per track with at least 4 and at most 16 heads below 127 GiB,
    /// 255 sectors and 16 heads from there, capped at [`MAX_GEOMETRY`].
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(MAX_GEOMETRY.sectors());
        let (spt, heads, cyl_heads) = if total >= 65535 * 16 * 63 {
            (255, 16, total / 255)
        } else {
            let mut spt = 17;
            let mut cyl_heads = total / spt;
            let mut heads = cyl_heads.div_ceil(1024).max(4);
            if cyl_heads >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cyl_heads = total / spt;
            }
            if cyl_heads >= heads * 1024 {
                spt = 63;
                heads = 16;
                cyl_heads = total / spt;
            }
            (spt, heads, cyl_heads)
        };
        Geometry {
            cylinders: (cyl_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }
}

/// The size a new image of `size` bytes gets (rounded up to a sector) and its geometry,
/// as QEMU computes them: without `force_size`, the smallest geometry holding the size
/// (the image grows to it); with it, or past what a geometry can hold, the maximum
/// geometry and the size itself.
pub fn rounded_size(size: u64, force_size: bool) -> Result<(u64, Geometry)> {
    let size = size.next_multiple_of(SECTOR);
    let mut geometry = Geometry::default();
    if force_size {
        geometry = MAX_GEOMETRY;
    } else {
        let wanted = (size / SECTOR).min(MAX_GEOMETRY.sectors());
        let mut extra = 0;
        while wanted > geometry.sectors() {
            geometry = Geometry::for_sectors(wanted + extra);
            extra += 1;
        }
    }
    if geometry == MAX_GEOMETRY {
        if size / SECTOR > MAX_SECTORS {
            return Err(Error::invalid(
                "The image size is too large for file format 'vpc'",
            ));
        }
        Ok((size, geometry))
    } else {
        Ok((geometry.sectors() * SECTOR, geometry))
    }
}

/// The one's complement of the byte sum of `b` (the checksum of footers and headers, taken
/// with the checksum field zeroed).
pub fn checksum(b: &[u8]) -> u32 {
    !b.iter().fold(0u32, |s, &x| s.wrapping_add(u32::from(x)))
}

/// A parsed footer; `raw` keeps every byte so that reserved fields are written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Features field.
    pub features: u32,
    /// Format version.
    pub version: u32,
    /// Offset of the dynamic header ([`NO_DATA_OFFSET`] for fixed disks).
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// The application that made the image (`qemu`, `qem2`, `win `, `vpc `, `d2v `...).
    pub creator_app: [u8; 4],
    /// Its version.
    pub creator_version: u32,
    /// Its host OS (`Wi2k`, `Mac `).
    pub creator_os: [u8; 4],
    /// The size at creation.
    pub original_size: u64,
    /// The size now.
    pub current_size: u64,
    /// The CHS geometry.
    pub geometry: Geometry,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The checksum as stored.
    pub checksum: u32,
    /// This image's unique id.
    pub uuid: [u8; 16],
    /// Whether the image is in a saved state.
    pub saved_state: u8,
    raw: [u8; FOOTER_LEN],
}

impl Footer {
    /// Decode 512 bytes that start with the cookie (the caller looks for it).
    pub fn parse(b: &[u8]) -> Result<Footer> {
        if b.len() < FOOTER_LEN || &b[..8] != COOKIE {
            return Err(Error::not_format("invalid VPC image"));
        }
        let mut raw = [0u8; FOOTER_LEN];
        raw.copy_from_slice(&b[..FOOTER_LEN]);
        let four = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x44..0x54]);
        Ok(Footer {
            features: BE::read_u32(&b[0x08..]),
            version: BE::read_u32(&b[0x0c..]),
            data_offset: BE::read_u64(&b[0x10..]),
            timestamp: BE::read_u32(&b[0x18..]),
            creator_app: four(0x1c),
            creator_version: BE::read_u32(&b[0x20..]),
            creator_os: four(0x24),
            original_size: BE::read_u64(&b[0x28..]),
            current_size: BE::read_u64(&b[0x30..]),
            geometry: Geometry {
                cylinders: BE::read_u16(&b[0x38..]),
                heads: b[0x3a],
                sectors_per_track: b[0x3b],
            },
            disk_type: DiskType::from_u32(BE::read_u32(&b[0x3c..])),
            checksum: BE::read_u32(&b[0x40..]),
            uuid,
            saved_state: b[0x54],
            raw,
        })
    }

    /// A footer for a new image, as QEMU writes it (the data offset is 512 for dynamic and
    /// differencing disks, none for fixed ones), naming `creator_app` as its maker.
    pub fn new(
        size: u64,
        geometry: Geometry,
        disk_type: DiskType,
        uuid: [u8; 16],
        creator_app: [u8; 4],
    ) -> Footer {
        let mut raw = [0u8; FOOTER_LEN];
        raw[..8].copy_from_slice(COOKIE);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Footer {
            features: FEATURES,
            version: VERSION,
            data_offset: if disk_type == DiskType::Fixed {
                NO_DATA_OFFSET
            } else {
                FOOTER_LEN as u64
            },
            timestamp: now.saturating_sub(TIMESTAMP_BASE) as u32,
            creator_app,
            creator_version: CREATOR_VERSION,
            creator_os: *CREATOR_OS,
            original_size: size,
            current_size: size,
            geometry,
            disk_type,
            checksum: 0,
            uuid,
            saved_state: 0,
            raw,
        }
    }

    /// Encode the footer with a fresh checksum.
    pub fn write(&self) -> [u8; FOOTER_LEN] {
        let mut b = self.raw;
        b[..8].copy_from_slice(COOKIE);
        BE::write_u32(&mut b[0x08..], self.features);
        BE::write_u32(&mut b[0x0c..], self.version);
        BE::write_u64(&mut b[0x10..], self.data_offset);
        BE::write_u32(&mut b[0x18..], self.timestamp);
        b[0x1c..0x20].copy_from_slice(&self.creator_app);
        BE::write_u32(&mut b[0x20..], self.creator_version);
        b[0x24..0x28].copy_from_slice(&self.creator_os);
        BE::write_u64(&mut b[0x28..], self.original_size);
        BE::write_u64(&mut b[0x30..], self.current_size);
        BE::write_u16(&mut b[0x38..], self.geometry.cylinders);
        b[0x3a] = self.geometry.heads;
        b[0x3b] = self.geometry.sectors_per_track;
        BE::write_u32(&mut b[0x3c..], self.disk_type.to_u32());
        BE::write_u32(&mut b[0x40..], 0);
        b[0x44..0x54].copy_from_slice(&self.uuid);
        b[0x54] = self.saved_state;
        let sum = checksum(&b);
        BE::write_u32(&mut b[0x40..], sum);
        b
    }

    /// The checksum the stored bytes should carry.
    pub fn computed_checksum(&self) -> u32 {
        let mut b = self.raw;
        BE::write_u32(&mut b[0x40..], 0);
        checksum(&b)
    }

    /// QEMU refuses a footer whose checksum does not match ("Incorrect header checksum").
    pub fn verify_checksum(&self) -> Result<()> {
        if self.computed_checksum() != self.checksum {
            return Err(Error::invalid("Incorrect header checksum"));
        }
        Ok(())
    }

    /// Whether the image is sized by its geometry: those made by Virtual PC and by QEMU
    /// without `force_size` (creator `vpc ` or `qemu`), unless the geometry is the maximum
    /// one. Every other creator (Hyper-V `win `, Disk2VHD `d2v `, Azure, XenServer, QEMU's
    /// `qem2`) is sized by the current-size field, as QEMU 10 reads them.
    pub fn sized_by_geometry(&self) -> bool {
        let chs_app = &self.creator_app == b"vpc " || &self.creator_app == APP_CHS;
        chs_app && self.geometry != MAX_GEOMETRY
    }

    /// The guest-visible size in bytes, as QEMU computes it (whole sectors).
    pub fn virtual_size(&self) -> u64 {
        if self.sized_by_geometry() {
            self.geometry.sectors() * SECTOR
        } else {
            self.current_size / SECTOR * SECTOR
        }
    }

    /// QEMU's limit: at most [`MAX_SECTORS`] sectors ("File too large").
    pub fn validate_size(&self) -> Result<()> {
        if self.virtual_size() / SECTOR > MAX_SECTORS {
            // QEMU's words (its EFBIG); the limit is 2040 GiB.
            return Err(Error::invalid("File too large"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The footer of `qemu-img create -f vpc a.vhd 64M` (timestamp and UUID replaced).
    fn qemu_64m() -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[..8].copy_from_slice(b"conectix");
        b[0x0b] = 2; // features
        b[0x0c..0x10].copy_from_slice(&[0, 1, 0, 0]); // version 1.0
        b[0x16] = 2; // data offset 0x200
        b[0x18..0x1c].copy_from_slice(&[0x32, 0xa1, 0x1e, 0xbe]); // timestamp
        b[0x1c..0x20].copy_from_slice(b"qemu");
        b[0x20..0x24].copy_from_slice(&[0, 5, 0, 3]); // creator version 5.3
        b[0x24..0x28].copy_from_slice(b"Wi2k");
        b[0x28..0x30].copy_from_slice(&[0, 0, 0, 0, 0x04, 0, 0x40, 0]); // original size
        b[0x30..0x38].copy_from_slice(&[0, 0, 0, 0, 0x04, 0, 0x40, 0]); // current size
        b[0x38..0x3c].copy_from_slice(&[0x03, 0xc4, 8, 17]); // 964/8/17
        b[0x3f] = 3; // dynamic
        b[0x44] = 0x7e; // UUID
        let sum = checksum(&b);
        b[0x40..0x44].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn a_qemu_footer_parses_field_by_field_and_writes_back_the_same_bytes() {
        let b = qemu_64m();
        let f = Footer::parse(&b).unwrap();
        f.verify_checksum().unwrap();
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.data_offset, 512);
        assert_eq!(f.current_size, 67_125_248);
        assert_eq!(
            (
                f.geometry.cylinders,
                f.geometry.heads,
                f.geometry.sectors_per_track
            ),
            (964, 8, 17)
        );
        assert!(f.sized_by_geometry());
        assert_eq!(f.virtual_size(), 67_125_248);
        assert_eq!(f.write(), b);
    }

    #[test]
    fn sixty_four_mib_rounds_up_to_the_geometry_qemu_picks_unless_forced() {
        let (size, g) = rounded_size(64 << 20, false).unwrap();
        assert_eq!(
            (size, g.cylinders, g.heads, g.sectors_per_track),
            (67_125_248, 964, 8, 17)
        );
        let (size, g) = rounded_size(64 << 20, true).unwrap();
        assert_eq!((size, g), (64 << 20, MAX_GEOMETRY));
        assert_eq!(rounded_size(1_000_001, false).unwrap().0, 1_009_664);
        assert_eq!(rounded_size(0, false).unwrap().0, 0);
        // Past 127 GiB no geometry holds the size: the size itself, with the maximum one.
        assert_eq!(
            rounded_size(200 << 30, false).unwrap(),
            (200 << 30, MAX_GEOMETRY)
        );
        assert!(rounded_size(2040 << 30, false).is_ok());
        assert!(rounded_size((2040 << 30) + 512, true).is_err());
    }

    #[test]
    fn the_creator_application_decides_between_geometry_and_current_size() {
        let mut f = Footer::parse(&qemu_64m()).unwrap();
        f.current_size = 64 << 20;
        for (app, size) in [
            (b"qemu", 67_125_248),
            (b"vpc ", 67_125_248),
            (b"win ", 64 << 20),
            (b"qem2", 64 << 20),
            (b"d2v ", 64 << 20),
            (b"wa\0\0", 64 << 20),
        ] {
            f.creator_app = *app;
            assert_eq!(f.virtual_size(), size, "{app:?}");
        }
        f.creator_app = *b"qemu";
        f.geometry = MAX_GEOMETRY;
        assert_eq!(f.virtual_size(), 64 << 20);
    }

    #[test]
    fn a_changed_byte_breaks_the_checksum_and_a_missing_cookie_is_not_a_footer() {
        let mut b = qemu_64m();
        b[0x100] = 1;
        let err = Footer::parse(&b).unwrap().verify_checksum().unwrap_err();
        assert!(
            err.to_string().contains("Incorrect header checksum"),
            "{err}"
        );
        b[0] = b'C';
        assert!(Footer::parse(&b).is_err());
    }
}
