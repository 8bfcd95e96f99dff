//! The hostile-image suite: one table of crafted images, each made by poking one field of a
//! valid image that qemu-img made, covering what QEMU guards against beyond the qcow2 header
//! fields of `tests/qcow2_hostile.rs`: header length and extension sizes, backing names,
//! refcount order, table sizes, snapshot tables, L2 entries pointing into metadata or past
//! the end, compressed cluster descriptors, the bitmap directory, VMDK grain and table sizes,
//! truncated files and images claiming exabyte sizes.
//!
//! Every case runs the `vdisk` binary with its address space capped at 256 MiB (`prlimit
//! --as`) and a time limit, so a huge allocation or a hang fails the case:
//!
//! * `vdisk convert -O raw` (opens the image and reads every byte) must either fail with
//!   exit 1 and one clear line on stderr, or, where the case is one QEMU accepts, succeed
//!   and produce exactly what `qemu-img convert` produces;
//! * `vdisk info` and `vdisk check` must exit normally (no signal, no panic) with one-line
//!   errors.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;
use vdisk::qcow2::header::field;

/// Address-space cap for every vdisk run.
const MEMORY_LIMIT: u64 = 256 << 20;
/// Wall-clock cap for every vdisk run, in seconds.
const TIME_LIMIT: u32 = 60;

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
fn put_le32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_le64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn le64(img: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
}
fn le32(img: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
}

/// qcow2 header extension types.
mod q {
    pub use vdisk::qcow2::header::ext::{
        BACKING_FORMAT as EXT_BACKING_FORMAT, BITMAPS as EXT_BITMAPS,
        FEATURE_TABLE as EXT_FEATURE_TABLE,
    };
}

/// VMDK sparse header field offsets (little-endian).
mod v {
    pub const CAPACITY: usize = 12;
    pub const GRAIN_SIZE: usize = 20;
    pub const DESCRIPTOR_OFFSET: usize = 28;
    pub const DESCRIPTOR_SIZE: usize = 36;
    pub const NUM_GTES_PER_GT: usize = 44;
    pub const RGD_OFFSET: usize = 48;
    pub const GD_OFFSET: usize = 56;
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

/// The base images the cases start from, made by qemu-img.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Base {
    /// qcow2 v3, 64 KiB clusters, 4 MiB, data in the first and last MiB.
    Qcow2,
    /// `Qcow2` plus two internal snapshots.
    Qcow2Snapshots,
    /// `Qcow2` plus a persistent bitmap.
    Qcow2Bitmap,
    /// compressed qcow2 (zlib), 64 KiB clusters.
    Qcow2Compressed,
    /// qcow2 overlay of `base.raw`, backing format raw.
    Qcow2Overlay,
    /// monolithicSparse VMDK with data.
    VmdkSparse,
    /// streamOptimized VMDK with data.
    VmdkStream,
    /// monolithicFlat VMDK: a descriptor file and `img-flat.vmdk`.
    VmdkFlat,
}

impl Base {
    fn format(self) -> &'static str {
        match self {
            Base::VmdkSparse | Base::VmdkStream | Base::VmdkFlat => "vmdk",
            _ => "qcow2",
        }
    }
}

/// What vdisk must do with a case.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `vdisk convert` fails with a one-line error containing this text (case-insensitive).
    Error(&'static str),
    /// QEMU accepts the image: `vdisk convert` succeeds and matches `qemu-img convert`.
    SameAsQemu,
}

struct Case {
    name: &'static str,
    base: Base,
    poke: fn(&mut Vec<u8>),
    expect: Expect,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}] {}", self.base, self.name)
    }
}

use Base::*;
use Expect::*;

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
        // ---- VMDK sparse: grain and table sizes, offsets, capacity ----
        Case {
            name: "VMDK grain size 0",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::GRAIN_SIZE, 0),
            expect: Error("grain"),
        },
        Case {
            name: "VMDK grain size 2^40 sectors",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::GRAIN_SIZE, 1 << 40),
            expect: Error("grain"),
        },
        Case {
            name: "VMDK grain size not a power of two",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::GRAIN_SIZE, 96),
            expect: SameAsQemu,
        },
        Case {
            name: "VMDK 0 entries per grain table",
            base: VmdkSparse,
            poke: |i| put_le32(i, v::NUM_GTES_PER_GT, 0),
            expect: Error("grain table"),
        },
        Case {
            name: "VMDK 0x7fffffff entries per grain table",
            base: VmdkSparse,
            poke: |i| put_le32(i, v::NUM_GTES_PER_GT, 0x7fff_ffff),
            expect: Error("grain table"),
        },
        Case {
            name: "VMDK capacity 2^62 sectors (exabytes)",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::CAPACITY, 1 << 62),
            expect: Error(""),
        },
        Case {
            name: "VMDK grain directory past the end of the file",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::GD_OFFSET, 1 << 40),
            expect: Error("directory"),
        },
        Case {
            name: "VMDK redundant grain directory past the end of the file",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::RGD_OFFSET, 1 << 40),
            expect: Error("directory"),
        },
        Case {
            name: "VMDK embedded descriptor of 2^40 sectors",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::DESCRIPTOR_SIZE, 1 << 40),
            expect: Error("descriptor"),
        },
        Case {
            name: "VMDK embedded descriptor past the end of the file",
            base: VmdkSparse,
            poke: |i| put_le64(i, v::DESCRIPTOR_OFFSET, 1 << 40),
            expect: Error("descriptor"),
        },
        Case {
            name: "VMDK grain table entry past the end of the file",
            base: VmdkSparse,
            poke: |i| {
                let gd = le64(i, v::GD_OFFSET) as usize * 512;
                let gt = le32(i, gd) as usize * 512;
                put_le32(i, gt, 0x7fff_0000);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "VMDK grain directory entry pointing at the header",
            base: VmdkSparse,
            poke: |i| {
                let gd = le64(i, v::GD_OFFSET) as usize * 512;
                put_le32(i, gd, 0);
                put_le32(i, gd, 1);
            },
            expect: SameAsQemu,
        },
        Case {
            name: "VMDK sparse file truncated after the header",
            base: VmdkSparse,
            poke: |i| i.truncate(1024),
            expect: Error(""),
        },
        Case {
            name: "streamOptimized compressed grain claiming 2^31 bytes",
            base: VmdkStream,
            poke: |i| {
                // The first grain marker after the metadata: (lba u64, size u32, data).
                let over = le64(i, 64) as usize * 512;
                let at = (over..i.len() - 12)
                    .step_by(512)
                    .find(|&p| le32(i, p + 8) != 0 && i[p + 12] == 0x78)
                    .expect("a compressed grain");
                put_le32(i, at + 8, 0x8000_0000);
            },
            expect: Error(""),
        },
        Case {
            name: "streamOptimized footer with a 2^40-sector grain directory offset",
            base: VmdkStream,
            poke: |i| {
                let footer = i.len() - 1024;
                put_le64(i, footer + v::GD_OFFSET, 1 << 40);
            },
            expect: SameAsQemu,
        },
        // ---- VMDK descriptors ----
        Case {
            name: "VMDK descriptor extent of 2^60 sectors",
            base: VmdkFlat,
            poke: |i| replace(i, b"RW 8192 FLAT", b"RW 1152921504606846976 FLAT"),
            expect: Error(""),
        },
        Case {
            name: "VMDK descriptor naming an extent outside its directory",
            base: VmdkFlat,
            poke: |i| replace(i, b"\"img-flat\"", b"\"../../../etc/passwd\""),
            expect: Error("outside"),
        },
        Case {
            name: "VMDK descriptor with an extent offset near 2^64",
            base: VmdkFlat,
            poke: |i| replace(i, b"\"img-flat\"", b"\"img-flat.vmdk\" 36028797018963967"),
            expect: Error(""),
        },
    ]
}

/// Replace `from` by `to` in a text descriptor.
fn replace(img: &mut Vec<u8>, from: &[u8], to: &[u8]) {
    let at = img
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the descriptor", String::from_utf8_lossy(from)));
    img.splice(at..at + from.len(), to.iter().copied());
}

/// Point the backing name at new text placed where the old name was.
fn set_backing_name(img: &mut [u8], name: &[u8]) {
    let off = be64(img, field::BACKING_FILE_OFFSET.offset) as usize;
    img[off..off + name.len()].copy_from_slice(name);
    put_be32(img, field::BACKING_FILE_SIZE.offset, name.len() as u32);
}

/// Make the base image `base` in `dir`; returns its bytes.
fn make_base(dir: &Path, base: Base) -> Vec<u8> {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let img = p("img");
    let data = |f: &str| {
        qemu_io_ok(&[
            "-f",
            f,
            "-c",
            "write -P 0x5c 0 1M",
            "-c",
            "write -P 0x3a 3M 1M",
            &img,
        ])
    };
    match base {
        Qcow2 | Qcow2Snapshots | Qcow2Bitmap => {
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=64k",
                &img,
                "4M",
            ]);
            data("qcow2");
            if base == Qcow2Snapshots {
                qemu_img_ok(&["snapshot", "-c", "first", &img]);
                qemu_img_ok(&["snapshot", "-c", "second", &img]);
            }
            if base == Qcow2Bitmap {
                qemu_img_ok(&["bitmap", "--add", &img, "bm0"]);
            }
        }
        Qcow2Compressed => {
            let raw = p("src.raw");
            std::fs::write(&raw, pattern(3, 0, 1 << 20)).unwrap();
            qemu_img_ok(&["convert", "-c", "-f", "raw", "-O", "qcow2", &raw, &img]);
            std::fs::remove_file(&raw).unwrap();
        }
        Qcow2Overlay => {
            std::fs::write(dir.join("base.raw"), pattern(4, 0, 4 << 20)).unwrap();
            qemu_img_ok(&[
                "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", &img, "4M",
            ]);
            qemu_io_ok(&["-f", "qcow2", "-c", "write -P 0x77 64k 64k", &img]);
        }
        VmdkSparse | VmdkStream => {
            let raw = p("src.raw");
            let mut bytes = vec![0u8; 4 << 20];
            bytes[..1 << 20].copy_from_slice(&pattern(5, 0, 1 << 20));
            std::fs::write(&raw, bytes).unwrap();
            let sub = if base == VmdkSparse {
                "subformat=monolithicSparse"
            } else {
                "subformat=streamOptimized"
            };
            qemu_img_ok(&["convert", "-f", "raw", "-O", "vmdk", "-o", sub, &raw, &img]);
            std::fs::remove_file(&raw).unwrap();
        }
        VmdkFlat => {
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=monolithicFlat",
                &img,
                "4M",
            ]);
            // qemu-img names the extent after the image: rename both to fixed names.
            let text = std::fs::read_to_string(&img).unwrap();
            assert!(text.contains("\"img-flat\""), "{text}");
            qemu_io_ok(&["-f", "vmdk", "-c", "write -P 0x66 0 1M", &img]);
        }
    }
    read(Path::new(&img))
}

/// Run `vdisk ARGS` capped at [`MEMORY_LIMIT`] bytes of address space and [`TIME_LIMIT`].
fn vdisk_limited(args: &[&std::ffi::OsStr]) -> Output {
    let mut argv: Vec<std::ffi::OsString> = vec![
        TIME_LIMIT.to_string().into(),
        "prlimit".into(),
        format!("--as={MEMORY_LIMIT}").into(),
        vdisk_bin().into(),
    ];
    argv.extend(args.iter().map(|a| a.to_os_string()));
    common::run_program("timeout", argv)
}

/// A run that ended normally: an exit code that is not a panic (101), a signal or a
/// timeout (124). (`check` reports what it finds on several lines: that is its output.)
fn assert_orderly(what: &str, out: &Output) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0..=3) | Some(63)),
        "{}",
        describe(what, out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", describe(what, out));
}

fn check_case(dir: &Path, bases: &[(Base, Vec<u8>)], index: usize, case: &Case) {
    let cdir = dir.join(format!("case-{index:02}"));
    std::fs::create_dir_all(&cdir).unwrap();
    let base = &bases.iter().find(|(b, _)| *b == case.base).unwrap().1;
    let mut img = base.clone();
    (case.poke)(&mut img);
    assert_ne!(&img, base, "the poke changed nothing");
    let path = cdir.join("img");
    std::fs::write(&path, &img).unwrap();
    // Companion files of the base: the overlay's backing file, the flat extent.
    let base_dir = dir.join(format!("base-{:?}", case.base));
    for f in ["base.raw", "img-flat"] {
        if base_dir.join(f).exists() {
            std::fs::copy(base_dir.join(f), cdir.join(f)).unwrap();
        }
    }
    let fmt = case.base.format();
    let out_path = cdir.join("out.raw");
    let p = path.as_os_str();
    let os = |s: &'static str| std::ffi::OsStr::new(s);

    let info = vdisk_limited(&[os("info"), os("-f"), os(fmt), p]);
    assert_orderly("vdisk info", &info);
    let check = vdisk_limited(&[os("check"), os("-f"), os(fmt), p]);
    assert_orderly("vdisk check", &check);

    let conv = vdisk_limited(&[
        os("convert"),
        os("-f"),
        os(fmt),
        os("-O"),
        os("raw"),
        p,
        out_path.as_os_str(),
    ]);
    let what = format!("vdisk convert ({case:?})");
    match case.expect {
        Error(text) => {
            assert_eq!(conv.status.code(), Some(1), "{}", describe(&what, &conv));
            let stderr = String::from_utf8_lossy(&conv.stderr);
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{}",
                describe(&what, &conv)
            );
            assert!(stderr.starts_with("vdisk: "), "{}", describe(&what, &conv));
            assert!(
                stderr.to_lowercase().contains(&text.to_lowercase()),
                "error does not mention {text:?}: {}",
                describe(&what, &conv)
            );
        }
        SameAsQemu => {
            assert_eq!(conv.status.code(), Some(0), "{}", describe(&what, &conv));
            let theirs = cdir.join("qemu.raw");
            let q = qemu_img([
                os("convert"),
                os("-U"),
                os("-f"),
                os(fmt),
                os("-O"),
                os("raw"),
                p,
                theirs.as_os_str(),
            ]);
            assert!(q.status.success(), "{}", describe("qemu-img convert", &q));
            assert_bytes_eq(&what, &read(&out_path), &read(&theirs));
        }
    }
}

#[test]
fn every_hostile_image_gives_a_clear_error_or_qemus_result_within_256_mib() {
    let dir = tempdir();
    let all = cases();
    assert!(all.len() >= 40, "only {} cases", all.len());
    let mut bases = Vec::new();
    for b in [
        Qcow2,
        Qcow2Snapshots,
        Qcow2Bitmap,
        Qcow2Compressed,
        Qcow2Overlay,
        VmdkSparse,
        VmdkStream,
        VmdkFlat,
    ] {
        let bdir = dir.path().join(format!("base-{b:?}"));
        std::fs::create_dir_all(&bdir).unwrap();
        let bytes = make_base(&bdir, b);
        // Every base itself converts exactly as QEMU converts it.
        let img = bdir.join("img");
        let ours = vdisk_raw_contents(&img, &bdir);
        assert_bytes_eq(
            &format!("base {b:?}"),
            &ours,
            &qemu_raw_contents(&img, &bdir),
        );
        bases.push((b, bytes));
    }
    let indexed: Vec<(usize, Case)> = all.into_iter().enumerate().collect();
    run_cases("hostile image suite", &indexed, |(i, case)| {
        check_case(dir.path(), &bases, *i, case)
    });
    eprintln!("{} hostile images checked", indexed.len());
}
