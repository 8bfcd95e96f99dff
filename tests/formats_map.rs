//! `map` of the preallocated VDI, VHD and VHDX images (static VDI, fixed VHD, fixed VHDX)
//! against qemu-img's: QEMU asks the host file about their data, so holes in the file
//! (left by a convert that skipped zeros, or punched afterwards) show as runs that are
//! data and zero at once, with their offset. Images made by either tool, with and without
//! a punched hole, must map identically in both output formats.

mod common;

use common::{
    answer, qemu_img, qemu_img_ok, run_program, tempdir, vdisk, vdisk_ok, write_mixed_raw,
};
use std::path::Path;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Deallocate `len` bytes at `offset` of the file at `path` (util-linux fallocate).
fn punch_hole(path: &Path, offset: u64, len: u64) {
    let out = run_program(
        "fallocate",
        [
            "-p",
            "-o",
            &offset.to_string(),
            "-l",
            &len.to_string(),
            s(path),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        common::describe("fallocate", &out)
    );
}

fn assert_same_map(fmt: &str, img: &Path, what: &str) {
    for output in ["json", "human"] {
        let a = ["map", "-f", fmt, "--output", output, s(img)];
        assert_eq!(answer(vdisk(a)), answer(qemu_img(a)), "{what} {a:?}");
    }
}

#[test]
fn preallocated_images_map_as_qemu_maps_them_with_and_without_host_holes() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    // Data and zero runs, with a size that is not a multiple of any block size.
    write_mixed_raw(&src, 9 * MIB + 4096, 700 << 10, 16);
    let cases = [
        ("vdi", "static=on"),
        ("vpc", "subformat=fixed"),
        ("vpc", "subformat=fixed,force_size=on"),
        ("vhdx", "subformat=fixed"),
    ];
    for (fmt, opts) in cases {
        for tool in ["qemu-img", "vdisk"] {
            let img = dir.path().join(format!("{tool}.{fmt}"));
            let _ = std::fs::remove_file(&img);
            let a = [
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                "-o",
                opts,
                s(&src),
                s(&img),
            ];
            if tool == "vdisk" {
                vdisk_ok(&a);
            } else {
                qemu_img_ok(&a);
            }
            let what = format!("{tool} {fmt} {opts}");
            assert_same_map(fmt, &img, &what);
            // A hole punched across data in the middle of the file (clear of every
            // format's metadata), then one at the start of the data of a VHD or VDI.
            let middle = std::fs::metadata(&img).unwrap().len() / 2 / 4096 * 4096;
            punch_hole(&img, middle, 2 * MIB);
            assert_same_map(fmt, &img, &format!("{what}, punched"));
            let first_data = match fmt {
                "vpc" => 0,
                "vdi" => 4096,
                _ => continue,
            };
            punch_hole(&img, first_data, 64 << 10);
            assert_same_map(fmt, &img, &format!("{what}, punched twice"));
        }
    }
}
