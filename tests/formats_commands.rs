//! The subcommands of issue 16 on VDI, VHD and VHDX that the per-format files
//! (`tests/vdi.rs`, `vhd.rs`, `vhdx.rs`) do not cover, each against qemu-img: probing,
//! `compare`, `measure` and `resize` (which qemu-img refuses for all three), `check -r`,
//! and `commit` of a differencing VHD or VHDX (made with `create -b`) into its parent.

mod common;

use common::{
    answer, assert_qemu_check_clean, assert_qemu_compare_identical, qemu_img, qemu_img_ok,
    qemu_io_ok, tempdir, vdisk, vdisk_ok, write_mixed_raw,
};
use std::path::{Path, PathBuf};
use vdisk::image::{self, ImageOptions};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// (format, create options) of every kind of image qemu-img makes of the three formats.
const KINDS: &[(&str, &str)] = &[
    ("vdi", "static=off"),
    ("vdi", "static=on"),
    ("vpc", "subformat=dynamic"),
    ("vpc", "subformat=fixed"),
    ("vhdx", "subformat=dynamic"),
    ("vhdx", "subformat=fixed"),
];

/// An image of each kind converted by qemu-img from one mixed raw file, which is returned
/// first.
fn images(dir: &Path) -> (PathBuf, Vec<(&'static str, PathBuf)>) {
    let src = dir.join("src.raw");
    write_mixed_raw(&src, 5 * MIB + 4096, 300 << 10, 61);
    let made = KINDS
        .iter()
        .enumerate()
        .map(|(i, &(fmt, opts))| {
            let img = dir.join(format!("k{i}.{fmt}"));
            qemu_img_ok(&[
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                "-o",
                opts,
                s(&src),
                s(&img),
            ]);
            (fmt, img)
        })
        .collect();
    (src, made)
}

#[track_caller]
fn assert_same_answer(a: &[&str]) {
    assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "{a:?}");
}

#[test]
fn probe_info_and_compare_answer_as_qemu_for_every_kind() {
    let dir = tempdir();
    let (src, made) = images(dir.path());
    for &(fmt, ref img) in &made {
        // Probed (a fixed VHD has no header at the start: both tools call it raw).
        assert_same_answer(&["info", "--output=json", s(img)]);
        assert_same_answer(&["compare", "-f", "raw", "-F", fmt, s(&src), s(img)]);
        assert_same_answer(&["compare", "-s", "-F", "raw", "-f", fmt, s(img), s(&src)]);
    }
    // A difference is found at the same offset.
    let changed = dir.path().join("changed.raw");
    std::fs::copy(&src, &changed).unwrap();
    qemu_io_ok(&["-f", "raw", "-c", "write -P 0x99 3000k 1k", s(&changed)]);
    for &(fmt, ref img) in &made {
        assert_same_answer(&["compare", "-f", fmt, "-F", "raw", s(img), s(&changed)]);
    }
}

#[test]
fn measure_resize_and_check_repairs_are_refused_as_qemu_refuses_them() {
    let dir = tempdir();
    let (_, made) = images(dir.path());
    for &(fmt, ref img) in &made {
        assert_same_answer(&["measure", "-O", fmt, "--size", "4M"]);
        assert_same_answer(&["measure", "-O", fmt, "-f", fmt, s(img)]);
        assert_same_answer(&["resize", "-f", fmt, s(img), "8M"]);
        assert_same_answer(&["resize", "-f", fmt, s(img), "4M"]);
        assert_same_answer(&["resize", "-f", fmt, "--shrink", s(img), "4M"]);
        for r in ["leaks", "all"] {
            assert_same_answer(&["check", "-r", r, "-f", fmt, s(img)]);
        }
    }
}

/// Write a few runs into the open image at `path` and into `model` at the same offsets.
fn write_both(path: &Path, model: &mut [u8]) {
    let mut im = image::open(path, &ImageOptions::default()).expect("open child");
    for (off, len, byte) in [
        (4096u64, 5000usize, 0xc1u8),
        (MIB - 100, 300, 0xc2),
        (3 * MIB, MIB as usize, 0xc3),
    ] {
        im.device.write_at(&vec![byte; len], off).expect("write");
        model[off as usize..off as usize + len].fill(byte);
    }
    im.device.close().expect("close");
}

#[test]
fn commit_folds_a_differencing_vhd_or_vhdx_into_its_parent() {
    let dir = tempdir();
    for fmt in ["vpc", "vhdx"] {
        let parent = dir.path().join(format!("parent.{fmt}"));
        let child = dir.path().join(format!("child.{fmt}"));
        qemu_img_ok(&["create", "-q", "-f", fmt, s(&parent), "6M"]);
        qemu_io_ok(&["-f", fmt, "-c", "write -P 0xa1 0 2M", s(&parent)]);
        let mut model = vec![0u8; 6 * MIB as usize];
        model[..2 * MIB as usize].fill(0xa1);
        let name = format!("parent.{fmt}");
        vdisk_ok(&["create", "-q", "-f", fmt, "-b", &name, "-F", fmt, s(&child)]);
        write_both(&child, &mut model);
        let out = vdisk_ok(&["commit", s(&child)]);
        assert_eq!(out.trim(), "Image committed.", "{fmt}");
        // The parent, an image qemu-img reads, now holds what the child showed.
        let expected = dir.path().join("model.raw");
        std::fs::write(&expected, &model).unwrap();
        assert_qemu_compare_identical(&expected, &parent);
        if fmt == "vhdx" {
            assert_qemu_check_clean(&parent);
        }
        // The child still reads the same through its parent.
        let merged = dir.path().join("merged.raw");
        vdisk_ok(&["convert", "-O", "raw", s(&child), s(&merged)]);
        assert_qemu_compare_identical(&expected, &merged);
    }
}

/// QEMU's VMDK check only reports too (the same driver-table flag as VDI's).
#[test]
fn check_repairs_of_vmdk_are_refused_as_qemu_refuses_them() {
    let dir = tempdir();
    let img = dir.path().join("v.vmdk");
    qemu_img_ok(&["create", "-q", "-f", "vmdk", s(&img), "4M"]);
    qemu_io_ok(&["-f", "vmdk", "-c", "write -P 3 64k 64k", s(&img)]);
    assert_same_answer(&["check", s(&img)]);
    for r in ["leaks", "all"] {
        assert_same_answer(&["check", "-r", r, s(&img)]);
    }
}
