//! The metadata region: a 64 KiB table of items (GUID, offset inside the region, length,
//! flags) followed by the items themselves: file parameters (block size, fixed, has a
//! parent), virtual disk size, page 83 data, logical and physical sector sizes, and for
//! differencing images the parent locator (UTF-16LE key/value pairs).

use super::header::{new_guid, Guid, MIB, SLOT};
use super::region::{guid_from_text, Region};
use crate::error::{Error, Result};
use byteorder::{ByteOrder, LittleEndian as LE};

/// The largest virtual disk the format allows (64 TiB).
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Payload block sizes the format allows.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// The most table entries the format allows.
const MAX_ENTRIES: usize = 2047;
/// The most bytes a metadata item may have.
const MAX_ITEM_LEN: u32 = MIB as u32;
const SIGNATURE: &[u8; 8] = b"metadata";
const IS_VIRTUAL_DISK: u32 = 2;
const IS_REQUIRED: u32 = 4;

/// One kind of metadata item vdisk reads and writes.
struct ItemKind {
    id: Guid,
    /// The fewest bytes its value has.
    min_len: u32,
    /// The flags a new image gives it.
    flags: u32,
}

const fn item(text: &str, min_len: u32, flags: u32) -> ItemKind {
    ItemKind {
        id: guid_from_text(text),
        min_len,
        flags,
    }
}

/// The flags of an item that describes the virtual disk.
const DISK_ITEM: u32 = IS_REQUIRED | IS_VIRTUAL_DISK;

/// The items, in the order QEMU writes them; the indexes below name them.
const ITEMS: [ItemKind; 6] = [
    item("caa16737-fa36-4d43-b3b6-33f0aa44e76b", 8, IS_REQUIRED),
    item("2fa54224-cd1b-4876-b211-5dbed83bf4b8", 8, DISK_ITEM),
    item("beca12ab-b2e6-4523-93ef-c309e000c746", 16, DISK_ITEM),
    item("8141bf1d-a96f-4709-ba47-f233a8faab5f", 4, DISK_ITEM),
    item("cda348c7-445d-4471-9cc9-e9885251c556", 4, DISK_ITEM),
    item("a8d35f2d-b30b-454d-abf7-d3d84834ab0c", 20, DISK_ITEM),
];
const FILE_PARAMETERS: usize = 0;
const VIRTUAL_DISK_SIZE: usize = 1;
const PAGE_83: usize = 2;
const LOGICAL_SECTOR_SIZE: usize = 3;
const PHYSICAL_SECTOR_SIZE: usize = 4;
const PARENT_LOCATOR: usize = 5;
/// The locator type of a VHDX parent.
const VHDX_LOCATOR_TYPE: Guid = guid_from_text("b04aefb7-d19e-4a81-b789-25b8e9445913");

const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
const HAS_PARENT: u32 = 2;

/// The metadata items vdisk understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Bytes of one payload block (a power of two, 1 MiB to 256 MiB).
    pub block_size: u32,
    /// A fixed image: blocks are never given back.
    pub leave_blocks_allocated: bool,
    /// A differencing image.
    pub has_parent: bool,
    /// The guest-visible size.
    pub virtual_size: u64,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// The SCSI page 83 identifier.
    pub page_83: Guid,
    /// The parent locator's key/value pairs (differencing images).
    pub parent_locator: Vec<(String, String)>,
}

fn bad(region: &Region, msg: impl Into<String>) -> Error {
    Error::corrupt("VHDX metadata", region.offset, msg)
}

/// One item found in the table: where it is inside the region.
#[derive(Clone, Copy)]
struct Item {
    offset: u32,
    length: u32,
}

/// Find the known items of the table in `buf` (the whole metadata region).
fn read_table(buf: &[u8], region: &Region) -> Result<[Option<Item>; ITEMS.len()]> {
    if buf.len() < SLOT as usize || &buf[..8] != SIGNATURE {
        return Err(bad(region, "bad signature"));
    }
    let count = LE::read_u16(&buf[10..]) as usize;
    if count > MAX_ENTRIES {
        return Err(bad(
            region,
            format!("{count} entries, more than {MAX_ENTRIES}"),
        ));
    }
    let mut found = [None; ITEMS.len()];
    for i in 0..count {
        let e = &buf[32 + 32 * i..64 + 32 * i];
        let item = Item {
            offset: LE::read_u32(&e[16..]),
            length: LE::read_u32(&e[20..]),
        };
        let Some(k) = ITEMS.iter().position(|it| e[..16] == it.id) else {
            if LE::read_u32(&e[24..]) & IS_REQUIRED != 0 {
                return Err(Error::unsupported(
                    "VHDX metadata: a required item of an unknown kind",
                ));
            }
            continue;
        };
        let end = u64::from(item.offset) + u64::from(item.length);
        if item.length > MAX_ITEM_LEN || u64::from(item.offset) < SLOT || end > buf.len() as u64 {
            return Err(bad(
                region,
                format!("item {i} lies outside the metadata region"),
            ));
        }
        if found[k].replace(item).is_some() {
            return Err(bad(region, format!("item {i} is listed twice")));
        }
    }
    Ok(found)
}

impl Metadata {
    /// Parse the metadata region `buf` (read from `region`).
    pub fn parse(buf: &[u8], region: &Region) -> Result<Metadata> {
        let found = read_table(buf, region)?;
        let get = |k: usize| -> Result<&[u8]> {
            match found[k] {
                Some(it) if it.length >= ITEMS[k].min_len => {
                    Ok(&buf[it.offset as usize..(it.offset + it.length) as usize])
                }
                Some(_) => Err(bad(region, format!("item {k} is too short"))),
                None => Err(Error::unsupported(
                    "VHDX metadata: a required item is missing",
                )),
            }
        };
        let params = get(FILE_PARAMETERS)?;
        let bits = LE::read_u32(&params[4..]);
        let mut md = Metadata {
            block_size: LE::read_u32(params),
            leave_blocks_allocated: bits & LEAVE_BLOCKS_ALLOCATED != 0,
            has_parent: bits & HAS_PARENT != 0,
            virtual_size: LE::read_u64(get(VIRTUAL_DISK_SIZE)?),
            page_83: get(PAGE_83)?[..16].try_into().unwrap_or_default(),
            logical_sector_size: LE::read_u32(get(LOGICAL_SECTOR_SIZE)?),
            physical_sector_size: LE::read_u32(get(PHYSICAL_SECTOR_SIZE)?),
            parent_locator: Vec::new(),
        };
        if md.has_parent {
            md.parent_locator = parse_locator(get(PARENT_LOCATOR)?, region)?;
        }
        md.validate(region)?;
        Ok(md)
    }

    fn validate(&self, region: &Region) -> Result<()> {
        let bs = self.block_size;
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
            return Err(bad(
                region,
                format!("block size {bs} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        for s in [self.logical_sector_size, self.physical_sector_size] {
            if s != 512 && s != 4096 {
                return Err(bad(
                    region,
                    format!("sector size {s} is neither 512 nor 4096"),
                ));
            }
        }
        if self.virtual_size > MAX_DISK_SIZE {
            return Err(bad(
                region,
                format!(
                    "virtual disk size {} is more than 64 TiB",
                    self.virtual_size
                ),
            ));
        }
        if self.virtual_size == 0 {
            // QEMU refuses it too.
            return Err(bad(region, "virtual disk size is 0"));
        }
        if self.virtual_size % u64::from(self.logical_sector_size) != 0 {
            return Err(bad(
                region,
                "virtual disk size is not a whole number of sectors",
            ));
        }
        Ok(())
    }

    /// The value of parent locator key `key`.
    pub fn locator(&self, key: &str) -> Option<&str> {
        self.parent_locator
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The metadata of a new image (a fresh page 83 identifier).
    pub fn new(
        virtual_size: u64,
        block_size: u32,
        fixed: bool,
        parent: Vec<(String, String)>,
    ) -> Metadata {
        Metadata {
            block_size,
            leave_blocks_allocated: fixed,
            has_parent: !parent.is_empty(),
            virtual_size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            page_83: new_guid(),
            parent_locator: parent,
        }
    }

    /// The region's bytes as QEMU lays them out: table, then the items from 64 KiB in
    /// table order.
    pub fn write(&self) -> Vec<u8> {
        let mut params = vec![0u8; 8];
        LE::write_u32(&mut params, self.block_size);
        let bits = if self.leave_blocks_allocated {
            LEAVE_BLOCKS_ALLOCATED
        } else {
            0
        } | if self.has_parent { HAS_PARENT } else { 0 };
        LE::write_u32(&mut params[4..], bits);
        let mut values = vec![
            params,
            self.virtual_size.to_le_bytes().to_vec(),
            self.page_83.to_vec(),
            self.logical_sector_size.to_le_bytes().to_vec(),
            self.physical_sector_size.to_le_bytes().to_vec(),
        ];
        if self.has_parent {
            values.push(write_locator(&self.parent_locator));
        }
        let items: Vec<(&ItemKind, Vec<u8>)> = ITEMS.iter().zip(values).collect();
        let mut b = vec![0u8; SLOT as usize];
        b[..8].copy_from_slice(SIGNATURE);
        LE::write_u16(&mut b[10..], items.len() as u16);
        let mut at = SLOT as u32;
        for (i, (kind, data)) in items.iter().enumerate() {
            let e = &mut b[32 + 32 * i..64 + 32 * i];
            e[..16].copy_from_slice(&kind.id);
            LE::write_u32(&mut e[16..], at);
            LE::write_u32(&mut e[20..], data.len() as u32);
            LE::write_u32(&mut e[24..], kind.flags);
            at += data.len() as u32;
        }
        for (_, data) in items {
            b.extend_from_slice(&data);
        }
        b
    }
}

fn utf16(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes.chunks_exact(2).map(LE::read_u16).collect();
    String::from_utf16(&units).ok()
}

/// The key/value pairs of a parent locator item.
fn parse_locator(item: &[u8], region: &Region) -> Result<Vec<(String, String)>> {
    if item[..16] != VHDX_LOCATOR_TYPE {
        return Err(Error::unsupported("VHDX parent locator of an unknown type"));
    }
    let count = LE::read_u16(&item[18..]) as usize;
    if 20 + 12 * count > item.len() {
        return Err(bad(
            region,
            "the parent locator's entries run past the item",
        ));
    }
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let e = &item[20 + 12 * i..32 + 12 * i];
        let text = |off: u32, len: u16| -> Result<String> {
            let (off, len) = (off as usize, len as usize);
            item.get(off..off + len)
                .filter(|_| len % 2 == 0)
                .and_then(utf16)
                .ok_or_else(|| {
                    bad(
                        region,
                        format!("parent locator entry {i} is not valid UTF-16 inside the item"),
                    )
                })
        };
        let key = text(LE::read_u32(e), LE::read_u16(&e[8..]))?;
        let value = text(LE::read_u32(&e[4..]), LE::read_u16(&e[10..]))?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn write_locator(pairs: &[(String, String)]) -> Vec<u8> {
    let mut head = vec![0u8; 20 + 12 * pairs.len()];
    head[..16].copy_from_slice(&VHDX_LOCATOR_TYPE);
    LE::write_u16(&mut head[18..], pairs.len() as u16);
    let mut strings = Vec::new();
    let enc = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect() };
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (k, v) = (enc(k), enc(v));
        let base = head.len() + strings.len();
        let e = &mut head[20 + 12 * i..32 + 12 * i];
        LE::write_u32(e, base as u32);
        LE::write_u32(&mut e[4..], (base + k.len()) as u32);
        LE::write_u16(&mut e[8..], k.len() as u16);
        LE::write_u16(&mut e[10..], v.len() as u16);
        strings.extend_from_slice(&k);
        strings.extend_from_slice(&v);
    }
    head.extend_from_slice(&strings);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        Region {
            offset: 3 * MIB,
            length: MIB as u32,
        }
    }

    fn padded(mut b: Vec<u8>) -> Vec<u8> {
        b.resize(MIB as usize, 0);
        b
    }

    #[test]
    fn metadata_round_trips_with_a_parent_locator() {
        let pairs = vec![
            (
                "parent_linkage".to_string(),
                "{00000000-0000-0000-0000-000000000001}".to_string(),
            ),
            ("relative_path".to_string(), ".\\base.vhdx".to_string()),
        ];
        let md = Metadata::new(10 << 20, 8 << 20, false, pairs);
        let back = Metadata::parse(&padded(md.write()), &region()).unwrap();
        assert_eq!(back, md);
        assert_eq!(back.locator("relative_path"), Some(".\\base.vhdx"));
    }

    #[test]
    fn block_sizes_outside_the_format_limits_are_refused() {
        for bs in [512 << 10, 3 << 20, 512 << 20] {
            let md = Metadata::new(10 << 20, bs, false, vec![]);
            let e = Metadata::parse(&padded(md.write()), &region()).unwrap_err();
            assert!(e.to_string().contains("block size"), "{e}");
        }
    }

    #[test]
    fn an_item_past_the_region_is_refused() {
        let mut b = padded(Metadata::new(10 << 20, 8 << 20, true, vec![]).write());
        LE::write_u32(&mut b[32 + 16..], MIB as u32 - 4);
        let e = Metadata::parse(&b, &region()).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }
}
