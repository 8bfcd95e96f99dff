//! `vdisk delta --bitmap NAME` (issue 14): the delta of what a persistent dirty bitmap
//! recorded since a full copy was taken, applied to that copy, gives the image as it is
//! now, whether QEMU or vdisk made the writes, at any bitmap granularity, over a backing
//! file or not.

mod common;

use common::*;
use std::path::Path;
use vdisk::image::{self, ImageOptions};

/// Guest writes through the vdisk library.
fn vdisk_writes(img: &Path) {
    let mut im = image::open(img, &ImageOptions::default()).expect("writable open");
    im.device.write_at(&[7u8; 3000], 5 << 20).expect("write");
    im.device.write_zeroes(2 << 20, 64 << 10).expect("zero");
    im.device.discard(6 << 20, 128 << 10).expect("discard");
    im.device.close().expect("close");
}

#[test]
fn a_full_copy_plus_the_bitmap_delta_is_the_image_now() {
    for (granularity, backing) in [("64k", false), ("4k", true), ("1M", true), ("512", false)] {
        let what = format!("granularity {granularity}, backing {backing}");
        let dir = tempdir();
        let p = |n: &str| dir.path().join(n);
        let img = p("img.qcow2");
        if backing {
            std::fs::write(p("base.raw"), pattern(3, 0, 8 << 20)).expect("base");
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                s(&img),
                "8M",
            ]);
        } else {
            qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "8M"]);
        }
        qemu_io_ok(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 3M",
            "-c",
            "write -P 2 4M 1M",
            s(&img),
        ]);
        // The full copy, and the bitmap that records what changes after it.
        qemu_img_ok(&["convert", "-O", "qcow2", s(&img), s(&p("copy.qcow2"))]);
        vdisk_ok(&["bitmap", "--add", "-g", granularity, s(&img), "since-copy"]);
        qemu_io_ok(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 9 100k 5k",
            "-c",
            "write -z 4M 64k",
            "-c",
            "discard 7M 1M",
            "-c",
            "write -P 8 3M 100",
            s(&img),
        ]);
        vdisk_writes(&img);
        let delta = p("delta.qcow2");
        vdisk_ok(&[
            "delta",
            "--bitmap",
            "since-copy",
            "-b",
            "copy.qcow2",
            "-F",
            "qcow2",
            s(&img),
            s(&delta),
        ]);
        assert_qemu_check_clean(&delta);
        // Over the copy the delta reads as the image now; committed into it too.
        assert_qemu_compare_identical(&img, &delta);
        qemu_img_ok(&["commit", "-q", s(&delta)]);
        assert_qemu_compare_identical(&img, &p("copy.qcow2"));
        // The list covers exactly the bitmap's dirty ranges, widened to whole clusters.
        let list = parse_json(
            "delta --list",
            &vdisk_ok(&[
                "delta",
                "--list",
                "--output=json",
                "--bitmap",
                "since-copy",
                s(&img),
            ]),
        );
        let listed: u64 = list
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["length"].as_u64().unwrap_or(0))
            .sum();
        let dirty = common::bitmaps::qemu_dirty_ranges(&img, "since-copy");
        let mut want = 0;
        let mut last_end = 0;
        for (off, len) in dirty {
            let (a, b) = (
                (off / 65536 * 65536).max(last_end),
                (off + len).next_multiple_of(65536).min(8 << 20),
            );
            want += b.saturating_sub(a);
            last_end = b.max(last_end);
        }
        assert_eq!(listed, want, "{what}: {list}");
    }
}

#[test]
fn delta_bitmap_refuses_what_cannot_work() {
    let dir = tempdir();
    let img = dir.path().join("i.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    qemu_img_ok(&["snapshot", "-c", "s", s(&img)]);
    let out = vdisk(["delta", "--list", "--bitmap", "nope", s(&img)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("unknown bitmap", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Dirty bitmap 'nope' not found"));
    let out = vdisk(["delta", "--list", "--bitmap", "b", "--from", "s", s(&img)]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        describe("--bitmap with --from", &out)
    );
    qemu_img_ok(&["bitmap", "--add", s(&img), "b"]);
    let _ = qemu_io([
        "-f",
        "qcow2",
        "-c",
        "write 0 512",
        "-c",
        "sigraise 9",
        s(&img),
    ]);
    let out = vdisk(["delta", "--list", "--bitmap", "b", s(&img)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("inconsistent bitmap", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("inconsistent"));
}
