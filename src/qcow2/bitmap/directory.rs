//! The bitmaps header extension and the bitmap directory: their byte layout, parsed and
//! written here only, and QEMU's rules for them.
//!
//! The extension (type 0x23852875, 24 bytes) holds the number of bitmaps, the directory's
//! size and its offset. The directory is a run of variable-length entries, each 8-byte
//! aligned: table offset (u64), table size in entries (u32), flags (u32), type (u8, 1 =
//! dirty tracking), granularity bits (u8), name length (u16), extra-data length (u32),
//! then the extra data and the name.
//!
//! The extension is valid only while the bitmaps autoclear bit is set; QEMU refuses an
//! image whose valid extension or directory breaks the rules checked here, so vdisk does
//! too, with an error naming the field, and without sizing a buffer from an unchecked field.

use super::{Ext, MAX_BITMAPS, MAX_BITMAP_BYTES, MAX_DIRECTORY_BYTES, MAX_NAME_BYTES};
use super::{MAX_GRANULARITY_BITS, MAX_TABLE_ENTRIES, MIN_GRANULARITY_BITS};
use crate::error::{Error, Result};
use crate::qcow2::header::{autoclear, ext, Header};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// Size of the fixed part of a directory entry.
const ENTRY_FIXED_LEN: usize = 24;
/// Flag bits the format defines (in use, auto); the others are reserved.
const KNOWN_FLAGS: u32 = IN_USE | AUTO;
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY_TRACKING: u8 = 1;

const S: &str = "bitmaps extension";
const D: &str = "bitmap directory";

/// Flag: the bitmap was being changed and may be inconsistent.
pub const IN_USE: u32 = 1;
/// Flag: the bitmap tracks guest writes (enabled).
pub const AUTO: u32 = 2;

/// One entry of the bitmap directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// Flag bits ([`IN_USE`], [`AUTO`]).
    pub flags: u32,
    /// Each bit covers 2^`granularity_bits` guest bytes.
    pub granularity_bits: u8,
    /// The bitmap's name.
    pub name: String,
}

impl DirEntry {
    /// The flags as qemu-img's `info` names them, in its order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & IN_USE != 0 {
            v.push("in-use");
        }
        if self.flags & AUTO != 0 {
            v.push("auto");
        }
        v
    }

    /// Whether the bitmap is marked inconsistent.
    pub fn in_use(&self) -> bool {
        self.flags & IN_USE != 0
    }

    /// Whether the bitmap tracks guest writes.
    pub fn enabled(&self) -> bool {
        self.flags & AUTO != 0
    }

    /// Bytes this entry takes in the directory.
    pub fn encoded_len(&self) -> u64 {
        (ENTRY_FIXED_LEN + self.name.len()).next_multiple_of(8) as u64
    }
}

/// The extension's fields, when the image has valid persistent bitmaps.
pub(crate) fn read_ext(h: &Header) -> Result<Option<Ext>> {
    if h.autoclear_features & autoclear::BITMAPS == 0 {
        return Ok(None);
    }
    let Some(e) = h.extension(ext::BITMAPS) else {
        return Ok(None);
    };
    if e.data.len() < 24 {
        return Err(Error::corrupt(S, 0, "extension is shorter than 24 bytes"));
    }
    let x = Ext {
        count: BigEndian::read_u32(&e.data[0..]),
        dir_size: BigEndian::read_u64(&e.data[8..]),
        dir_offset: BigEndian::read_u64(&e.data[16..]),
    };
    if BigEndian::read_u32(&e.data[4..]) != 0 {
        return Err(Error::corrupt(S, 0, "reserved field is not zero"));
    }
    if x.count == 0 || x.count > MAX_BITMAPS {
        return Err(Error::corrupt(
            S,
            0,
            format!("{} bitmaps (expected 1 to {MAX_BITMAPS})", x.count),
        ));
    }
    if x.dir_size > MAX_DIRECTORY_BYTES || x.dir_size < ENTRY_FIXED_LEN as u64 * u64::from(x.count)
    {
        return Err(Error::corrupt(
            S,
            0,
            format!(
                "bitmap directory size {} does not fit {} bitmaps within the limit of {MAX_DIRECTORY_BYTES}",
                x.dir_size, x.count
            ),
        ));
    }
    Ok(Some(x))
}

/// The extension bytes for `x` (`None`: no bitmaps, the extension is removed).
pub(crate) fn ext_bytes(x: Option<Ext>) -> Option<Vec<u8>> {
    let x = x?;
    let mut b = vec![0u8; 24];
    BigEndian::write_u32(&mut b[0..], x.count);
    BigEndian::write_u64(&mut b[8..], x.dir_size);
    BigEndian::write_u64(&mut b[16..], x.dir_offset);
    Some(b)
}

/// The bitmap directory of the image whose header is `h` (in a file of `file_len` bytes),
/// checked as the module doc says; empty when the image has no valid persistent bitmaps.
pub fn read_directory<St: Storage + ?Sized>(
    st: &St,
    h: &Header,
    file_len: u64,
) -> Result<Vec<DirEntry>> {
    let Some(x) = read_ext(h)? else {
        return Ok(Vec::new());
    };
    let cs = h.cluster_size();
    if x.dir_offset == 0
        || x.dir_offset % cs != 0
        || x.dir_offset.saturating_add(x.dir_size) > file_len
    {
        return Err(Error::corrupt(
            D,
            x.dir_offset,
            format!("directory offset is not a cluster offset inside the file ({file_len} bytes)"),
        ));
    }
    let mut dir = vec![0u8; x.dir_size as usize];
    st.read_at(&mut dir, x.dir_offset)
        .map_err(|e| Error::io("qcow2: reading the bitmap directory", e))?;
    let entries = parse(&dir, x.count, x.dir_offset)?;
    for (i, e) in entries.iter().enumerate() {
        check_entry(e, h.size, cs, file_len).map_err(|m| {
            Error::corrupt(D, x.dir_offset, format!("bitmap {i} ('{}'): {m}", e.name))
        })?;
    }
    Ok(entries)
}

/// Parse `count` entries filling `dir` exactly (`at`: the directory's offset, for errors).
pub(crate) fn parse(dir: &[u8], count: u32, at: u64) -> Result<Vec<DirEntry>> {
    let mut p = 0usize;
    let mut entries = Vec::new();
    for i in 0..count {
        let entry_at = at + p as u64;
        let bad = |msg: String| Error::corrupt(D, entry_at, format!("bitmap {i}: {msg}"));
        if p + ENTRY_FIXED_LEN > dir.len() {
            return Err(bad("entry lies past the end of the directory".into()));
        }
        let e = &dir[p..];
        let kind = e[16];
        let name_size = BigEndian::read_u16(&e[18..]);
        let extra = BigEndian::read_u32(&e[20..]);
        let len =
            (ENTRY_FIXED_LEN as u64 + u64::from(extra) + u64::from(name_size)).next_multiple_of(8);
        if p as u64 + len > dir.len() as u64 {
            return Err(bad("entry lies past the end of the directory".into()));
        }
        if extra != 0 {
            return Err(bad("bitmap extra data is not supported".into()));
        }
        if kind != TYPE_DIRTY_TRACKING {
            return Err(bad(format!("type {kind} is not a dirty-tracking bitmap")));
        }
        if name_size == 0 || name_size > MAX_NAME_BYTES {
            return Err(bad(format!("name length {name_size}")));
        }
        let name_at = p + ENTRY_FIXED_LEN;
        let name = std::str::from_utf8(&dir[name_at..name_at + usize::from(name_size)])
            .map_err(|_| bad("name is not UTF-8".into()))?;
        entries.push(DirEntry {
            table_offset: BigEndian::read_u64(&e[0..]),
            table_size: BigEndian::read_u32(&e[8..]),
            flags: BigEndian::read_u32(&e[12..]),
            granularity_bits: e[17],
            name: name.to_string(),
        });
        p += len as usize;
    }
    if p != dir.len() {
        return Err(Error::corrupt(
            D,
            at,
            format!("{} bytes follow the last of {count} entries", dir.len() - p),
        ));
    }
    Ok(entries)
}

/// QEMU's rules for one entry of an image of virtual size `size` and cluster size `cs`.
pub(crate) fn check_entry(
    e: &DirEntry,
    size: u64,
    cs: u64,
    file_len: u64,
) -> std::result::Result<(), String> {
    if e.table_offset == 0 || e.table_offset % cs != 0 {
        return Err(format!(
            "table offset {:#x} is not a cluster offset",
            e.table_offset
        ));
    }
    if e.table_size == 0
        || e.table_size > MAX_TABLE_ENTRIES
        || e.table_offset.saturating_add(u64::from(e.table_size) * 8) > file_len
    {
        return Err(format!(
            "table of {} entries at {:#x} does not fit in the file",
            e.table_size, e.table_offset
        ));
    }
    if !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&e.granularity_bits) {
        return Err(format!("granularity bits {}", e.granularity_bits));
    }
    if e.flags & !KNOWN_FLAGS != 0 {
        return Err(format!("reserved flags {:#x}", e.flags & !KNOWN_FLAGS));
    }
    let phys = u64::from(e.table_size) * cs;
    if phys > MAX_BITMAP_BYTES {
        return Err(format!(
            "{phys} bytes of bitmap data exceed {MAX_BITMAP_BYTES}"
        ));
    }
    let covered = (phys * 8)
        .checked_shl(u32::from(e.granularity_bits))
        .unwrap_or(u64::MAX);
    if !e.in_use() && size > covered {
        return Err(format!(
            "its table covers {covered} bytes of a {size}-byte disk"
        ));
    }
    Ok(())
}

/// The directory bytes for `entries` (in order).
pub(crate) fn encode(entries: &[DirEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let start = out.len();
        out.resize(start + e.encoded_len() as usize, 0);
        let b = &mut out[start..];
        BigEndian::write_u64(&mut b[0..], e.table_offset);
        BigEndian::write_u32(&mut b[8..], e.table_size);
        BigEndian::write_u32(&mut b[12..], e.flags);
        b[16] = TYPE_DIRTY_TRACKING;
        b[17] = e.granularity_bits;
        BigEndian::write_u16(&mut b[18..], e.name.len() as u16);
        b[ENTRY_FIXED_LEN..ENTRY_FIXED_LEN + e.name.len()].copy_from_slice(e.name.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: u32) -> DirEntry {
        DirEntry {
            table_offset: 0x30000,
            table_size: 1,
            flags,
            granularity_bits: 16,
            name: name.into(),
        }
    }

    #[test]
    fn an_entry_is_24_bytes_then_the_name_padded_to_8() {
        let b = encode(&[entry("b0", AUTO)]);
        assert_eq!(
            b,
            [
                0, 0, 0, 0, 0, 3, 0, 0, // table offset
                0, 0, 0, 1, // table size
                0, 0, 0, 2, // flags: auto
                1, 16, 0, 2, // type, granularity bits, name length
                0, 0, 0, 0, // extra data length
                b'b', b'0', 0, 0, 0, 0, 0, 0, // name and padding
            ]
        );
        assert_eq!(parse(&b, 1, 0).unwrap(), vec![entry("b0", AUTO)]);
    }

    #[test]
    fn parsing_refuses_extra_data_other_types_and_trailing_bytes() {
        let good = encode(&[entry("x", 0), entry("yy", IN_USE | AUTO)]);
        assert_eq!(parse(&good, 2, 0).unwrap().len(), 2);
        assert!(
            parse(&good, 1, 0).is_err(),
            "bytes after the counted entries"
        );
        assert!(parse(&good, 3, 0).is_err(), "fewer entries than counted");
        let mut extra = good.clone();
        extra[23] = 8;
        assert!(parse(&extra, 2, 0).is_err());
        let mut kind = good.clone();
        kind[16] = 2;
        assert!(parse(&kind, 2, 0).is_err());
        let mut noname = good;
        noname[19] = 0;
        assert!(parse(&noname, 2, 0).is_err());
    }

    #[test]
    fn an_entry_must_cover_the_disk_unless_in_use() {
        let e = entry("a", AUTO);
        // One 64 KiB table cluster holds 2^19 bits of 64 KiB each.
        assert!(check_entry(&e, 1 << 35, 65536, 1 << 20).is_ok());
        assert!(check_entry(&e, (1 << 35) + 1, 65536, 1 << 20).is_err());
        assert!(check_entry(&entry("a", IN_USE), (1 << 35) + 1, 65536, 1 << 20).is_ok());
        assert!(check_entry(&entry("a", 4), 1 << 20, 65536, 1 << 20).is_err());
        let mut g = entry("a", 0);
        g.granularity_bits = 32;
        assert!(check_entry(&g, 1 << 20, 65536, 1 << 20).is_err());
    }
}
