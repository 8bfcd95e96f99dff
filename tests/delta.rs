//! `vdisk delta` (issue 14, changed-block deltas) against QEMU.
//!
//! The invariant, over seeded random histories of writes, zeroing, discards, compressed
//! writes, resizes and snapshots made by vdisk (library and CLI) and by QEMU (qemu-io,
//! qemu-img), on images with and without a backing file, compat 0.10 and 1.1: a copy of
//! the image at `--from` (the snapshot applied to a copy with `qemu-img snapshot -a`, then
//! flattened: `qemu-img convert -l` would read it at the image's current size, which a
//! resize since the snapshot changed), with the delta committed into it (by
//! `vdisk commit`, and by `qemu-img commit` as an independent judge), reads as the image
//! at `--to`; and the delta holds only clusters that the history touched between the two
//! states, and every cluster whose contents differ. `--list` names exactly what the delta
//! holds. Then exact lists of a known history, the cross-site recipe (a full copy and a
//! chain of deltas), compressed clusters, and errors next to qemu-img's.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use vdisk::image::{self, ImageOptions};
use vdisk::BlockDevice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Vdisk,
    Qemu,
}

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, pat: u8 },
    Compressed { off: u64, len: u64, pat: u8 },
    Zero { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    Snapshot(String),
    Resize { old: u64, new: u64 },
}

/// One random image and its history.
struct History {
    img: PathBuf,
    cs: u64,
    /// (tool, op) in order.
    ops: Vec<(Tool, Op)>,
    /// Snapshot name → number of ops before it.
    snaps: Vec<(String, usize)>,
}

impl History {
    /// Guest clusters (of the image) touched by ops `a..b` (or `b..a`).
    fn touched(&self, a: usize, b: usize) -> BTreeSet<u64> {
        let (lo, hi) = (a.min(b), a.max(b));
        let mut set = BTreeSet::new();
        for (_, op) in &self.ops[lo..hi] {
            let (off, len) = match *op {
                Op::Write { off, len, .. }
                | Op::Compressed { off, len, .. }
                | Op::Zero { off, len }
                | Op::Discard { off, len } => (off, len),
                // Shrinking drops the clusters past the new end.
                Op::Resize { old, new } if new < old => (new, old - new),
                _ => continue,
            };
            set.extend(off / self.cs..(off + len).div_ceil(self.cs));
        }
        set
    }

    fn position(&self, snap: Option<&str>) -> usize {
        match snap {
            Some(s) => self
                .snaps
                .iter()
                .find(|(n, _)| n == s)
                .map(|x| x.1)
                .unwrap(),
            None => self.ops.len(),
        }
    }
}

fn random_history(r: &mut TestRng, img: &Path, cs: u64, size0: u64, v3: bool) -> History {
    let mut ops = Vec::new();
    let mut snaps = Vec::new();
    let mut size = size0;
    let n = 14 + r.below(10) as usize;
    let first_snap = 1 + r.below(4) as usize;
    for i in 0..n {
        let tool = if r.below(2) == 0 {
            Tool::Vdisk
        } else {
            Tool::Qemu
        };
        let roll = r.below(100);
        if i == first_snap || (i > first_snap && roll < 15) {
            let name = format!("s{}", snaps.len() + 1);
            snaps.push((name.clone(), ops.len()));
            ops.push((tool, Op::Snapshot(name)));
            continue;
        }
        if v3 && roll < 20 {
            let clusters = size / cs;
            let new = if r.below(2) == 0 && clusters > 8 {
                clusters - 1 - r.below(clusters / 4)
            } else {
                clusters + 1 + r.below(clusters / 4)
            };
            let old = size;
            size = new.min(2 * size0 / cs) * cs;
            ops.push((tool, Op::Resize { old, new: size }));
            continue;
        }
        let off = r.below(size / 512) * 512;
        let len = (512 * (1 + r.below((4 * cs).min(size - off) / 512))).min(size - off);
        let pat = 1 + r.below(250) as u8;
        let op = match roll {
            0..=49 => Op::Write { off, len, pat },
            50..=59 => {
                // Through vdisk: QEMU compresses only into unallocated clusters.
                let off = off / cs * cs;
                let len = cs * (1 + r.below(3)).min((size - off) / cs);
                ops.push((Tool::Vdisk, Op::Compressed { off, len, pat }));
                continue;
            }
            60..=79 => Op::Zero { off, len },
            _ => Op::Discard { off, len },
        };
        ops.push((tool, op));
    }
    History {
        img: img.to_path_buf(),
        cs,
        ops,
        snaps,
    }
}

/// Apply the history: runs of one tool's guest writes in one process, snapshots and
/// resizes one command each.
fn apply(h: &History) {
    let img = h.img.to_str().unwrap().to_string();
    let mut i = 0;
    while i < h.ops.len() {
        let (tool, op) = &h.ops[i];
        match op {
            Op::Snapshot(name) => {
                let args = ["snapshot", "-c", name.as_str(), img.as_str()];
                match tool {
                    Tool::Vdisk => vdisk_ok(&args),
                    Tool::Qemu => qemu_img_ok(&args),
                };
                i += 1;
                continue;
            }
            Op::Resize { new, .. } => {
                let s = new.to_string();
                match tool {
                    Tool::Vdisk => vdisk_ok(&["resize", "--shrink", img.as_str(), s.as_str()]),
                    Tool::Qemu => {
                        qemu_img_ok(&["resize", "-q", "--shrink", img.as_str(), s.as_str()])
                    }
                };
                i += 1;
                continue;
            }
            _ => {}
        }
        let mut j = i;
        while j < h.ops.len()
            && h.ops[j].0 == *tool
            && !matches!(h.ops[j].1, Op::Snapshot(_) | Op::Resize { .. })
        {
            j += 1;
        }
        match tool {
            Tool::Qemu => qemu_writes(&img, &h.ops[i..j]),
            Tool::Vdisk => vdisk_writes(&h.img, &h.ops[i..j]),
        }
        i = j;
    }
}

fn qemu_writes(img: &str, ops: &[(Tool, Op)]) {
    let mut args = Vec::new();
    for (_, op) in ops {
        let c = match *op {
            Op::Write { off, len, pat } => format!("write -P {pat} {off} {len}"),
            Op::Zero { off, len } => format!("write -z {off} {len}"),
            Op::Discard { off, len } => format!("discard {off} {len}"),
            _ => unreachable!(),
        };
        args.push("-c".to_string());
        args.push(c);
    }
    args.push(img.to_string());
    qemu_io_ok(&args);
}

fn vdisk_writes(img: &Path, ops: &[(Tool, Op)]) {
    let mut dev = image::open(img, &ImageOptions::default()).unwrap().device;
    for (_, op) in ops {
        let r = match *op {
            Op::Write { off, len, pat } => dev.write_at(&vec![pat; len as usize], off),
            Op::Zero { off, len } => dev.write_zeroes(off, len),
            Op::Discard { off, len } => dev.discard(off, len),
            Op::Compressed { off, len, pat } => {
                let codec = dev.cluster_codec().unwrap();
                let cs = dev.cluster_size().unwrap();
                let data = codec.compress(&vec![pat; cs as usize]).unwrap();
                (off..off + len)
                    .step_by(cs as usize)
                    .try_for_each(|at| dev.write_compressed_cluster(at, &data))
            }
            _ => unreachable!(),
        };
        r.unwrap();
    }
    dev.close().unwrap();
}

/// A fresh image (and its backing file, `backing` of "raw" or "qcow2", random data with
/// holes) in `dir`.
fn make_image(
    dir: &Path,
    cs: u64,
    size: u64,
    compat: &str,
    backing: Option<&str>,
    seed: u64,
) -> PathBuf {
    let img = dir.join("img.qcow2");
    let mut o = format!("cluster_size={cs},compat={compat}");
    if let Some(fmt) = backing {
        let b = dir.join(format!("backing.{fmt}"));
        let raw = dir.join("backing.src");
        let mut data = random_bytes(seed, size as usize);
        for (k, chunk) in data.chunks_mut(cs as usize).enumerate() {
            if k % 3 == 1 {
                chunk.fill(0);
            }
        }
        std::fs::write(&raw, &data).unwrap();
        qemu_img_ok(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            fmt,
            raw.to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        o += &format!(",backing_file=backing.{fmt},backing_fmt={fmt}");
    }
    let size = size.to_string();
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        o.as_str(),
        img.to_str().unwrap(),
        size.as_str(),
    ]);
    img
}

/// A flattened qcow2 copy at `out` of `img` at snapshot `snap` (or its active disk), and
/// its guest contents. A snapshot's state is what `snapshot -a` restores, its own disk
/// size included (`qemu-img convert -l` reads a snapshot at the image's current size).
fn state(img: &Path, snap: Option<&str>, out: &Path) -> Vec<u8> {
    let src = match snap {
        Some(s) => {
            // Beside the image, so that its relative backing name still resolves.
            let copy = img.with_extension("state.qcow2");
            std::fs::copy(img, &copy).unwrap();
            qemu_img_ok(&["snapshot", "-a", s, copy.to_str().unwrap()]);
            copy
        }
        None => img.to_path_buf(),
    };
    qemu_img_ok(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let raw = out.with_extension("raw");
    qemu_img_ok(&[
        "convert",
        "-q",
        "-O",
        "raw",
        out.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    read(&raw)
}

/// The clusters of `cluster` bytes, below `size`, that the extents `[(start, len)]` touch.
fn clusters_of(
    extents: impl IntoIterator<Item = (u64, u64)>,
    cluster: u64,
    size: u64,
) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    let last = size.div_ceil(cluster);
    for (start, len) in extents {
        set.extend(start / cluster..(start + len).div_ceil(cluster).min(last));
    }
    set
}

/// (start, length, zero) of each entry of a `qemu-img map` or `delta --list` JSON array
/// that passes `keep`.
fn json_extents(text: &str, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<(u64, u64, bool)> {
    let v = parse_json("extents", text);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Check one delta of `h` from snapshot `from` to `to` (a snapshot, or the active disk),
/// written with output cluster size `out_cs` and compat `out_compat`; returns how many
/// data and zero extents it listed.
fn check_delta(
    h: &History,
    dir: &Path,
    from: &str,
    to: Option<&str>,
    out_cs: u64,
    out_compat: &str,
) -> (usize, usize) {
    let what =
        format!("delta --from {from} --to {to:?} (-o cluster_size={out_cs},compat={out_compat})");
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let base = work.join("base.qcow2");
    let delta = work.join("delta.qcow2");
    let img = h.img.to_str().unwrap();
    let from_raw = state(&h.img, Some(from), &base);
    let to_raw = state(&h.img, to, &work.join("to.qcow2"));
    let to_size = to_raw.len() as u64;
    let mut args = vec!["delta", "--from", from];
    if let Some(t) = to {
        args.extend(["--to", t]);
    }
    let list_args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--list", "--output=json", img])
        .collect();
    let opts = format!("cluster_size={out_cs},compat={out_compat}");
    args.extend([
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "-o",
        opts.as_str(),
        img,
        delta.to_str().unwrap(),
    ]);
    vdisk_ok(&args);
    assert_qemu_check_clean(&delta);

    // What the delta holds (depth 0 of its map) and what --list says.
    let map = qemu_img_ok(&["map", "--output=json", delta.to_str().unwrap()]);
    let held = json_extents(&map, |e| e["depth"] == 0 && e["present"] == true);
    let listed = json_extents(&vdisk_ok(&list_args), |_| true);
    let held_set = clusters_of(held.iter().map(|e| (e.0, e.1)), out_cs, to_size);
    let listed_set = clusters_of(listed.iter().map(|e| (e.0, e.1)), out_cs, to_size);
    assert_eq!(
        held_set, listed_set,
        "{what}: the delta holds what --list names"
    );
    for w in listed.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "{what}: list out of order: {listed:?}"
        );
        assert!(
            w[0].0 + w[0].1 < w[1].0 || w[0].2 != w[1].2,
            "{what}: runs not merged: {listed:?}"
        );
    }
    for &(start, len, zero) in &listed {
        assert_eq!(start % h.cs, 0, "{what}: extent not on a cluster");
        if zero {
            let r = &to_raw[start as usize..(start + len) as usize];
            assert!(
                r.iter().all(|&b| b == 0),
                "{what}: zero extent at {start:#x} holds data"
            );
        }
    }

    // Every cluster whose contents differ is in the delta; every one in it was touched.
    let differs: BTreeSet<u64> = (0..to_size.div_ceil(out_cs))
        .filter(|&k| {
            let (a, b) = (
                (k * out_cs) as usize,
                ((k + 1) * out_cs).min(to_size) as usize,
            );
            let old = |i: usize| from_raw.get(i).copied().unwrap_or(0);
            (a..b).any(|i| to_raw[i] != old(i))
        })
        .collect();
    let touched = h.touched(h.position(Some(from)), h.position(to));
    let touched = clusters_of(touched.iter().map(|&c| (c * h.cs, h.cs)), out_cs, to_size);
    assert!(
        differs.is_subset(&held_set),
        "{what}: changed clusters {:?} missing",
        differs.difference(&held_set).collect::<Vec<_>>()
    );
    assert!(
        held_set.is_subset(&touched),
        "{what}: untouched clusters {:?} in the delta",
        held_set.difference(&touched).collect::<Vec<_>>()
    );

    // Replayed onto the old state by each tool's commit, it gives the new state.
    let to_path = work.join("to.raw");
    for (tool, sub) in [("vdisk", "v"), ("qemu-img", "q")] {
        let d = work.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&base, d.join("base.qcow2")).unwrap();
        std::fs::copy(&delta, d.join("delta.qcow2")).unwrap();
        let top = d.join("delta.qcow2");
        match tool {
            "vdisk" => vdisk_ok(&["commit", top.to_str().unwrap()]),
            _ => qemu_img_ok(&["commit", "-q", top.to_str().unwrap()]),
        };
        let b = d.join("base.qcow2");
        if (from_raw.len() as u64) > to_size {
            let size = to_size.to_string();
            qemu_img_ok(&[
                "resize",
                "-q",
                "--shrink",
                b.to_str().unwrap(),
                size.as_str(),
            ]);
        }
        let out = qemu_img([
            "compare",
            "-F",
            "raw",
            b.to_str().unwrap(),
            to_path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{what}, {tool} commit: {}",
            describe("compare", &out)
        );
    }
    let zeros = listed.iter().filter(|e| e.2).count();
    (listed.len() - zeros, zeros)
}

/// Random histories on `iterations` images; two deltas checked on each.
fn invariant(seed: u64, iterations: u64, backing: &[Option<&str>]) {
    let (mut data, mut zeros, mut empty) = (0, 0, 0);
    for it in 0..iterations {
        let mut r = rng(seed * 1000 + it);
        let dir = tempdir();
        let cs = [512, 4096, 65536][r.below(3) as usize];
        let compat = if r.below(2) == 0 { "0.10" } else { "1.1" };
        let bfmt = backing[r.below(backing.len() as u64) as usize];
        let size = cs * (24 + r.below(40));
        let img = make_image(dir.path(), cs, size, compat, bfmt, seed + it);
        let h = random_history(&mut r, &img, cs, size, compat == "1.1");
        apply(&h);
        for _ in 0..2 {
            let from = h.snaps[r.below(h.snaps.len() as u64) as usize].0.clone();
            let k = r.below(h.snaps.len() as u64 + 1) as usize;
            let to = h.snaps.get(k).map(|s| s.0.clone());
            let out_cs = match r.below(4) {
                0 => 65536,
                1 => (cs / 2).max(512),
                _ => cs,
            };
            let out_compat = if r.below(3) == 0 { "0.10" } else { "1.1" };
            eprintln!("iteration {it}: cs {cs}, compat {compat}, backing {bfmt:?}, {} ops; {from} -> {to:?}", h.ops.len());
            let (d, z) = check_delta(&h, dir.path(), &from, to.as_deref(), out_cs, out_compat);
            (data, zeros, empty) = (data + d, zeros + z, empty + usize::from(d + z == 0));
        }
    }
    // The histories exercise both kinds of change (and a few empty deltas).
    eprintln!("{data} data extents, {zeros} zero extents, {empty} empty deltas");
    assert!(
        data > iterations as usize && zeros > 0,
        "{data} data, {zeros} zero extents"
    );
}

#[test]
fn replaying_a_delta_gives_the_new_state_and_it_holds_only_what_changed() {
    invariant(1, 15, &[None]);
}

#[test]
fn deltas_of_overlays_hold_what_the_guest_reads_through_the_backing_file() {
    invariant(2, 15, &[Some("raw"), Some("qcow2")]);
}

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

#[test]
fn the_list_of_a_known_history_is_exact() {
    let dir = tempdir();
    let img = known_history(dir.path(), "1.1");
    let i = img.to_str().unwrap();
    let json = vdisk_ok(&[
        "delta",
        "--list",
        "--output=json",
        "--from",
        "A",
        "--to",
        "B",
        i,
    ]);
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
    let back = vdisk_ok(&[
        "delta",
        "--list",
        "--output=json",
        "--from",
        "B",
        "--to",
        "A",
        i,
    ]);
    let back = json_extents(&back, |_| true);
    assert_eq!(
        back,
        vec![
            (0x10000, 0x40000, false),
            (0x60000, 0x10000, false),
            (0xe0000, 0x10000, true)
        ]
    );
    let none = vdisk_ok(&[
        "delta",
        "--list",
        "--output=json",
        "--from",
        "B",
        "--to",
        "B",
        i,
    ]);
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
    let info = parse_json(
        "info",
        &qemu_img_ok(&["info", "--output=json", delta.to_str().unwrap()]),
    );
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
        let info = parse_json(
            "info",
            &qemu_img_ok(&["info", "--output=json", delta.to_str().unwrap()]),
        );
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
    run(
        "qemu-img",
        &["convert", "-q", "-l", "mon", "-O", "qcow2", i, full],
    );
    run(
        "qemu-io",
        &["-c", "write -P 2 1M 512k", "-c", "discard 2M 256k", i],
    );
    run("vdisk", &["snapshot", "-c", "tue", i]);
    // The backing names (-b) stay relative ("./"): they are names the deltas record.
    run(
        "vdisk",
        &[
            "delta",
            "--from",
            "mon",
            "--to",
            "tue",
            "-b",
            "./full.qcow2",
            "-F",
            "qcow2",
            i,
            tue,
        ],
    );
    run("vdisk", &["snapshot", "--prune", "--keep-last", "1", i]);
    run(
        "qemu-io",
        &["-c", "write -z 0 64k", "-c", "write -P 3 3M 1M", i],
    );
    run("vdisk", &["snapshot", "-c", "wed", i]);
    run(
        "vdisk",
        &[
            "delta",
            "--from",
            "tue",
            "--to",
            "wed",
            "-b",
            "./tue.qcow2",
            "-F",
            "qcow2",
            i,
            wed,
        ],
    );
    run(
        "qemu-img",
        &["convert", "-q", "-l", "wed", "-O", "qcow2", i, wed_full],
    );
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
    let list = vdisk_ok(&[
        "delta",
        "--list",
        "--output=json",
        "--from",
        "A",
        "--to",
        "B",
        img.to_str().unwrap(),
    ]);
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
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
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
