//! The persistent-bitmaps header extension and bitmap directory: validated on open, never
//! loaded. vdisk maintains no bitmaps, so it does not write an image that has them: any
//! write would leave them stale, and the autoclear bit it would then have to clear makes
//! QEMU drop them all (their clusters become leaks). Read-only use is unaffected.
//!
//! QEMU's rule: the extension is valid only while the bitmaps autoclear bit is set. A
//! program without bitmap support clears the bit on a writable open; QEMU then ignores the
//! extension (and drops it on its next header update).
//!
//! QEMU refuses an image whose bitmaps extension or directory breaks these rules, so vdisk
//! does too, with an error naming the field, and without sizing any buffer from an
//! unchecked field: the directory is read only once it is known to lie inside the file.

use super::header::{autoclear, ext, Header};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};

/// Most bitmaps in one image (QEMU's `QCOW2_MAX_BITMAPS`).
pub const MAX_BITMAPS: u32 = 65_535;
/// Largest bitmap directory (QEMU's `QCOW2_MAX_BITMAP_DIRECTORY_SIZE`).
pub const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// Most entries in one bitmap table (QEMU's `BME_MAX_TABLE_SIZE`).
pub const MAX_TABLE_ENTRIES: u32 = 0x0800_0000;
/// Longest bitmap name (QEMU's `BME_MAX_NAME_SIZE`).
pub const MAX_NAME_BYTES: u16 = 1023;
/// Size of the fixed part of a directory entry.
const ENTRY_FIXED_LEN: usize = 24;

const S: &str = "bitmaps extension";
const D: &str = "bitmap directory";

/// Whether the image whose header is `h` has persistent bitmaps: a bitmaps extension that
/// the autoclear bit vouches for.
pub fn has_persistent_bitmaps(h: &Header) -> bool {
    h.autoclear_features & autoclear::BITMAPS != 0 && h.extension(ext::BITMAPS).is_some()
}

/// Refuse a writable open of an image with persistent bitmaps (see the module doc).
pub fn refuse_writable(h: &Header) -> Result<()> {
    if has_persistent_bitmaps(h) {
        return Err(Error::ReadOnly(
            "cannot write an image with persistent dirty bitmaps (qcow2 bitmaps extension): vdisk does not maintain them; read-only use (info, map, compare, check, convert from it) works".into(),
        ));
    }
    Ok(())
}

/// One entry of the bitmap directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// Flag bits ([`IN_USE`], [`AUTO`], ...).
    pub flags: u32,
    /// Each bit covers 2^`granularity_bits` guest bytes.
    pub granularity_bits: u8,
    /// The bitmap's name.
    pub name: String,
}

/// Flag: the bitmap was being changed and may be inconsistent.
pub const IN_USE: u32 = 1;
/// Flag: the bitmap tracks guest writes (enabled).
pub const AUTO: u32 = 2;

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
}

/// Check the bitmaps extension and directory of an image whose header is `h`, in a file of
/// `file_len` bytes. Nothing is checked when the autoclear bit says the bitmaps are stale
/// (QEMU ignores the extension then, too).
pub fn validate<St: Storage + ?Sized>(st: &St, h: &Header, file_len: u64) -> Result<()> {
    read_directory(st, h, file_len).map(|_| ())
}

/// The bitmap directory, checked as [`validate`] describes; empty when the image has no
/// valid persistent bitmaps.
pub fn read_directory<St: Storage + ?Sized>(
    st: &St,
    h: &Header,
    file_len: u64,
) -> Result<Vec<DirEntry>> {
    if h.autoclear_features & autoclear::BITMAPS == 0 {
        return Ok(Vec::new());
    }
    let Some(e) = h.extension(ext::BITMAPS) else {
        return Ok(Vec::new());
    };
    if e.data.len() < 24 {
        return Err(Error::corrupt(S, 0, "extension is shorter than 24 bytes"));
    }
    let nb = BigEndian::read_u32(&e.data[0..]);
    let dir_size = BigEndian::read_u64(&e.data[8..]);
    let dir_off = BigEndian::read_u64(&e.data[16..]);
    if nb == 0 || nb > MAX_BITMAPS {
        return Err(Error::corrupt(
            S,
            0,
            format!("{nb} bitmaps (expected 1 to {MAX_BITMAPS})"),
        ));
    }
    if dir_size > MAX_DIRECTORY_BYTES || dir_size < ENTRY_FIXED_LEN as u64 * u64::from(nb) {
        return Err(Error::corrupt(
            S,
            0,
            format!("bitmap directory size {dir_size} does not fit {nb} bitmaps within the limit of {MAX_DIRECTORY_BYTES}"),
        ));
    }
    let cs = h.cluster_size();
    if dir_off == 0 || dir_off % cs != 0 || dir_off.saturating_add(dir_size) > file_len {
        return Err(Error::corrupt(
            D,
            dir_off,
            format!("directory offset is not a cluster offset inside the file ({file_len} bytes)"),
        ));
    }
    let mut dir = vec![0u8; dir_size as usize];
    st.read_at(&mut dir, dir_off)
        .map_err(|e| Error::io("qcow2: reading the bitmap directory", e))?;
    let mut p = 0usize;
    let mut entries = Vec::new();
    for i in 0..nb {
        let entry_at = dir_off + p as u64;
        let bad = |msg: String| Error::corrupt(D, entry_at, format!("bitmap {i}: {msg}"));
        if p + ENTRY_FIXED_LEN > dir.len() {
            return Err(bad("entry lies past the end of the directory".into()));
        }
        let table_off = BigEndian::read_u64(&dir[p..]);
        let table_size = BigEndian::read_u32(&dir[p + 8..]);
        let granularity_bits = dir[p + 17];
        let name_size = BigEndian::read_u16(&dir[p + 18..]);
        let extra = BigEndian::read_u32(&dir[p + 20..]);
        if table_off == 0 || table_off % cs != 0 {
            return Err(bad(format!(
                "table offset {table_off:#x} is not a cluster offset"
            )));
        }
        if table_size > MAX_TABLE_ENTRIES
            || table_off.saturating_add(u64::from(table_size) * 8) > file_len
        {
            return Err(bad(format!(
                "table of {table_size} entries at {table_off:#x} does not fit in the file"
            )));
        }
        if !(9..=31).contains(&granularity_bits) {
            return Err(bad(format!("granularity bits {granularity_bits}")));
        }
        if name_size == 0 || name_size > MAX_NAME_BYTES {
            return Err(bad(format!("name length {name_size}")));
        }
        let len =
            (ENTRY_FIXED_LEN as u64 + u64::from(extra) + u64::from(name_size)).next_multiple_of(8);
        if p as u64 + len > dir.len() as u64 {
            return Err(bad("entry lies past the end of the directory".into()));
        }
        let name_at = p + ENTRY_FIXED_LEN + extra as usize;
        entries.push(DirEntry {
            table_offset: table_off,
            table_size,
            flags: BigEndian::read_u32(&dir[p + 12..]),
            granularity_bits,
            name: String::from_utf8_lossy(&dir[name_at..name_at + usize::from(name_size)])
                .into_owned(),
        });
        p += len as usize;
    }
    Ok(entries)
}
