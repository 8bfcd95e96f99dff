//! `vdisk delta` (issue 14, changed-block deltas) against QEMU: the invariant, over seeded
//! random histories of writes, zeroing, discards, compressed writes, resizes and snapshots
//! made by vdisk (library and CLI) and by QEMU (qemu-io, qemu-img), on images with and
//! without a backing file, compat 0.10 and 1.1, with deltas of other cluster sizes and
//! compat levels: a copy of the image at `--from` (the snapshot applied to a copy with
//! `qemu-img snapshot -a`, then flattened: `qemu-img convert -l` would read it at the
//! image's current size, which a resize since the snapshot changed), with the delta
//! committed into it (by `vdisk commit`, and by `qemu-img commit` as an independent judge),
//! reads as the image at `--to`; the delta holds every cluster whose contents differ and
//! only clusters that the history touched between the two states; `--list` names exactly
//! what the delta holds.

mod common;
mod delta_common;

use common::*;
use delta_common::*;
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
