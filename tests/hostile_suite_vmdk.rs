//! The hostile-image suite for VMDK: crafted images, each made by poking one field of a
//! valid image that qemu-img made (a monolithicSparse, a streamOptimized and a
//! monolithicFlat one): grain and grain table sizes, directory offsets, capacity, the
//! stream footer and descriptor extent lines. The qcow2 cases are in
//! `tests/hostile_suite.rs`; both run through [`common::hostile::run_suite`] (256 MiB
//! address space, a time limit, one clear error or exactly qemu-img's result).

mod common;

use common::hostile::{run_suite, Base::*, Case, Expect::*};

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

fn cases() -> Vec<Case> {
    vec![
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
