//! The fixed fields of the qcow2 header: one table of name, offset and width, for the
//! version 2 fields and the version 3 additions (`format-spec/qcow2.md`, section 2).
//!
//! This is the raw on-disk layout and nothing else: `Header` (in `header.rs`) parses and
//! writes the fields through it, and code that rewrites a few header bytes in place (the
//! transaction's header switch, refcount table moves, resize, repair, the corrupt bit)
//! names them here. Values are big-endian.

use byteorder::{BigEndian, ByteOrder};
use std::ops::Range;

/// One fixed field of the qcow2 header as stored: big-endian, `len` bytes at `offset` from
/// the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the specification (`format-spec/qcow2.md`, section 2).
    pub name: &'static str,
    /// Byte offset from the start of the header (which is the start of the file).
    pub offset: usize,
    /// Width in bytes: 1, 4 or 8.
    pub len: usize,
}

impl Field {
    const fn new(name: &'static str, offset: usize, len: usize) -> Field {
        Field { name, offset, len }
    }

    /// The offset just past the field.
    pub const fn end(self) -> usize {
        self.offset + self.len
    }

    /// The field's bytes within the header.
    pub const fn range(self) -> Range<usize> {
        self.offset..self.end()
    }

    /// The field's position in the image file, for positioned reads and writes.
    pub const fn file_offset(self) -> u64 {
        self.offset as u64
    }

    /// The field's value in `header` (the file's bytes from offset 0), or `None` when
    /// `header` is too short to hold it.
    pub fn read(self, header: &[u8]) -> Option<u64> {
        let b = header.get(self.range())?;
        Some(BigEndian::read_uint(b, self.len))
    }

    /// The field's value in `header`; `header` must hold the field (as with slice indexing,
    /// a shorter buffer panics; use [`Field::read`] on bytes of unknown length).
    pub fn get(self, header: &[u8]) -> u64 {
        BigEndian::read_uint(&header[self.range()], self.len)
    }

    /// Store `value` in the field (truncated to its width); `header` must hold the field.
    pub fn put(self, header: &mut [u8], value: u64) {
        let mask = if self.len == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.len)) - 1
        };
        BigEndian::write_uint(&mut header[self.range()], value & mask, self.len);
    }
}

/// `QFI\xfb`.
pub const MAGIC: Field = Field::new("magic", 0, 4);
/// 2 or 3.
pub const VERSION: Field = Field::new("version", 4, 4);
/// Where the backing file name lies (0: no backing file).
pub const BACKING_FILE_OFFSET: Field = Field::new("backing_file_offset", 8, 8);
/// Length of the backing file name.
pub const BACKING_FILE_SIZE: Field = Field::new("backing_file_size", 16, 4);
/// log2 of the cluster size.
pub const CLUSTER_BITS: Field = Field::new("cluster_bits", 20, 4);
/// Virtual size in bytes.
pub const SIZE: Field = Field::new("size", 24, 8);
/// 0 (no encryption), 1 (AES), 2 (LUKS).
pub const CRYPT_METHOD: Field = Field::new("crypt_method", 32, 4);
/// Entries in the active L1 table.
pub const L1_SIZE: Field = Field::new("l1_size", 36, 4);
/// Offset of the active L1 table.
pub const L1_TABLE_OFFSET: Field = Field::new("l1_table_offset", 40, 8);
/// Offset of the refcount table.
pub const REFCOUNT_TABLE_OFFSET: Field = Field::new("refcount_table_offset", 48, 8);
/// Clusters the refcount table occupies.
pub const REFCOUNT_TABLE_CLUSTERS: Field = Field::new("refcount_table_clusters", 56, 4);
/// Number of internal snapshots.
pub const NB_SNAPSHOTS: Field = Field::new("nb_snapshots", 60, 4);
/// Offset of the snapshot table.
pub const SNAPSHOTS_OFFSET: Field = Field::new("snapshots_offset", 64, 8);

/// Version 3: incompatible feature bits.
pub const INCOMPATIBLE_FEATURES: Field = Field::new("incompatible_features", 72, 8);
/// Version 3: compatible feature bits.
pub const COMPATIBLE_FEATURES: Field = Field::new("compatible_features", 80, 8);
/// Version 3: autoclear feature bits.
pub const AUTOCLEAR_FEATURES: Field = Field::new("autoclear_features", 88, 8);
/// Version 3: log2 of the refcount width in bits.
pub const REFCOUNT_ORDER: Field = Field::new("refcount_order", 96, 4);
/// Version 3: length of the header (fixed fields and any unknown tail).
pub const HEADER_LENGTH: Field = Field::new("header_length", 100, 4);
/// Version 3, when `header_length` > 104: the compression method (followed by 7
/// padding bytes).
pub const COMPRESSION_TYPE: Field = Field::new("compression_type", 104, 1);

/// The fields of a version 2 header.
pub const V2: [Field; 13] = [
    MAGIC,
    VERSION,
    BACKING_FILE_OFFSET,
    BACKING_FILE_SIZE,
    CLUSTER_BITS,
    SIZE,
    CRYPT_METHOD,
    L1_SIZE,
    L1_TABLE_OFFSET,
    REFCOUNT_TABLE_OFFSET,
    REFCOUNT_TABLE_CLUSTERS,
    NB_SNAPSHOTS,
    SNAPSHOTS_OFFSET,
];
/// The fields version 3 adds after the version 2 ones.
pub const V3_ADDITIONS: [Field; 6] = [
    INCOMPATIBLE_FEATURES,
    COMPATIBLE_FEATURES,
    AUTOCLEAR_FEATURES,
    REFCOUNT_ORDER,
    HEADER_LENGTH,
    COMPRESSION_TYPE,
];

/// The bytes from the start of `first` to the end of `last`, for rewriting adjacent
/// fields with one write.
pub const fn span(first: Field, last: Field) -> Range<usize> {
    first.offset..last.end()
}

/// The header switch of a metadata transaction: virtual size, L1 table, refcount
/// table and snapshot table fields, all in the first sector, rewritten in one write.
pub const SWITCH: Range<usize> = span(SIZE, SNAPSHOTS_OFFSET);
/// refcount_table_offset and refcount_table_clusters, switched together.
pub const REFCOUNT_TABLE: Range<usize> = span(REFCOUNT_TABLE_OFFSET, REFCOUNT_TABLE_CLUSTERS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::header::V3_WITH_COMPRESSION_LEN;
    use crate::qcow2::limits::{V2_HEADER_LEN, V3_MIN_HEADER_LEN};

    fn all() -> impl Iterator<Item = Field> {
        V2.into_iter().chain(V3_ADDITIONS)
    }

    #[test]
    fn the_field_table_is_contiguous_and_gives_the_specified_header_lengths() {
        let mut end = 0;
        for f in all() {
            assert_eq!(
                f.offset, end,
                "{} does not follow the field before it",
                f.name
            );
            assert!(matches!(f.len, 1 | 4 | 8), "{} has width {}", f.name, f.len);
            end = f.end();
        }
        // The lengths derived from the table are the ones the specification gives.
        assert_eq!(V2_HEADER_LEN, 72);
        assert_eq!(V3_MIN_HEADER_LEN, 104);
        assert_eq!(V3_WITH_COMPRESSION_LEN, 112);
        assert_eq!(SWITCH, 24..72);
        assert_eq!(REFCOUNT_TABLE, 48..60);
    }

    #[test]
    fn get_and_put_read_and_write_big_endian_fields_of_their_width() {
        let mut b = [0u8; 112];
        L1_SIZE.put(&mut b, 0x0102_0304);
        assert_eq!(b[36..40], [1, 2, 3, 4]);
        SNAPSHOTS_OFFSET.put(&mut b, 0x0102_0304_0506_0708);
        assert_eq!(b[64..72], [1, 2, 3, 4, 5, 6, 7, 8]);
        COMPRESSION_TYPE.put(&mut b, 0x1ff);
        assert_eq!(b[103..106], [0, 0xff, 0]);
        assert_eq!(L1_SIZE.get(&b), 0x0102_0304);
        assert_eq!(SNAPSHOTS_OFFSET.read(&b[..71]), None);
        assert_eq!(SNAPSHOTS_OFFSET.read(&b), Some(0x0102_0304_0506_0708));
    }
}
