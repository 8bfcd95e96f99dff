//! `vdisk resize` and `vdisk amend` against qemu-img's own resize and amend: each case runs
//! both tools on copies of the same input, then requires `qemu-img check` to pass on
//! vdisk's result, `qemu-img compare` to find the two identical, and `qemu-img info` to show
//! the same settings. Refusals must match qemu-img's exit code. A power cut at every write
//! of an amend must leave a consistent image with the guest data intact.

mod common;

use common::crash::{every_cut, qemu_check};
use common::{
    assert_qemu_check_clean, assert_qemu_compare_identical, parse_json, path_in, qemu_img,
    qemu_img_ok, qemu_io_ok, tempdir, vdisk, vdisk_ok, TempDir,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk::qcow2::{AmendOptions, OpenOptions, Qcow2};
use vdisk::storage::FaultStorage;
use vdisk::BlockDevice;

/// A qcow2 input image made by qemu-img/qemu-io: data, zero clusters (v3), a tail past
/// the last L2 table boundary for small clusters, and optionally a snapshot.
fn make_qcow2(dir: &TempDir, name: &str, opts: &str, snapshot: bool) -> PathBuf {
    let p = path_in(dir, name);
    let ps = p.to_str().unwrap();
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", opts, ps, "64M"]);
    let v2 = opts.contains("compat=0.10");
    let mut cmds = vec![
        "write -P 0x11 0 1M",
        "write -P 0x22 3M 100k",
        "write -P 0x33 40M 4M",
        "write -P 0x44 63M 1M",
    ];
    if !v2 {
        cmds.extend(["write -z 256k 256k", "write -z 10M 1M"]);
    }
    let mut args = vec![];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(ps);
    qemu_io_ok(&args);
    if snapshot {
        qemu_img_ok(&["snapshot", "-c", "snap", ps]);
        qemu_io_ok(&["-c", "write -P 0x55 512k 1M", "-c", "write -z 41M 64k", ps]);
    }
    p
}

fn copy(dir: &TempDir, src: &Path, name: &str) -> PathBuf {
    let p = path_in(dir, name);
    std::fs::copy(src, &p).unwrap();
    p
}

fn info(p: &Path) -> serde_json::Value {
    let text = qemu_img_ok(&["info", "--output=json", "-U", p.to_str().unwrap()]);
    parse_json("qemu-img info", &text)
}

/// The settings `qemu-img info` reports that resize/amend may change.
fn settings(p: &Path) -> serde_json::Value {
    let v = info(p);
    let d = &v["format-specific"]["data"];
    serde_json::json!({
        "virtual-size": v["virtual-size"],
        "cluster-size": v["cluster-size"],
        "backing-filename": v["backing-filename"],
        "backing-filename-format": v["backing-filename-format"],
        "compat": d["compat"],
        "lazy-refcounts": d["lazy-refcounts"],
        "refcount-bits": d["refcount-bits"],
    })
}

/// Run the same command with vdisk and qemu-img on copies of `input`, then compare.
#[track_caller]
fn same_as_qemu(dir: &TempDir, input: &Path, tag: &str, args: &[&str]) {
    let v = copy(dir, input, &format!("{tag}.vdisk.qcow2"));
    let q = copy(dir, input, &format!("{tag}.qemu.qcow2"));
    let with = |p: &Path| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let i = a
            .iter()
            .position(|s| s == "FILE")
            .expect("FILE placeholder");
        a[i] = p.to_str().unwrap().to_string();
        a
    };
    vdisk_ok(&with(&v));
    qemu_img_ok(&with(&q));
    assert_qemu_check_clean(&v);
    assert_qemu_compare_identical(&v, &q);
    assert_eq!(settings(&v), settings(&q), "qemu-img info after {args:?}");
    if !info(input)["snapshots"].is_null() {
        snapshot_kept(dir, input, &v);
    }
}

/// Apply the snapshot "snap" (with qemu-img) in copies of the input and of vdisk's result:
/// the snapshot must read the same. (The input, not qemu-img's result, is the reference:
/// qemu-img's compat=0.10 downgrade overwrites snapshot data shared with a preallocated
/// zero cluster, which vdisk does not.)
fn snapshot_kept(dir: &TempDir, input: &Path, v: &Path) {
    let i2 = copy(dir, input, "snapcheck.input.qcow2");
    let v2 = copy(dir, v, "snapcheck.vdisk.qcow2");
    for p in [&v2, &i2] {
        qemu_img_ok(&["snapshot", "-a", "snap", p.to_str().unwrap()]);
    }
    assert_qemu_check_clean(&v2);
    assert_qemu_compare_identical(&v2, &i2);
}

#[test]
fn resize_grows_and_shrinks_qcow2_as_qemu_img_does() {
    let dir = tempdir();
    let inputs: Vec<(String, PathBuf)> = [
        ("v2-4k", "compat=0.10,cluster_size=4096"),
        ("v3-4k", "compat=1.1,cluster_size=4096"),
        ("v3-64k", "compat=1.1,cluster_size=65536"),
        ("v3-512", "compat=1.1,cluster_size=512"),
    ]
    .iter()
    .map(|(n, o)| {
        (
            n.to_string(),
            make_qcow2(&dir, &format!("{n}.qcow2"), o, false),
        )
    })
    .collect();
    let ops: [&[&str]; 8] = [
        &["resize", "-q", "FILE", "65M"],
        &["resize", "-q", "FILE", "+5G"],
        &["resize", "-q", "FILE", "64M"],
        &["resize", "-q", "--shrink", "FILE", "40M"],
        &["resize", "-q", "--shrink", "FILE", "-23M"],
        &["resize", "-q", "--shrink", "FILE", "41000448"],
        &["resize", "-q", "--preallocation=metadata", "FILE", "+10M"],
        &["resize", "-q", "--preallocation=full", "FILE", "70000128"],
    ];
    let cases: Vec<(String, usize)> = inputs
        .iter()
        .flat_map(|(n, _)| (0..ops.len()).map(move |i| (n.clone(), i)))
        .collect();
    common::run_cases("qcow2 resize", &cases, |(name, i)| {
        let input = &inputs.iter().find(|(n, _)| n == name).unwrap().1;
        same_as_qemu(&dir, input, &format!("{name}-{i}"), ops[*i]);
    });
}

#[test]
fn resize_of_a_v3_image_with_snapshots_matches_qemu_img() {
    let dir = tempdir();
    let input = make_qcow2(&dir, "snap.qcow2", "cluster_size=4096", true);
    same_as_qemu(&dir, &input, "grow", &["resize", "-q", "FILE", "+3G"]);
    same_as_qemu(
        &dir,
        &input,
        "shrink",
        &["resize", "-q", "--shrink", "FILE", "20M"],
    );
}

#[test]
fn resize_refusals_match_qemu_img() {
    let dir = tempdir();
    let v3 = make_qcow2(&dir, "v3.qcow2", "cluster_size=65536", false);
    let v2snap = make_qcow2(&dir, "v2.qcow2", "compat=0.10", true);
    let raw = path_in(&dir, "r.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "8M"]);
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (
            &v3,
            vec!["FILE", "32M"],
            "Use the --shrink option to perform a shrink operation.",
        ),
        (&v3, vec!["FILE", "-1G"], "New image size must be positive"),
        (
            &v3,
            vec!["FILE", "1000000001"],
            "The new size must be a multiple of 512",
        ),
        (
            &v3,
            vec!["--shrink", "--preallocation=full", "FILE", "1M"],
            "Preallocation can only be used for growing images",
        ),
        (
            &v2snap,
            vec!["FILE", "+1M"],
            "Can't resize a v2 image which has snapshots",
        ),
        (
            &raw,
            vec!["-f", "raw", "FILE", "4M"],
            "Use the --shrink option to perform a shrink operation.",
        ),
        (
            &raw,
            vec!["-f", "raw", "--preallocation=metadata", "FILE", "16M"],
            "Unsupported preallocation mode: metadata",
        ),
    ];
    for (img, args, msg) in cases {
        let before = common::read(img);
        let mut a = vec!["resize".to_string()];
        a.extend(args.iter().map(|s| {
            if *s == "FILE" {
                img.to_str().unwrap().to_string()
            } else {
                s.to_string()
            }
        }));
        let q = qemu_img(&a);
        let v = vdisk(&a);
        assert_eq!(
            q.status.code(),
            Some(1),
            "{}",
            common::describe("qemu-img", &q)
        );
        assert_eq!(
            v.status.code(),
            Some(1),
            "{}",
            common::describe("vdisk", &v)
        );
        let verr = String::from_utf8_lossy(&v.stderr);
        assert!(verr.contains(msg), "vdisk {a:?}: {verr}");
        assert!(String::from_utf8_lossy(&q.stderr).contains(msg));
        assert_eq!(common::read(img), before, "{a:?} changed the image");
    }
}

#[test]
fn resize_of_raw_grows_and_shrinks_like_qemu_img() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    common::write_mixed_raw(&src, 8 << 20, 1 << 20, 7);
    let ops: [&[&str]; 5] = [
        &["resize", "-q", "-f", "raw", "FILE", "+3M"],
        &["resize", "-q", "-f", "raw", "--shrink", "FILE", "1000001"],
        &[
            "resize",
            "-q",
            "-f",
            "raw",
            "--preallocation=falloc",
            "FILE",
            "20M",
        ],
        &[
            "resize",
            "-q",
            "-f",
            "raw",
            "--preallocation=full",
            "FILE",
            "+1M",
        ],
        &["resize", "-q", "-f", "raw", "--shrink", "FILE", "-1M"],
    ];
    for (i, op) in ops.iter().enumerate() {
        let v = copy(&dir, &src, &format!("{i}.vdisk.raw"));
        let q = copy(&dir, &src, &format!("{i}.qemu.raw"));
        let with = |p: &Path| -> Vec<String> {
            op.iter()
                .map(|s| {
                    if *s == "FILE" {
                        p.to_str().unwrap().to_string()
                    } else {
                        s.to_string()
                    }
                })
                .collect()
        };
        vdisk_ok(&with(&v));
        qemu_img_ok(&with(&q));
        common::assert_bytes_eq(&format!("{op:?}"), &common::read(&v), &common::read(&q));
    }
}

#[test]
fn resize_prints_image_resized_like_qemu_img() {
    let dir = tempdir();
    let p = make_qcow2(&dir, "a.qcow2", "cluster_size=65536", false);
    let out = vdisk_ok(&["resize", p.to_str().unwrap(), "+1M"]);
    assert_eq!(out, "Image resized.\n");
}

// ---- amend ----

#[test]
fn amend_matches_qemu_img_amend() {
    let dir = tempdir();
    let inputs: Vec<(&str, PathBuf)> = vec![
        (
            "v3-4k",
            make_qcow2(&dir, "v3-4k.qcow2", "cluster_size=4096", false),
        ),
        (
            "v3-64k-snap",
            make_qcow2(&dir, "v3s.qcow2", "cluster_size=65536", true),
        ),
        ("v2-64k", make_qcow2(&dir, "v2.qcow2", "compat=0.10", false)),
        (
            "v2-4k-snap",
            make_qcow2(&dir, "v2s.qcow2", "compat=0.10,cluster_size=4096", true),
        ),
        (
            "v3-rc8-lazy",
            make_qcow2(
                &dir,
                "v3r8.qcow2",
                "refcount_bits=8,lazy_refcounts=on",
                false,
            ),
        ),
    ];
    let ops: &[&str] = &[
        "compat=0.10",
        "compat=1.1",
        "compat=1.1,lazy_refcounts=on",
        "lazy_refcounts=off",
        "refcount_bits=1",
        "refcount_bits=2",
        "refcount_bits=4",
        "refcount_bits=8",
        "refcount_bits=16",
        "refcount_bits=32",
        "refcount_bits=64",
        "compat=1.1,refcount_bits=64",
        "refcount_bits=16,compat=0.10",
        "size=128M",
        "size=20M",
        "compat=1.1,size=3G",
    ];
    // Run every combination qemu-img accepts; the refusals must be refused by both.
    let cases: Vec<(&str, &str)> = inputs
        .iter()
        .flat_map(|(n, _)| ops.iter().map(move |o| (*n, *o)))
        .collect();
    common::run_cases("amend", &cases, |(name, op)| {
        let input = &inputs.iter().find(|(n, _)| n == name).unwrap().1;
        let tag = format!("{name}-{}", op.replace([',', '='], "_"));
        let probe = copy(&dir, input, &format!("{tag}.probe.qcow2"));
        let q = qemu_img(["amend", "-o", op, probe.to_str().unwrap()]);
        if !q.status.success() {
            let v = copy(&dir, input, &format!("{tag}.refused.qcow2"));
            let before = common::read(&v);
            let out = vdisk(["amend", "-o", op, v.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                q.status.code(),
                "qemu-img refused: {}\n{}",
                String::from_utf8_lossy(&q.stderr),
                common::describe("vdisk", &out)
            );
            assert_eq!(
                common::read(&v),
                before,
                "a refused amend changed the image"
            );
            return;
        }
        same_as_qemu(&dir, input, &tag, &["amend", "-o", op, "FILE"]);
    });
}

#[test]
fn amend_downgrade_of_an_overlay_keeps_zero_clusters_over_the_backing_data() {
    let dir = tempdir();
    let base = path_in(&dir, "base.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
    qemu_io_ok(&["-c", "write -P 0x77 0 16M", base.to_str().unwrap()]);
    let top = path_in(&dir, "top.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    qemu_io_ok(&[
        "-c",
        "write -z 1M 2M",
        "-c",
        "write -P 0x12 5M 64k",
        top.to_str().unwrap(),
    ]);
    same_as_qemu(
        &dir,
        &top,
        "overlay",
        &["amend", "-o", "compat=0.10", "FILE"],
    );
    // Through the chain too: the zeroed range still reads as zeros, not base data.
    let v = path_in(&dir, "overlay.vdisk.qcow2");
    qemu_io_ok(&[
        "-c",
        "read -P 0 1M 2M",
        "-c",
        "read -P 0x77 3M 2M",
        v.to_str().unwrap(),
    ]);
}

#[test]
fn amend_downgrade_expands_preallocated_zero_clusters() {
    let dir = tempdir();
    let p = path_in(&dir, "pre.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata,cluster_size=65536",
        p.to_str().unwrap(),
        "8M",
    ]);
    qemu_io_ok(&[
        "-c",
        "write -P 9 0 1M",
        "-c",
        "write -z 2M 1M",
        p.to_str().unwrap(),
    ]);
    same_as_qemu(
        &dir,
        &p,
        "prealloc",
        &["amend", "-o", "compat=0.10", "FILE"],
    );
}

#[test]
fn amend_accepts_the_backing_file_only_as_it_is() {
    // qemu-img amend refuses to change the backing file ("use rebase"), and accepts
    // backing_file and backing_fmt that restate the current ones; vdisk does the same
    // (tests/parity_cli.rs compares the refusals with qemu-img's).
    let dir = tempdir();
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "raw",
        path_in(&dir, "b1.raw").to_str().unwrap(),
        "8M",
    ]);
    let top = path_in(&dir, "top.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b1.raw",
        "-F",
        "raw",
        top.to_str().unwrap(),
    ]);
    let v = copy(&dir, &top, "v.qcow2");
    let before = common::read(&v);
    let out = vdisk([
        "amend",
        "-o",
        "backing_file=b2.raw,backing_fmt=raw",
        v.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        common::describe("vdisk", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cannot amend the backing file"));
    assert_eq!(common::read(&v), before);
    vdisk_ok(&[
        "amend",
        "-o",
        "backing_file=b1.raw,backing_fmt=raw",
        v.to_str().unwrap(),
    ]);
    assert_eq!(common::read(&v), before);
}

#[test]
fn amend_refuses_what_qemu_img_refuses() {
    let dir = tempdir();
    let v2 = make_qcow2(&dir, "v2.qcow2", "compat=0.10", false);
    let snap = make_qcow2(&dir, "snap.qcow2", "cluster_size=65536", true);
    let raw = path_in(&dir, "r.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "1M"]);
    let cases: Vec<(&Path, &str, &str)> = vec![
        (
            &v2,
            "refcount_bits=8",
            "Refcount widths other than 16 bits require compatibility level 1.1",
        ),
        (
            &v2,
            "lazy_refcounts=on",
            "Lazy refcounts only supported with compatibility level 1.1",
        ),
        (&v2, "cluster_size=4096", "Invalid parameter 'cluster_size'"),
        (
            &v2,
            "preallocation=full",
            "Invalid parameter 'preallocation'",
        ),
        (&v2, "compat=0.9", "Unknown compatibility level 0.9"),
        (
            &v2,
            "refcount_bits=3",
            "Refcount width must be a power of two and may not exceed 64 bits",
        ),
        (&v2, "bogus=1", "Invalid parameter 'bogus'"),
        (
            &snap,
            "refcount_bits=1",
            "Cannot decrease refcount entry width to 1 bits",
        ),
        (
            &raw,
            "size=2M",
            "Format driver 'raw' does not support option amendment",
        ),
    ];
    for (img, op, msg) in cases {
        let before = common::read(img);
        let q = qemu_img(["amend", "-o", op, img.to_str().unwrap()]);
        let v = vdisk(["amend", "-o", op, img.to_str().unwrap()]);
        assert_eq!(
            q.status.code(),
            Some(1),
            "{}",
            common::describe("qemu-img", &q)
        );
        assert_eq!(
            v.status.code(),
            Some(1),
            "{}",
            common::describe("vdisk", &v)
        );
        let verr = String::from_utf8_lossy(&v.stderr);
        assert!(verr.contains(msg), "vdisk amend -o {op}: {verr}");
        assert!(
            String::from_utf8_lossy(&q.stderr).contains(msg),
            "qemu-img amend -o {op}: {}",
            String::from_utf8_lossy(&q.stderr)
        );
        assert_eq!(
            common::read(img),
            before,
            "refused amend -o {op} changed the image"
        );
    }
    let out = vdisk(["amend", v2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Must specify options (-o)"));
}

// ---- power cuts ----

/// Guest contents of a qcow2 image in memory, read through vdisk.
fn guest(bytes: &[u8]) -> Vec<u8> {
    let s = Arc::new(FaultStorage::new(bytes.to_vec()));
    let mut img = Qcow2::open(
        s,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("opening the image after a power cut");
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0)
        .expect("reading the image after a power cut");
    v
}

/// Replay a power cut after every mutating call of `amend -o opts` on `initial`: the
/// durable image must pass qemu-img check (leaks allowed), keep the guest data, and be
/// either the old or the new image as far as `settled` tells.
fn replay_amend(initial: &[u8], opts: &str) -> u64 {
    let mut o = AmendOptions::default();
    for (k, v) in vdisk::image::parse_options(opts).unwrap() {
        o.set(&k, &v).unwrap();
    }
    let want = guest(initial);
    every_cut(
        opts,
        &[initial.to_vec()],
        |st| Qcow2::open(st[0].clone(), OpenOptions::default()).and_then(|mut img| img.amend(&o)),
        |c, result| {
            let cut = c.cut;
            let durable = c.durable(0);
            let check = qemu_check(&durable);
            if c.uncut {
                assert!(result.is_ok(), "{opts}: uncut amend failed: {result:?}");
                assert_eq!(check.code, 0, "{opts}: {}", check.output);
            }
            assert!(check.is_consistent(), "{opts}, cut {cut}: {}", check.output);
            let got = guest(&durable);
            let n = got.len().min(want.len());
            assert!(
                got[..n] == want[..n] && got[n..].iter().all(|&b| b == 0),
                "{opts}, cut {cut}: guest data changed"
            );
        },
    )
}

fn image_bytes(dir: &TempDir, name: &str, opts: &str, snapshot: bool) -> Vec<u8> {
    let p = path_in(dir, name);
    let ps = p.to_str().unwrap();
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", opts, ps, "4M"]);
    let mut cmds = vec!["write -P 0x11 0 300k", "write -P 0x22 2M 64k"];
    if !opts.contains("compat=0.10") {
        cmds.push("write -z 100k 50k");
        cmds.push("write -z 3M 128k");
    }
    let mut args = vec![];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(ps);
    qemu_io_ok(&args);
    if snapshot {
        qemu_img_ok(&["snapshot", "-c", "s", ps]);
        qemu_io_ok(&["-c", "write -P 0x33 64k 64k", ps]);
    }
    common::read(&p)
}

#[test]
fn a_power_cut_at_any_write_of_amend_leaves_a_consistent_image() {
    let dir = tempdir();
    let v3 = image_bytes(&dir, "v3.qcow2", "cluster_size=4096", false);
    let v3s = image_bytes(&dir, "v3s.qcow2", "cluster_size=4096", true);
    let v2s = image_bytes(&dir, "v2s.qcow2", "compat=0.10,cluster_size=4096", true);
    let mut replayed = 0;
    for (img, opts) in [
        (&v3, "refcount_bits=4"),
        (&v3s, "refcount_bits=64"),
        (&v3, "compat=0.10"),
        (&v3s, "compat=0.10"),
        (&v2s, "compat=1.1"),
        (&v2s, "compat=1.1,refcount_bits=2,lazy_refcounts=on"),
        (&v3, "size=64M"),
    ] {
        replayed += replay_amend(img, opts);
    }
    eprintln!("{replayed} cut points replayed");
}
