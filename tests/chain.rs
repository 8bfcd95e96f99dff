//! Backing chains: chains qemu-img builds read identically through vdisk; overlays,
//! commit and rebase agree with qemu-img; hostile chains fail cleanly; a power cut during
//! commit leaves both images consistent.

mod common;

use common::crash::{every_cut_one, qemu_check, qemu_check_path};
use common::s;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use vdisk::ops::chain_ops;
use vdisk::qcow2::{self, CreateOptions, OpenOptions, Qcow2};
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

fn run(prog: &str, args: &[&str]) -> Output {
    common::run_program(prog, args)
}

fn ok(prog: &str, args: &[&str]) -> Output {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn vdisk(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_vdisk"), args)
}

/// Run vdisk and insist that it succeeds.
fn vdisk_ok(args: &[&str]) -> Output {
    let o = vdisk(args);
    assert!(
        o.status.success(),
        "vdisk {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `qemu-img create -q -f qcow2 OPTS -b BACKING -F FMT PATH [SIZE]`: a qcow2 overlay at
/// `path` naming `backing` (of format `fmt`) as its backing file.
fn qemu_overlay(opts: &[&str], backing: &str, fmt: &str, path: &Path, size: Option<&str>) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(opts);
    args.extend(["-b", backing, "-F", fmt, s(path)]);
    args.extend(size);
    ok("qemu-img", &args);
}

/// base.raw (4M) <- mid.qcow2 (4M) <- top.qcow2 (5M), with data, zero clusters and holes.
fn qemu_chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (b, m, t) = (
        dir.join("base.raw"),
        dir.join("mid.qcow2"),
        dir.join("top.qcow2"),
    );
    ok("qemu-img", &["create", "-q", "-f", "raw", s(&b), "4M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 1M",
            "-c",
            "write -P 7 3M 512k",
            s(&b),
        ],
    );
    qemu_overlay(&["-o", "cluster_size=4096"], "base.raw", "raw", &m, None);
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 2 1M 512k",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 4 100k 3k",
            s(&m),
        ],
    );
    qemu_overlay(&[], "mid.qcow2", "qcow2", &t, Some("5M"));
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 3 3M 64k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "write -P 5 4608k 64k",
            s(&t),
        ],
    );
    (b, m, t)
}

fn same_contents(a: &Path, b: &Path) {
    let o = run("qemu-img", &["compare", s(a), s(b)]);
    assert!(
        o.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn chains_qemu_img_builds_read_identically_through_vdisk() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, top) = qemu_chain(dir.path());
    let (ours, theirs) = (dir.path().join("ours.raw"), dir.path().join("theirs.raw"));
    vdisk_ok(&["convert", "-O", "raw", s(&top), s(&ours)]);
    ok("qemu-img", &["convert", "-O", "raw", s(&top), s(&theirs)]);
    assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap());
    // map agrees with qemu-img map, field for field.
    for fmt in ["json", "human"] {
        let a = vdisk(&["map", "--output", fmt, s(&top)]);
        let b = ok("qemu-img", &["map", &format!("--output={fmt}"), s(&top)]);
        assert_eq!(
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&b.stdout),
            "map --output={fmt}"
        );
    }
    let a = vdisk(&["info", "--backing-chain", "--output", "json", s(&top)]);
    let va: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let b = ok(
        "qemu-img",
        &["info", "--backing-chain", "--output=json", s(&top)],
    );
    let vb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(va.as_array().unwrap().len(), 3);
    for (x, y) in va.as_array().unwrap().iter().zip(vb.as_array().unwrap()) {
        for k in [
            "virtual-size",
            "format",
            "backing-filename",
            "backing-filename-format",
            "full-backing-filename",
        ] {
            assert_eq!(x.get(k), y.get(k), "key {k}");
        }
    }
}

#[test]
fn overlays_vdisk_creates_work_with_qemu_io_and_qemu_img_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, top) = qemu_chain(dir.path());
    let ov = dir.path().join("ov.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "top.qcow2",
        "-F",
        "qcow2",
        s(&ov),
    ]);
    same_contents(&ov, &top);
    ok("qemu-io", &["-c", "write -P 9 5000 3000", s(&ov)]);
    assert_eq!(qemu_check_path(&ov).code, 0);
    // vdisk writes partial clusters into the overlay (copy-on-write from the chain).
    let ro = vdisk::image::ImageOptions {
        read_only: false,
        ..Default::default()
    };
    let mut img = vdisk::image::open(&ov, &ro).unwrap();
    img.device.write_at(&[6u8; 700], (3 << 20) + 100).unwrap();
    img.device.write_zeroes(1 << 20, 4096).unwrap();
    img.device.flush().unwrap();
    drop(img);
    assert_eq!(qemu_check_path(&ov).code, 0);
    ok(
        "qemu-io",
        &[
            "-c",
            "read -P 3 3M 100",
            "-c",
            "read -P 6 3145828 700",
            "-c",
            "read -P 3 3146528 1000",
            "-c",
            "read -P 0 1M 4k",
            "-c",
            "read -P 9 5000 3000",
            s(&ov),
        ],
    );
}

#[test]
fn commit_matches_qemu_img_commit() {
    for explicit_base in [false, true] {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let (b1, m1, t1) = qemu_chain(d1.path());
        let (b2, m2, t2) = qemu_chain(d2.path());
        let before = d1.path().join("before.raw");
        ok("qemu-img", &["convert", "-O", "raw", s(&t1), s(&before)]);
        if explicit_base {
            // Commit top and mid into the raw base (top is left as is: -b implies -d).
            ok("qemu-img", &["commit", "-q", "-b", s(&b1), s(&t1)]);
            vdisk_ok(&["commit", "-q", "-b", s(&b2), s(&t2)]);
            same_contents(&b1, &b2);
        } else {
            ok("qemu-img", &["commit", "-q", s(&t1)]);
            vdisk_ok(&["commit", "-q", s(&t2)]);
            same_contents(&m1, &m2);
            same_contents(&t1, &t2);
            same_contents(&t2, &before);
            assert_eq!(qemu_check_path(&t2).code, 0);
            assert_eq!(qemu_check_path(&m2).code, 0);
            let map =
                String::from_utf8(vdisk(&["map", "--output", "json", s(&t2)]).stdout).unwrap();
            assert!(
                !map.contains("\"depth\": 0, \"present\": true"),
                "top not emptied: {map}"
            );
        }
    }
}

#[test]
fn rebase_matches_qemu_img_rebase_in_safe_unsafe_and_flatten_modes() {
    for mode in ["safe", "unsafe", "flatten"] {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let (_, _, t1) = qemu_chain(d1.path());
        let (_, _, t2) = qemu_chain(d2.path());
        let args: Vec<&str> = match mode {
            "safe" => vec!["rebase", "-q", "-b", "base.raw", "-F", "raw"],
            "unsafe" => vec!["rebase", "-q", "-u", "-b", "base.raw", "-F", "raw"],
            _ => vec!["rebase", "-q", "-b", ""],
        };
        let mut a1 = args.clone();
        a1.push(s(&t1));
        ok("qemu-img", &a1);
        let mut a2 = args.clone();
        a2.push(s(&t2));
        vdisk_ok(&a2);
        same_contents(&t1, &t2);
        assert_eq!(qemu_check_path(&t2).code, 0, "{mode}");
        let info = String::from_utf8(vdisk(&["info", s(&t2)]).stdout).unwrap();
        if mode == "flatten" {
            assert!(!info.contains("backing file"), "{info}");
        } else {
            assert!(info.contains("backing file: base.raw"), "{info}");
        }
    }
}

#[test]
fn loops_missing_files_protocols_and_bad_backing_formats_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.qcow2"), d.join("b.qcow2"));
    ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    qemu_overlay(&[], "a.qcow2", "qcow2", &b, None);
    ok(
        "qemu-img",
        &["rebase", "-q", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)],
    );
    let cases: Vec<(PathBuf, &str)> = vec![(b.clone(), "loops")];
    for (p, want) in cases {
        let o = vdisk(&["convert", "-O", "raw", s(&p), s(&d.join("x.raw"))]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let c = d.join("c.qcow2");
    qemu_overlay(&["-u"], "gone.raw", "raw", &c, Some("1M"));
    let o = vdisk(&["map", s(&c)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("gone.raw"));
    for (name, want) in [
        ("json:{\"file.filename\":\"/etc/passwd\"}", "JSON"),
        ("nbd:127.0.0.1:10809", "protocol"),
        ("http://example.com/x", "protocol"),
    ] {
        let e = d.join("e.qcow2");
        qemu_overlay(&["-u"], name, "raw", &e, Some("1M"));
        let o = vdisk(&["convert", "-O", "raw", s(&e), s(&d.join("y.raw"))]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let f = d.join("f.qcow2");
    qemu_overlay(&["-u"], "a.qcow2", "qcow2", &f, Some("1M"));
    // Poke the backing-format extension's name into something unknown.
    let mut bytes = std::fs::read(&f).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"qcow2").unwrap();
    bytes[pos..pos + 5].copy_from_slice(b"qcowX");
    std::fs::write(&f, &bytes).unwrap();
    let o = vdisk(&["map", s(&f)]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("backing format"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The bytes of a qcow2 image of `size` bytes with `cluster_size` clusters, made in memory
/// and written by `fill` (then flushed).
fn qcow2_in_memory(
    size: u64,
    cluster_size: u64,
    fill: impl FnOnce(&mut dyn BlockDevice),
) -> Vec<u8> {
    let mem = Arc::new(MemStorage::new());
    let mut q = qcow2::create(
        mem.clone(),
        &CreateOptions {
            size,
            cluster_size,
            ..Default::default()
        },
    )
    .unwrap();
    fill(&mut q);
    q.flush().unwrap();
    drop(q);
    mem.to_vec()
}

#[test]
fn a_power_cut_during_commit_leaves_both_images_consistent() {
    // base (qcow2, 4K clusters) <- top (in memory), top has data, zero clusters and holes.
    let size = 1u64 << 20;
    let base_bytes = qcow2_in_memory(size, 4096, |b| {
        b.write_at(&vec![1u8; 300_000], 0).unwrap();
    });
    let top_bytes = qcow2_in_memory(size, 65536, |t| {
        t.write_at(&vec![2u8; 200_000], 100_000).unwrap();
        t.write_zeroes(0, 65536).unwrap();
        t.write_at(&[3u8; 10], 900_000).unwrap();
    });
    let open_top = |base: Vec<u8>| {
        let ro = OpenOptions {
            read_only: true,
            ..Default::default()
        };
        let mut t = Qcow2::open(MemStorage::from_vec(top_bytes.clone()), ro).unwrap();
        let b = Qcow2::open(MemStorage::from_vec(base), ro).unwrap();
        t.set_backing(Some(Box::new(b)));
        t
    };
    let mut expect = vec![0u8; size as usize];
    open_top(base_bytes.clone())
        .read_at(&mut expect, 0)
        .unwrap();
    every_cut_one(
        "commit",
        &base_bytes,
        |fs| {
            let mut base = Qcow2::open(fs.clone(), OpenOptions::default())?;
            chain_ops::commit(
                &mut open_top(base_bytes.clone()),
                &mut base,
                1,
                &mut |_, _| {},
            )?;
            Ok(fs.ops())
        },
        |cut, durable, _| {
            let c = qemu_check(durable);
            assert!(c.is_consistent(), "cut {cut}: {}", c.output);
            // The top still reads the same through the partly committed base: every byte
            // the commit wrote into the base is the byte the top already showed there.
            let mut got = vec![0u8; size as usize];
            open_top(durable.to_vec()).read_at(&mut got, 0).unwrap();
            assert!(got == expect, "cut {cut}: guest contents changed");
        },
    );
}

#[test]
fn convert_flattens_an_overlay_and_with_backing_writes_only_differences() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, m, top) = qemu_chain(d);
    let flat = d.join("flat.qcow2");
    vdisk_ok(&["convert", "-O", "qcow2", s(&top), s(&flat)]);
    same_contents(&flat, &top);
    assert!(!String::from_utf8(vdisk(&["info", s(&flat)]).stdout)
        .unwrap()
        .contains("backing file"));
    let diff = d.join("diff.qcow2");
    vdisk_ok(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&flat),
        s(&diff),
    ]);
    same_contents(&diff, &top);
    assert_eq!(qemu_check_path(&diff).code, 0);
    // Only the clusters that differ from mid.qcow2 are allocated in the new overlay.
    let map: serde_json::Value =
        serde_json::from_slice(&vdisk(&["map", "--output", "json", s(&diff)]).stdout).unwrap();
    let own: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && e["present"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(own <= 4 * 65536, "overlay holds {own} bytes of its own");
    let _ = m;
}
