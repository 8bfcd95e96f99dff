//! Images with persistent dirty bitmaps (issue 12, item 3): vdisk does not maintain
//! bitmaps yet, so it refuses every write to such an image and leaves it byte-identical,
//! while reading works as in qemu-img; stale bitmaps (autoclear bit clear) do not block.

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------
// Persistent dirty bitmaps: vdisk does not maintain them, so it does not write such images
// ---------------------------------------------------------------------------------------

/// In `dir`: `bm.qcow2` (data, an internal snapshot and two persistent bitmaps), `top.qcow2`
/// over it (no bitmaps), `bmtop.qcow2` (bitmaps) over a plain `base.qcow2`, and
/// `other.qcow2`.
fn bitmap_images(dir: &Path) {
    let p = |n: &str| dir.join(n);
    for n in ["bm.qcow2", "base.qcow2", "other.qcow2"] {
        qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&p(n)), "1M"]);
        qemu_io_ok(&["-f", "qcow2", "-c", "write -P 5 0 64k", s(&p(n))]);
    }
    qemu_img_ok(&["snapshot", "-c", "snap", s(&p("bm.qcow2"))]);
    for (top, base) in [("top.qcow2", "bm.qcow2"), ("bmtop.qcow2", "base.qcow2")] {
        let args = ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2"];
        let mut args: Vec<&str> = args.to_vec();
        let top = p(top);
        args.push(s(&top));
        qemu_img_ok(&args);
        qemu_io_ok(&["-f", "qcow2", "-c", "write -P 6 64k 64k", s(&top)]);
    }
    for (img, bitmap) in [
        ("bm.qcow2", "b0"),
        ("bm.qcow2", "b1"),
        ("bmtop.qcow2", "t0"),
    ] {
        qemu_img_ok(&["bitmap", "--add", s(&p(img)), bitmap]);
    }
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 9 128k 4k", s(&p("bm.qcow2"))]);
}

/// The bitmaps of `img` with their flags, as qemu-img reports them (`in-use` or missing
/// ones would mean a writer dropped them).
fn bitmaps_of(img: &Path) -> serde_json::Value {
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(img)]),
    );
    info["format-specific"]["data"]["bitmaps"].clone()
}

#[test]
fn every_write_to_an_image_with_persistent_bitmaps_is_refused_and_leaves_it_untouched() {
    let dir = tempdir();
    bitmap_images(dir.path());
    let p = |n: &str| dir.path().join(n);
    let names = ["bm.qcow2", "top.qcow2", "bmtop.qcow2", "base.qcow2"];
    let before: Vec<Vec<u8>> = names.iter().map(|n| read(&p(n))).collect();
    let bitmaps = bitmaps_of(&p("bm.qcow2"));
    assert_eq!(bitmaps.as_array().map(Vec::len), Some(2), "{bitmaps}");
    let (bm, top, bmtop) = (p("bm.qcow2"), p("top.qcow2"), p("bmtop.qcow2"));
    let (bm, top, bmtop) = (s(&bm), s(&top), s(&bmtop));
    // (arguments, the image the refusal names)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["snapshot", "-c", "new", bm], bm),
        (vec!["snapshot", "-a", "snap", bm], bm),
        (vec!["snapshot", "-d", "snap", bm], bm),
        (vec!["snapshot", "--prune", "--keep-last", "0", bm], bm),
        (vec!["amend", "-o", "lazy_refcounts=on", bm], bm),
        (vec!["amend", "-o", "compat=0.10", bm], bm),
        (vec!["resize", bm, "2M"], bm),
        (vec!["resize", "--shrink", bm, "512k"], bm),
        (
            vec!["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", bm],
            bm,
        ),
        (vec!["rebase", "-b", "", bmtop], bmtop),
        (vec!["rebase", "-u", "-b", "", bmtop], bmtop),
        (vec!["commit", top], bm),
        (vec!["commit", "-d", top], bm),
        (vec!["commit", bmtop], bmtop),
        (vec!["check", "-r", "leaks", bm], bm),
        (vec!["check", "-r", "all", bm], bm),
    ];
    run_cases(
        "writes to an image with bitmaps",
        &cases,
        |(args, named)| {
            let out = vdisk(args);
            let what = format!("vdisk {}", args.join(" "));
            assert_eq!(out.status.code(), Some(1), "{}", describe(&what, &out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{}", describe(&what, &out));
            assert!(
                err.contains(&format!("'{named}'")) && err.contains("bitmaps extension"),
                "{}",
                describe(&what, &out)
            );
            for (n, b) in names.iter().zip(&before) {
                assert_bytes_eq(&format!("{n} after {what}"), &read(&p(n)), b);
            }
        },
    );
    for n in names {
        assert_qemu_check_clean(&p(n));
    }
    assert_eq!(bitmaps_of(&p("bm.qcow2")), bitmaps);
}

#[test]
fn the_library_refuses_any_writable_open_of_an_image_with_persistent_bitmaps() {
    // Every writer opens through here (vdisk has no `convert -n` yet; one would too).
    let dir = tempdir();
    bitmap_images(dir.path());
    let bm = dir.path().join("bm.qcow2");
    let before = read(&bm);
    let writable = vdisk::image::ImageOptions::default();
    let err = vdisk::image::open(&bm, &writable)
        .err()
        .expect("a writable open of an image with bitmaps");
    assert!(
        matches!(err, vdisk::Error::ReadOnly(_)) && err.to_string().contains(s(&bm)),
        "{err}"
    );
    let read_only = vdisk::image::ImageOptions {
        read_only: true,
        ..Default::default()
    };
    assert!(vdisk::image::open(&bm, &read_only).is_ok());
    assert_bytes_eq("bm.qcow2", &read(&bm), &before);
}

#[test]
fn a_dirty_image_with_persistent_bitmaps_is_refused_before_its_refcounts_are_repaired() {
    let dir = tempdir();
    let img = dir.path().join("dirty.qcow2");
    let img = s(&img);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        img,
        "1M",
    ]);
    qemu_img_ok(&["bitmap", "--add", img, "b0"]);
    // qemu-io aborts with the dirty bit set (and the bitmap marked in use).
    let out = qemu_io(["-f", "qcow2", "-c", "write -P 5 0 64k", "-c", "abort", img]);
    assert!(!out.status.success(), "{}", describe("qemu-io abort", &out));
    let before = read(Path::new(img));
    assert_ne!(
        vdisk::qcow2::header::field::INCOMPATIBLE_FEATURES.get(&before) & 1,
        0,
        "the dirty bit is set"
    );
    let out = vdisk(["resize", img, "2M"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("vdisk resize", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bitmaps extension"));
    assert_bytes_eq("the dirty image", &read(Path::new(img)), &before);
}

#[test]
fn reading_an_image_with_persistent_bitmaps_works_as_in_qemu_img() {
    let dir = tempdir();
    bitmap_images(dir.path());
    let bm = dir.path().join("bm.qcow2");
    let top = dir.path().join("top.qcow2");
    let before = read(&bm);
    assert_text_eq(
        "map --output=json",
        &vdisk_ok(&["map", "--output=json", s(&top)]),
        &qemu_img_ok(&["map", "--output=json", s(&top)]),
    );
    assert_text_eq(
        "check",
        &vdisk_ok(&["check", s(&bm)]),
        &qemu_img_ok(&["check", s(&bm)]),
    );
    vdisk_ok(&["info", s(&bm)]);
    let copy = dir.path().join("copy.qcow2");
    vdisk_ok(&["convert", "-O", "qcow2", s(&top), s(&copy)]);
    assert_qemu_compare_identical(&top, &copy);
    let out = vdisk(["compare", s(&bm), s(&top)]);
    let theirs = qemu_img(["compare", s(&bm), s(&top)]);
    assert_eq!(out.status.code(), theirs.status.code());
    assert_eq!(out.stdout, theirs.stdout);
    assert_bytes_eq("bm.qcow2 after reading", &read(&bm), &before);
}

#[test]
fn bitmaps_whose_autoclear_bit_is_clear_are_stale_and_do_not_block_writes() {
    // QEMU's rule: the bitmaps extension is valid only while the autoclear bit is set;
    // without it QEMU itself ignores the bitmaps, and so writes the image. So does vdisk.
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "1M"]);
    qemu_img_ok(&["bitmap", "--add", s(&src), "b0"]);
    let mut bytes = read(&src);
    assert_eq!(bytes[95] & 1, 1, "the bitmaps autoclear bit is set");
    bytes[95] &= !1;
    std::fs::write(&src, bytes).expect("clearing the autoclear bit");
    t.put("img.qcow2", &src);
    let (q, _) = t.same_outcome(&["resize", "-q", "@img.qcow2", "2M"]);
    assert!(q.status.success(), "{}", describe("qemu-img resize", &q));
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let info = parse_json(
            "qemu-img info",
            &qemu_img_ok(&["info", "--output=json", s(&t.path(tool, "img.qcow2"))]),
        );
        assert_eq!(info["virtual-size"], 2u64 << 20, "{tool:?}");
    }
}

#[test]
fn info_lists_persistent_bitmaps_as_qemu_img_does() {
    let dir = tempdir();
    let img = dir.path().join("list.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "64M"]);
    qemu_img_ok(&["bitmap", "--add", s(&img), "b1"]);
    qemu_img_ok(&[
        "bitmap",
        "--add",
        "-g",
        "128k",
        s(&img),
        "a much longer name",
    ]);
    qemu_img_ok(&["bitmap", "--add", "--disable", s(&img), "off"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write 1M 64k", s(&img)]);
    let same = |what: &str| {
        for args in [vec!["info"], vec!["info", "--output=json"]] {
            let mut a = args.clone();
            a.push(s(&img));
            assert_text_eq(what, &vdisk_ok(&a), &qemu_img_ok(&a));
        }
    };
    same("bitmaps");
    // A writer killed while the bitmaps are open leaves them in use.
    let _ = qemu_io(["-f", "qcow2", "-c", "sigraise 9", s(&img)]);
    assert!(qemu_img_ok(&["info", s(&img)]).contains("in-use"));
    same("bitmaps in use");
}
