//! The hostile-image suite for VMDK: crafted images, each made by poking one field of a
//! valid image that qemu-img made (a monolithicSparse, a streamOptimized and a
//! monolithicFlat one): grain and grain table sizes, directory offsets, capacity, the
//! stream footer and descriptor extent lines. The qcow2 cases are in
//! `tests/hostile_suite.rs`; both run through [`common::hostile::run_suite`] (256 MiB
//! address space, a time limit, one clear error or exactly qemu-img's result).

mod common;

use common::hostile::{
    field_cases, le32, le64, put_le32, put_le64, run_suite, Base::*, Case, Expect, Expect::*,
    FieldRow,
};

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

/// Sparse header fields of 64 bits: grain size, capacity, directory and descriptor offsets.
#[rustfmt::skip]
const SPARSE_U64: &[FieldRow<u64>] = &[
    ("VMDK grain size 0", v::GRAIN_SIZE, 0, Error("grain")),
    ("VMDK grain size 2^40 sectors", v::GRAIN_SIZE, 1 << 40, Error("grain")),
    ("VMDK grain size not a power of two", v::GRAIN_SIZE, 96, SameAsQemu),
    ("VMDK capacity 2^62 sectors (exabytes)", v::CAPACITY, 1 << 62, Error("")),
    ("VMDK grain directory past the end of the file", v::GD_OFFSET, 1 << 40, Error("directory")),
    ("VMDK redundant grain directory past the end of the file", v::RGD_OFFSET, 1 << 40,
        Error("directory")),
    ("VMDK embedded descriptor of 2^40 sectors", v::DESCRIPTOR_SIZE, 1 << 40, Error("descriptor")),
    ("VMDK embedded descriptor past the end of the file", v::DESCRIPTOR_OFFSET, 1 << 40,
        Error("descriptor")),
];

/// Sparse header fields of 32 bits: the entries per grain table.
#[rustfmt::skip]
const SPARSE_U32: &[FieldRow<u32>] = &[
    ("VMDK 0 entries per grain table", v::NUM_GTES_PER_GT, 0, Error("grain table")),
    ("VMDK 0x7fffffff entries per grain table", v::NUM_GTES_PER_GT, 0x7fff_ffff,
        Error("grain table")),
];

fn cases() -> Vec<Case> {
    // ---- VMDK sparse: grain and table sizes, offsets, capacity ----
    let mut all = field_cases(VmdkSparse, put_le64, SPARSE_U64);
    all.extend(field_cases(VmdkSparse, put_le32, SPARSE_U32));
    all.extend(other_cases());
    // ---- VMDK descriptors ----
    all.extend(descriptor_cases());
    all
}

/// The cases that follow a table to the field they poke, or cut the file.
fn other_cases() -> Vec<Case> {
    vec![
        Case::new(
            "VMDK grain table entry past the end of the file",
            VmdkSparse,
            SameAsQemu,
            |i| {
                let gd = le64(i, v::GD_OFFSET) as usize * 512;
                let gt = le32(i, gd) as usize * 512;
                put_le32(i, gt, 0x7fff_0000);
            },
        ),
        Case::new(
            "VMDK grain directory entry pointing at the header",
            VmdkSparse,
            SameAsQemu,
            |i| {
                let gd = le64(i, v::GD_OFFSET) as usize * 512;
                put_le32(i, gd, 0);
                put_le32(i, gd, 1);
            },
        ),
        Case::new(
            "VMDK sparse file truncated after the header",
            VmdkSparse,
            Error(""),
            |i| i.truncate(1024),
        ),
        Case::new(
            "streamOptimized compressed grain claiming 2^31 bytes",
            VmdkStream,
            Error(""),
            |i| {
                // The first grain marker after the metadata: (lba u64, size u32, data).
                let over = le64(i, 64) as usize * 512;
                let at = (over..i.len() - 12)
                    .step_by(512)
                    .find(|&p| le32(i, p + 8) != 0 && i[p + 12] == 0x78)
                    .expect("a compressed grain");
                put_le32(i, at + 8, 0x8000_0000);
            },
        ),
        Case::new(
            "streamOptimized footer with a 2^40-sector grain directory offset",
            VmdkStream,
            SameAsQemu,
            |i| {
                let footer = i.len() - 1024;
                put_le64(i, footer + v::GD_OFFSET, 1 << 40);
            },
        ),
    ]
}

/// Edits of the monolithicFlat descriptor text: (name, text replaced, replacement, expect).
#[rustfmt::skip]
const DESCRIPTOR_EDITS: &[(&str, &[u8], &[u8], Expect)] = &[
    ("VMDK descriptor extent of 2^60 sectors",
        b"RW 8192 FLAT", b"RW 1152921504606846976 FLAT", Error("")),
    ("VMDK descriptor naming an extent outside its directory",
        b"\"img-flat\"", b"\"../../../etc/passwd\"", Error("outside")),
    ("VMDK descriptor with an extent offset near 2^64",
        b"\"img-flat\"", b"\"img-flat.vmdk\" 36028797018963967", Error("")),
];

fn descriptor_cases() -> Vec<Case> {
    DESCRIPTOR_EDITS
        .iter()
        .map(|&(name, from, to, expect)| {
            Case::new(name, VmdkFlat, expect, move |i| replace(i, from, to))
        })
        .collect()
}

/// Replace `from` by `to` in a text descriptor.
fn replace(img: &mut Vec<u8>, from: &[u8], to: &[u8]) {
    let at = img
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the descriptor", String::from_utf8_lossy(from)));
    img.splice(at..at + from.len(), to.iter().copied());
}

#[test]
fn every_hostile_vmdk_image_gives_a_clear_error_or_qemus_result_within_256_mib() {
    let all = cases();
    assert!(all.len() >= 18, "only {} cases", all.len());
    run_suite(
        "hostile VMDK image suite",
        &[VmdkSparse, VmdkStream, VmdkFlat],
        all,
    );
}
