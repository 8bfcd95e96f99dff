//! The snapshot table: parsing, validating and writing its entries.
//!
//! Each entry is a 40-byte fixed part, `extra_data_size` bytes of extra data, the ID string
//! and the name, padded to a multiple of 8. The extra data vdisk knows (large VM state
//! size, disk size, instruction count) is decoded on demand; the raw bytes are kept so
//! that anything newer is written back unchanged.

use super::limits::*;
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use nom::number::complete::{be_u16, be_u32, be_u64};

/// Size of the fixed part of a snapshot table entry.
pub const ENTRY_FIXED_LEN: usize = 40;
/// Extra data vdisk writes: vm_state_size_large, disk_size, icount.
pub const EXTRA_DATA_LEN: usize = 24;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Host offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Unique ID string ("1", "2", ...).
    pub id: String,
    /// Name (tag).
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// VM state size (32-bit field; see [`Snapshot::vm_state_size`]).
    pub vm_state_size32: u32,
    /// Raw extra data.
    pub extra: Vec<u8>,
}

impl Snapshot {
    /// VM state size in bytes (the large field when present).
    pub fn vm_state_size(&self) -> u64 {
        if self.extra.len() >= 8 {
            BigEndian::read_u64(&self.extra[0..])
        } else {
            u64::from(self.vm_state_size32)
        }
    }

    /// Virtual disk size when the snapshot was taken, if recorded.
    pub fn disk_size(&self) -> Option<u64> {
        (self.extra.len() >= 16).then(|| BigEndian::read_u64(&self.extra[8..]))
    }

    /// Instruction count, if recorded (and not the "none" value -1).
    pub fn icount(&self) -> Option<u64> {
        (self.extra.len() >= 24)
            .then(|| BigEndian::read_u64(&self.extra[16..]))
            .filter(|&v| v != u64::MAX)
    }

    /// Standard extra data for a new snapshot.
    pub fn new_extra(disk_size: u64) -> Vec<u8> {
        let mut e = vec![0u8; EXTRA_DATA_LEN];
        BigEndian::write_u64(&mut e[8..], disk_size);
        e
    }

    /// Check the snapshot's L1 table (size limit, alignment, inside a file of `file_len`
    /// bytes) before it is read: an error names the snapshot.
    pub fn validate_l1(&self, cluster_size: u64, file_len: u64) -> Result<()> {
        validate_table(
            "snapshot L1 table",
            self.l1_table_offset,
            u64::from(self.l1_size),
            8,
            MAX_L1_BYTES,
            cluster_size,
            file_len,
        )
        .map_err(|e| match e {
            Error::Corrupt {
                offset: o, message, ..
            } => Error::corrupt(
                "snapshot L1 table",
                o,
                format!(
                    "snapshot {} ({}): {message}; the snapshot cannot be used (see 'vdisk check')",
                    self.id, self.name
                ),
            ),
            other => other,
        })
    }

    /// Bytes this entry takes in the table.
    pub fn encoded_len(&self) -> usize {
        (ENTRY_FIXED_LEN + self.extra.len() + self.id.len() + self.name.len()).next_multiple_of(8)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let b = &mut out[start..];
        BigEndian::write_u64(&mut b[0..], self.l1_table_offset);
        BigEndian::write_u32(&mut b[8..], self.l1_size);
        BigEndian::write_u16(&mut b[12..], self.id.len() as u16);
        BigEndian::write_u16(&mut b[14..], self.name.len() as u16);
        BigEndian::write_u32(&mut b[16..], self.date_sec);
        BigEndian::write_u32(&mut b[20..], self.date_nsec);
        BigEndian::write_u64(&mut b[24..], self.vm_clock_nsec);
        BigEndian::write_u32(&mut b[32..], self.vm_state_size32);
        BigEndian::write_u32(&mut b[36..], self.extra.len() as u32);
        let mut p = ENTRY_FIXED_LEN;
        b[p..p + self.extra.len()].copy_from_slice(&self.extra);
        p += self.extra.len();
        b[p..p + self.id.len()].copy_from_slice(self.id.as_bytes());
        p += self.id.len();
        b[p..p + self.name.len()].copy_from_slice(self.name.as_bytes());
    }

    /// The snapshot as qemu-img's JSON `snapshots` entries.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(i) = self.icount() {
            m.insert("icount".into(), i.into());
        }
        m.insert(
            "vm-clock-nsec".into(),
            (self.vm_clock_nsec % 1_000_000_000).into(),
        );
        m.insert("name".into(), self.name.clone().into());
        m.insert("date-sec".into(), self.date_sec.into());
        m.insert("date-nsec".into(), self.date_nsec.into());
        m.insert(
            "vm-clock-sec".into(),
            (self.vm_clock_nsec / 1_000_000_000).into(),
        );
        m.insert("id".into(), self.id.clone().into());
        m.insert("vm-state-size".into(), self.vm_state_size().into());
        serde_json::Value::Object(m)
    }
}

/// Encode a whole table.
pub fn encode_table(snaps: &[Snapshot]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snaps {
        s.encode_into(&mut out);
    }
    out
}

/// Read and validate `count` entries at `offset` from an image of `file_len` bytes.
pub fn read_table<S: Storage>(
    storage: &S,
    offset: u64,
    count: u32,
    cluster_size: u64,
    file_len: u64,
    version: u32,
) -> Result<Vec<Snapshot>> {
    const T: &str = "snapshot table";
    if count == 0 {
        return Ok(Vec::new());
    }
    if u64::from(count) > MAX_SNAPSHOTS {
        return Err(Error::corrupt(
            T,
            offset,
            format!("{count} snapshots exceed the limit"),
        ));
    }
    if offset % cluster_size != 0 || offset == 0 {
        return Err(Error::corrupt(
            T,
            offset,
            "offset is not a valid cluster offset",
        ));
    }
    let io = |e| Error::io("qcow2: reading the snapshot table", e);
    let mut snaps = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = offset;
    for i in 0..count {
        let used = pos - offset;
        if used + ENTRY_FIXED_LEN as u64 > MAX_SNAPSHOT_TABLE_BYTES
            || pos + ENTRY_FIXED_LEN as u64 > file_len
        {
            return Err(Error::corrupt(
                T,
                offset,
                format!("entry {i} lies past the end of the table or file"),
            ));
        }
        let mut fixed = [0u8; ENTRY_FIXED_LEN];
        storage.read_at(&mut fixed, pos).map_err(io)?;
        let parsed: nom::IResult<&[u8], _> = nom::sequence::tuple((
            be_u64, be_u32, be_u16, be_u16, be_u32, be_u32, be_u64, be_u32, be_u32,
        ))(&fixed);
        let (_, f) = parsed.map_err(|_| Error::corrupt(T, pos, "truncated entry"))?;
        let (l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vmsz, extra_len) = f;
        if u64::from(extra_len) > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(Error::corrupt(
                T,
                pos,
                format!("entry {i}: extra data of {extra_len} bytes exceeds 1 KiB"),
            ));
        }
        if version >= 3 && extra_len < 16 {
            return Err(Error::corrupt(
                T,
                pos,
                format!("entry {i}: version 3 needs at least 16 bytes of extra data"),
            ));
        }
        let var = extra_len as usize + id_len as usize + name_len as usize;
        let len = (ENTRY_FIXED_LEN + var).next_multiple_of(8) as u64;
        if used + len > MAX_SNAPSHOT_TABLE_BYTES
            || pos + ENTRY_FIXED_LEN as u64 + var as u64 > file_len
        {
            return Err(Error::corrupt(
                T,
                pos,
                format!("entry {i} lies past the end of the table or file"),
            ));
        }
        let mut rest = vec![0u8; var];
        storage
            .read_at(&mut rest, pos + ENTRY_FIXED_LEN as u64)
            .map_err(io)?;
        let (extra, strs) = rest.split_at(extra_len as usize);
        let (id, name) = strs.split_at(id_len as usize);
        // The entry's L1 table is not validated here: as in QEMU, one bad entry leaves the
        // image usable, and whatever needs that table calls `Snapshot::validate_l1`.
        snaps.push(Snapshot {
            l1_table_offset: l1_off,
            l1_size,
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: dsec,
            date_nsec: dnsec,
            vm_clock_nsec: clock,
            vm_state_size32: vmsz,
            extra: extra.to_vec(),
        });
        pos += len;
    }
    Ok(snaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// The entry qemu-img 10 wrote for `snapshot -c snapA` on a 1 MiB image.
    const QEMU_ENTRY: [u8; 72] = [
        0, 0, 0, 0, 0, 4, 0, 0, // l1_table_offset 0x40000
        0, 0, 0, 1, // l1_size 1
        0, 1, // id_str_size 1
        0, 5, // name_size 5
        0x6b, 0x05, 0xdd, 0x5b, // date_sec
        0x08, 0x7a, 0x84, 0x58, // date_nsec
        0, 0, 0, 0, 0, 0, 0, 0, // vm_clock_nsec
        0, 0, 0, 0, // vm_state_size
        0, 0, 0, 0x18, // extra_data_size 24
        0, 0, 0, 0, 0, 0, 0, 0, // vm_state_size_large
        0, 0, 0, 0, 0, 0x10, 0, 0, // disk_size 1 MiB
        0, 0, 0, 0, 0, 0, 0, 0, // icount 0
        b'1', b's', b'n', b'a', b'p', b'A', 0, 0, // id, name, padding
    ];

    #[test]
    fn a_qemu_snapshot_entry_parses_and_encodes_back_to_the_same_bytes() {
        let mut img = vec![0u8; 0x50000];
        img.extend_from_slice(&QEMU_ENTRY);
        let s = MemStorage::from_vec(img);
        let snaps = read_table(&s, 0x50000, 1, 0x10000, 0x50000 + 72, 3).unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].name, "snapA");
        assert_eq!(snaps[0].id, "1");
        assert_eq!(snaps[0].disk_size(), Some(1 << 20));
        assert_eq!(snaps[0].l1_table_offset, 0x40000);
        assert_eq!(encode_table(&snaps), QEMU_ENTRY.to_vec());
    }

    #[test]
    fn a_snapshot_table_with_oversized_extra_data_is_rejected() {
        let mut e = QEMU_ENTRY;
        e[36..40].copy_from_slice(&2048u32.to_be_bytes());
        let mut img = vec![0u8; 0x50000];
        img.extend_from_slice(&e);
        img.resize(0x60000, 0);
        let s = MemStorage::from_vec(img);
        assert!(read_table(&s, 0x50000, 1, 0x10000, 0x60000, 3).is_err());
    }

    #[test]
    fn a_snapshot_table_past_the_end_of_the_file_is_rejected() {
        let s = MemStorage::from_vec(vec![0u8; 0x50010]);
        assert!(read_table(&s, 0x50000, 1, 0x10000, 0x50010, 3).is_err());
    }
}
