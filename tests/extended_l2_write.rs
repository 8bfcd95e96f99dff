//! Writing qcow2 images with extended L2 entries (subclusters). The oracle is QEMU doing
//! the same thing: one random history of writes, zero writes and discards runs through
//! qemu-io on one copy of an image and through vdisk on another, and the two copies must
//! read the same, map the same (`qemu-img map`: every extent's kind and depth, the host
//! offsets aside) and pass `qemu-img check`. Also: images vdisk creates, QEMU and vdisk
//! taking turns on one image, snapshots, resize, repair and amend's refusals.

mod common;

use common::guest_ops::{apply, base_bytes, map_kinds, qemu_io_args, random_ops};
use common::*;
use serde_json::Value;
use std::path::Path;
use vdisk::image::{self, ImageOptions};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `qemu-img map --output=json` of `img` without the host offsets ([`map_kinds`]).
fn map_without_offsets(img: &Path) -> Vec<String> {
    map_kinds(&qemu_img_ok(&["map", "--output=json", s(img)]))
}

/// Run `ops` through vdisk's library on the image at `img` (its backing chain attached).
fn vdisk_apply(img: &Path, ops: &[String]) {
    let mut im = image::open(img, &ImageOptions::default()).expect("writable open");
    for op in ops {
        apply(&mut *im.device, op).unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    im.device.close().expect("close");
}

/// An empty extended-L2 image at `img` of `size` bytes with `cs`-byte clusters, over a
/// patterned raw backing file when `backing`, created by `tool` (qemu-img or vdisk).
fn create(tool: &str, img: &Path, size: u64, cs: u64, backing: bool) {
    let o = format!("extended_l2=on,cluster_size={cs}");
    create_with(tool, img, size, &o, backing);
}

/// [`create`] with the `-o` options `o`.
fn create_with(tool: &str, img: &Path, size: u64, o: &str, backing: bool) {
    let dir = img.parent().expect("a directory");
    let mut args = vec![
        "create".to_string(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-o".into(),
        o.to_string(),
    ];
    if backing {
        std::fs::write(dir.join("base.raw"), base_bytes(5, size)).expect("base");
        args.extend(["-b".into(), "base.raw".into(), "-F".into(), "raw".into()]);
    }
    args.extend([s(img).to_string(), size.to_string()]);
    match tool {
        "qemu-img" => drop(qemu_img_ok(&args)),
        _ => drop(vdisk_ok(&args)),
    }
}

/// The two copies read the same, map the same, and vdisk's passes `qemu-img check`.
fn assert_same_images(what: &str, ours: &Path, qemus: &Path) {
    let c = qemu_img(["compare", s(ours), s(qemus)]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{what}\n{}",
        describe("compare", &c)
    );
    let check = qemu_img(["check", s(ours)]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{what}\n{}",
        describe("check", &check)
    );
    assert_eq!(
        map_without_offsets(ours),
        map_without_offsets(qemus),
        "{what}: qemu-img map (vdisk's image first)"
    );
}

#[test]
fn vdisk_writes_leave_the_subclusters_qemu_io_leaves() {
    for (seed, cs, backing, creator) in [
        (11, 65536u64, true, "vdisk"),
        (12, 65536, false, "qemu-img"),
        (13, 16384, true, "qemu-img"),
        (14, 2 << 20, true, "vdisk"),
        (15, 131072, false, "vdisk"),
    ] {
        let dir = tempdir();
        let size = 8u64 << 20;
        let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
        create(creator, &ours, size, cs, backing);
        create("qemu-img", &qemus, size, cs, backing);
        let ops = random_ops(seed, size, cs);
        qemu_io_ok(&qemu_io_args(&ops, s(&qemus)));
        vdisk_apply(&ours, &ops);
        let what = format!("seed {seed} cluster_size {cs} backing {backing} created by {creator}");
        assert_same_images(&what, &ours, &qemus);
    }
}

#[test]
fn images_without_subclusters_take_the_same_history_as_in_qemu_too() {
    // The zeroing and discard rules are shared: plain images must match QEMU as well.
    for (seed, o, backing) in [
        (61, "cluster_size=65536", true),
        (62, "cluster_size=65536", false),
        (63, "cluster_size=4096", false),
        (64, "cluster_size=4096,compat=0.10", false),
        (65, "cluster_size=16384,compat=0.10", true),
    ] {
        let dir = tempdir();
        let size = 4u64 << 20;
        let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
        create_with("vdisk", &ours, size, o, backing);
        create_with("qemu-img", &qemus, size, o, backing);
        let cs = if o.contains("4096") { 4096 } else { 65536 };
        let ops = random_ops(seed, size, cs);
        qemu_io_ok(&qemu_io_args(&ops, s(&qemus)));
        vdisk_apply(&ours, &ops);
        assert_same_images(&format!("seed {seed} {o} backing {backing}"), &ours, &qemus);
    }
}

#[test]
fn qemu_and_vdisk_taking_turns_on_one_image_agree_with_qemu_alone() {
    let dir = tempdir();
    let (size, cs) = (4u64 << 20, 65536);
    let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
    create("qemu-img", &ours, size, cs, true);
    create("qemu-img", &qemus, size, cs, true);
    let ops = random_ops(21, size, cs);
    for (turn, chunk) in ops.chunks(5).enumerate() {
        if turn % 2 == 0 {
            vdisk_apply(&ours, chunk);
        } else {
            qemu_io_ok(&qemu_io_args(chunk, s(&ours)));
        }
    }
    qemu_io_ok(&qemu_io_args(&ops, s(&qemus)));
    assert_same_images("taking turns", &ours, &qemus);
}

#[test]
fn a_partial_write_over_a_backing_file_copies_only_the_subclusters_it_touches() {
    let dir = tempdir();
    let (size, cs) = (1u64 << 20, 65536u64);
    let img = dir.path().join("o.qcow2");
    create("vdisk", &img, size, cs, true);
    let before = std::fs::metadata(&img).expect("stat").len();
    // 1 KiB into subcluster 3 of cluster 1: one 2 KiB subcluster is written, the rest of
    // the cluster still shows the backing file.
    vdisk_apply(&img, &["write -P 7 71680 1024".to_string()]);
    let map = map_without_offsets(&img);
    let ours: Vec<&String> = map.iter().filter(|l| l.contains(" 0 true")).collect();
    assert_eq!(ours, ["71680+2048 0 true false true false"], "{map:?}");
    let mut expect = base_bytes(5, size);
    expect[71680..72704].fill(7);
    let out = dir.path().join("o.raw");
    vdisk_ok(&["convert", "-O", "raw", s(&img), s(&out)]);
    assert_bytes_eq("guest view", &read(&out), &expect);
    // The host file grew by one L2 table and the one subcluster written (a data cluster
    // whose other subclusters were never written).
    let after = std::fs::metadata(&img).expect("stat").len();
    assert_eq!(after, before.next_multiple_of(cs) + cs + 4 * cs / 32);
}

#[test]
fn snapshots_of_an_image_with_subclusters_keep_what_they_saw() {
    let dir = tempdir();
    let (size, cs) = (4u64 << 20, 65536);
    let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
    create("vdisk", &ours, size, cs, true);
    create("qemu-img", &qemus, size, cs, true);
    let ops = random_ops(31, size, cs);
    let (first, second) = ops.split_at(20);
    vdisk_apply(&ours, first);
    qemu_io_ok(&qemu_io_args(first, s(&qemus)));
    vdisk_ok(&["snapshot", "-c", "one", s(&ours)]);
    qemu_img_ok(&["snapshot", "-c", "one", s(&qemus)]);
    vdisk_apply(&ours, second);
    qemu_io_ok(&qemu_io_args(second, s(&qemus)));
    assert_same_images("after the snapshot", &ours, &qemus);
    vdisk_ok(&["snapshot", "-a", "one", s(&ours)]);
    qemu_img_ok(&["snapshot", "-a", "one", s(&qemus)]);
    assert_same_images("reverted", &ours, &qemus);
    vdisk_apply(&ours, second);
    qemu_io_ok(&qemu_io_args(second, s(&qemus)));
    vdisk_ok(&["snapshot", "-d", "one", s(&ours)]);
    qemu_img_ok(&["snapshot", "-d", "one", s(&qemus)]);
    assert_same_images("snapshot deleted", &ours, &qemus);
}

#[test]
fn create_resize_and_amend_behave_as_qemu_img() {
    let dir = tempdir();
    for o in [
        "extended_l2=on",
        "extended_l2=on,cluster_size=16k",
        "extended_l2=on,cluster_size=2M,preallocation=metadata",
        "extended_l2=on,preallocation=full",
    ] {
        let (v, q) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
        vdisk_ok(&["create", "-q", "-f", "qcow2", "-o", o, s(&v), "5M"]);
        qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", o, s(&q), "5M"]);
        // (The host file's allocation differs between the tools: sizes aside.)
        let info = |img: &Path| {
            let mut j: Value =
                serde_json::from_str(&vdisk_ok(&["info", "--output=json", s(img)])).expect("JSON");
            let o = j.as_object_mut().expect("an object");
            o.remove("actual-size");
            o.remove("children");
            o.remove("filename");
            j
        };
        assert_eq!(info(&v), info(&q), "{o}");
        assert_text_eq(
            &format!("{o}: check"),
            &vdisk_ok(&["check", s(&v)]),
            &qemu_img_ok(&["check", s(&q)]),
        );
        assert_eq!(map_without_offsets(&v), map_without_offsets(&q), "{o}");
        for size in ["+3M", "-1M"] {
            let shrink = ["--shrink"].into_iter().filter(|_| size.starts_with('-'));
            let args: Vec<&str> = ["resize"].into_iter().chain(shrink).collect();
            let (mut a, mut b) = (args.clone(), args.clone());
            a.extend([s(&v), size]);
            b.extend([s(&q), size]);
            vdisk_ok(&a);
            qemu_img_ok(&b);
            assert_same_images(&format!("{o}: resize {size}"), &v, &q);
        }
    }
    // Refusals, word for word.
    let r = dir.path().join("r.qcow2");
    for o in [
        "extended_l2=on,compat=0.10",
        "extended_l2=on,cluster_size=8k",
    ] {
        let args = ["create", "-f", "qcow2", "-o", o, s(&r), "1M"];
        let (v, q) = (vdisk(args), qemu_img(args));
        assert_eq!(v.status.code(), q.status.code(), "{o}");
        // (qemu-img names the file before the reason; vdisk gives the reason alone.)
        let ours = String::from_utf8_lossy(&v.stderr);
        let reason = ours.trim().trim_start_matches("vdisk: ");
        assert!(
            String::from_utf8_lossy(&q.stderr).trim().ends_with(reason),
            "{o}: {ours}"
        );
    }
    let img = dir.path().join("a.qcow2");
    create("vdisk", &img, 1 << 20, 65536, false);
    for o in ["extended_l2=off", "compat=0.10"] {
        let args = ["amend", "-o", o, s(&img)];
        let before = read(&img);
        let (v, q) = (vdisk(args), qemu_img(args));
        assert_eq!(
            (v.status.code(), q.status.code()),
            (Some(1), Some(1)),
            "{o}"
        );
        assert_bytes_eq(o, &read(&img), &before);
    }
}

#[test]
fn check_repairs_copied_flags_and_leaks_in_an_image_with_subclusters() {
    let dir = tempdir();
    let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
    create("qemu-img", &ours, 1 << 20, 65536, false);
    vdisk_apply(
        &ours,
        &[
            "write -P 3 4096 2048".to_string(),
            "write -P 4 65536 65536".to_string(),
        ],
    );
    // Clear the COPIED flag of entry 0 (leaving its bitmap alone).
    let mut bytes = read(&ours);
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes")) as usize;
    let l2 = (u64::from_be_bytes(bytes[l1..l1 + 8].try_into().expect("8 bytes"))
        & 0x00ff_ffff_ffff_fe00) as usize;
    bytes[l2] &= 0x7f;
    std::fs::write(&ours, &bytes).expect("poke");
    std::fs::copy(&ours, &qemus).expect("copy");
    let v = vdisk(["check", "-r", "all", s(&ours)]);
    let q = qemu_img(["check", "-r", "all", s(&qemus)]);
    assert_eq!(
        v.status.code(),
        q.status.code(),
        "{}",
        describe("check -r", &v)
    );
    assert_bytes_eq("repaired image", &read(&ours), &read(&qemus));
    assert_eq!(qemu_img(["check", s(&ours)]).status.code(), Some(0));
}

#[test]
fn compressed_clusters_written_at_subcluster_granularity_behave_as_in_qemu() {
    let size = 4u64 << 20;
    // Compressed clusters (no subclusters) written into at subcluster granularity.
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, base_bytes(8, size)).expect("source");
    let (ours, qemus) = (dir.path().join("v.qcow2"), dir.path().join("q.qcow2"));
    let convert = |tool: &str, out: &Path| {
        let args = [
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            s(&src),
            s(out),
        ];
        match tool {
            "vdisk" => drop(vdisk_ok(&args)),
            _ => drop(qemu_img_ok(&args)),
        }
    };
    convert("vdisk", &ours);
    convert("qemu-img", &qemus);
    assert_same_images("compressed by both", &ours, &qemus);
    let ops = random_ops(42, size, 65536);
    qemu_io_ok(&qemu_io_args(&ops, s(&qemus)));
    vdisk_apply(&ours, &ops);
    assert_same_images("compressed, then written", &ours, &qemus);
}

#[test]
fn commit_and_amend_over_a_three_level_chain_with_subclusters_match_qemu_img() {
    let size = 4u64 << 20;
    let (dv, dq) = (tempdir(), tempdir());
    for (dir, tool) in [(&dv, "vdisk"), (&dq, "qemu-img")] {
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("base.raw"), base_bytes(9, size)).expect("base");
        for (img, back, fmt) in [
            ("mid.qcow2", "base.raw", "raw"),
            ("top.qcow2", "mid.qcow2", "qcow2"),
        ] {
            let o = "extended_l2=on";
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                o,
                "-b",
                back,
                "-F",
                fmt,
                s(&p(img)),
                "4M",
            ]);
        }
        // Zeros and discards in the top layer hide data of both layers below.
        qemu_io_ok(&qemu_io_args(
            &random_ops(51, size, 65536),
            s(&p("mid.qcow2")),
        ));
        let top_ops = random_ops(52, size, 65536);
        match tool {
            "vdisk" => vdisk_apply(&p("top.qcow2"), &top_ops),
            _ => drop(qemu_io_ok(&qemu_io_args(&top_ops, s(&p("top.qcow2"))))),
        }
    }
    let (v, q) = (|n: &str| dv.path().join(n), |n: &str| dq.path().join(n));
    assert_same_images("top before commit", &v("top.qcow2"), &q("top.qcow2"));
    let guest_before = dv.path().join("before.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&v("top.qcow2")), s(&guest_before)]);
    vdisk_ok(&["commit", "-q", s(&v("top.qcow2"))]);
    qemu_img_ok(&["commit", "-q", s(&q("top.qcow2"))]);
    // qemu-img's commit job copies whole clusters of the base; vdisk copies what the top
    // holds, subcluster by subcluster: the same guest data, a different map of `mid`.
    let same_data_and_clean = |what: &str| {
        let c = qemu_img(["compare", s(&v("mid.qcow2")), s(&q("mid.qcow2"))]);
        assert_eq!(
            c.status.code(),
            Some(0),
            "{what}: {}",
            describe("compare", &c)
        );
        let c = qemu_img(["check", s(&v("mid.qcow2"))]);
        assert_eq!(
            c.status.code(),
            Some(0),
            "{what}: {}",
            describe("check", &c)
        );
        let c = qemu_img(["compare", s(&v("top.qcow2")), s(&guest_before)]);
        assert_eq!(
            c.status.code(),
            Some(0),
            "{what}: {}",
            describe("guest data", &c)
        );
    };
    same_data_and_clean("commit");
    let map = map_without_offsets(&v("mid.qcow2"));
    for o in ["lazy_refcounts=on", "refcount_bits=8", "refcount_bits=64"] {
        vdisk_ok(&["amend", "-o", o, s(&v("mid.qcow2"))]);
        same_data_and_clean(&format!("amend {o}"));
        assert_eq!(map_without_offsets(&v("mid.qcow2")), map, "amend {o}");
    }
}
