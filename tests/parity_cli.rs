//! Regressions of issue 12: commands where vdisk and qemu-img disagreed. Each test runs
//! qemu-img and vdisk on identical copies of the same input and checks they reach the same
//! outcome: exit code, resulting image, and error text where qemu-img's is a stable message.
//!
//! The copies are kept by `common::twins::Twins`, which also compares the outcomes.

mod common;

use common::twins::{with_file_size_limit, Tool, Twins};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The (ID, name) of every internal snapshot of `path`, as `qemu-img info` lists them.
fn snapshot_ids_and_names(path: &Path) -> Vec<(String, String)> {
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(path)]),
    );
    info["snapshots"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|sn| {
                    (
                        sn["id"].as_str().unwrap_or_default().to_string(),
                        sn["name"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A 1 MiB qcow2 image at `path` with one snapshot per name, each taken after writing a
/// different byte at offset 0 (snapshot N holds byte N, the active disk 0xee).
fn image_with_snapshots(path: &Path, names: &[&str]) {
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(path), "1M"]);
    for (i, name) in names.iter().enumerate() {
        let write = format!("write -P {} 0 4k", i + 1);
        qemu_io_ok(&["-f", "qcow2", "-c", &write, s(path)]);
        qemu_img_ok(&["snapshot", "-c", name, s(path)]);
    }
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 0xee 0 4k", s(path)]);
}

/// The first guest byte of `path`, as qemu-io reads it.
fn first_byte(path: &Path) -> u8 {
    let text = qemu_io_ok(&["-f", "qcow2", "-c", "read -v 0 1", s(path)]);
    let hex = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("qemu-io read -v: {text}"));
    u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("qemu-io read -v: {text}"))
}

// ---------------------------------------------------------------------------------------
// snapshot -a / -d / -c: IDs and names
// ---------------------------------------------------------------------------------------

#[test]
fn deleting_by_an_id_that_is_no_snapshots_name_is_refused_with_snapshot_not_found() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_snapshots(&src, &["A", "second snap"]);
    t.put("img.qcow2", &src);
    let (q, _) = t.same_outcome(&["snapshot", "-d", "2", "@img.qcow2"]);
    assert_eq!(q.status.code(), Some(1));
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        "Could not delete snapshot '2': snapshot not found"
    );
    t.assert_unchanged("img.qcow2", &src);
}

#[test]
fn deleting_a_name_that_is_also_another_snapshots_id_deletes_the_snapshot_of_that_name() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_snapshots(&src, &["A", "B", "2"]);
    t.put("img.qcow2", &src);
    let (q, _) = t.same_outcome(&["snapshot", "-d", "2", "@img.qcow2"]);
    assert!(q.status.success());
    let left = snapshot_ids_and_names(&t.path(Tool::Qemu, "img.qcow2"));
    assert_eq!(
        left,
        [("1".into(), "A".into()), ("2".into(), "B".into())],
        "qemu-img deletes the snapshot named 2"
    );
    assert_eq!(
        snapshot_ids_and_names(&t.path(Tool::Vdisk, "img.qcow2")),
        left
    );
    assert_qemu_check_clean(&t.path(Tool::Vdisk, "img.qcow2"));
}

#[test]
fn applying_looks_up_an_id_first_then_a_name_as_qemu_img_does() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_snapshots(&src, &["A", "B", "2"]);
    // "2" is B's ID and the third snapshot's name; "3" only an ID; "B" only a name.
    for (arg, byte) in [("2", 2u8), ("3", 3), ("B", 2), ("1", 1), ("A", 1)] {
        t.put("img.qcow2", &src);
        let (q, _) = t.same_outcome(&["snapshot", "-a", arg, "@img.qcow2"]);
        assert!(
            q.status.success(),
            "{}",
            describe("qemu-img snapshot -a", &q)
        );
        for tool in [Tool::Qemu, Tool::Vdisk] {
            assert_eq!(
                first_byte(&t.path(tool, "img.qcow2")),
                byte,
                "{tool:?}: snapshot -a {arg}"
            );
        }
        assert_qemu_check_clean(&t.path(Tool::Vdisk, "img.qcow2"));
    }
}

#[test]
fn applying_or_deleting_a_missing_snapshot_fails_with_qemu_imgs_messages() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    image_with_snapshots(&src, &["A"]);
    t.put("img.qcow2", &src);
    let (q, _) = t.same_outcome(&["snapshot", "-a", "nosuch", "@img.qcow2"]);
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        "Could not apply snapshot 'nosuch': Failed to load snapshot: No such file or directory"
    );
    let (q, _) = t.same_outcome(&["snapshot", "-d", "nosuch", "@img.qcow2"]);
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        "Could not delete snapshot 'nosuch': snapshot not found"
    );
    t.assert_unchanged("img.qcow2", &src);
}

#[test]
fn vdisk_refuses_duplicate_and_empty_names_but_deletes_the_first_of_a_name_qemu_made() {
    // qemu-img takes duplicate and empty names; vdisk deliberately refuses both (see the
    // README's differences), leaving the image as it was.
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "1M"]);
    for name in ["A", "second snap", "A", ""] {
        qemu_img_ok(&["snapshot", "-c", name, s(&src)]);
    }
    t.put("img.qcow2", &src);
    for name in ["A", ""] {
        let out = vdisk(["snapshot", "-c", name, s(&t.path(Tool::Vdisk, "img.qcow2"))]);
        assert_eq!(out.status.code(), Some(1), "{}", describe("vdisk -c", &out));
        t.assert_unchanged("img.qcow2", &src);
    }
    // On an image QEMU made with a duplicate name, -d deletes the first of that name.
    let (q, _) = t.same_outcome(&["snapshot", "-d", "A", "@img.qcow2"]);
    assert!(
        q.status.success(),
        "{}",
        describe("qemu-img snapshot -d", &q)
    );
    let theirs = snapshot_ids_and_names(&t.path(Tool::Qemu, "img.qcow2"));
    assert_eq!(
        theirs,
        [
            ("2".into(), "second snap".into()),
            ("3".into(), "A".into()),
            ("4".into(), String::new())
        ]
    );
    let ours = t.path(Tool::Vdisk, "img.qcow2");
    assert_eq!(snapshot_ids_and_names(&ours), theirs);
    assert_qemu_check_clean(&ours);
    // Both list the same table (read from the same file, so the dates agree too).
    assert_text_eq(
        "snapshot -l",
        &vdisk_ok(&["snapshot", "-l", s(&ours)]),
        &qemu_img_ok(&["snapshot", "-l", s(&ours)]),
    );
}

#[test]
fn a_snapshot_name_longer_than_255_bytes_is_cut_to_255_as_qemu_img_does() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "1M"]);
    t.put("img.qcow2", &src);
    let long = "x".repeat(300);
    t.same_outcome(&["snapshot", "-c", &long, "@img.qcow2"]);
    let theirs = snapshot_ids_and_names(&t.path(Tool::Qemu, "img.qcow2"));
    assert_eq!(theirs, [("1".into(), "x".repeat(255))]);
    assert_eq!(
        snapshot_ids_and_names(&t.path(Tool::Vdisk, "img.qcow2")),
        theirs
    );
    // The stored name is the cut one: the full name no longer finds the snapshot.
    let (q, _) = t.same_outcome(&["snapshot", "-a", &long, "@img.qcow2"]);
    assert_eq!(q.status.code(), Some(1));
    let (q, _) = t.same_outcome(&["snapshot", "-d", &"x".repeat(255), "@img.qcow2"]);
    assert!(
        q.status.success(),
        "{}",
        describe("qemu-img snapshot -d", &q)
    );
}

// ---------------------------------------------------------------------------------------
// create: the size given twice
// ---------------------------------------------------------------------------------------

#[test]
fn create_with_a_size_option_and_a_size_argument_is_refused_and_creates_nothing() {
    let t = Twins::new();
    for fmt in ["qcow2", "raw", "vmdk"] {
        let (q, _) = t.same_outcome(&["create", "-f", fmt, "-o", "size=1M", "@new.img", "64M"]);
        assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
        assert_eq!(
            t.error_text(Tool::Qemu, &q),
            "<dir>/new.img: The image size must be specified only once"
        );
        for tool in [Tool::Qemu, Tool::Vdisk] {
            assert!(!t.path(tool, "new.img").exists(), "{tool:?} left a file");
        }
    }
}

#[test]
fn create_with_the_size_option_given_twice_takes_the_last() {
    let t = Twins::new();
    let (q, _) = t.same_outcome(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "size=1M",
        "-o",
        "size=2M",
        "@new.qcow2",
    ]);
    assert!(q.status.success(), "{}", describe("qemu-img", &q));
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let info = parse_json(
            "qemu-img info",
            &qemu_img_ok(&["info", "--output=json", s(&t.path(tool, "new.qcow2"))]),
        );
        assert_eq!(info["virtual-size"], 2u64 << 20, "{tool:?}");
    }
}

// ---------------------------------------------------------------------------------------
// amend -o backing_file / backing_fmt, rebase without -F
// ---------------------------------------------------------------------------------------

/// Put `base.qcow2`, `other.qcow2` (different data), `top.qcow2` (over base, with its
/// format recorded) and `bare.qcow2` (no backing file) in both directories.
fn backing_files(t: &Twins) {
    let base = t.work("base.qcow2");
    let other = t.work("other.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 5 0 64k", s(&base)]);
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&other), "1M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 7 64k 64k", s(&other)]);
    t.put("base.qcow2", &base);
    t.put("other.qcow2", &other);
    let top = t.work("top.qcow2");
    let opts = ["-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"];
    let mut args = vec!["create"];
    args.extend(opts);
    args.push(s(&top));
    qemu_img_ok(&args);
    t.put("top.qcow2", &top);
    let bare = t.work("bare.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&bare), "1M"]);
    t.put("bare.qcow2", &bare);
}

#[test]
fn amend_refuses_to_change_the_backing_file_or_format_and_points_to_rebase() {
    let t = Twins::new();
    backing_files(&t);
    let cases = [
        ("top.qcow2", "backing_file=other.qcow2"),
        ("top.qcow2", "backing_file=base.qcow2"), // the format, omitted, would change
        ("top.qcow2", "backing_fmt=raw"),
        ("top.qcow2", "backing_fmt=qcow2"),
        ("top.qcow2", "backing_file=other.qcow2,backing_fmt=qcow2"),
        ("top.qcow2", "backing_file="),
        ("top.qcow2", "lazy_refcounts=on,backing_file=other.qcow2"),
        ("bare.qcow2", "backing_file=other.qcow2,backing_fmt=qcow2"),
        ("bare.qcow2", "backing_fmt=qcow2"),
        ("bare.qcow2", "backing_file="),
    ];
    run_cases("amend -o backing_*", &cases, |&(img, opts)| {
        let original = t.work(img);
        let at = format!("@{img}");
        let (q, _) = t.same_outcome(&["amend", "-o", opts, &at]);
        assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
        assert_eq!(
            t.error_text(Tool::Qemu, &q),
            "Cannot amend the backing file\nYou can use 'vdisk rebase' instead."
        );
        t.assert_unchanged(img, &original);
    });
}

#[test]
fn amend_accepts_the_backing_file_and_format_as_they_are() {
    let t = Twins::new();
    backing_files(&t);
    let opts = "backing_file=base.qcow2,backing_fmt=qcow2,lazy_refcounts=on";
    let (q, _) = t.same_outcome(&["amend", "-o", opts, "@top.qcow2"]);
    assert!(q.status.success(), "{}", describe("qemu-img", &q));
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let info = parse_json(
            "qemu-img info",
            &qemu_img_ok(&["info", "--output=json", s(&t.path(tool, "top.qcow2"))]),
        );
        assert_eq!(info["backing-filename"], "base.qcow2", "{tool:?}");
        assert_eq!(info["backing-filename-format"], "qcow2", "{tool:?}");
        assert_eq!(
            info["format-specific"]["data"]["lazy-refcounts"], true,
            "{tool:?}"
        );
    }
}

#[test]
fn rebase_to_a_new_backing_file_without_its_format_is_refused() {
    let t = Twins::new();
    backing_files(&t);
    for new in ["other.qcow2", "base.qcow2", "missing.qcow2"] {
        let (q, _) = t.same_outcome(&["rebase", "-u", "-b", new, "@top.qcow2"]);
        assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
        assert_eq!(
            t.error_text(Tool::Qemu, &q),
            format!(
                "Could not change the backing file to '{new}': backing format must be specified"
            )
        );
        t.assert_unchanged("top.qcow2", &t.work("top.qcow2"));
    }
    // Safe mode: qemu-img copies the data that differs, then refuses to record the new
    // backing file; vdisk refuses before copying. The guest sees the same disk either way.
    let (q, _) = t.same_outcome(&["rebase", "-b", "other.qcow2", "@top.qcow2"]);
    assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
    assert_bytes_eq(
        "vdisk's top.qcow2 after a refused rebase",
        &read(&t.path(Tool::Vdisk, "top.qcow2")),
        &read(&t.work("top.qcow2")),
    );
    let scratch = t.work("");
    assert_bytes_eq(
        "guest contents after a refused rebase",
        &qemu_raw_contents(&t.path(Tool::Vdisk, "top.qcow2"), &scratch),
        &qemu_raw_contents(&t.path(Tool::Qemu, "top.qcow2"), &scratch),
    );
}

#[test]
fn rebase_with_the_format_or_to_no_backing_file_works_as_in_qemu_img() {
    let t = Twins::new();
    backing_files(&t);
    for args in [
        [
            "rebase",
            "-u",
            "-b",
            "other.qcow2",
            "-F",
            "qcow2",
            "@top.qcow2",
        ]
        .as_slice(),
        ["rebase", "-u", "-b", "", "@top.qcow2"].as_slice(),
    ] {
        t.put("top.qcow2", &t.work("top.qcow2"));
        let (q, _) = t.same_outcome(args);
        assert!(q.status.success(), "{}", describe("qemu-img", &q));
        let scratch = t.work("");
        assert_bytes_eq(
            &format!("guest contents after {args:?}"),
            &qemu_raw_contents(&t.path(Tool::Vdisk, "top.qcow2"), &scratch),
            &qemu_raw_contents(&t.path(Tool::Qemu, "top.qcow2"), &scratch),
        );
        assert_qemu_check_clean(&t.path(Tool::Vdisk, "top.qcow2"));
    }
}

// ---------------------------------------------------------------------------------------
// amend -o compat=0.10 with snapshots
// ---------------------------------------------------------------------------------------

/// A v3 image whose one snapshot was taken at 1 MiB, then grown to 2 MiB.
fn snapshot_of_another_size(t: &Twins) -> PathBuf {
    let src = t.work("src.qcow2");
    image_with_snapshots(&src, &["small"]);
    qemu_img_ok(&["resize", "-q", s(&src), "2M"]);
    t.put("img.qcow2", &src);
    src
}

#[test]
fn downgrading_an_image_with_a_snapshot_of_another_size_is_refused() {
    let t = Twins::new();
    let src = snapshot_of_another_size(&t);
    for opts in ["compat=0.10", "compat=0.10,size=2M"] {
        let (q, _) = t.same_outcome(&["amend", "-o", opts, "@img.qcow2"]);
        assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
        assert_eq!(
            t.error_text(Tool::Qemu, &q),
            "Internal snapshots prevent downgrade of image"
        );
        t.assert_unchanged("img.qcow2", &src);
    }
}

#[test]
fn downgrading_works_when_every_snapshot_has_the_final_disk_size() {
    let t = Twins::new();
    // Resized back to the snapshot's size within the same amend, or never resized.
    snapshot_of_another_size(&t);
    let same = t.work("same.qcow2");
    image_with_snapshots(&same, &["a", "b"]);
    t.put("same.qcow2", &same);
    for (img, opts) in [
        ("img.qcow2", "compat=0.10,size=1M"),
        ("same.qcow2", "compat=0.10"),
    ] {
        let at = format!("@{img}");
        let (q, _) = t.same_outcome(&["amend", "-o", opts, &at]);
        assert!(q.status.success(), "{}", describe("qemu-img", &q));
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let p = t.path(tool, img);
            let info = parse_json(
                "qemu-img info",
                &qemu_img_ok(&["info", "--output=json", s(&p)]),
            );
            assert_eq!(
                info["format-specific"]["data"]["compat"], "0.10",
                "{tool:?}"
            );
            assert_eq!(info["virtual-size"], 1u64 << 20, "{tool:?}");
            assert_qemu_check_clean(&p);
        }
        assert_eq!(
            snapshot_ids_and_names(&t.path(Tool::Vdisk, img)),
            snapshot_ids_and_names(&t.path(Tool::Qemu, img))
        );
        let scratch = t.work("");
        assert_bytes_eq(
            &format!("guest contents of {img}"),
            &qemu_raw_contents(&t.path(Tool::Vdisk, img), &scratch),
            &qemu_raw_contents(&t.path(Tool::Qemu, img), &scratch),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Failed create and convert: nothing left behind
// ---------------------------------------------------------------------------------------

/// A 1 MiB raw image with some data, in both directories as `src.raw`.
fn raw_source(t: &Twins) {
    let src = t.work("src.raw");
    std::fs::write(&src, pattern(1, 0, 1 << 20)).expect("writing the source");
    t.put("src.raw", &src);
}

/// The names of the files in `tool`'s directory, sorted.
fn files_in(t: &Twins, tool: Tool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(t.side(tool))
        .expect("listing a test directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn convert_to_vmdk_with_compression_acts_as_qemu_img_for_every_subformat() {
    // qemu-img writes sparse extents without compression (VMDK compresses only
    // streamOptimized grains) and refuses flat ones ("invalid cluster size") after creating
    // them, leaving the files; vdisk removes what it created.
    let subformats = [
        ("monolithicSparse", true),
        ("twoGbMaxExtentSparse", true),
        ("streamOptimized", true),
        ("monolithicFlat", false),
        ("twoGbMaxExtentFlat", false),
    ];
    run_cases("convert -O vmdk -c", &subformats, |&(sub, works)| {
        let t = Twins::new();
        raw_source(&t);
        let opt = format!("subformat={sub}");
        let args = [
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &opt,
            "-c",
            "@src.raw",
            "@out.vmdk",
        ];
        let (q, _) = t.same_outcome(&args);
        assert_eq!(q.status.success(), works, "{}", describe("qemu-img", &q));
        if works {
            let ours = t.path(Tool::Vdisk, "out.vmdk");
            assert_qemu_compare_identical(&t.path(Tool::Qemu, "src.raw"), &ours);
            assert_eq!(files_in(&t, Tool::Vdisk), files_in(&t, Tool::Qemu));
        } else {
            assert_eq!(t.error_text(Tool::Qemu, &q), "invalid cluster size");
            assert_eq!(files_in(&t, Tool::Vdisk), ["src.raw"], "vdisk left files");
        }
    });
}

#[test]
fn convert_to_raw_with_compression_is_refused_before_anything_is_created() {
    let t = Twins::new();
    raw_source(&t);
    let (q, _) = t.same_outcome(&[
        "convert", "-f", "raw", "-O", "raw", "-c", "@src.raw", "@out.raw",
    ]);
    assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        "Compression not supported for this file format"
    );
    for tool in [Tool::Qemu, Tool::Vdisk] {
        assert_eq!(files_in(&t, tool), ["src.raw"], "{tool:?}");
    }
}

#[test]
fn create_with_full_preallocation_that_runs_out_of_space_leaves_no_file() {
    // qemu-img removes a failed qcow2 image, and leaves a failed raw one empty.
    for fmt in ["qcow2", "raw"] {
        let t = Twins::new();
        let args_for = |tool| {
            let img = t.path(tool, "full.img");
            let args = [
                "create",
                "-q",
                "-f",
                fmt,
                "-o",
                "preallocation=full",
                s(&img),
                "8M",
            ];
            args.map(String::from)
        };
        let run = |tool, program: &str| {
            let args = args_for(tool);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            with_file_size_limit(2048, program, &args)
        };
        let q = run(Tool::Qemu, "qemu-img");
        let v = run(Tool::Vdisk, vdisk_bin());
        assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img", &q));
        assert_eq!(v.status.code(), Some(1), "{}", describe("vdisk", &v));
        assert!(
            String::from_utf8_lossy(&v.stderr).contains("File too large"),
            "{}",
            describe("vdisk", &v)
        );
        assert_eq!(files_in(&t, Tool::Vdisk), Vec::<String>::new(), "{fmt}");
        if fmt == "qcow2" {
            assert_eq!(files_in(&t, Tool::Qemu), Vec::<String>::new());
        }
    }
}

#[test]
fn a_failed_create_or_convert_keeps_a_file_that_was_there_before() {
    let t = Twins::new();
    raw_source(&t);
    let old = t.path(Tool::Vdisk, "old.img");
    std::fs::write(&old, b"precious").expect("writing a file");
    let out = with_file_size_limit(
        2048,
        vdisk_bin(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=full",
            s(&old),
            "8M",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("vdisk create", &out)
    );
    assert!(
        old.exists(),
        "the failed create removed a file it did not create"
    );
    // The flat extent is new and goes; the descriptor's name was taken and stays.
    let out = vdisk([
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "-c",
        s(&t.path(Tool::Vdisk, "src.raw")),
        s(&old),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("vdisk convert", &out)
    );
    assert_eq!(files_in(&t, Tool::Vdisk), ["old.img", "src.raw"]);
}

#[test]
fn a_convert_that_runs_out_of_space_leaves_no_file() {
    // qemu-img fails the same way and leaves the partial output; vdisk removes it.
    let t = Twins::new();
    raw_source(&t);
    for (tool, program) in [(Tool::Qemu, "qemu-img"), (Tool::Vdisk, vdisk_bin())] {
        let (src, dst) = (t.path(tool, "src.raw"), t.path(tool, "out.qcow2"));
        let args = ["convert", "-f", "raw", "-O", "qcow2", s(&src), s(&dst)];
        let out = with_file_size_limit(512, program, &args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(program, &out));
    }
    assert_eq!(files_in(&t, Tool::Vdisk), ["src.raw"]);
}

// ---------------------------------------------------------------------------------------
// A closed stdout pipe (`vdisk map ... | head`)
// ---------------------------------------------------------------------------------------

/// Run `program args`, read the first line of its stdout, close the pipe, and wait.
fn read_one_line_then_close(program: &str, args: &[&str]) -> Output {
    use std::io::BufRead;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the first line");
    assert!(!line.is_empty(), "{program} printed nothing");
    // The reader is dropped here: later writes find the pipe closed.
    child.wait_with_output().expect("waiting for the process")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_as_qemu_img_does() {
    let dir = tempdir();
    // 2048 clusters of 4 KiB, every other one holding data: a map of about 300 KB, far
    // more than a pipe buffers.
    let raw = dir.path().join("striped.raw");
    let mut data = vec![0u8; 8 << 20];
    for (i, c) in data.chunks_mut(4096).enumerate() {
        if i % 2 == 0 {
            c.fill(0x5a);
        }
    }
    std::fs::write(&raw, data).expect("writing the raw image");
    let img = dir.path().join("striped.qcow2");
    qemu_img_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&raw),
        s(&img),
    ]);
    let img = s(&img);
    // qemu-img ignores SIGPIPE and its failed writes: exit 0, nothing on stderr.
    let q = read_one_line_then_close("qemu-img", &["map", "--output=json", img]);
    assert_eq!(q.status.code(), Some(0), "{}", describe("qemu-img map", &q));
    assert!(q.stderr.is_empty(), "{}", describe("qemu-img map", &q));
    for args in [
        vec!["map", "--output=json", img],
        vec!["map", img],
        vec!["dump", "--map", img],
        vec!["dump", "--json", "--map", img],
    ] {
        let v = read_one_line_then_close(vdisk_bin(), &args);
        let what = format!("vdisk {} | head -1", args.join(" "));
        assert_eq!(v.status.code(), Some(0), "{}", describe(&what, &v));
        assert!(v.stderr.is_empty(), "{}", describe(&what, &v));
    }
}
