//! L1 and L2 entries: pure helpers that decode and encode table entries.
//!
//! Mapping a guest offset is two lookups: the L1 entry (`l1_index`) names an L2 table, and
//! the L2 entry (`l2_index`) says what backs the guest cluster. [`L2Entry`] classifies an
//! entry into the cases every reader and writer has to handle; it does no I/O.

use super::limits::MAX_HOST_OFFSET;

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

    /// Encode the entry again.
    pub fn encode(self, cluster_bits: u32) -> u64 {
        match self {
            L2Entry::Unallocated => 0,
            L2Entry::Zero { host, copied } => {
                host.unwrap_or(0) | ZERO_FLAG | if copied { COPIED } else { 0 }
            }
            L2Entry::Normal { host, copied } => host | if copied { COPIED } else { 0 },
            L2Entry::Compressed { host, len } => encode_compressed(host, len, cluster_bits),
        }
    }

    /// The host cluster this entry holds a reference to, if any (for compressed entries the
    /// first host cluster).
    pub fn host_cluster(self, cluster_size: u64) -> Option<u64> {
        match self {
            L2Entry::Normal { host, .. } => Some(host),
            L2Entry::Zero { host, .. } => host,
            L2Entry::Compressed { host, .. } => Some(host & !(cluster_size - 1)),
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
