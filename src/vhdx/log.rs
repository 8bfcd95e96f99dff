//! The log: a circular buffer of entries through which metadata updates reach the file.
//!
//! An entry is one or more 4 KiB sectors: a 64-byte entry header, 32-byte descriptors
//! (`desc`: one 4 KiB page of new contents for a file offset, the page itself in a `data`
//! sector after the descriptor sectors; `zero`: a run of zeros), and a CRC-32C over the
//! whole entry. Entries carry the log GUID of the active header; while that GUID is not
//! zero, the newest run of valid entries with consecutive sequence numbers must be
//! replayed (their pages written to their file offsets) before the file is used.
//!
//! vdisk writes each batch of metadata pages as one entry at the start of the log, under
//! a fresh log GUID: set the GUID in a header and sync, write the entry and sync, write
//! the pages in place and sync, then clear the GUID. A cut before the entry is complete
//! leaves an entry with a bad checksum (nothing to replay); a cut after it leaves one the
//! next writable open replays.

use super::header::{checksum_is_valid, set_checksum, Guid, Header, HEADER_SECTION_END, MIB};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{ByteOrder, LittleEndian as LE};

/// Bytes of a log sector (and of every page a log entry carries).
pub const SECTOR: u64 = 4096;
/// The largest log vdisk reads into memory to search it.
pub const MAX_LOG_LEN: u64 = 256 * MIB;
/// How far past the current end of the file a log entry may say the file reaches.
const MAX_FILE_END: u64 = 1 << 47;
const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
const DATA_DESC: &[u8; 4] = b"desc";
const ZERO_DESC: &[u8; 4] = b"zero";
const DATA_SIGNATURE: &[u8; 4] = b"data";

/// What one descriptor asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this 4 KiB page.
    Page(Vec<u8>),
    /// Write this many zero bytes.
    Zero(u64),
}

/// One valid log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub sequence: u64,
    /// Its length in bytes.
    pub length: u64,
    /// The file length when it was written (the file may not be shorter).
    pub flushed_file_offset: u64,
    /// The file length its structures need.
    pub last_file_offset: u64,
    /// Writes, in order: file offset and action.
    pub actions: Vec<(u64, Action)>,
}

/// Sectors that hold the entry header and `count` descriptors.
fn descriptor_sectors(count: u64) -> u64 {
    (count + 2).div_ceil(128)
}

/// The most pages one entry can carry in a log of `log_length` bytes (one sector of the
/// ring stays free, as QEMU keeps it).
pub fn max_pages(log_length: u64) -> u64 {
    let sectors = log_length / SECTOR;
    let mut pages = sectors.saturating_sub(2);
    while pages > 0 && pages + descriptor_sectors(pages) > sectors - 1 {
        pages -= 1;
    }
    pages
}

/// How many times over the search may checksum the log before it gives up (a hostile log
/// of entry headers at every sector would otherwise cost quadratic time).
const SEARCH_BUDGET: u64 = 16;

/// The entry at byte `at` of `log` (read circularly), if it is valid for `guid`;
/// checksumming it is taken from `budget` (None, and budget 0, when it runs out).
fn parse_entry(log: &[u8], at: u64, guid: &Guid, budget: &mut u64) -> Option<Entry> {
    let n = log.len() as u64;
    let head = &log[at as usize..(at + SECTOR) as usize];
    if &head[..4] != ENTRY_SIGNATURE || head[32..48] != guid[..] {
        return None;
    }
    let length = u64::from(LE::read_u32(&head[8..]));
    let sequence = LE::read_u64(&head[16..]);
    let count = u64::from(LE::read_u32(&head[24..]));
    if length == 0
        || length > n
        || length % SECTOR != 0
        || sequence == 0
        || descriptor_sectors(count) * SECTOR > length
    {
        return None;
    }
    if *budget < length {
        *budget = 0;
        return None;
    }
    *budget -= length;
    let mut buf = Vec::with_capacity(length as usize);
    for s in 0..length / SECTOR {
        let from = ((at + s * SECTOR) % n) as usize;
        buf.extend_from_slice(&log[from..from + SECTOR as usize]);
    }
    if !checksum_is_valid(&buf, 4) {
        return None;
    }
    let mut data_sector = descriptor_sectors(count);
    let mut actions = Vec::new();
    for i in 0..count as usize {
        let d = &buf[64 + 32 * i..96 + 32 * i];
        let offset = LE::read_u64(&d[16..]);
        if LE::read_u64(&d[24..]) != sequence || offset % SECTOR != 0 {
            return None;
        }
        if &d[..4] == ZERO_DESC {
            let len = LE::read_u64(&d[8..]);
            if len % SECTOR != 0 {
                return None;
            }
            actions.push((offset, Action::Zero(len)));
        } else if &d[..4] == DATA_DESC {
            let at = (data_sector * SECTOR) as usize;
            let sector = buf.get(at..at + SECTOR as usize)?;
            let seq = (u64::from(LE::read_u32(&sector[4..])) << 32)
                | u64::from(LE::read_u32(&sector[4092..]));
            if &sector[..4] != DATA_SIGNATURE || seq != sequence {
                return None;
            }
            let mut page = vec![0u8; SECTOR as usize];
            page[..8].copy_from_slice(&d[8..16]);
            page[8..4092].copy_from_slice(&sector[8..4092]);
            page[4092..].copy_from_slice(&d[4..8]);
            actions.push((offset, Action::Page(page)));
            data_sector += 1;
        } else {
            return None;
        }
    }
    Some(Entry {
        sequence,
        length,
        flushed_file_offset: LE::read_u64(&head[48..]),
        last_file_offset: LE::read_u64(&head[56..]),
        actions,
    })
}

/// The run of valid entries with consecutive sequence numbers starting at `at`.
fn sequence_at(log: &[u8], at: u64, guid: &Guid, budget: &mut u64) -> Vec<(u64, Entry)> {
    let n = log.len() as u64;
    let mut run: Vec<(u64, Entry)> = Vec::new();
    let (mut pos, mut used) = (at, 0u64);
    while let Some(e) = parse_entry(log, pos, guid, budget) {
        if run
            .last()
            .is_some_and(|(_, last)| last.sequence.checked_add(1) != Some(e.sequence))
            || used + e.length > n
        {
            break;
        }
        used += e.length;
        pos = (pos + e.length) % n;
        run.push((pos, e));
    }
    run
}

/// The entries to replay: the run whose newest entry has the highest sequence number
/// (empty when the header's log GUID is zero or no entry is valid).
pub fn active_entries(storage: &dyn Storage, header: &Header) -> Result<Vec<Entry>> {
    if header.log_guid == [0; 16] || header.log_length == 0 {
        return Ok(Vec::new());
    }
    let (offset, len) = (header.log_offset, u64::from(header.log_length));
    // A log past the end of the file reads as zeros: no entries, as QEMU finds.
    if len % MIB != 0 || len > MAX_LOG_LEN {
        return Err(Error::corrupt(
            "VHDX log",
            offset,
            format!(
                "a log of {len} bytes is not whole MiB or is over vdisk's limit of {MAX_LOG_LEN}"
            ),
        ));
    }
    let mut log = vec![0u8; len as usize];
    storage
        .read_at(&mut log, offset)
        .map_err(|e| Error::io("vhdx: reading the log", e))?;
    let mut best: Vec<Entry> = Vec::new();
    let mut at = 0;
    let mut budget = SEARCH_BUDGET * len;
    while at < len {
        let run = sequence_at(&log, at, &header.log_guid, &mut budget);
        if budget == 0 {
            return Err(Error::corrupt(
                "VHDX log",
                offset,
                "too many entry headers to search: the log is not one a writer left",
            ));
        }
        let newest = run.last().map(|(_, e)| e.sequence);
        if newest > best.last().map(|e| e.sequence) {
            best = run.iter().map(|(_, e)| e.clone()).collect();
        }
        // Carry on after the run (or the next sector); stop once the search wraps.
        let step: u64 = run.iter().map(|(_, e)| e.length).sum::<u64>().max(SECTOR);
        at += step;
    }
    Ok(best)
}

/// Check that `entries` only write past the header section and inside the file they
/// describe.
pub fn validate(entries: &[Entry], file_len: u64, log_offset: u64) -> Result<()> {
    for e in entries {
        let limit = file_len.max(e.last_file_offset);
        if e.flushed_file_offset > file_len || e.last_file_offset > MAX_FILE_END {
            return Err(Error::corrupt(
                "VHDX log",
                log_offset,
                format!(
                    "entry {} was written for a file of {} bytes; the file has {file_len}",
                    e.sequence, e.flushed_file_offset
                ),
            ));
        }
        for (off, a) in &e.actions {
            let len = match a {
                Action::Page(_) => SECTOR,
                Action::Zero(n) => *n,
            };
            if *off < HEADER_SECTION_END || off.saturating_add(len) > limit {
                return Err(Error::corrupt(
                    "VHDX log",
                    log_offset,
                    format!(
                        "entry {} writes {len} bytes at {off:#x}, outside the file's structures",
                        e.sequence
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Write what `entries` say to the file, extend it to the length they need, and sync.
pub fn replay(storage: &dyn Storage, entries: &[Entry]) -> Result<()> {
    let io = |e| Error::io("vhdx: replaying the log", e);
    for e in entries {
        for (off, a) in &e.actions {
            match a {
                Action::Page(p) => storage.write_at(p, *off).map_err(io)?,
                Action::Zero(n) => {
                    // Past the end of the file the bytes read as zeros already (the file
                    // is extended below), so a huge claimed length costs nothing.
                    let len = storage.len().map_err(io)?;
                    let n = (*n).min(len.saturating_sub(*off));
                    crate::storage::write_zero_bytes(storage, *off, n).map_err(io)?
                }
            }
        }
        let len = storage.len().map_err(io)?;
        if len < e.last_file_offset {
            storage
                .set_len(e.last_file_offset.next_multiple_of(MIB))
                .map_err(io)?;
        }
    }
    storage.flush().map_err(io)
}

/// One entry (sequence 1, at the start of the log) carrying `pages` (file offset and
/// 4 KiB contents) under `guid`.
pub fn build_entry(guid: &Guid, pages: &[(u64, Vec<u8>)], file_len: u64) -> Vec<u8> {
    let count = pages.len() as u64;
    let desc = descriptor_sectors(count);
    let total = (desc + count) * SECTOR;
    let seq = 1u64;
    let mut b = vec![0u8; total as usize];
    b[..4].copy_from_slice(ENTRY_SIGNATURE);
    LE::write_u32(&mut b[8..], total as u32);
    LE::write_u64(&mut b[16..], seq);
    LE::write_u32(&mut b[24..], count as u32);
    b[32..48].copy_from_slice(guid);
    LE::write_u64(&mut b[48..], file_len);
    LE::write_u64(&mut b[56..], file_len);
    for (i, (off, page)) in pages.iter().enumerate() {
        let d = 64 + 32 * i;
        b[d..d + 4].copy_from_slice(DATA_DESC);
        b[d + 4..d + 8].copy_from_slice(&page[4092..4096]);
        b[d + 8..d + 16].copy_from_slice(&page[..8]);
        LE::write_u64(&mut b[d + 16..], *off);
        LE::write_u64(&mut b[d + 24..], seq);
        let s = ((desc + i as u64) * SECTOR) as usize;
        b[s..s + 4].copy_from_slice(DATA_SIGNATURE);
        LE::write_u32(&mut b[s + 4..], (seq >> 32) as u32);
        b[s + 8..s + 4092].copy_from_slice(&page[8..4092]);
        LE::write_u32(&mut b[s + 4092..], seq as u32);
    }
    set_checksum(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(entry: &[u8], at: usize, len: usize) -> Vec<u8> {
        let mut log = vec![0u8; len];
        for (i, b) in entry.iter().enumerate() {
            log[(at + i) % len] = *b;
        }
        log
    }

    #[test]
    fn an_entry_round_trips_even_when_it_wraps_around_the_log() {
        let guid = [7u8; 16];
        let pages = vec![
            (2 * MIB, vec![0xab; 4096]),
            (3 * MIB + 4096, (0..4096).map(|i| i as u8).collect()),
        ];
        let entry = build_entry(&guid, &pages, 5 * MIB);
        let log = log_with(&entry, (1 << 20) - 4096 * 2, 1 << 20);
        let e = parse_entry(&log, (1 << 20) - 8192, &guid, &mut u64::MAX.clone()).unwrap();
        assert_eq!(e.actions.len(), 2);
        assert_eq!(
            e.actions[1],
            (3 * MIB + 4096, Action::Page(pages[1].1.clone()))
        );
        assert_eq!(e.flushed_file_offset, 5 * MIB);
    }

    #[test]
    fn an_entry_with_a_bad_checksum_or_another_guid_is_not_valid() {
        let guid = [7u8; 16];
        let mut entry = build_entry(&guid, &[(2 * MIB, vec![1; 4096])], 5 * MIB);
        let log = log_with(&entry, 0, 1 << 20);
        assert!(parse_entry(&log, 0, &[8; 16], &mut u64::MAX.clone()).is_none());
        entry[5000] ^= 1;
        let log = log_with(&entry, 0, 1 << 20);
        assert!(parse_entry(&log, 0, &guid, &mut u64::MAX.clone()).is_none());
    }

    #[test]
    fn entries_writing_into_the_header_section_or_past_the_file_are_refused() {
        let mk = |off| Entry {
            sequence: 1,
            length: 8192,
            flushed_file_offset: 0,
            last_file_offset: 0,
            actions: vec![(off, Action::Zero(4096))],
        };
        assert!(validate(&[mk(4096)], 4 * MIB, MIB).is_err());
        assert!(validate(&[mk(4 * MIB)], 4 * MIB, MIB).is_err());
        assert!(validate(&[mk(3 * MIB)], 4 * MIB, MIB).is_ok());
    }

    #[test]
    fn a_log_of_entry_headers_at_every_sector_is_refused_in_bounded_time() {
        let guid = [7u8; 16];
        let mut file = vec![0u8; 2 * MIB as usize];
        for s in 0..256 {
            let at = MIB as usize + s * 4096;
            file[at..at + 4].copy_from_slice(ENTRY_SIGNATURE);
            LE::write_u32(&mut file[at + 8..], MIB as u32);
            LE::write_u64(&mut file[at + 16..], 1);
            file[at + 32..at + 48].copy_from_slice(&guid);
        }
        let mut h = Header::new(MIB as u32);
        h.log_guid = guid;
        let st = crate::storage::MemStorage::from_vec(file);
        let e = active_entries(&st, &h).unwrap_err();
        assert!(e.to_string().contains("too many entry headers"), "{e}");
    }

    #[test]
    fn a_one_mib_log_carries_up_to_253_pages() {
        assert_eq!(max_pages(MIB), 253);
    }
}
