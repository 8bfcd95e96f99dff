//! `vdisk delta` (issue 14, changed-block deltas) against QEMU: exact lists of a known
//! history (human and JSON, by name and ID, forwards and backwards), version 2 deltas,
//! compressed clusters copied compressed (zlib, zstd), the README's cross-site recipe (a
//! full copy and a chain of deltas), an existing output replaced, errors next to
//! qemu-img's, 512-byte-cluster overlays, broken snapshot tables. The randomized invariant
//! is in `tests/delta_invariant.rs`.

mod common;
mod delta_common;

use common::*;
use delta_common::*;
use std::path::{Path, PathBuf};

/// An image of 16 clusters of 64 KiB with data in the first 10 and snapshot A, then a
/// known history and snapshot B, then more.
fn known_history(dir: &Path, compat: &str) -> PathBuf {
    let img = dir.join("img.qcow2");
    let i = img.to_str().unwrap();
    let o = format!("compat={compat}");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", o.as_str(), i, "1M"]);
    qemu_io_ok(&["-c", "write -P 1 0 640k", i]);
    qemu_img_ok(&["snapshot", "-c", "A", i]);
    qemu_io_ok(&[
        "-c",
        "write -P 2 64k 100", // cluster 1, partly
        "-c",
        "write -P 3 128k 64k", // cluster 2
        "-c",
        "write -z 192k 128k", // clusters 3-4 (data before: zeros now)
        "-c",
        "discard 384k 64k", // cluster 6
        "-c",
        "write -z 768k 64k", // zeros over nothing: no change
        "-c",
        "write -P 4 900k 10", // cluster 14, new
        i,
    ]);
    vdisk_ok(&["snapshot", "-c", "B", i]);
    qemu_io_ok(&["-c", "write -P 5 960k 64k", i]); // cluster 15
    img
}

/// `vdisk delta --list --output=json` from snapshot `from` to snapshot `to` of `img`.
fn list_json(from: &str, to: &str, img: &str) -> String {
    vdisk_ok(&[
        "delta",
        "--list",
        "--output=json",
        "--from",
        from,
        "--to",
        to,
        img,
    ])
}

/// `vdisk delta` from snapshot `from` to snapshot `to` of `img` into `out`, whose backing
/// file is the qcow2 image `backing` (a name the delta records).
fn delta_onto(img: &str, from: &str, to: &str, backing: &str, out: &str) {
    vdisk_ok(&[
        "delta", "--from", from, "--to", to, "-b", backing, "-F", "qcow2", img, out,
    ]);
}

/// `qemu-img info --output=json` of `img`.
fn qemu_info(img: &Path) -> serde_json::Value {
    parse_json("info", &qemu_img_ok(&["info", "--output=json", s(img)]))
}

/// `qemu-img convert -l`: snapshot `snapshot` of `img` as a standalone qcow2 image `out`.
fn snapshot_copy(img: &str, snapshot: &str, out: &str) {
    qemu_img_ok(&["convert", "-q", "-l", snapshot, "-O", "qcow2", img, out]);
}

#[test]
fn the_list_of_a_known_history_is_exact() {
    let dir = tempdir();
    let img = known_history(dir.path(), "1.1");
    let i = img.to_str().unwrap();
    let json = list_json("A", "B", i);
    assert_eq!(
        json.trim_end(),
        "[{ \"start\": 65536, \"length\": 131072, \"zero\": false, \"data\": true},\n\
         { \"start\": 196608, \"length\": 131072, \"zero\": true, \"data\": false},\n\
         { \"start\": 393216, \"length\": 65536, \"zero\": true, \"data\": false},\n\
         { \"start\": 917504, \"length\": 65536, \"zero\": false, \"data\": true}]"
    );
    // By snapshot ID as well as by name; to the active disk when --to is absent.
    let human = vdisk_ok(&["delta", "--list", "--from", "1", i]);
    assert_eq!(
        human,
        "Offset          Length          Reads\n\
         0x10000         0x20000         data\n\
         0x30000         0x20000         zero\n\
         0x60000         0x10000         zero\n\
         0xe0000         0x20000         data\n"
    );
    // Backwards: what B changed comes back as A had it.
    let back = list_json("B", "A", i);
    let back = json_extents(&back, |_| true);
    assert_eq!(
        back,
        vec![
            (0x10000, 0x40000, false),
            (0x60000, 0x10000, false),
            (0xe0000, 0x10000, true)
        ]
    );
    let none = list_json("B", "B", i);
    assert_eq!(none.trim_end(), "[]");
}

#[test]
fn a_v2_delta_stores_zeros_as_data_and_still_replays_deletions() {
    let dir = tempdir();
    let img = known_history(dir.path(), "0.10");
    let i = img.to_str().unwrap();
    let d = dir.path();
    qemu_img_ok(&[
        "convert",
        "-q",
        "-l",
        "snapshot.name=A",
        "-O",
        "qcow2",
        i,
        d.join("a.qcow2").to_str().unwrap(),
    ]);
    let delta = d.join("d.qcow2");
    vdisk_ok(&[
        "delta",
        "--from",
        "A",
        "--to",
        "B",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        "-o",
        "compat=0.10",
        i,
        delta.to_str().unwrap(),
    ]);
    assert_qemu_check_clean(&delta);
    let info = qemu_info(&delta);
    assert_eq!(info["format-specific"]["data"]["compat"], "0.10");
    assert_eq!(info["backing-filename"], "a.qcow2");
    assert_eq!(info["backing-filename-format"], "qcow2");
    let b = d.join("b.qcow2");
    qemu_img_ok(&[
        "convert",
        "-q",
        "-l",
        "snapshot.name=B",
        "-O",
        "qcow2",
        i,
        b.to_str().unwrap(),
    ]);
    assert_qemu_compare_identical(&delta, &b);
}

#[test]
fn compressed_clusters_are_copied_compressed() {
    for codec in ["zlib", "zstd"] {
        let dir = tempdir();
        let img = dir.path().join("img.qcow2");
        let i = img.to_str().unwrap();
        let o = format!("compression_type={codec}");
        qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", o.as_str(), i, "2M"]);
        qemu_io_ok(&["-c", "write -P 1 0 1M", i]);
        qemu_img_ok(&["snapshot", "-c", "A", i]);
        // QEMU compresses only into unallocated clusters.
        qemu_io_ok(&[
            "-c",
            "write -c -P 7 1280k 192k",
            "-c",
            "write -P 8 1M 64k",
            i,
        ]);
        let base = dir.path().join("a.qcow2");
        qemu_img_ok(&[
            "convert",
            "-q",
            "-l",
            "snapshot.name=A",
            "-O",
            "qcow2",
            i,
            base.to_str().unwrap(),
        ]);
        let delta = dir.path().join("d.qcow2");
        vdisk_ok(&[
            "delta",
            "--from",
            "A",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            i,
            delta.to_str().unwrap(),
        ]);
        assert_qemu_check_clean(&delta);
        let info = qemu_info(&delta);
        assert_eq!(info["format-specific"]["data"]["compression-type"], codec);
        let map = qemu_img_ok(&["map", "--output=json", delta.to_str().unwrap()]);
        let compressed = json_extents(&map, |e| e["depth"] == 0 && e["compressed"] == true);
        assert_eq!(
            compressed.iter().map(|e| e.1).sum::<u64>(),
            192 << 10,
            "{codec}: {map}"
        );
        let plain = json_extents(&map, |e| e["depth"] == 0 && e["compressed"] == false);
        assert_eq!(plain, vec![(1 << 20, 64 << 10, false)], "{codec}: {map}");
        assert_qemu_compare_identical(&delta, &img);
    }
}

/// The README's cross-site recipe: one full copy, then a delta per snapshot, kept as a
/// backing chain or committed into the copy, and old snapshots pruned afterwards.
#[test]
fn a_full_copy_and_a_chain_of_deltas_restore_every_state() {
    let dir = tempdir();
    let d = dir.path();
    let img = d.join("img.qcow2");
    let i = img.to_str().unwrap();
    let (full, tue, wed, wed_full) = ("full.qcow2", "tue.qcow2", "wed.qcow2", "wed-full.qcow2");
    let at = |name: &str| d.join(name);
    let run = |tool: &str, args: &[&str]| {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "full.qcow2" | "tue.qcow2" | "wed.qcow2" | "wed-full.qcow2" => {
                    at(a).display().to_string()
                }
                _ => a.to_string(),
            })
            .collect();
        match tool {
            "vdisk" => vdisk_ok(&args),
            "qemu-img" => qemu_img_ok(&args),
            _ => qemu_io_ok(&args),
        };
    };
    run("qemu-img", &["create", "-q", "-f", "qcow2", i, "4M"]);
    run("qemu-io", &["-c", "write -P 1 0 3M", i]);
    run("vdisk", &["snapshot", "-c", "mon", i]);
    snapshot_copy(i, "mon", s(&at(full)));
    run(
        "qemu-io",
        &["-c", "write -P 2 1M 512k", "-c", "discard 2M 256k", i],
    );
    run("vdisk", &["snapshot", "-c", "tue", i]);
    // The backing names (-b) stay relative ("./"): they are names the deltas record.
    delta_onto(i, "mon", "tue", "./full.qcow2", s(&at(tue)));
    run("vdisk", &["snapshot", "--prune", "--keep-last", "1", i]);
    run(
        "qemu-io",
        &["-c", "write -z 0 64k", "-c", "write -P 3 3M 1M", i],
    );
    run("vdisk", &["snapshot", "-c", "wed", i]);
    delta_onto(i, "tue", "wed", "./tue.qcow2", s(&at(wed)));
    snapshot_copy(i, "wed", s(&at(wed_full)));
    // Kept as a chain: the top reads as the last snapshot.
    assert_qemu_compare_identical(&at(wed), &at(wed_full));
    // Committed one by one into the full copy: the copy becomes the last snapshot.
    run("vdisk", &["commit", tue]);
    run(
        "vdisk",
        &["rebase", "-u", "-b", "./full.qcow2", "-F", "qcow2", wed],
    );
    run("vdisk", &["commit", wed]);
    assert_qemu_compare_identical(&at(full), &at(wed_full));
    assert_qemu_check_clean(&d.join("full.qcow2"));
}

#[test]
fn an_existing_output_is_replaced_as_qemu_img_convert_replaces_it() {
    let dir = tempdir();
    let img = known_history(dir.path(), "1.1");
    let out = dir.path().join("d.qcow2");
    std::fs::write(&out, vec![0xaa; 1 << 20]).unwrap();
    vdisk_ok(&[
        "delta",
        "--from",
        "A",
        "--to",
        "B",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_qemu_check_clean(&out);
    let list = list_json("A", "B", img.to_str().unwrap());
    let held = json_extents(
        &qemu_img_ok(&["map", "--output=json", out.to_str().unwrap()]),
        |e| e["present"] == true,
    );
    let listed = json_extents(&list, |_| true);
    assert_eq!(
        clusters_of(held.iter().map(|e| (e.0, e.1)), 65536, 1 << 20),
        clusters_of(listed.iter().map(|e| (e.0, e.1)), 65536, 1 << 20)
    );
}

/// Errors: one line on stderr and exit code 1, in qemu-img's words where qemu-img has the
/// same failure (`convert -l` of a missing snapshot or of a raw image, `-B` without `-F`).
#[test]
fn errors_are_one_line_and_match_qemu_img() {
    let dir = tempdir();
    let d = dir.path();
    let img = known_history(d, "1.1");
    let i = img.to_str().unwrap();
    let out = d.join("out.qcow2");
    let o = out.to_str().unwrap();
    let raw = d.join("r.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let r = raw.to_str().unwrap();
    let fails = |args: &[&str], want: &str| {
        let (_, err, code) = answer(vdisk(args));
        assert_eq!(code, 1, "{args:?}: {err}");
        // One line, and for a usage error qemu-img's pointer at the help after it.
        let reasons = err
            .lines()
            .filter(|l| !l.starts_with("Try 'vdisk delta --help'"));
        assert_eq!(reasons.count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !out.exists() || args.contains(&"--list"),
            "{args:?} left {o}"
        );
    };
    let qemu = |args: &[&str]| answer(qemu_img(args)).1;
    // Unknown snapshots, by --from and --to.
    let q = qemu(&["convert", "-l", "snapshot.name=X", "-O", "qcow2", i, o]);
    assert!(
        q.contains("Failed to load snapshot: Can't find snapshot"),
        "{q}"
    );
    fails(
        &["delta", "--from", "X", i, o],
        "Failed to load snapshot 'X': Can't find snapshot",
    );
    fails(
        &["delta", "--from", "A", "--to", "X", i, o],
        "Failed to load snapshot 'X': Can't find snapshot",
    );
    fails(
        &["delta", "--list", "--from", "X", i],
        "Can't find snapshot",
    );
    // Not a qcow2 image: qemu-img's words exactly.
    let q = qemu(&["convert", "-l", "snapshot.name=A", "-O", "qcow2", r, o]);
    fails(&["delta", "--from", "A", r, o], q.trim_end());
    fails(&["delta", "-f", "raw", "--from", "A", i, o], q.trim_end());
    // A backing file without its format.
    let q = qemu(&[
        "convert",
        "-l",
        "snapshot.name=A",
        "-B",
        "x.qcow2",
        "-O",
        "qcow2",
        i,
        o,
    ]);
    fails(
        &["delta", "--from", "A", "-b", "x.qcow2", i, o],
        q.trim_end(),
    );
    // A missing image; the image itself as the output; arguments missing or extra.
    let nope = format!("{}/nope", d.display());
    fails(&["delta", "--from", "A", nope.as_str(), o], "nope");
    let before = read(&img);
    let (_, err, code) = answer(vdisk(["delta", "--from", "A", i, i]));
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert_eq!(read(&img), before, "the image was changed");
    fails(&["delta", i, o], "--from");
    fails(&["delta", "--from", "A", i], "Expecting");
    fails(&["delta", "--list", "--from", "A", i, o], "--list");
    fails(
        &["delta", "--list", "--output=yaml", "--from", "A", i],
        "--output",
    );
}

/// Deltas of 512-byte-cluster images name a backing file, which with the feature name
/// table does not fit in the first cluster: the header leaves the table out, as QEMU's.
#[test]
fn an_overlay_with_512_byte_clusters_has_its_header_in_one_cluster_as_qemus() {
    let dir = tempdir();
    let d = dir.path();
    let base = d.join("base.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
    let (v, q) = (d.join("v.qcow2"), d.join("q.qcow2"));
    for (tool, path) in [("vdisk", &v), ("qemu-img", &q)] {
        let args = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            path.to_str().unwrap(),
        ];
        match tool {
            "vdisk" => vdisk_ok(&args),
            _ => qemu_img_ok(&args),
        };
    }
    assert_qemu_check_clean(&v);
    let info = |p: &Path| {
        let mut j = parse_json(
            "info",
            &qemu_img_ok(&["info", "--output=json", p.to_str().unwrap()]),
        );
        j.as_object_mut()
            .unwrap()
            .retain(|k, _| !["filename", "actual-size", "children"].contains(&k.as_str()));
        j
    };
    assert_eq!(info(&v), info(&q));
    assert_eq!(
        read(&v)[..512],
        read(&q)[..512],
        "the header clusters differ"
    );
}

/// A snapshot whose L1 table points past the end of the file, or whose L2 table holds a
/// zero flag in a version 2 image: one clear error naming the structure, never a panic.
#[test]
fn broken_snapshot_tables_are_one_clear_error() {
    use std::os::unix::fs::FileExt;
    for (compat, poke_l2) in [("1.1", false), ("0.10", true)] {
        let dir = tempdir();
        let img = known_history(dir.path(), compat);
        let i = img.to_str().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let be = |at: u64, n: usize| {
            let mut b = vec![0u8; n];
            f.read_exact_at(&mut b, at).unwrap();
            b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x))
        };
        // Snapshot A is the first entry of the snapshot table (header offset 64).
        let l1 = be(be(64, 8), 8);
        if poke_l2 {
            let l2 = be(l1, 8) & 0x00ff_ffff_ffff_fe00;
            f.write_all_at(&1u64.to_be_bytes(), l2 + 8 * 12).unwrap(); // cluster 12
        } else {
            f.write_all_at(&0x8000_0000_7fff_0000u64.to_be_bytes(), l1)
                .unwrap();
        }
        drop(f);
        let (_, err, code) = answer(vdisk(["delta", "--list", "--from", "A", i]));
        assert_eq!((code, err.lines().count()), (1, 1), "{compat}: {err}");
        let want = if poke_l2 {
            "L2 table at 0x"
        } else {
            "snapshot L1 table at 0x"
        };
        assert!(err.contains(want), "{compat}: {err}");
    }
}

/// Images with extended L2 entries (subclusters; written by QEMU, read by vdisk): the
/// delta compares entries with their subcluster bitmaps and replays as for plain images.
#[test]
fn images_with_subclusters_give_deltas_as_well() {
    for backing in [false, true] {
        let dir = tempdir();
        let d = dir.path();
        let img = d.join("img.qcow2");
        let i = img.to_str().unwrap();
        let mut o = "extended_l2=on,cluster_size=64k".to_string();
        if backing {
            let b = d.join("b.raw");
            std::fs::write(&b, random_bytes(7, 4 << 20)).unwrap();
            o += ",backing_file=b.raw,backing_fmt=raw";
        }
        qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", o.as_str(), i, "4M"]);
        qemu_io_ok(&["-c", "write -P 1 0 1M", "-c", "write -P 2 2M 4k", i]);
        qemu_img_ok(&["snapshot", "-c", "A", i]);
        qemu_io_ok(&[
            "-c",
            "write -P 3 4k 4k", // cluster 0, one subcluster pair
            "-c",
            "discard 128k 64k", // cluster 2
            "-c",
            "write -z 512k 2k", // cluster 8, one subcluster
            "-c",
            "write -P 4 3080k 2k", // cluster 48, a new subcluster
            "-c",
            "write -P 2 2M 4k", // cluster 32, rewritten
            i,
        ]);
        qemu_img_ok(&["snapshot", "-c", "B", i]);
        let list = list_json("A", "B", i);
        let k = 64 << 10;
        assert_eq!(
            json_extents(&list, |_| true),
            vec![
                (0, k, false),
                (2 * k, k, true),
                (8 * k, k, false),
                (32 * k, k, false),
                (48 * k, k, false)
            ],
            "backing {backing}"
        );
        let (base, delta, to) = (d.join("a.qcow2"), d.join("d.qcow2"), d.join("b.qcow2"));
        snapshot_copy(i, "A", s(&base));
        snapshot_copy(i, "B", s(&to));
        delta_onto(i, "A", "B", "a.qcow2", s(&delta));
        assert_qemu_check_clean(&delta);
        assert_qemu_compare_identical(&delta, &to);
        vdisk_ok(&["commit", delta.to_str().unwrap()]);
        assert_qemu_compare_identical(&base, &to);
    }
}
