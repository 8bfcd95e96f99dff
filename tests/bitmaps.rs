//! Persistent dirty bitmaps (issue 14): `vdisk bitmap` against `qemu-img bitmap`, dirty
//! tracking of guest writes against what QEMU tracks (its NBD export of the bitmap is the
//! oracle), inconsistent bitmaps, and bitmaps across resize, repair and snapshots.

mod common;

use common::bitmaps::{qemu_bitmaps, qemu_dirty_ranges};
use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;
use vdisk::image::{self, ImageOptions};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A guest operation, applied by qemu-io to one copy and by the vdisk library to another.
#[derive(Debug, Clone, Copy)]
enum G {
    Write(u64, u64, u8),
    Zero(u64, u64),
    Discard(u64, u64),
}

impl G {
    fn qemu_io(self) -> String {
        match self {
            G::Write(o, l, p) => format!("write -P {p} {o} {l}"),
            G::Zero(o, l) => format!("write -z {o} {l}"),
            G::Discard(o, l) => format!("discard {o} {l}"),
        }
    }
}

/// Apply `ops` to `img` through the vdisk library (one writable open, then a clean close).
fn vdisk_guest(img: &Path, ops: &[G]) {
    let mut im = image::open(img, &ImageOptions::default()).expect("writable open");
    for &op in ops {
        match op {
            G::Write(o, l, p) => im.device.write_at(&vec![p; l as usize], o),
            G::Zero(o, l) => im.device.write_zeroes(o, l),
            G::Discard(o, l) => im.device.discard(o, l),
        }
        .expect("guest operation");
    }
    im.device.close().expect("close");
}

fn qemu_guest(img: &Path, ops: &[G]) {
    let mut args: Vec<String> = vec!["-f".into(), "qcow2".into()];
    for op in ops {
        args.push("-c".into());
        args.push(op.qemu_io());
    }
    args.push(s(img).into());
    qemu_io_ok(&args);
}

/// Both copies list the same bitmaps, QEMU exports the same dirty ranges for each
/// consistent one, the guest data is equal and `qemu-img check` is clean.
#[track_caller]
fn assert_same_bitmaps(what: &str, q: &Path, v: &Path) {
    let (bq, bv) = (qemu_bitmaps(q), qemu_bitmaps(v));
    assert_eq!(bq, bv, "{what}: bitmap lists differ");
    for b in bq.as_array().into_iter().flatten() {
        let in_use = b["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&"in-use".into()));
        let name = b["name"].as_str().expect("a bitmap name");
        if !in_use {
            assert_eq!(
                qemu_dirty_ranges(v, name),
                qemu_dirty_ranges(q, name),
                "{what}: dirty ranges of '{name}' (vdisk's copy first)"
            );
        }
    }
    assert_qemu_check_clean(v);
    assert_qemu_compare_identical(q, v);
}

const GUEST: &[G] = &[
    G::Write(0, 4096, 1),
    G::Write(200 << 10, 100 << 10, 2),
    G::Zero(1 << 20, 64 << 10),
    G::Discard(3 << 20, 128 << 10),
    G::Discard(5 << 20, 4096),
    G::Write((8 << 20) - 512, 512, 3),
    G::Zero(6 << 20, 1000),
];

/// An image with an enabled 64 KiB bitmap, an enabled 4 KiB one, a disabled one, and
/// some data, made by qemu-img.
fn image_with_bitmaps(path: &Path) {
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(path), "8M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 7 2M 1M", s(path)]);
    qemu_img_ok(&["bitmap", "--add", s(path), "b64k"]);
    qemu_img_ok(&["bitmap", "--add", "-g", "4k", s(path), "b4k"]);
    qemu_img_ok(&["bitmap", "--add", "--disable", s(path), "off"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 8 7M 8k", s(path)]);
}

#[test]
fn guest_writes_through_vdisk_set_the_bits_qemu_sets() {
    let dir = tempdir();
    let (q, v) = (dir.path().join("q.qcow2"), dir.path().join("v.qcow2"));
    image_with_bitmaps(&q);
    std::fs::copy(&q, &v).expect("copy");
    qemu_guest(&q, GUEST);
    vdisk_guest(&v, GUEST);
    assert_same_bitmaps("after the same guest writes", &q, &v);
    // And once more, over an image vdisk's bitmaps went through.
    let more = [G::Write(4 << 20, 64 << 10, 9), G::Discard(0, 8 << 20)];
    qemu_guest(&q, &more);
    vdisk_guest(&v, &more);
    assert_same_bitmaps("after a second session", &q, &v);
}

#[test]
fn an_open_without_guest_writes_leaves_the_image_as_it_was() {
    let dir = tempdir();
    let v = dir.path().join("v.qcow2");
    image_with_bitmaps(&v);
    let before = read(&v);
    vdisk_guest(&v, &[]);
    assert_bytes_eq("the image after an idle writable open", &read(&v), &before);
}

#[test]
fn bitmap_commands_match_qemu_img_bitmap() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "16M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 1 1M 1M", s(&src)]);
    t.put("img.qcow2", &src);
    let v2 = t.work("v2.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        s(&v2),
        "1M",
    ]);
    t.put("v2.qcow2", &v2);
    let steps: &[&[&str]] = &[
        &["bitmap", "--add", "@img.qcow2", "a"],
        &["bitmap", "--add", "@img.qcow2", "a"],
        &["bitmap", "--add", "-g", "8k", "@img.qcow2", "fine"],
        &["bitmap", "--add", "--disable", "@img.qcow2", "off"],
        &["bitmap", "--add", "-g", "1000", "@img.qcow2", "g"],
        &["bitmap", "--add", "-g", "256", "@img.qcow2", "g"],
        &["bitmap", "--add", "-g", "4G", "@img.qcow2", "g"],
        &["bitmap", "--add", "-g", "xyz", "@img.qcow2", "g"],
        &["bitmap", "--add", "--add", "@img.qcow2", "twice"],
        &["bitmap", "--remove", "@img.qcow2", "nope"],
        &["bitmap", "--clear", "@img.qcow2", "nope"],
        &["bitmap", "--merge", "nope", "@img.qcow2", "a"],
        &["bitmap", "-g", "64k", "--clear", "@img.qcow2", "a"],
        &["bitmap", "-b", "@v2.qcow2", "--clear", "@img.qcow2", "a"],
        &["bitmap", "-F", "qcow2", "--clear", "@img.qcow2", "a"],
        &["bitmap", "@img.qcow2", "a"],
        &["bitmap", "--enable", "@img.qcow2", "off"],
        &["bitmap", "--disable", "@img.qcow2", "a"],
        &["bitmap", "--remove", "@img.qcow2", "twice"],
    ];
    for (i, args) in steps.iter().enumerate() {
        let (q, _) = t.same_outcome(args);
        if !q.status.success() {
            continue;
        }
        let what = format!("step {i}: {}", args.join(" "));
        let (qi, vi) = (
            t.path(Tool::Qemu, "img.qcow2"),
            t.path(Tool::Vdisk, "img.qcow2"),
        );
        assert_same_bitmaps(&what, &qi, &vi);
    }
    // qemu-img names its block node ("#block123") where vdisk says "the image".
    let (q, v) = t.run(&["bitmap", "--add", "@v2.qcow2", "x"]);
    assert_eq!((q.status.code(), v.status.code()), (Some(1), Some(1)));
    let tail = "Cannot store dirty bitmaps in qcow2 v2 files";
    for out in [&q, &v] {
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .trim_end()
                .ends_with(tail),
            "{}",
            describe("bitmap --add on v2", out)
        );
    }
    t.assert_unchanged("v2.qcow2", &v2);
}

#[test]
fn merge_and_clear_follow_qemu_across_granularities_and_images() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "16M"]);
    qemu_img_ok(&["bitmap", "--add", "-g", "4k", s(&src), "fine"]);
    qemu_img_ok(&["bitmap", "--add", "-g", "1M", s(&src), "coarse"]);
    qemu_img_ok(&["bitmap", "--add", s(&src), "dst"]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write 100k 4k",
        "-c",
        "write 9M 1",
        s(&src),
    ]);
    let other = t.work("other.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&other), "16M"]);
    qemu_img_ok(&["bitmap", "--add", "-g", "512", s(&other), "o"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write 12M 700", s(&other)]);
    t.put("img.qcow2", &src);
    t.put("other.qcow2", &other);
    let steps: &[&[&str]] = &[
        &["bitmap", "--clear", "@img.qcow2", "dst"],
        &["bitmap", "--merge", "fine", "@img.qcow2", "dst"],
        &["bitmap", "--merge", "dst", "@img.qcow2", "coarse"],
        &[
            "bitmap",
            "--merge",
            "o",
            "-b",
            "@other.qcow2",
            "-F",
            "qcow2",
            "@img.qcow2",
            "fine",
        ],
        &[
            "bitmap",
            "--merge",
            "o",
            "-b",
            "@other.qcow2",
            "@img.qcow2",
            "nope",
        ],
        &[
            "bitmap",
            "--clear",
            "--merge",
            "coarse",
            "--disable",
            "@img.qcow2",
            "dst",
        ],
    ];
    for args in steps {
        let (q, _) = t.same_outcome(args);
        if q.status.success() {
            let (qi, vi) = (
                t.path(Tool::Qemu, "img.qcow2"),
                t.path(Tool::Vdisk, "img.qcow2"),
            );
            assert_same_bitmaps(&args.join(" "), &qi, &vi);
        }
    }
}

#[test]
fn qemu_reads_merges_and_removes_the_bitmaps_vdisk_makes() {
    let dir = tempdir();
    let img = dir.path().join("v.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    vdisk_ok(&["bitmap", "--add", "-g", "16k", s(&img), "mine"]);
    vdisk_guest(
        &img,
        &[G::Write(64 << 10, 1, 1), G::Zero(1 << 20, 100 << 10)],
    );
    assert_qemu_check_clean(&img);
    let dirty = vec![(64 << 10, 16 << 10), (1 << 20, 112 << 10)];
    assert_eq!(qemu_dirty_ranges(&img, "mine"), dirty);
    for args in [
        vec!["info", s(&img)],
        vec!["info", "--output=json", s(&img)],
    ] {
        assert_text_eq(&args.join(" "), &vdisk_ok(&args), &qemu_img_ok(&args));
    }
    qemu_img_ok(&["bitmap", "--add", s(&img), "theirs"]);
    qemu_img_ok(&["bitmap", "--merge", "mine", s(&img), "theirs"]);
    assert_eq!(
        qemu_dirty_ranges(&img, "theirs"),
        vec![(64 << 10, 64 << 10), (1 << 20, 128 << 10)]
    );
    qemu_img_ok(&["bitmap", "--remove", s(&img), "mine"]);
    qemu_img_ok(&["bitmap", "--remove", s(&img), "theirs"]);
    assert_qemu_check_clean(&img);
    assert_eq!(qemu_bitmaps(&img), serde_json::Value::Null);
}

#[test]
fn inconsistent_bitmaps_are_refused_as_qemu_refuses_them_and_can_be_removed() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "8M"]);
    qemu_img_ok(&["bitmap", "--add", s(&src), "b0"]);
    qemu_img_ok(&["bitmap", "--add", s(&src), "b1"]);
    let _ = qemu_io([
        "-f",
        "qcow2",
        "-c",
        "write 0 64k",
        "-c",
        "sigraise 9",
        s(&src),
    ]);
    assert!(qemu_img_ok(&["info", s(&src)]).contains("in-use"));
    t.put("img.qcow2", &src);
    for args in [
        &["bitmap", "--clear", "@img.qcow2", "b0"][..],
        &["bitmap", "--enable", "@img.qcow2", "b0"],
        &["bitmap", "--disable", "@img.qcow2", "b0"],
        &["bitmap", "--merge", "b1", "@img.qcow2", "b0"],
        &["resize", "@img.qcow2", "16M"],
    ] {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success());
        t.assert_unchanged("img.qcow2", &src);
    }
    // Guest writes leave inconsistent bitmaps as they are.
    let v = t.path(Tool::Vdisk, "img.qcow2");
    vdisk_guest(&v, &[G::Write(0, 512, 4)]);
    assert_eq!(qemu_bitmaps(&v), qemu_bitmaps(&src));
    t.same_outcome(&["bitmap", "--remove", "@img.qcow2", "b0"]);
    t.same_outcome(&["bitmap", "--remove", "@img.qcow2", "b1"]);
    assert_eq!(qemu_bitmaps(&v), serde_json::Value::Null);
    assert_qemu_check_clean(&v);
}

#[test]
fn resize_carries_the_bitmaps_as_qemu_img_resize_does() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_bitmaps(&src);
    t.put("img.qcow2", &src);
    for args in [
        &["resize", "@img.qcow2", "100M"][..],
        &["resize", "--shrink", "@img.qcow2", "5M"],
        &["resize", "@img.qcow2", "+3M"],
    ] {
        t.same_outcome(args);
        let (qi, vi) = (
            t.path(Tool::Qemu, "img.qcow2"),
            t.path(Tool::Vdisk, "img.qcow2"),
        );
        assert_same_bitmaps(&args.join(" "), &qi, &vi);
        vdisk_guest(&vi, &[G::Write(4 << 20, 4096, 5)]);
        qemu_guest(&qi, &[G::Write(4 << 20, 4096, 5)]);
        assert_same_bitmaps("a write after the resize", &qi, &vi);
    }
}

#[test]
fn snapshots_repair_and_amend_keep_the_bitmaps_valid() {
    let dir = tempdir();
    let img = dir.path().join("v.qcow2");
    image_with_bitmaps(&img);
    let before = qemu_bitmaps(&img);
    let dirty = qemu_dirty_ranges(&img, "b64k");
    for args in [
        vec!["snapshot", "-c", "s1", s(&img)],
        vec!["snapshot", "-c", "s2", s(&img)],
        vec!["snapshot", "-d", "s1", s(&img)],
        vec!["amend", "-o", "refcount_bits=64", s(&img)],
        vec!["amend", "-o", "lazy_refcounts=on", s(&img)],
        vec!["check", "-r", "all", s(&img)],
        vec![
            "amend",
            "-o",
            "refcount_bits=16,lazy_refcounts=off",
            s(&img),
        ],
    ] {
        vdisk_ok(&args);
        assert_qemu_check_clean(&img);
        assert_eq!(qemu_bitmaps(&img), before, "vdisk {}", args.join(" "));
        assert_eq!(
            qemu_dirty_ranges(&img, "b64k"),
            dirty,
            "vdisk {}",
            args.join(" ")
        );
    }
    // A revert may change any guest byte: the enabled bitmaps say so (QEMU's stay as they
    // were, which would hide the revert from an incremental backup); disabled ones stay.
    let off = qemu_dirty_ranges(&img, "off");
    vdisk_ok(&["snapshot", "-a", "s2", s(&img)]);
    assert_qemu_check_clean(&img);
    assert_eq!(qemu_dirty_ranges(&img, "b64k"), vec![(0, 8 << 20)]);
    assert_eq!(qemu_dirty_ranges(&img, "b4k"), vec![(0, 8 << 20)]);
    assert_eq!(qemu_dirty_ranges(&img, "off"), off);
    // compat 0.10 cannot hold bitmaps: vdisk refuses rather than leak them as qemu-img does.
    let out = vdisk(["amend", "-o", "compat=0.10", s(&img)]);
    assert_eq!(out.status.code(), Some(1), "{}", describe("amend", &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bitmaps"));
}

#[test]
fn convert_bitmaps_copies_them_as_qemu_img_does() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_bitmaps(&src);
    t.put("src.qcow2", &src);
    let (q, _) = t.same_outcome(&[
        "convert",
        "--bitmaps",
        "-O",
        "qcow2",
        "@src.qcow2",
        "@out.qcow2",
    ]);
    assert!(q.status.success());
    let (qo, vo) = (
        t.path(Tool::Qemu, "out.qcow2"),
        t.path(Tool::Vdisk, "out.qcow2"),
    );
    assert_same_bitmaps("convert --bitmaps", &qo, &vo);
    assert_eq!(qemu_bitmaps(&vo), qemu_bitmaps(&src));
    for args in [
        &["convert", "--bitmaps", "-O", "raw", "@src.qcow2", "@o.raw"][..],
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@src.qcow2",
            "@o2.qcow2",
        ],
        &[
            "convert",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@o3.qcow2",
        ],
    ] {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success());
    }
    // vdisk removes an output it could not finish; qemu-img leaves it behind.
    let out = vdisk([
        "convert",
        "--bitmaps",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        s(&src),
        s(&t.path(Tool::Vdisk, "v2.qcow2")),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("convert to compat 0.10", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support bitmaps"));
    assert!(!t.path(Tool::Vdisk, "v2.qcow2").exists());
    // An inconsistent bitmap is refused, or skipped with a warning.
    let _ = qemu_io([
        "-f",
        "qcow2",
        "-c",
        "write 0 512",
        "-c",
        "sigraise 9",
        s(&src),
    ]);
    t.put("broken.qcow2", &src);
    let (q, _) = t.same_outcome(&[
        "convert",
        "--bitmaps",
        "-O",
        "qcow2",
        "@broken.qcow2",
        "@b.qcow2",
    ]);
    assert!(!q.status.success());
    assert!(!t.path(Tool::Vdisk, "b.qcow2").exists());
    let args = [
        "convert",
        "--bitmaps",
        "--skip-broken-bitmaps",
        "-O",
        "qcow2",
        "@broken.qcow2",
        "@b.qcow2",
    ];
    let (q, v) = t.same_outcome(&args);
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        t.error_text(Tool::Vdisk, &v),
        "warnings"
    );
    assert_eq!(
        qemu_bitmaps(&t.path(Tool::Vdisk, "b.qcow2")),
        serde_json::Value::Null
    );
}

#[test]
fn measure_counts_the_bitmaps_as_qemu_img_does() {
    let dir = tempdir();
    let img = dir.path().join("m.qcow2");
    image_with_bitmaps(&img);
    for o in [
        "cluster_size=64k",
        "cluster_size=4k",
        "cluster_size=2M",
        "compat=0.10",
    ] {
        for out in ["human", "json"] {
            let args = ["measure", "--output", out, "-O", "qcow2", "-o", o, s(&img)];
            assert_text_eq(&args.join(" "), &vdisk_ok(&args), &qemu_img_ok(&args));
        }
    }
}

#[test]
fn dump_shows_the_bitmap_directory_and_tables() {
    let dir = tempdir();
    let img = dir.path().join("d.qcow2");
    image_with_bitmaps(&img);
    let doc = parse_json("dump", &vdisk_ok(&["dump", "--json", "--bitmaps", s(&img)]));
    let b = &doc["bitmaps"];
    let names: Vec<&str> = b["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["b64k", "b4k", "off"]);
    assert_eq!(b["entries"][1]["granularity"], 4096);
    assert_eq!(b["entries"][2]["flags"], serde_json::json!([]));
    // b64k has bits set (the write at 7M): one table entry pointing at a data cluster.
    assert_eq!(b["entries"][0]["table"][0]["type"], "data");
    assert_eq!(b["entries"][2]["table"][0]["type"], "clean");
    let plain = parse_json("dump", &vdisk_ok(&["dump", "--json", "--header", s(&img)]));
    assert!(plain.get("bitmaps").is_none());
}

#[test]
fn a_hostile_bitmap_table_is_one_clear_error_and_nothing_is_written() {
    let dir = tempdir();
    let img = dir.path().join("h.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    qemu_img_ok(&["bitmap", "--add", s(&img), "b"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write 0 64k", s(&img)]);
    let good = read(&img);
    let doc = parse_json("dump", &vdisk_ok(&["dump", "--json", "--bitmaps", s(&img)]));
    let table = u64::from_str_radix(
        doc["bitmaps"]["entries"][0]["table_offset"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("0x"),
        16,
    )
    .expect("the table offset") as usize;
    let data = u64::from_be_bytes(good[table..table + 8].try_into().expect("8 bytes"));
    assert_ne!(data, 0, "the bitmap has a data cluster");
    for (what, entry) in [
        ("reserved bits", data | 0x2),
        ("an unaligned data cluster", data + 0x200),
        ("a data cluster past the end", 0x00ff_ffff_ffff_0000),
        ("the all-ones flag with an offset", data | 1),
    ] {
        let mut bad = good.clone();
        bad[table..table + 8].copy_from_slice(&entry.to_be_bytes());
        std::fs::write(&img, &bad).expect("poke");
        for args in [
            vec!["bitmap", "--clear", s(&img), "b"],
            vec!["resize", s(&img), "8M"],
        ] {
            let out = vdisk(&args);
            let w = format!("{what}: vdisk {}", args.join(" "));
            assert_eq!(out.status.code(), Some(1), "{}", describe(&w, &out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("bitmap table") && err.trim_end().lines().count() == 1,
                "{}",
                describe(&w, &out)
            );
            assert_bytes_eq(&w, &read(&img), &bad);
        }
        // check reports the entry as a corruption (exit 2), and the cluster it still names
        // as in use; qemu-img check cannot open the image at all (exit 1).
        let v = vdisk(["check", s(&img)]);
        assert_eq!(
            v.status.code(),
            Some(2),
            "{what}: {}",
            describe("vdisk check", &v)
        );
        let same_cluster = entry & 0x00ff_ffff_ffff_fe00 == data;
        assert!(
            !same_cluster || !String::from_utf8_lossy(&v.stdout).contains("leaked"),
            "{what}: {}",
            describe("vdisk check", &v)
        );
        let e = image::open(&img, &ImageOptions::default())
            .err()
            .expect("a writable open fails");
        assert!(e.to_string().contains("bitmap table"), "{what}: {e}");
    }
}

#[test]
fn qemu_and_vdisk_taking_turns_on_one_image_keep_one_consistent_bitmap() {
    let dir = tempdir();
    let (turns, qemu_only) = (dir.path().join("t.qcow2"), dir.path().join("q.qcow2"));
    image_with_bitmaps(&turns);
    std::fs::copy(&turns, &qemu_only).expect("copy");
    let sessions: [&[G]; 4] = [
        &[G::Write(64 << 10, 4096, 1), G::Zero(5 << 20, 8192)],
        &[G::Discard(1 << 20, 1 << 20), G::Write(3 << 20, 100, 2)],
        &[G::Write(6 << 20, 65536, 3)],
        &[G::Zero(0, 4096), G::Write((8 << 20) - 4096, 4096, 4)],
    ];
    for (i, ops) in sessions.iter().enumerate() {
        if i % 2 == 0 {
            vdisk_guest(&turns, ops);
        } else {
            qemu_guest(&turns, ops);
        }
        qemu_guest(&qemu_only, ops);
        assert_same_bitmaps(&format!("after session {i}"), &qemu_only, &turns);
    }
}
