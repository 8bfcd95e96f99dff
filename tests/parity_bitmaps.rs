//! Images with persistent dirty bitmaps (issue 12, item 3): every vdisk command that writes
//! such an image keeps its bitmaps valid, reading works as in qemu-img, and stale bitmaps
//! (autoclear bit clear) are ignored as QEMU ignores them.

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

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
fn every_writer_keeps_the_persistent_bitmaps_of_the_image_valid() {
    // Issue 12 item 3 found writers dropping bitmaps; each now keeps them, and the bitmaps
    // of an image whose guest data a command changes record the change.
    let dir = tempdir();
    bitmap_images(dir.path());
    let p = |n: &str| dir.path().join(n);
    let (bm, top, bmtop) = (p("bm.qcow2"), p("top.qcow2"), p("bmtop.qcow2"));
    let (bm, top, bmtop) = (s(&bm), s(&top), s(&bmtop));
    let cases: Vec<Vec<&str>> = vec![
        vec!["snapshot", "-c", "new", bm],
        vec!["snapshot", "-d", "new", bm],
        vec!["snapshot", "--prune", "--keep-last", "1", bm],
        vec!["amend", "-o", "lazy_refcounts=on", bm],
        vec!["resize", bm, "2M"],
        vec!["resize", "--shrink", bm, "1536k"],
        vec!["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", bm],
        vec!["rebase", "-u", "-b", "", bm],
        vec!["commit", "-d", top],
        vec!["commit", bmtop],
        vec!["rebase", "-b", "", bmtop],
        vec!["check", "-r", "leaks", bm],
        vec!["check", "-r", "all", bm],
    ];
    for args in &cases {
        let what = format!("vdisk {}", args.join(" "));
        let out = vdisk(args);
        assert!(out.status.success(), "{}", describe(&what, &out));
        for n in ["bm.qcow2", "bmtop.qcow2"] {
            assert_qemu_check_clean(&p(n));
            let listed = bitmaps_of(&p(n));
            for b in listed.as_array().expect("bitmaps are listed") {
                assert_eq!(
                    b["flags"],
                    serde_json::json!(["auto"]),
                    "{n} after {what}: {listed}"
                );
            }
        }
    }
    assert_eq!(bitmaps_of(&p("bm.qcow2")).as_array().map(Vec::len), Some(2));
    // `rebase -b ""` copied into bmtop what it read from its old backing file: its bitmap
    // shows those ranges dirty.
    assert!(!common::bitmaps::qemu_dirty_ranges(&p("bmtop.qcow2"), "t0").is_empty());
}

#[test]
fn a_dirty_image_with_inconsistent_bitmaps_is_repaired_then_refused_a_resize_as_qemu_does() {
    let t = Twins::new();
    let img = t.work("dirty.qcow2");
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
    t.put("img.qcow2", Path::new(img));
    let (q, _) = t.same_outcome(&["resize", "@img.qcow2", "2M"]);
    assert!(!q.status.success());
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let p = t.path(tool, "img.qcow2");
        assert_qemu_check_clean(&p);
        assert_eq!(bitmaps_of(&p), bitmaps_of(&t.path(Tool::Qemu, "img.qcow2")));
    }
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
