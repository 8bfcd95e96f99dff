//! The hostile-image suite for VDI, VHD (`vpc`) and VHDX: crafted images, each made by
//! poking one field of a dynamic image qemu-img made (4 MiB, data in the first and last
//! MiB): block maps and BATs pointing past the end of the file or into the headers, block
//! sizes out of range, huge claimed sizes and counts. The qcow2 and VMDK cases are in
//! `tests/hostile_suite.rs` and `tests/hostile_suite_vmdk.rs`; all run through
//! [`common::hostile::run_suite`] (256 MiB address space, a time limit, one clear error or
//! exactly qemu-img's result). Log entries with bad checksums or outside the file, and
//! parent loops, are in `tests/vhdx.rs` and `tests/vhd.rs` (they need companion files).

mod common;

use common::hostile::{run_suite, Base::*, Case, Expect::*};

fn put_le32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_le64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_be32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_be64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// VDI header fields (little-endian) and the block map of the base image.
mod vdi {
    pub const IMAGE_TYPE: usize = 0x4c;
    pub const OFFSET_BMAP: usize = 0x154;
    pub const OFFSET_DATA: usize = 0x158;
    pub const DISK_SIZE: usize = 0x170;
    pub const BLOCK_SIZE: usize = 0x178;
    pub const BLOCKS_IN_IMAGE: usize = 0x180;
    pub const BLOCKS_ALLOCATED: usize = 0x184;
    /// Where qemu-img puts the block map.
    pub const BMAP: usize = 0x200;
}

/// VHD structures of the base image (big-endian): the footer copy at 0, the dynamic header
/// at 512 (the footer's data offset) and the BAT at 1536.
mod vhd {
    pub const DYN: usize = 512;
    pub const TABLE_OFFSET: usize = DYN + 16;
    pub const MAX_TABLE_ENTRIES: usize = DYN + 28;
    pub const BLOCK_SIZE: usize = DYN + 32;
    pub const DYN_CHECKSUM: usize = DYN + 36;
    pub const DYN_LEN: usize = 1024;
    pub const FOOTER_CURRENT_SIZE: usize = 48;
    pub const FOOTER_CHECKSUM: usize = 64;
    pub const FOOTER_LEN: usize = 512;
    pub const BAT: usize = 1536;
}

/// The one's complement sum VHD uses, over `b` with its checksum field at `field` zeroed.
fn vhd_checksum(b: &mut [u8], field: usize) {
    b[field..field + 4].fill(0);
    let sum = b
        .iter()
        .fold(0u32, |acc, &x| acc.wrapping_add(u32::from(x)));
    b[field..field + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// Re-sum the dynamic header after a poke (so that only the poked field is hostile).
fn vhd_dyn_poke(img: &mut [u8], poke: impl Fn(&mut [u8])) {
    poke(img);
    let d = vhd::DYN;
    vhd_checksum(&mut img[d..d + vhd::DYN_LEN], vhd::DYN_CHECKSUM - d);
}

/// Re-sum both footers after the same poke of each.
fn vhd_footer_poke(img: &mut [u8], at: usize, v: u64) {
    let end = img.len() - vhd::FOOTER_LEN;
    for f in [0, end] {
        put_be64(img, f + at, v);
        vhd_checksum(&mut img[f..f + vhd::FOOTER_LEN], vhd::FOOTER_CHECKSUM);
    }
}

/// VHDX structures of the base image: the BAT at 2 MiB, the metadata region at 3 MiB
/// with its items at +64 KiB (file parameters first, then the virtual disk size).
mod vhdx {
    pub const BAT: usize = 2 << 20;
    pub const FILE_PARAMETERS: usize = (3 << 20) + 0x10000;
    pub const DISK_SIZE: usize = FILE_PARAMETERS + 8;
    /// A fully present payload block at `mib` MiB.
    pub fn present_at(mib: u64) -> u64 {
        (mib << 20) | 6
    }
}

fn vdi_cases() -> Vec<Case> {
    vec![
        Case {
            name: "VDI block map entry past the blocks of the image",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BMAP, 1000),
            expect: Error("block map"),
        },
        Case {
            name: "VDI block map entry 0x7fffffff",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BMAP + 4, 0x7fff_ffff),
            expect: Error("block map"),
        },
        Case {
            name: "VDI data area inside the header",
            base: Vdi,
            poke: |i| put_le32(i, vdi::OFFSET_DATA, 0),
            expect: Error("inside the block map"),
        },
        Case {
            name: "VDI block map past the end of the file",
            base: Vdi,
            poke: |i| put_le32(i, vdi::OFFSET_BMAP, 0x7fff_fe00),
            expect: Error("VDI block map"),
        },
        Case {
            name: "VDI block size 0",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BLOCK_SIZE, 0),
            expect: Error("block size"),
        },
        Case {
            name: "VDI block size 2 GiB",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BLOCK_SIZE, 1 << 31),
            expect: Error("block size"),
        },
        Case {
            name: "VDI 2^30 blocks in the image",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BLOCKS_IN_IMAGE, 1 << 30),
            expect: Error("too many blocks"),
        },
        Case {
            name: "VDI disk size 2^62",
            base: Vdi,
            poke: |i| put_le64(i, vdi::DISK_SIZE, 1 << 62),
            expect: Error("Unsupported VDI image size"),
        },
        Case {
            // QEMU reads it (the count only matters to allocation, which then fails).
            name: "VDI more blocks allocated than the image has",
            base: Vdi,
            poke: |i| put_le32(i, vdi::BLOCKS_ALLOCATED, 0x7fff_ffff),
            expect: SameAsQemu,
        },
        Case {
            name: "VDI differencing image without its parent",
            base: Vdi,
            poke: |i| put_le32(i, vdi::IMAGE_TYPE, 4),
            expect: Error("parent"),
        },
    ]
}

fn vhd_cases() -> Vec<Case> {
    vec![
        Case {
            name: "VHD BAT entry past the end of the file",
            base: Vhd,
            poke: |i| put_be32(i, vhd::BAT, 0x7fff_0000),
            expect: Error("end of file"),
        },
        Case {
            name: "VHD BAT entry into the dynamic header",
            base: Vhd,
            poke: |i| put_be32(i, vhd::BAT, 1),
            expect: Error("block allocation table"),
        },
        Case {
            name: "VHD BAT entry into the BAT",
            base: Vhd,
            poke: |i| put_be32(i, vhd::BAT + 4, (vhd::BAT / 512) as u32),
            expect: Error("block allocation table"),
        },
        Case {
            name: "VHD two BAT entries naming one block",
            base: Vhd,
            poke: |i| {
                let first = i[vhd::BAT..vhd::BAT + 4].to_vec();
                i[vhd::BAT + 4..vhd::BAT + 8].copy_from_slice(&first);
            },
            expect: Error("block allocation table"),
        },
        Case {
            name: "VHD block size 0",
            base: Vhd,
            poke: |i| vhd_dyn_poke(i, |i| put_be32(i, vhd::BLOCK_SIZE, 0)),
            expect: Error("Invalid block size"),
        },
        Case {
            name: "VHD block size not a power of two",
            base: Vhd,
            poke: |i| vhd_dyn_poke(i, |i| put_be32(i, vhd::BLOCK_SIZE, 3 << 20)),
            expect: Error("Invalid block size"),
        },
        Case {
            name: "VHD block size 2 GiB",
            base: Vhd,
            poke: |i| vhd_dyn_poke(i, |i| put_be32(i, vhd::BLOCK_SIZE, 1 << 31)),
            expect: Error("truncated"),
        },
        Case {
            name: "VHD 2^30 BAT entries",
            base: Vhd,
            poke: |i| vhd_dyn_poke(i, |i| put_be32(i, vhd::MAX_TABLE_ENTRIES, 1 << 30)),
            expect: Error("Max Table Entries"),
        },
        Case {
            name: "VHD BAT past the end of the file",
            base: Vhd,
            poke: |i| vhd_dyn_poke(i, |i| put_be64(i, vhd::TABLE_OFFSET, 1 << 40)),
            expect: Error("block allocation table"),
        },
        Case {
            // QEMU sizes a disk of qemu-img's creator by its geometry, as vdisk does.
            name: "VHD current size 2^62",
            base: Vhd,
            poke: |i| vhd_footer_poke(i, vhd::FOOTER_CURRENT_SIZE, 1 << 62),
            expect: SameAsQemu,
        },
    ]
}

fn vhdx_cases() -> Vec<Case> {
    vec![
        Case {
            name: "VHDX BAT entry past the end of the file",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::BAT + 8, vhdx::present_at(1 << 30)),
            expect: Error("end of file"),
        },
        Case {
            // QEMU reads it (vdisk too); writing there is refused.
            name: "VHDX BAT entry into the header section",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::BAT, vhdx::present_at(0)),
            expect: SameAsQemu,
        },
        Case {
            name: "VHDX BAT entry into the log",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::BAT, vhdx::present_at(1)),
            expect: Error("overlaps"),
        },
        Case {
            name: "VHDX BAT entry into the BAT",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::BAT, vhdx::present_at(2)),
            expect: Error("overlaps"),
        },
        Case {
            name: "VHDX BAT entry with a state the format does not define",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::BAT, (8 << 20) | 4),
            expect: Error("state"),
        },
        Case {
            name: "VHDX block size 0",
            base: Vhdx,
            poke: |i| put_le32(i, vhdx::FILE_PARAMETERS, 0),
            expect: Error("block size"),
        },
        Case {
            name: "VHDX block size 512 MiB",
            base: Vhdx,
            poke: |i| put_le32(i, vhdx::FILE_PARAMETERS, 512 << 20),
            expect: Error("block size"),
        },
        Case {
            name: "VHDX block size not a power of two",
            base: Vhdx,
            poke: |i| put_le32(i, vhdx::FILE_PARAMETERS, 3 << 20),
            expect: Error("block size"),
        },
        Case {
            name: "VHDX disk size 2^62",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::DISK_SIZE, 1 << 62),
            expect: Error("64 TiB"),
        },
        Case {
            name: "VHDX disk size 0",
            base: Vhdx,
            poke: |i| put_le64(i, vhdx::DISK_SIZE, 0),
            expect: Error("disk size is 0"),
        },
    ]
}

#[test]
fn hostile_vdi_vhd_and_vhdx_images_get_one_clear_error_or_qemus_answer() {
    let cases: Vec<Case> = [vdi_cases(), vhd_cases(), vhdx_cases()]
        .into_iter()
        .flatten()
        .collect();
    run_suite("VDI, VHD and VHDX", &[Vdi, Vhd, Vhdx], cases);
}
