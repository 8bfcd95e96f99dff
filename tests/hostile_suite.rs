//! The hostile-image suite for qcow2: tables of crafted images, each made by poking one
//! field of a valid image that qemu-img made, covering what QEMU guards against beyond the
//! header fields of `tests/qcow2_hostile.rs`: header length and extension sizes, backing
//! names, refcount order, table sizes, snapshot tables, L2 entries pointing into metadata or
//! past the end, compressed cluster descriptors, the bitmap directory, truncated files and
//! images claiming exabyte sizes. The VMDK cases are in `tests/hostile_suite_vmdk.rs`; both
//! run through [`common::hostile::run_suite`] (256 MiB address space, a time limit, one clear
//! error or exactly qemu-img's result).

mod common;

use common::hostile::{
    be32, be64, put_be, put_be32, put_be64, run_suite, Base, Base::*, Case, Expect, Expect::*,
};
use vdisk::qcow2::header::field;

/// qcow2 header extension types.
mod q {
    pub use vdisk::qcow2::header::ext::{
        BACKING_FORMAT as EXT_BACKING_FORMAT, BITMAPS as EXT_BITMAPS,
        FEATURE_TABLE as EXT_FEATURE_TABLE,
    };
}

/// Offset of the header of extension `kind` in a qcow2 v3 image (panics if absent).
fn ext_at(img: &[u8], kind: u32) -> usize {
    let mut p = be32(img, field::HEADER_LENGTH.offset) as usize;
    loop {
        let t = be32(img, p);
        assert_ne!(t, 0, "extension {kind:#x} not found");
        if t == kind {
            return p;
        }
        p += 8 + (be32(img, p + 4) as usize).next_multiple_of(8);
    }
}

fn l1_offset(img: &[u8]) -> usize {
    be64(img, field::L1_TABLE_OFFSET.offset) as usize
}

/// Host offset of the first L2 table.
fn l2_offset(img: &[u8]) -> usize {
    (be64(img, l1_offset(img)) & 0x00ff_ffff_ffff_fe00) as usize
}

/// One big-endian field poked to one value: the case's name, the field's offset in its
/// structure and width in bytes (1, 2, 4 or 8), the value, and what vdisk must do.
type Field = (&'static str, usize, usize, u64, Expect);

/// A table of [`Field`]s, the base whose bytes they poke, and where in those bytes the
/// structure the offsets count from starts.
type Structure = (Base, fn(&[u8]) -> usize, &'static [Field]);

/// Header fields of `Qcow2`.
#[rustfmt::skip]
const HEADER: &[Field] = &[
    ("header_length 0xfffffff8", field::HEADER_LENGTH.offset, 4, 0xffff_fff8, Error("header")),
    ("cluster_bits 63", field::CLUSTER_BITS.offset, 4, 63, Error("cluster")),
    ("refcount_order 0xffffffff", field::REFCOUNT_ORDER.offset, 4, 0xffff_ffff,
        Error("refcount")),
    ("refcount_order 5 on a 16-bit image (reads are unaffected)", field::REFCOUNT_ORDER.offset,
        4, 5, SameAsQemu),
    ("l1_size just over the 32 MiB table limit", field::L1_SIZE.offset, 4, (32 << 20) / 8 + 1,
        Error("L1")),
    ("L1 table in the header cluster", field::L1_TABLE_OFFSET.offset, 8, 0, Error("L1")),
    ("refcount table at offset 0", field::REFCOUNT_TABLE_OFFSET.offset, 8, 0, Error("refcount")),
    ("refcount table of 0x1000 clusters in a small file",
        field::REFCOUNT_TABLE_CLUSTERS.offset, 4, 0x1000, Error("refcount")),
    // ---- exabyte sizes ----
    ("qcow2 virtual size 2^60 with a matching tiny L1", field::SIZE.offset, 8, 1 << 60,
        Error("L1")),
    ("unknown autoclear bits are ignored", field::AUTOCLEAR_FEATURES.offset, 8,
        0xffff_ffff_ffff_fffc, SameAsQemu),
];

/// Header fields of `Qcow2Overlay`: where its backing file name is, and how long.
#[rustfmt::skip]
const OVERLAY_HEADER: &[Field] = &[
    ("backing name overlapping the header", field::BACKING_FILE_OFFSET.offset, 8, 8,
        Error("backing")),
    ("backing name length 0x7fffffff", field::BACKING_FILE_SIZE.offset, 4, 0x7fff_ffff,
        Error("backing")),
    ("backing name in the second cluster", field::BACKING_FILE_OFFSET.offset, 8, 0x10000,
        Error("backing")),
];

/// The header of the feature name table extension of `Qcow2`: its type, its length.
#[rustfmt::skip]
const FEATURE_TABLE_EXT: &[Field] = &[
    ("extension length 0x7fffffff", 4, 4, 0x7fff_ffff, Error("extension")),
    ("unknown extension with a sane length is ignored", 0, 4, 0x1234_5678, SameAsQemu),
];

/// The header of the backing format extension of `Qcow2Overlay`: its length.
#[rustfmt::skip]
const BACKING_FORMAT_EXT: &[Field] = &[
    ("backing format extension longer than a file name can be", 4, 4, 0x8000, Error("")),
];

/// The first snapshot table entry of `Qcow2Snapshots`.
#[rustfmt::skip]
const SNAPSHOT: &[Field] = &[
    ("snapshot extra_data_size 0xffffffff", 36, 4, 0xffff_ffff, Error("snapshot")),
    ("snapshot id string length 0xffff", 12, 2, 0xffff, Error("snapshot")),
    ("snapshot name length 0xffff", 14, 2, 0xffff, Error("snapshot")),
    ("snapshot L1 table size 0x7fffffff (only that snapshot is unusable)", 8, 4, 0x7fff_ffff,
        SameAsQemu),
];

/// The bitmaps header extension of `Qcow2Bitmap` (after its 8-byte header).
#[rustfmt::skip]
const BITMAPS_EXT: &[Field] = &[
    ("bitmaps extension with nb_bitmaps 0xffffffff", 8, 4, 0xffff_ffff, Error("bitmap")),
    ("bitmap directory size 2^40", 16, 8, 1 << 40, Error("bitmap")),
    ("bitmap directory offset past the end of the file", 24, 8, 0x7fff_0000_0000,
        Error("bitmap")),
    ("bitmaps extension claiming 65,536 bitmaps", 8, 4, 65_536, Error("bitmap")),
];

/// The first bitmap directory entry of `Qcow2Bitmap`.
#[rustfmt::skip]
const BITMAP_DIR: &[Field] = &[
    ("bitmap granularity bits 32", 17, 1, 32, Error("granularity")),
    ("bitmap granularity bits 8", 17, 1, 8, Error("granularity")),
    ("bitmap name length 0", 18, 2, 0, Error("name")),
    ("bitmap name length 65535 (past the directory)", 18, 2, 0xffff, Error("bitmap")),
    ("bitmap of type 2", 16, 1, 2, Error("type")),
    ("bitmap with extra data", 20, 4, 8, Error("bitmap")),
    ("bitmap with reserved flags", 12, 4, 0x8000_0002, Error("flags")),
    ("bitmap table offset into the header, unaligned", 0, 8, 0x200, Error("bitmap")),
    ("bitmap table of 2^27+1 entries", 8, 4, (1 << 27) + 1, Error("bitmap")),
];

/// The "copied" flag of an L1 or L2 entry (refcount 1).
const COPIED: u64 = 0x8000_0000_0000_0000;

/// The first entry of the L1 table of `Qcow2`.
#[rustfmt::skip]
const L1_ENTRY: &[Field] = &[
    ("L1 entry pointing past the end of the file", 0, 8, COPIED | 0x7fff_0000_0000,
        Error("L2")),
];

/// The first entry of the first L2 table of `Qcow2`.
#[rustfmt::skip]
const L2_ENTRY: &[Field] = &[
    ("L2 entry pointing past the end of the file", 0, 8, COPIED | 0x7fff_0000_0000,
        Error("past the end")),
    ("L2 entry at host offset 2^55 (beyond any file)", 0, 8, COPIED | (1 << 55), Error("")),
];

/// Backing names of `Qcow2Overlay`: (name of the case, the backing name, expected error).
#[rustfmt::skip]
const BACKING_NAMES: &[(&str, &[u8], &str)] = &[
    ("backing name that is a JSON specification",
        b"json:{\"file\":{\"filename\":\"/etc/passwd\"}}", "json"),
    ("backing name that is a protocol (nbd:)", b"nbd:localhost:10809", "protocol"),
    ("backing name naming a missing file", b"no-such-file.raw", "no-such-file"),
];

/// Every case: each table of fields with the base it pokes and where its structure
/// starts in that base, the backing names, then the cases whose poke is more than one field.
fn cases() -> Vec<Case> {
    let structures: [Structure; 9] = [
        (Qcow2, |_| 0, HEADER),
        (Qcow2Overlay, |_| 0, OVERLAY_HEADER),
        (
            Qcow2,
            |i| ext_at(i, q::EXT_FEATURE_TABLE),
            FEATURE_TABLE_EXT,
        ),
        (
            Qcow2Overlay,
            |i| ext_at(i, q::EXT_BACKING_FORMAT),
            BACKING_FORMAT_EXT,
        ),
        (Qcow2Snapshots, snapshot_table, SNAPSHOT),
        (Qcow2Bitmap, |i| ext_at(i, q::EXT_BITMAPS), BITMAPS_EXT),
        (Qcow2Bitmap, bitmap_dir, BITMAP_DIR),
        (Qcow2, l1_offset, L1_ENTRY),
        (Qcow2, l2_offset, L2_ENTRY),
    ];
    let mut all = Vec::new();
    for (base, start, fields) in structures {
        for &(name, at, width, v, expect) in fields {
            all.push(Case::new(name, base, expect, move |i| {
                let s = start(i);
                put_be(i, s + at, width, v);
            }));
        }
    }
    all.extend(BACKING_NAMES.iter().map(|&(name, backing, text)| {
        Case::new(name, Qcow2Overlay, Error(text), move |i| {
            set_backing_name(i, backing)
        })
    }));
    all.extend(extension_cases());
    all.extend(table_cases());
    all.extend(compressed_cases());
    all
}

/// Header extensions poked in more than one field, or in their contents.
fn extension_cases() -> Vec<Case> {
    vec![
        Case::new(
            "extension length running just past the first cluster",
            Qcow2,
            Error("extension"),
            |i| {
                let e = ext_at(i, q::EXT_FEATURE_TABLE);
                put_be32(i, e + 4, (0x10000 - e - 8 + 8) as u32);
            },
        ),
        Case::new(
            "backing format extension naming an unknown format",
            Qcow2Overlay,
            Error("format"),
            |i| {
                let e = ext_at(i, q::EXT_BACKING_FORMAT);
                i[e + 8..e + 11].copy_from_slice(b"nbd");
            },
        ),
        Case::new(
            "bitmap directory of many entries each claiming a 32 MiB table",
            Qcow2Bitmap,
            Error("bitmap"),
            |i| {
                let e = ext_at(i, q::EXT_BITMAPS);
                let n: usize = 4096;
                let dir = i.len().next_multiple_of(0x10000);
                put_be32(i, e + 8, n as u32);
                put_be64(i, e + 16, (n * 24) as u64);
                put_be64(i, e + 24, dir as u64);
                i.resize(dir + n * 24, 0);
                for k in 0..n {
                    let p = dir + k * 24;
                    put_be64(i, p, 0x10000);
                    put_be32(i, p + 8, (32 << 20) / 8);
                }
            },
        ),
    ]
}

/// Tables placed where they cannot be, entries read from the image, truncated files.
fn table_cases() -> Vec<Case> {
    vec![
        Case::new(
            "L1 table running past the end of the file",
            Qcow2,
            Error("L1"),
            |i| {
                let len = i.len() as u64;
                put_be64(i, field::L1_TABLE_OFFSET.offset, (len & !0xffff) + 0x10000);
            },
        ),
        Case::new(
            "nb_snapshots 2 with one entry in the table",
            Qcow2Snapshots,
            Error("snapshot"),
            |i| put_be32(i, field::NB_SNAPSHOTS.offset, 3),
        ),
        Case::new(
            "snapshot L1 table offset unaligned (only that snapshot is unusable)",
            Qcow2Snapshots,
            SameAsQemu,
            |i| {
                let s = snapshot_table(i);
                let off = be64(i, s);
                put_be64(i, s, off + 8);
            },
        ),
        Case::new(
            "snapshot table past the end of the file",
            Qcow2Snapshots,
            Error("snapshot"),
            |i| put_be64(i, field::SNAPSHOTS_OFFSET.offset, 0x7fff_0000_0000),
        ),
        Case::new(
            "L1 entry pointing at the refcount table (its entries read as L2 entries)",
            Qcow2,
            SameAsQemu,
            |i| {
                let l1 = l1_offset(i);
                let rt = be64(i, field::REFCOUNT_TABLE_OFFSET.offset);
                put_be64(i, l1, COPIED | rt);
            },
        ),
        Case::new(
            "L2 entry pointing into the refcount table (QEMU reads it as data)",
            Qcow2,
            SameAsQemu,
            |i| {
                let l2 = l2_offset(i);
                let rt = be64(i, field::REFCOUNT_TABLE_OFFSET.offset);
                put_be64(i, l2, COPIED | rt);
            },
        ),
        Case::new(
            "L2 entry with an unaligned host offset",
            Qcow2,
            Error("align"),
            |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e | 0x200);
            },
        ),
        // ---- truncated files ----
        Case::new(
            "qcow2 truncated inside the first L2 table",
            Qcow2,
            Error("past the end"),
            |i| {
                let l2 = l2_offset(i);
                i.truncate(l2 + 100);
            },
        ),
        Case::new(
            "qcow2 truncated inside guest data",
            Qcow2,
            SameAsQemu,
            |i| {
                let n = i.len() - 0x8000;
                i.truncate(n);
            },
        ),
    ]
}

/// Compressed cluster descriptors and the compression type.
fn compressed_cases() -> Vec<Case> {
    vec![
        Case::new(
            "compressed cluster past the end of the file",
            Qcow2Compressed,
            Error(""),
            |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                // 64 KiB clusters: host offset in bits 0..=53, sector count in 54..=61.
                put_be64(i, l2, (e & !((1 << 54) - 1)) | 0x3f_0000_0000);
            },
        ),
        Case::new(
            "compressed cluster whose data is the header (not deflate)",
            Qcow2Compressed,
            Error("compress"),
            |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e & !((1 << 54) - 1));
            },
        ),
        // QEMU reads the cluster anyway; vdisk's compressed-cluster validation
        // (format-spec/qcow2.md, "Compressed clusters") refuses a length no cluster needs.
        Case::new(
            "compressed cluster with the largest sector count",
            Qcow2Compressed,
            Error("more than a cluster needs"),
            |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e | 0xff << 54);
            },
        ),
        Case::new(
            "compression type zstd on a zlib image",
            Qcow2Compressed,
            Error("compress"),
            |i| {
                i[field::COMPRESSION_TYPE.offset] = 1;
                let f = be64(i, field::INCOMPATIBLE_FEATURES.offset) | 1 << 3;
                put_be64(i, field::INCOMPATIBLE_FEATURES.offset, f);
            },
        ),
    ]
}

/// Where the snapshot table of a `Qcow2Snapshots` image starts.
fn snapshot_table(img: &[u8]) -> usize {
    be64(img, field::SNAPSHOTS_OFFSET.offset) as usize
}

/// Where the bitmap directory of a `Qcow2Bitmap` image starts.
fn bitmap_dir(img: &[u8]) -> usize {
    let e = ext_at(img, q::EXT_BITMAPS);
    be64(img, e + 24) as usize
}

/// Point the backing name at new text placed where the old name was.
fn set_backing_name(img: &mut [u8], name: &[u8]) {
    let off = be64(img, field::BACKING_FILE_OFFSET.offset) as usize;
    img[off..off + name.len()].copy_from_slice(name);
    put_be32(img, field::BACKING_FILE_SIZE.offset, name.len() as u32);
}

#[test]
fn every_hostile_qcow2_image_gives_a_clear_error_or_qemus_result_within_256_mib() {
    let all = cases();
    assert!(all.len() >= 45, "only {} cases", all.len());
    run_suite(
        "hostile qcow2 image suite",
        &[
            Qcow2,
            Qcow2Snapshots,
            Qcow2Bitmap,
            Qcow2Compressed,
            Qcow2Overlay,
        ],
        all,
    );
}
