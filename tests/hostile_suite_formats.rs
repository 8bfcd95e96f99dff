//! The hostile-image suite for VDI, VHD (`vpc`) and VHDX: crafted images, each made by
//! poking one field of a dynamic image qemu-img made (4 MiB, data in the first and last
//! MiB): block maps and BATs pointing past the end of the file or into the headers, block
//! sizes out of range, huge claimed sizes and counts. The qcow2 and VMDK cases are in
//! `tests/hostile_suite.rs` and `tests/hostile_suite_vmdk.rs`; all run through
//! [`common::hostile::run_suite`] (256 MiB address space, a time limit, one clear error or
//! exactly qemu-img's result). Log entries with bad checksums or outside the file, and
//! parent loops, are in `tests/vhdx.rs` and `tests/vhd.rs` (they need companion files).

mod common;

use common::hostile::{
    field_cases, put_be32, put_be64, put_le32, put_le64, run_suite, Base::*, Case, Expect::*,
    FieldRow,
};

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
    pub const fn present_at(mib: u64) -> u64 {
        (mib << 20) | 6
    }
}

/// VDI header fields and block map entries (32-bit little-endian).
#[rustfmt::skip]
const VDI_U32: &[FieldRow<u32>] = &[
    ("VDI block map entry past the blocks of the image", vdi::BMAP, 1000, Error("block map")),
    ("VDI block map entry 0x7fffffff", vdi::BMAP + 4, 0x7fff_ffff, Error("block map")),
    ("VDI data area inside the header", vdi::OFFSET_DATA, 0, Error("inside the block map")),
    ("VDI block map past the end of the file", vdi::OFFSET_BMAP, 0x7fff_fe00,
        Error("VDI block map")),
    ("VDI block size 0", vdi::BLOCK_SIZE, 0, Error("block size")),
    ("VDI block size 2 GiB", vdi::BLOCK_SIZE, 1 << 31, Error("block size")),
    ("VDI 2^30 blocks in the image", vdi::BLOCKS_IN_IMAGE, 1 << 30, Error("too many blocks")),
    // QEMU reads it (the count only matters to allocation, which then fails).
    ("VDI more blocks allocated than the image has", vdi::BLOCKS_ALLOCATED, 0x7fff_ffff,
        SameAsQemu),
    ("VDI differencing image without its parent", vdi::IMAGE_TYPE, 4, Error("parent")),
];

fn vdi_cases() -> Vec<Case> {
    let mut all = field_cases(Vdi, put_le32, VDI_U32);
    all.push(Case::new(
        "VDI disk size 2^62",
        Vdi,
        Error("Unsupported VDI image size"),
        |i| put_le64(i, vdi::DISK_SIZE, 1 << 62),
    ));
    all
}

/// VHD BAT entries (32-bit big-endian sector numbers).
#[rustfmt::skip]
const VHD_BAT: &[FieldRow<u32>] = &[
    ("VHD BAT entry past the end of the file", vhd::BAT, 0x7fff_0000, Error("end of file")),
    ("VHD BAT entry into the dynamic header", vhd::BAT, 1, Error("block allocation table")),
    ("VHD BAT entry into the BAT", vhd::BAT + 4, (vhd::BAT / 512) as u32,
        Error("block allocation table")),
];

/// VHD dynamic header fields of 32 bits, poked with the header re-summed.
#[rustfmt::skip]
const VHD_DYN_U32: &[FieldRow<u32>] = &[
    ("VHD block size 0", vhd::BLOCK_SIZE, 0, Error("Invalid block size")),
    ("VHD block size not a power of two", vhd::BLOCK_SIZE, 3 << 20, Error("Invalid block size")),
    ("VHD block size 2 GiB", vhd::BLOCK_SIZE, 1 << 31, Error("truncated")),
    ("VHD 2^30 BAT entries", vhd::MAX_TABLE_ENTRIES, 1 << 30, Error("Max Table Entries")),
];

fn vhd_cases() -> Vec<Case> {
    let mut all = field_cases(Vhd, put_be32, VHD_BAT);
    all.push(Case::new(
        "VHD two BAT entries naming one block",
        Vhd,
        Error("block allocation table"),
        |i| {
            let first = i[vhd::BAT..vhd::BAT + 4].to_vec();
            i[vhd::BAT + 4..vhd::BAT + 8].copy_from_slice(&first);
        },
    ));
    all.extend(field_cases(
        Vhd,
        |i, at, v| vhd_dyn_poke(i, |i| put_be32(i, at, v)),
        VHD_DYN_U32,
    ));
    all.push(Case::new(
        "VHD BAT past the end of the file",
        Vhd,
        Error("block allocation table"),
        |i| vhd_dyn_poke(i, |i| put_be64(i, vhd::TABLE_OFFSET, 1 << 40)),
    ));
    all.push(Case::new(
        // QEMU sizes a disk of qemu-img's creator by its geometry, as vdisk does.
        "VHD current size 2^62",
        Vhd,
        SameAsQemu,
        |i| vhd_footer_poke(i, vhd::FOOTER_CURRENT_SIZE, 1 << 62),
    ));
    all
}

/// VHDX fields of 64 bits: BAT entries and the virtual disk size.
#[rustfmt::skip]
const VHDX_U64: &[FieldRow<u64>] = &[
    ("VHDX BAT entry past the end of the file", vhdx::BAT + 8, vhdx::present_at(1 << 30),
        Error("end of file")),
    // QEMU reads it (vdisk too); writing there is refused.
    ("VHDX BAT entry into the header section", vhdx::BAT, vhdx::present_at(0), SameAsQemu),
    ("VHDX BAT entry into the log", vhdx::BAT, vhdx::present_at(1), Error("overlaps")),
    ("VHDX BAT entry into the BAT", vhdx::BAT, vhdx::present_at(2), Error("overlaps")),
    ("VHDX BAT entry with a state the format does not define", vhdx::BAT, (8 << 20) | 4,
        Error("state")),
    ("VHDX disk size 2^62", vhdx::DISK_SIZE, 1 << 62, Error("64 TiB")),
    ("VHDX disk size 0", vhdx::DISK_SIZE, 0, Error("disk size is 0")),
];

/// VHDX file parameters: the block size (32-bit).
#[rustfmt::skip]
const VHDX_BLOCK_SIZE: &[FieldRow<u32>] = &[
    ("VHDX block size 0", vhdx::FILE_PARAMETERS, 0, Error("block size")),
    ("VHDX block size 512 MiB", vhdx::FILE_PARAMETERS, 512 << 20, Error("block size")),
    ("VHDX block size not a power of two", vhdx::FILE_PARAMETERS, 3 << 20, Error("block size")),
];

fn vhdx_cases() -> Vec<Case> {
    let mut all = field_cases(Vhdx, put_le64, VHDX_U64);
    all.extend(field_cases(Vhdx, put_le32, VHDX_BLOCK_SIZE));
    all
}

#[test]
fn hostile_vdi_vhd_and_vhdx_images_get_one_clear_error_or_qemus_answer() {
    let cases: Vec<Case> = [vdi_cases(), vhd_cases(), vhdx_cases()]
        .into_iter()
        .flatten()
        .collect();
    run_suite("VDI, VHD and VHDX", &[Vdi, Vhd, Vhdx], cases);
}
