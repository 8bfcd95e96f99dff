//! L1 and L2 entries, and refcount block entries: pure helpers that decode and encode
//! table entries.
//!
//! Mapping a guest offset is two lookups: the L1 entry (`l1_index`) names an L2 table, and
//! the L2 entry (`l2_index`) says what backs the guest cluster. [`L2Entry`] classifies an
//! entry into the cases every reader and writer has to handle; it does no I/O.
//! [`read_refcount`] and [`write_refcount`] read and write one entry of a refcount block of
//! any width (1 to 64 bits; sub-byte entries pack the lowest index into the lowest bits).

use super::limits::MAX_HOST_OFFSET;
use byteorder::{BigEndian, ByteOrder};

/// Bit 63: the cluster's refcount is exactly one (it may be written in place).
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (v3): the cluster reads as zeros.
pub const ZERO_FLAG: u64 = 1;
/// Bits 9..55: a host offset in a standard L1 or L2 entry.
pub const OFFSET_MASK: u64 = MAX_HOST_OFFSET & !0x1ff;
/// Bits 1..8 and 56..61 of a standard L2 entry must be zero.
pub const L2_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Bits 1..8 and 56..62 of an L1 entry must be zero.
pub const L1_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;

/// What an L2 entry says about its guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated: read from the backing image, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is kept allocated when the entry also holds an offset.
    Zero {
        /// Preallocated host cluster, if any.
        host: Option<u64>,
        /// The COPIED flag.
        copied: bool,
    },
    /// Guest data at `host`.
    Normal {
        /// Host offset of the cluster.
        host: u64,
        /// The COPIED flag.
        copied: bool,
    },
    /// Compressed data of `len` bytes (rounded up to 512-byte sectors) at `host`.
    Compressed {
        /// Host offset of the first compressed byte.
        host: u64,
        /// Upper bound of the compressed length, in bytes.
        len: u64,
    },
    /// An extended L2 entry whose 32 subclusters are not all alike: `bitmap` says, for
    /// each, whether it is data at its place in `host`'s cluster (bits 0..31), reads as
    /// zeros (bits 32..63), or neither (unallocated). See `subcluster`.
    Sub {
        /// The host cluster, if the entry names one.
        host: Option<u64>,
        /// The COPIED flag.
        copied: bool,
        /// The subcluster allocation (low half) and zero (high half) bits.
        bitmap: u64,
    },
}

impl L2Entry {
    /// Decode a raw L2 entry of an image with `cluster_bits`.
    pub fn decode(raw: u64, cluster_bits: u32) -> L2Entry {
        if raw & COMPRESSED != 0 {
            let (host, len) = decode_compressed(raw, cluster_bits);
            return L2Entry::Compressed { host, len };
        }
        let host = raw & OFFSET_MASK;
        let copied = raw & COPIED != 0;
        if raw & ZERO_FLAG != 0 {
            return L2Entry::Zero {
                host: (host != 0).then_some(host),
                copied,
            };
        }
        if host == 0 {
            L2Entry::Unallocated
        } else {
            L2Entry::Normal { host, copied }
        }
    }

    /// [`decode`](Self::decode) for an image with an external data file, where host
    /// offset 0 is a real cluster: an entry of offset 0 with the COPIED flag (which every
    /// data file cluster carries) maps guest data to offset 0 of the data file.
    pub fn decode_external(raw: u64, cluster_bits: u32) -> L2Entry {
        match L2Entry::decode(raw, cluster_bits) {
            L2Entry::Unallocated if raw & COPIED != 0 => L2Entry::Normal {
                host: 0,
                copied: true,
            },
            L2Entry::Zero {
                host: None,
                copied: true,
            } => L2Entry::Zero {
                host: Some(0),
                copied: true,
            },
            e => e,
        }
    }

    /// Encode the entry again.
    pub fn encode(self, cluster_bits: u32) -> u64 {
        match self {
            L2Entry::Unallocated => 0,
            L2Entry::Zero { host, copied } => {
                host.unwrap_or(0) | ZERO_FLAG | if copied { COPIED } else { 0 }
            }
            L2Entry::Normal { host, copied } => host | if copied { COPIED } else { 0 },
            L2Entry::Compressed { host, len } => encode_compressed(host, len, cluster_bits),
            L2Entry::Sub { host, copied, .. } => {
                host.unwrap_or(0) | if copied { COPIED } else { 0 }
            }
        }
    }

    /// The host cluster this entry holds a reference to, if any (for compressed entries the
    /// first host cluster).
    pub fn host_cluster(self, cluster_size: u64) -> Option<u64> {
        match self {
            L2Entry::Normal { host, .. } => Some(host),
            L2Entry::Zero { host, .. } => host,
            L2Entry::Compressed { host, .. } => Some(host & !(cluster_size - 1)),
            L2Entry::Sub { host, .. } => host,
            L2Entry::Unallocated => None,
        }
    }
}

/// Number of bits holding the host offset in a compressed descriptor.
pub fn compressed_offset_bits(cluster_bits: u32) -> u32 {
    62 - (cluster_bits - 8)
}

/// Decode a compressed descriptor into (host offset, maximum length in bytes).
///
/// The sector count field holds the number of 512-byte sectors the data spans *beyond* the
/// first; the first sector is partial, so the data ends within
/// `(host & !511) + (count + 1) * 512`.
pub fn decode_compressed(raw: u64, cluster_bits: u32) -> (u64, u64) {
    let x = compressed_offset_bits(cluster_bits);
    let host = raw & ((1u64 << x) - 1);
    let count = (raw & !COPIED & !COMPRESSED) >> x;
    let len = (count + 1) * 512 - (host & 511);
    (host, len)
}

/// Encode a compressed descriptor for `len` bytes at `host`.
pub fn encode_compressed(host: u64, len: u64, cluster_bits: u32) -> u64 {
    let x = compressed_offset_bits(cluster_bits);
    let end = host + len;
    let count = (end - 1) / 512 - host / 512;
    COMPRESSED | (count << x) | host
}

/// The host offset in an L1 entry (0 when the L2 table is not allocated).
pub fn l1_l2_offset(raw: u64) -> u64 {
    raw & OFFSET_MASK
}

/// Read entry `index` of a refcount block with 2^`order`-bit entries.
pub fn read_refcount(block: &[u8], order: u32, index: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[index / per_byte];
            let shift = (index % per_byte) * bits;
            u64::from((byte >> shift) & ((1u8 << bits) - 1))
        }
        3 => u64::from(block[index]),
        4 => u64::from(BigEndian::read_u16(&block[index * 2..])),
        5 => u64::from(BigEndian::read_u32(&block[index * 4..])),
        _ => BigEndian::read_u64(&block[index * 8..]),
    }
}

/// Write entry `index` of a refcount block with 2^`order`-bit entries (`value` must fit).
pub fn write_refcount(block: &mut [u8], order: u32, index: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (index % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let b = &mut block[index / per_byte];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[index] = value as u8,
        4 => BigEndian::write_u16(&mut block[index * 2..], value as u16),
        5 => BigEndian::write_u32(&mut block[index * 4..], value as u32),
        _ => BigEndian::write_u64(&mut block[index * 8..], value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_entries_decode_into_each_kind() {
        assert_eq!(L2Entry::decode(0, 16), L2Entry::Unallocated);
        assert_eq!(
            L2Entry::decode(0x8000_0000_0005_0000, 16),
            L2Entry::Normal {
                host: 0x50000,
                copied: true
            }
        );
        assert_eq!(
            L2Entry::decode(1, 16),
            L2Entry::Zero {
                host: None,
                copied: false
            }
        );
        assert_eq!(
            L2Entry::decode(0x8000_0000_0005_0001, 16),
            L2Entry::Zero {
                host: Some(0x50000),
                copied: true
            }
        );
    }

    #[test]
    fn compressed_descriptors_round_trip_for_every_cluster_size() {
        for bits in 9..=21u32 {
            let cs = 1u64 << bits;
            // Compressed data is always smaller than a cluster; the worst case starts at
            // the last byte of a sector.
            let cases = [
                (0x1_0000u64, 100u64),
                (0x1_0123, 3000),
                (0x7_fe00, 512),
                (0x1_01ff, cs - 1),
            ];
            for &(host, len) in &cases {
                let len = len.min(cs - 1);
                let raw = encode_compressed(host, len, bits);
                let (h, l) = decode_compressed(raw, bits);
                assert_eq!(h, host);
                assert!(l >= len && l < len + 1024, "bits {bits}: len {l} for {len}");
                assert!(matches!(
                    L2Entry::decode(raw, bits),
                    L2Entry::Compressed { .. }
                ));
            }
        }
    }

    #[test]
    fn a_qemu_compressed_descriptor_decodes_to_its_offset_and_sectors() {
        // 64 KiB clusters: offset in bits 0..53, sector count in bits 54..61.
        // 0x4040_0000_0007_0000: compressed, 1 additional sector, at 0x70000.
        let (host, len) = decode_compressed(0x4040_0000_0007_0000, 16);
        assert_eq!(host, 0x70000);
        assert_eq!(len, 1024);
    }
}

#[cfg(test)]
mod refcount_tests {
    use super::*;

    #[test]
    fn sub_byte_refcounts_pack_lowest_index_into_the_lowest_bits() {
        let mut b = [0u8; 2];
        write_refcount(&mut b, 0, 0, 1);
        write_refcount(&mut b, 0, 9, 1);
        assert_eq!(b, [0b0000_0001, 0b0000_0010]);
        let mut b = [0u8; 1];
        write_refcount(&mut b, 1, 1, 3);
        assert_eq!(b, [0b0000_1100]);
        assert_eq!(read_refcount(&b, 1, 1), 3);
        let mut b = [0u8; 1];
        write_refcount(&mut b, 2, 1, 0xa);
        assert_eq!(b, [0xa0]);
        assert_eq!(read_refcount(&b, 2, 0), 0);
    }

    #[test]
    fn wide_refcounts_are_big_endian() {
        let mut b = [0u8; 16];
        write_refcount(&mut b, 4, 1, 0x1234);
        assert_eq!(&b[2..4], &[0x12, 0x34]);
        write_refcount(&mut b, 6, 1, 0x0102_0304_0506_0708);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read_refcount(&b, 6, 1), 0x0102_0304_0506_0708);
        write_refcount(&mut b, 5, 0, 7);
        assert_eq!(read_refcount(&b, 5, 0), 7);
        write_refcount(&mut b, 3, 0, 200);
        assert_eq!(read_refcount(&b, 3, 0), 200);
    }
}
