//! Extended L2 entries (`extended_l2=on`): each L2 entry is 16 bytes, the standard entry
//! and a bitmap that divides the cluster into 32 subclusters. Bit *i* (0..31) says
//! subcluster *i* holds data at its place in the entry's host cluster; bit 32 + *i* says
//! it reads as zeros; neither means it is unallocated (read from the backing file). Both at
//! once is invalid, and so is an allocated subcluster in an entry without a host cluster.
//! The standard entry's zero flag is not used; compressed clusters have no subclusters.
//!
//! Entries whose subclusters are all alike decode to the plain [`L2Entry`] kinds, so that
//! runs of them map like any other clusters; the rest decode to [`L2Entry::Sub`], which
//! the read path walks subcluster by subcluster. [`encode`] is the way back to the two
//! words. What writes do to the bitmap lives in `subcluster_write`.

use super::entry::{L2Entry, COMPRESSED, COPIED, OFFSET_MASK};
use super::header::Header;
use crate::error::{Error, Result};

/// Subclusters per cluster.
pub const SUBCLUSTERS: u64 = 32;
/// Smallest cluster size with extended L2 entries (QEMU's rule).
pub const MIN_CLUSTER_BITS: u32 = 14;

/// The allocation bits of every subcluster.
pub const ALL_ALLOC: u64 = 0xffff_ffff;
/// The zero bits of every subcluster.
pub const ALL_ZERO: u64 = 0xffff_ffff << 32;

/// Refuse an extended-L2 image whose header is `h` when its clusters are smaller than
/// 16 KiB (QEMU's rule).
pub fn check_openable(h: &Header) -> Result<()> {
    if h.cluster_bits < MIN_CLUSTER_BITS {
        return Err(Error::corrupt(
            "qcow2 header",
            0,
            "extended L2 entries need clusters of at least 16 KiB",
        ));
    }
    Ok(())
}

/// The allocation bits of subclusters `[a, b)` (`b` at most 32).
pub fn alloc_mask(a: u64, b: u64) -> u64 {
    if b <= a {
        return 0;
    }
    ((1u64 << (b - a)) - 1) << a
}

/// The zero bits of subclusters `[a, b)`.
pub fn zero_mask(a: u64, b: u64) -> u64 {
    alloc_mask(a, b) << 32
}

/// The two words (standard entry, subcluster bitmap) that store `e` in an extended L2
/// table: the inverse of [`decode`]. The standard entry's zero flag stays clear.
pub fn encode(e: L2Entry, cluster_bits: u32) -> (u64, u64) {
    let word = |host: Option<u64>, copied: bool| match host {
        Some(h) => h | if copied { COPIED } else { 0 },
        None => 0,
    };
    match e {
        L2Entry::Unallocated => (0, 0),
        L2Entry::Zero { host, copied } => (word(host, copied), ALL_ZERO),
        L2Entry::Normal { host, copied } => (word(Some(host), copied), ALL_ALLOC),
        L2Entry::Compressed { .. } => (e.encode(cluster_bits), 0),
        L2Entry::Sub {
            host,
            copied,
            bitmap,
        } => (word(host, copied), bitmap),
    }
}

/// The subcluster bitmap an entry stands for (compressed clusters have none).
pub fn bitmap_of(e: L2Entry) -> u64 {
    match e {
        L2Entry::Normal { .. } => ALL_ALLOC,
        L2Entry::Zero { .. } => ALL_ZERO,
        L2Entry::Sub { bitmap, .. } => bitmap,
        L2Entry::Unallocated | L2Entry::Compressed { .. } => 0,
    }
}

/// What one subcluster holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Data at this byte offset of the host file.
    Data(u64),
    /// Zeros; at this host offset when the entry has a host cluster (QEMU reports it).
    Zero(Option<u64>),
    /// Nothing here: the backing file's data (or zeros); QEMU reports the place it would
    /// have in the entry's host cluster, when there is one.
    Unallocated(Option<u64>),
}

/// Decode the extended entry (`raw`, `bitmap`) of an image with `cluster_bits`.
pub fn decode(raw: u64, bitmap: u64, cluster_bits: u32) -> L2Entry {
    decode_in(raw, bitmap, cluster_bits, false)
}

/// [`decode`] for an image with an external data file (`external`), where an entry of
/// offset 0 with the COPIED flag names cluster 0 of the data file (every data-file
/// cluster carries the flag), as in [`L2Entry::decode_external`].
pub fn decode_in(raw: u64, bitmap: u64, cluster_bits: u32, external: bool) -> L2Entry {
    if raw & COMPRESSED != 0 {
        return L2Entry::decode(raw, cluster_bits);
    }
    let host = raw & OFFSET_MASK;
    let copied = raw & COPIED != 0;
    let has_host = host != 0 || (external && copied);
    let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
    match (has_host, alloc, zero) {
        (false, 0, 0) => L2Entry::Unallocated,
        (false, 0, u32::MAX) => L2Entry::Zero {
            host: None,
            copied: false,
        },
        (true, u32::MAX, 0) => L2Entry::Normal { host, copied },
        (true, 0, u32::MAX) => L2Entry::Zero {
            host: Some(host),
            copied,
        },
        _ => L2Entry::Sub {
            host: has_host.then_some(host),
            copied,
            bitmap,
        },
    }
}

/// Why the bitmap of an entry whose host cluster is `host` is invalid, if it is.
pub fn invalid(host: Option<u64>, bitmap: u64, compressed: bool) -> Option<&'static str> {
    let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
    if compressed && bitmap != 0 {
        return Some("a compressed cluster has subcluster bits set");
    }
    if alloc & zero != 0 {
        return Some("a subcluster is both allocated and zero");
    }
    if host.is_none() && alloc != 0 {
        return Some("allocated subclusters without a host cluster");
    }
    None
}

/// What `check` says of entry `index` (`raw`, naming `host`) whose `bitmap` is invalid
/// for reason `why`: QEMU's words where QEMU checks the same thing.
pub fn check_message(index: usize, raw: u64, host: Option<u64>, bitmap: u64, why: &str) -> String {
    match (raw & COMPRESSED != 0, host) {
        (true, _) => format!(
            "ERROR compressed cluster {index} with non-zero subcluster allocation bitmap, entry={raw:#x}"
        ),
        (false, Some(h)) => format!(
            "ERROR offset={h:x}: Allocated cluster has corrupted subcluster allocation bitmap"
        ),
        (false, None) => {
            format!("ERROR invalid subcluster bitmap {bitmap:#x} of L2 entry {raw:#x}: {why}")
        }
    }
}

/// The state of subcluster `i` of a `Sub` entry with `host` and `bitmap`, in clusters of
/// `cluster_size` bytes.
pub fn state(host: Option<u64>, bitmap: u64, i: u64, cluster_size: u64) -> State {
    let sub = cluster_size / SUBCLUSTERS;
    if bitmap >> i & 1 == 1 {
        State::Data(host.unwrap_or(0) + i * sub)
    } else if bitmap >> (32 + i) & 1 == 1 {
        State::Zero(host.map(|h| h + i * sub))
    } else {
        State::Unallocated(host.map(|h| h + i * sub))
    }
}

/// The run of subclusters alike starting at byte `off` of the cluster (and ending before
/// byte `end`, at most the cluster size): its state at `off` and its length in bytes.
pub fn run(host: Option<u64>, bitmap: u64, off: u64, end: u64, cluster_size: u64) -> (State, u64) {
    let sub = cluster_size / SUBCLUSTERS;
    let i = off / sub;
    let first = state(host, bitmap, i, cluster_size);
    let mut j = i + 1;
    while j * sub < end {
        let same = match (first, state(host, bitmap, j, cluster_size)) {
            (State::Data(a), State::Data(b)) => b == a + (j - i) * sub,
            (State::Zero(a), State::Zero(b)) | (State::Unallocated(a), State::Unallocated(b)) => {
                b == a.map(|a| a + (j - i) * sub)
            }
            _ => false,
        };
        if !same {
            break;
        }
        j += 1;
    }
    let stop = (j * sub).min(end);
    let at = match first {
        State::Data(h) => State::Data(h + off % sub),
        State::Zero(h) => State::Zero(h.map(|h| h + off % sub)),
        State::Unallocated(h) => State::Unallocated(h.map(|h| h + off % sub)),
    };
    (at, stop - off)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 65536;

    #[test]
    fn uniform_entries_decode_to_the_plain_kinds() {
        assert_eq!(decode(0, 0, 16), L2Entry::Unallocated);
        assert_eq!(
            decode(0x50000 | COPIED, 0xffff_ffff, 16),
            L2Entry::Normal {
                host: 0x50000,
                copied: true
            }
        );
        assert_eq!(
            decode(0, 0xffff_ffff << 32, 16),
            L2Entry::Zero {
                host: None,
                copied: false
            }
        );
        assert!(matches!(decode(0x50000, 0b1, 16), L2Entry::Sub { .. }));
    }

    #[test]
    fn encoding_gives_back_the_words_decoding_read() {
        let words = [
            (0, 0),
            (0, ALL_ZERO),
            (0x50000 | COPIED, ALL_ALLOC),
            (0x50000, ALL_ALLOC),
            (0x50000 | COPIED, ALL_ZERO),
            (0x50000 | COPIED, 0),
            (0x50000 | COPIED, 0b101 | 1 << 33),
            (0, 1 << 40),
            (
                super::super::entry::encode_compressed(0x50000 + 100, 1024, 16),
                0,
            ),
        ];
        for (raw, bitmap) in words {
            assert_eq!(
                encode(decode(raw, bitmap, 16), 16),
                (raw, bitmap),
                "{raw:#x}"
            );
        }
    }

    #[test]
    fn masks_cover_exactly_the_subclusters_asked_for() {
        assert_eq!(alloc_mask(0, 32), ALL_ALLOC);
        assert_eq!(zero_mask(0, 32), ALL_ZERO);
        assert_eq!(alloc_mask(3, 5), 0b11000);
        assert_eq!(alloc_mask(31, 32), 1 << 31);
        assert_eq!(zero_mask(1, 2), 1 << 33);
        assert_eq!(alloc_mask(4, 4), 0);
    }

    #[test]
    fn a_run_covers_subclusters_alike_and_data_moves_with_the_offset() {
        // Subclusters 0-1 data, 2 zero, 3.. unallocated.
        let bitmap = 0b11 | 1 << 34;
        let sub = CS / 32;
        assert_eq!(
            run(Some(0x50000), bitmap, 100, CS, CS),
            (State::Data(0x50000 + 100), 2 * sub - 100)
        );
        assert_eq!(
            run(Some(0x50000), bitmap, 2 * sub, CS, CS),
            (State::Zero(Some(0x50000 + 2 * sub)), sub)
        );
        assert_eq!(
            run(None, 1 << 34, 2 * sub, CS, CS),
            (State::Zero(None), sub)
        );
        assert_eq!(
            run(Some(0x50000), bitmap, 3 * sub, CS, CS),
            (State::Unallocated(Some(0x50000 + 3 * sub)), CS - 3 * sub)
        );
        assert_eq!(
            run(Some(0x50000), bitmap, 3 * sub, 4 * sub + 7, CS).1,
            sub + 7
        );
    }

    #[test]
    fn both_bits_or_data_without_a_cluster_are_invalid() {
        assert!(invalid(Some(0x50000), 1 | 1 << 32, false).is_some());
        assert!(invalid(None, 1, false).is_some());
        assert!(invalid(Some(0x50000), 1, true).is_some());
        assert!(invalid(Some(0x50000), 1 | 1 << 33, false).is_none());
    }
}
