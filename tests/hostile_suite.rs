//! The hostile-image suite for qcow2: one table of crafted images, each made by poking one
//! field of a valid image that qemu-img made, covering what QEMU guards against beyond the
//! header fields of `tests/qcow2_hostile.rs`: header length and extension sizes, backing
//! names, refcount order, table sizes, snapshot tables, L2 entries pointing into metadata or
//! past the end, compressed cluster descriptors, the bitmap directory, truncated files and
//! images claiming exabyte sizes. The VMDK cases are in `tests/hostile_suite_vmdk.rs`; both
//! run through [`common::hostile::run_suite`] (256 MiB address space, a time limit, one clear
//! error or exactly qemu-img's result).

mod common;

use common::hostile::{run_suite, Base::*, Case, Expect::*};
use vdisk::qcow2::header::field;

fn be32(img: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(img[at..at + 4].try_into().unwrap())
}
fn be64(img: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(img[at..at + 8].try_into().unwrap())
}
fn put_be16(img: &mut [u8], at: usize, v: u16) {
    img[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_be32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_be64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

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

fn cases() -> Vec<Case> {
    vec![
        // ---- header length and header extensions ----
        Case {
            name: "header_length 0xfffffff8",
            base: Qcow2,
            poke: |i| put_be32(i, field::HEADER_LENGTH.offset, 0xffff_fff8),
            expect: Error("header"),
        },
        Case {
            name: "extension length 0x7fffffff",
            base: Qcow2,
            poke: |i| {
                let e = ext_at(i, q::EXT_FEATURE_TABLE);
                put_be32(i, e + 4, 0x7fff_ffff);
            },
            expect: Error("extension"),
        },
        Case {
            name: "extension length running just past the first cluster",
            base: Qcow2,
            poke: |i| {
                let e = ext_at(i, q::EXT_FEATURE_TABLE);
                put_be32(i, e + 4, (0x10000 - e - 8 + 8) as u32);
            },
            expect: Error("extension"),
        },
        Case {
            name: "unknown extension with a sane length is ignored",
            base: Qcow2,
            poke: |i| {
                let e = ext_at(i, q::EXT_FEATURE_TABLE);
                put_be32(i, e, 0x1234_5678);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "backing format extension longer than a file name can be",
            base: Qcow2Overlay,
            poke: |i| {
                let e = ext_at(i, q::EXT_BACKING_FORMAT);
                put_be32(i, e + 4, 0x8000);
            },
            expect: Error(""),
        },
        Case {
            name: "backing format extension naming an unknown format",
            base: Qcow2Overlay,
            poke: |i| {
                let e = ext_at(i, q::EXT_BACKING_FORMAT);
                i[e + 8..e + 11].copy_from_slice(b"nbd");
            },
            expect: Error("format"),
        },
        // ---- backing file name ----
        Case {
            name: "backing name overlapping the header",
            base: Qcow2Overlay,
            poke: |i| put_be64(i, field::BACKING_FILE_OFFSET.offset, 8),
            expect: Error("backing"),
        },
        Case {
            name: "backing name length 0x7fffffff",
            base: Qcow2Overlay,
            poke: |i| put_be32(i, field::BACKING_FILE_SIZE.offset, 0x7fff_ffff),
            expect: Error("backing"),
        },
        Case {
            name: "backing name in the second cluster",
            base: Qcow2Overlay,
            poke: |i| put_be64(i, field::BACKING_FILE_OFFSET.offset, 0x10000),
            expect: Error("backing"),
        },
        Case {
            name: "backing name that is a JSON specification",
            base: Qcow2Overlay,
            poke: |i| set_backing_name(i, b"json:{\"file\":{\"filename\":\"/etc/passwd\"}}"),
            expect: Error("json"),
        },
        Case {
            name: "backing name that is a protocol (nbd:)",
            base: Qcow2Overlay,
            poke: |i| set_backing_name(i, b"nbd:localhost:10809"),
            expect: Error("protocol"),
        },
        Case {
            name: "backing name naming a missing file",
            base: Qcow2Overlay,
            poke: |i| set_backing_name(i, b"no-such-file.raw"),
            expect: Error("no-such-file"),
        },
        // ---- cluster bits, refcount order ----
        Case {
            name: "cluster_bits 63",
            base: Qcow2,
            poke: |i| put_be32(i, field::CLUSTER_BITS.offset, 63),
            expect: Error("cluster"),
        },
        Case {
            name: "refcount_order 0xffffffff",
            base: Qcow2,
            poke: |i| put_be32(i, field::REFCOUNT_ORDER.offset, 0xffff_ffff),
            expect: Error("refcount"),
        },
        Case {
            name: "refcount_order 5 on a 16-bit image (reads are unaffected)",
            base: Qcow2,
            poke: |i| put_be32(i, field::REFCOUNT_ORDER.offset, 5),
            expect: SameAsQemu,
        },
        // ---- L1 and refcount table size and alignment ----
        Case {
            name: "l1_size just over the 32 MiB table limit",
            base: Qcow2,
            poke: |i| put_be32(i, field::L1_SIZE.offset, (32 << 20) / 8 + 1),
            expect: Error("L1"),
        },
        Case {
            name: "L1 table in the header cluster",
            base: Qcow2,
            poke: |i| put_be64(i, field::L1_TABLE_OFFSET.offset, 0),
            expect: Error("L1"),
        },
        Case {
            name: "L1 table running past the end of the file",
            base: Qcow2,
            poke: |i| {
                let len = i.len() as u64;
                put_be64(i, field::L1_TABLE_OFFSET.offset, (len & !0xffff) + 0x10000);
            },
            expect: Error("L1"),
        },
        Case {
            name: "refcount table at offset 0",
            base: Qcow2,
            poke: |i| put_be64(i, field::REFCOUNT_TABLE_OFFSET.offset, 0),
            expect: Error("refcount"),
        },
        Case {
            name: "refcount table of 0x1000 clusters in a small file",
            base: Qcow2,
            poke: |i| put_be32(i, field::REFCOUNT_TABLE_CLUSTERS.offset, 0x1000),
            expect: Error("refcount"),
        },
        // ---- snapshot table ----
        Case {
            name: "nb_snapshots 2 with one entry in the table",
            base: Qcow2Snapshots,
            poke: |i| put_be32(i, field::NB_SNAPSHOTS.offset, 3),
            expect: Error("snapshot"),
        },
        Case {
            name: "snapshot extra_data_size 0xffffffff",
            base: Qcow2Snapshots,
            poke: |i| {
                let s = be64(i, field::SNAPSHOTS_OFFSET.offset) as usize;
                put_be32(i, s + 36, 0xffff_ffff);
            },
            expect: Error("snapshot"),
        },
        Case {
            name: "snapshot id string length 0xffff",
            base: Qcow2Snapshots,
            poke: |i| {
                let s = be64(i, field::SNAPSHOTS_OFFSET.offset) as usize;
                put_be16(i, s + 12, 0xffff);
            },
            expect: Error("snapshot"),
        },
        Case {
            name: "snapshot name length 0xffff",
            base: Qcow2Snapshots,
            poke: |i| {
                let s = be64(i, field::SNAPSHOTS_OFFSET.offset) as usize;
                put_be16(i, s + 14, 0xffff);
            },
            expect: Error("snapshot"),
        },
        Case {
            name: "snapshot L1 table size 0x7fffffff (only that snapshot is unusable)",
            base: Qcow2Snapshots,
            poke: |i| {
                let s = be64(i, field::SNAPSHOTS_OFFSET.offset) as usize;
                put_be32(i, s + 8, 0x7fff_ffff);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "snapshot L1 table offset unaligned (only that snapshot is unusable)",
            base: Qcow2Snapshots,
            poke: |i| {
                let s = be64(i, field::SNAPSHOTS_OFFSET.offset) as usize;
                let off = be64(i, s);
                put_be64(i, s, off + 8);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "snapshot table past the end of the file",
            base: Qcow2Snapshots,
            poke: |i| put_be64(i, field::SNAPSHOTS_OFFSET.offset, 0x7fff_0000_0000),
            expect: Error("snapshot"),
        },
        // ---- L1/L2 entries pointing into metadata or past the end ----
        Case {
            name: "L1 entry pointing past the end of the file",
            base: Qcow2,
            poke: |i| {
                let l1 = l1_offset(i);
                put_be64(i, l1, 0x8000_0000_0000_0000 | 0x7fff_0000_0000);
            },
            expect: Error("L2"),
        },
        Case {
            name: "L1 entry pointing at the refcount table (its entries read as L2 entries)",
            base: Qcow2,
            poke: |i| {
                let l1 = l1_offset(i);
                let rt = be64(i, field::REFCOUNT_TABLE_OFFSET.offset);
                put_be64(i, l1, 0x8000_0000_0000_0000 | rt);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "L2 entry pointing past the end of the file",
            base: Qcow2,
            poke: |i| {
                let l2 = l2_offset(i);
                put_be64(i, l2, 0x8000_0000_0000_0000 | 0x7fff_0000_0000);
            },
            expect: Error("past the end"),
        },
        Case {
            name: "L2 entry pointing into the refcount table (QEMU reads it as data)",
            base: Qcow2,
            poke: |i| {
                let l2 = l2_offset(i);
                let rt = be64(i, field::REFCOUNT_TABLE_OFFSET.offset);
                put_be64(i, l2, 0x8000_0000_0000_0000 | rt);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "L2 entry with an unaligned host offset",
            base: Qcow2,
            poke: |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e | 0x200);
            },
            expect: Error("align"),
        },
        Case {
            name: "L2 entry at host offset 2^55 (beyond any file)",
            base: Qcow2,
            poke: |i| {
                let l2 = l2_offset(i);
                put_be64(i, l2, 0x8000_0000_0000_0000 | (1 << 55));
            },
            expect: Error(""),
        },
        // ---- compressed cluster descriptors ----
        Case {
            name: "compressed cluster past the end of the file",
            base: Qcow2Compressed,
            poke: |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                // 64 KiB clusters: host offset in bits 0..=53, sector count in 54..=61.
                put_be64(i, l2, (e & !((1 << 54) - 1)) | 0x3f_0000_0000);
            },
            expect: Error(""),
        },
        Case {
            name: "compressed cluster whose data is the header (not deflate)",
            base: Qcow2Compressed,
            poke: |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e & !((1 << 54) - 1));
            },
            expect: Error("compress"),
        },
        Case {
            name: "compressed cluster with the largest sector count",
            base: Qcow2Compressed,
            poke: |i| {
                let l2 = l2_offset(i);
                let e = be64(i, l2);
                put_be64(i, l2, e | 0xff << 54);
            },
            // QEMU reads the cluster anyway; vdisk's compressed-cluster validation
            // (format-spec/qcow2.md, "Compressed clusters") refuses a length no cluster needs.
            expect: Error("more than a cluster needs"),
        },
        Case {
            name: "compression type zstd on a zlib image",
            base: Qcow2Compressed,
            poke: |i| {
                i[field::COMPRESSION_TYPE.offset] = 1;
                let f = be64(i, field::INCOMPATIBLE_FEATURES.offset) | 1 << 3;
                put_be64(i, field::INCOMPATIBLE_FEATURES.offset, f);
            },
            expect: Error("compress"),
        },
        // ---- bitmap directory ----
        Case {
            name: "bitmaps extension with nb_bitmaps 0xffffffff",
            base: Qcow2Bitmap,
            poke: |i| {
                let e = ext_at(i, q::EXT_BITMAPS);
                put_be32(i, e + 8, 0xffff_ffff);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap directory size 2^40",
            base: Qcow2Bitmap,
            poke: |i| {
                let e = ext_at(i, q::EXT_BITMAPS);
                put_be64(i, e + 16, 1 << 40);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap directory offset past the end of the file",
            base: Qcow2Bitmap,
            poke: |i| {
                let e = ext_at(i, q::EXT_BITMAPS);
                put_be64(i, e + 24, 0x7fff_0000_0000);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap directory of many entries each claiming a 32 MiB table",
            base: Qcow2Bitmap,
            poke: |i| {
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
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmaps extension claiming 65,536 bitmaps",
            base: Qcow2Bitmap,
            poke: |i| {
                let e = ext_at(i, q::EXT_BITMAPS);
                put_be32(i, e + 8, 65_536);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap granularity bits 32",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                i[d + 17] = 32;
            },
            expect: Error("granularity"),
        },
        Case {
            name: "bitmap granularity bits 8",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                i[d + 17] = 8;
            },
            expect: Error("granularity"),
        },
        Case {
            name: "bitmap name length 0",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be16(i, d + 18, 0);
            },
            expect: Error("name"),
        },
        Case {
            name: "bitmap name length 65535 (past the directory)",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be16(i, d + 18, 0xffff);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap of type 2",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                i[d + 16] = 2;
            },
            expect: Error("type"),
        },
        Case {
            name: "bitmap with extra data",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be32(i, d + 20, 8);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap with reserved flags",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be32(i, d + 12, 0x8000_0002);
            },
            expect: Error("flags"),
        },
        Case {
            name: "bitmap table offset into the header, unaligned",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be64(i, d, 0x200);
            },
            expect: Error("bitmap"),
        },
        Case {
            name: "bitmap table of 2^27+1 entries",
            base: Qcow2Bitmap,
            poke: |i| {
                let d = bitmap_dir(i);
                put_be32(i, d + 8, (1 << 27) + 1);
            },
            expect: Error("bitmap"),
        },
        // ---- exabyte sizes ----
        Case {
            name: "qcow2 virtual size 2^60 with a matching tiny L1",
            base: Qcow2,
            poke: |i| put_be64(i, field::SIZE.offset, 1 << 60),
            expect: Error("L1"),
        },
        Case {
            name: "unknown autoclear bits are ignored",
            base: Qcow2,
            poke: |i| put_be64(i, field::AUTOCLEAR_FEATURES.offset, 0xffff_ffff_ffff_fffc),
            expect: SameAsQemu,
        },
        // ---- truncated files ----
        Case {
            name: "qcow2 truncated inside the first L2 table",
            base: Qcow2,
            poke: |i| {
                let l2 = l2_offset(i);
                i.truncate(l2 + 100);
            },
            expect: Error("past the end"),
        },
        Case {
            name: "qcow2 truncated inside guest data",
            base: Qcow2,
            poke: |i| {
                let n = i.len() - 0x8000;
                i.truncate(n);
            },
            expect: SameAsQemu,
        },
    ]
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
