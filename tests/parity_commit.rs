//! Data safety of `commit`, `resize` and `amend -o size` (and of the other operations
//! that decide "the target already reads zeros": rebase, convert -B) on backing chains of
//! three and more images (issue 12), against qemu-img as the oracle.
//!
//! Every case builds its chain with qemu-img and qemu-io, copies the whole directory twice,
//! runs qemu-img on one copy and vdisk on the other with the same arguments, and then
//! requires that both tools succeeded or both refused, that every image of the chain reads
//! the same guest contents (and has the same size) in the two copies, and that
//! `qemu-img check` finds vdisk's images clean.

mod common;

use common::twins::{Tool, Twins};
use common::{
    assert_bytes_eq, assert_qemu_check_clean, qemu_img_ok, qemu_io_ok, qemu_raw_contents, run_cases,
};
use std::path::PathBuf;

/// A chain built once in the work directory of [`Twins`], then copied to both sides.
struct Twin {
    t: Twins,
}

impl Twin {
    fn new() -> Twin {
        Twin { t: Twins::new() }
    }

    fn input(&self) -> PathBuf {
        self.t.work("")
    }

    /// `name` in the input (`"input"`) or in one tool's copy (`"qemu"`, `"vdisk"`).
    fn path(&self, side: &str, name: &str) -> PathBuf {
        match side {
            "qemu" => self.t.path(Tool::Qemu, name),
            "vdisk" => self.t.path(Tool::Vdisk, name),
            _ => self.t.work(name),
        }
    }

    /// `qemu-img create -f qcow2` in the input: `opts` for `-o` (may be empty), an
    /// optional backing image (recorded as qcow2, by its relative name) and size.
    fn create(&self, name: &str, opts: &str, backing: Option<&str>, size: Option<&str>) {
        let p = self.path("input", name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        if let Some(b) = backing {
            args.extend(["-b", b, "-F", "qcow2"]);
        }
        args.push(p.to_str().expect("UTF-8 path"));
        args.extend(size);
        qemu_img_ok(&args);
    }

    /// Run qemu-io commands on an input image.
    fn io(&self, name: &str, cmds: &[&str]) {
        let p = self.path("input", name);
        let mut args = vec![];
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push(p.to_str().expect("UTF-8 path"));
        qemu_io_ok(&args);
    }

    /// Copy the input to both sides, run `args` (every `*.qcow2` argument names an image
    /// in the side's directory) with qemu-img and with vdisk, and compare `images`.
    /// Returns the two tools' stderr (qemu-img first) when both failed.
    #[track_caller]
    fn run_both(&self, args: &[&str], images: &[&str]) -> Option<(String, String)> {
        for e in std::fs::read_dir(self.input()).expect("listing the input") {
            let e = e.expect("listing the input");
            self.t.put(&e.file_name().to_string_lossy(), &e.path());
        }
        let args_at: Vec<String> = args
            .iter()
            .map(|a| match a.ends_with(".qcow2") {
                true => format!("@{a}"),
                false => a.to_string(),
            })
            .collect();
        let args_at: Vec<&str> = args_at.iter().map(String::as_str).collect();
        let (q, v) = self.t.run(&args_at);
        assert_eq!(
            v.status.success(),
            q.status.success(),
            "{args:?}: qemu-img {} but vdisk {}\n{}\n{}",
            q.status,
            v.status,
            common::describe("qemu-img", &q),
            common::describe("vdisk", &v)
        );
        for name in images {
            let (qi, vi) = (self.path("qemu", name), self.path("vdisk", name));
            assert_qemu_check_clean(&vi);
            let scratch = self.input();
            assert_bytes_eq(
                &format!("{args:?}: guest contents of {name} (vdisk vs qemu-img)"),
                &qemu_raw_contents(&vi, &scratch),
                &qemu_raw_contents(&qi, &scratch),
            );
        }
        (!q.status.success()).then(|| {
            (
                String::from_utf8_lossy(&q.stderr).into_owned(),
                String::from_utf8_lossy(&v.stderr).into_owned(),
            )
        })
    }
}

/// Both tools succeeded.
#[track_caller]
fn both_succeed(outcome: Option<(String, String)>) {
    if let Some((q, v)) = outcome {
        panic!("both failed:\nqemu-img: {q}\nvdisk: {v}");
    }
}

/// Both tools refused, and vdisk said why in qemu-img's words.
#[track_caller]
fn both_refuse(outcome: Option<(String, String)>, qemu_says: &str, vdisk_says: &str) {
    let (q, v) = outcome.expect("both tools should have refused");
    assert!(q.contains(qemu_says), "qemu-img said: {q}");
    assert!(v.contains(vdisk_says), "vdisk said: {v}");
}

/// qemu-io commands that zero 0..64k, or part of it, in different ways, with the top's
/// `-o` options: with 4 KiB clusters in the top, zeroing 4k..12k makes zero clusters
/// there that cover only part of a 64 KiB cluster of the base.
const ZEROINGS: [(&str, &str); 4] = [
    ("write -z 0 64k", ""),
    ("write -z -u 0 64k", ""),
    ("discard 0 64k", ""),
    ("write -z 4k 8k", "cluster_size=4096"),
];

#[test]
fn commit_keeps_the_top_zeroed_clusters_zero_in_a_base_that_has_its_own_backing_file() {
    // base (0x0b) <- mid (compat varies) <- [m2 <-] top, top zeroes part of the disk.
    // Plain commit and -d commit into mid; -b mid commits through m2 into mid.
    let mut cases = vec![];
    for (zeroing, top_opts) in ZEROINGS {
        for compat in ["1.1", "0.10"] {
            for mode in ["", "-d", "-b"] {
                cases.push((zeroing, top_opts, compat, mode));
            }
        }
    }
    run_cases(
        "commit of zeroed clusters",
        &cases,
        |&(zeroing, top_opts, compat, mode)| {
            let t = Twin::new();
            t.create("base.qcow2", "", None, Some("1M"));
            t.io("base.qcow2", &["write -P 0x0b 0 1M"]);
            t.create(
                "mid.qcow2",
                &format!("compat={compat}"),
                Some("base.qcow2"),
                None,
            );
            let top_backing = if mode == "-b" {
                t.create("m2.qcow2", "", Some("mid.qcow2"), None);
                t.io("m2.qcow2", &["write -P 0xcc 0 256k"]);
                "m2.qcow2"
            } else {
                "mid.qcow2"
            };
            t.create("top.qcow2", top_opts, Some(top_backing), None);
            t.io("top.qcow2", &["write -P 0xdd 128k 64k", zeroing]);
            let args: Vec<&str> = match mode {
                "" => vec!["commit", "-q", "top.qcow2"],
                "-d" => vec!["commit", "-q", "-d", "top.qcow2"],
                _ => vec!["commit", "-q", "-b", "mid.qcow2", "top.qcow2"],
            };
            both_succeed(t.run_both(&args, &["mid.qcow2", "top.qcow2"]));
        },
    );
}

#[test]
fn commit_fills_the_rest_of_a_partly_written_base_cluster_from_the_base_backing_file() {
    // root (0x11) <- mid (64 KiB clusters) <- top (4 KiB clusters): 4 KiB in the middle of
    // one of mid's clusters; the rest of that cluster must keep reading root's data.
    let t = Twin::new();
    t.create("root.qcow2", "", None, Some("1M"));
    t.io("root.qcow2", &["write -P 0x11 0 1M"]);
    t.create("mid.qcow2", "cluster_size=65536", Some("root.qcow2"), None);
    t.create("top.qcow2", "cluster_size=4096", Some("mid.qcow2"), None);
    t.io("top.qcow2", &["write -P 0xbb 0x9000 4k"]);
    both_succeed(t.run_both(&["commit", "-q", "top.qcow2"], &["mid.qcow2", "top.qcow2"]));
}

#[test]
fn commit_b_through_a_shorter_intermediate_zeroes_what_the_top_read_as_zeros() {
    // root (0x11, 4M) <- mid <- short (2M) <- top (4M): top reads zeros past short's end,
    // so committing into mid must hide root's data there.
    let t = Twin::new();
    t.create("root.qcow2", "", None, Some("4M"));
    t.io("root.qcow2", &["write -P 0x11 0 4M"]);
    t.create("mid.qcow2", "", Some("root.qcow2"), None);
    t.create("short.qcow2", "", Some("mid.qcow2"), Some("2M"));
    t.create("top.qcow2", "", Some("short.qcow2"), Some("4M"));
    t.io("top.qcow2", &["write -P 0xbb 0 64k"]);
    both_succeed(t.run_both(
        &["commit", "-q", "-b", "mid.qcow2", "top.qcow2"],
        &["mid.qcow2", "short.qcow2", "top.qcow2"],
    ));
}

#[test]
fn commit_that_grows_the_base_zeroes_the_new_area_instead_of_showing_the_base_backing() {
    // root (0x11, 4M) <- mid (2M) <- top (4M). A compat=0.10 mid cannot hide root's data
    // in the area the commit adds: qemu-img's commit fails and changes nothing.
    for compat in ["1.1", "0.10"] {
        let t = Twin::new();
        t.create("root.qcow2", "", None, Some("4M"));
        t.io("root.qcow2", &["write -P 0x11 0 4M"]);
        t.create(
            "mid.qcow2",
            &format!("compat={compat}"),
            Some("root.qcow2"),
            Some("2M"),
        );
        t.create("top.qcow2", "", Some("mid.qcow2"), Some("4M"));
        t.io(
            "top.qcow2",
            &["write -P 0xbb 0 64k", "write -P 0xcc 3M 64k"],
        );
        let outcome = t.run_both(&["commit", "-q", "top.qcow2"], &["mid.qcow2", "top.qcow2"]);
        if compat == "1.1" {
            both_succeed(outcome);
        } else {
            both_refuse(
                outcome,
                "Operation not supported",
                "Failed to zero out new clusters",
            );
        }
    }
}

/// root (0x11, 4M) <- mid (4M, 0x33 at 3M) <- top (`compat`, `top_size`, 0x22 in 1M..2M
/// when it is that large).
fn resize_input(compat: &str, top_size: &str) -> Twin {
    let t = Twin::new();
    t.create("root.qcow2", "", None, Some("4M"));
    t.io("root.qcow2", &["write -P 0x11 0 4M"]);
    t.create("mid.qcow2", "", Some("root.qcow2"), None);
    t.io("mid.qcow2", &["write -P 0x33 3M 64k"]);
    t.create(
        "top.qcow2",
        &format!("compat={compat}"),
        Some("mid.qcow2"),
        Some(top_size),
    );
    if top_size == "2M" {
        t.io("top.qcow2", &["write -P 0x22 1M 1M"]);
    }
    t
}

#[test]
fn growing_an_overlay_over_a_longer_backing_reads_zeros_in_the_new_area() {
    // resize and amend -o size, from a cluster-aligned size, from inside a cluster, and
    // within one cluster. compat=0.10 has no zero clusters: qemu-img refuses unless the
    // growth stays inside the old last cluster (then explicit zeros do).
    let mut cases = vec![];
    for compat in ["1.1", "0.10"] {
        for (from, to) in [("2M", "4M"), ("2064896", "4M"), ("2064896", "2080768")] {
            for amend in [false, true] {
                cases.push((compat, from, to, amend));
            }
        }
    }
    run_cases(
        "grow over a longer backing",
        &cases,
        |&(compat, from, to, amend)| {
            let t = resize_input(compat, from);
            let size_opt = format!("size={to}");
            let args: Vec<&str> = if amend {
                vec!["amend", "-o", &size_opt, "top.qcow2"]
            } else {
                vec!["resize", "-q", "top.qcow2", to]
            };
            let outcome = t.run_both(&args, &["top.qcow2"]);
            if compat == "0.10" && to == "4M" {
                both_refuse(
                    outcome,
                    "Failed to zero out new clusters",
                    "Failed to zero out new clusters",
                );
            } else {
                both_succeed(outcome);
            }
        },
    );
}

#[test]
fn growing_after_a_shrink_inside_a_cluster_zeroes_the_old_tail_as_qemu_img_does() {
    // top (2M, data up to its end) shrunk to 2M-32k, inside a 64 KiB cluster, then grown
    // with each preallocation mode, over the longer chain and with no backing at all.
    // Without a backing, qemu-img keeps the old tail for off and metadata (vdisk must do
    // the same) and zeroes it for falloc and full (fresh clusters).
    let mut cases = vec![];
    for compat in ["1.1", "0.10"] {
        for prealloc in ["off", "metadata", "falloc", "full"] {
            for backing in [true, false] {
                cases.push((compat, prealloc, backing));
            }
        }
    }
    run_cases(
        "shrink then grow",
        &cases,
        |&(compat, prealloc, backing)| {
            let t = resize_input(compat, "2M");
            if !backing {
                std::fs::remove_file(t.path("input", "top.qcow2")).expect("removing top");
                t.create("top.qcow2", &format!("compat={compat}"), None, Some("2M"));
                t.io("top.qcow2", &["write -P 0x22 1M 1M"]);
            }
            let top = t.path("input", "top.qcow2");
            qemu_img_ok(&["resize", "-q", "--shrink", top.to_str().unwrap(), "2064896"]);
            let mode = format!("--preallocation={prealloc}");
            let outcome = t.run_both(&["resize", "-q", &mode, "top.qcow2", "4M"], &["top.qcow2"]);
            if backing && compat == "0.10" && matches!(prealloc, "off" | "metadata") {
                both_refuse(
                    outcome,
                    "Failed to zero out new clusters",
                    "Failed to zero out new clusters",
                );
            } else {
                both_succeed(outcome);
            }
        },
    );
}

#[test]
fn rebase_and_convert_b_keep_zeros_that_hide_backing_data() {
    // Audit of the other operations that decide "the target already reads zeros": root
    // (0x11) <- mid (data, zero clusters, a discarded range) <- top; rebasing top onto root
    // or flattening it must keep mid's zeros, and convert -B onto a flat copy of mid must
    // keep top's own zeros, for compat=0.10 and 1.1 targets and small clusters.
    let mut cases = vec![];
    for compat in ["1.1", "0.10"] {
        for cluster in ["65536", "4096"] {
            for op in ["rebase", "flatten", "convert"] {
                cases.push((compat, cluster, op));
            }
        }
    }
    run_cases(
        "zeros over backing data",
        &cases,
        |&(compat, cluster, op)| {
            let t = Twin::new();
            t.create("root.qcow2", "", None, Some("2M"));
            t.io("root.qcow2", &["write -P 0x11 0 2M"]);
            t.create("mid.qcow2", "", Some("root.qcow2"), None);
            t.io(
                "mid.qcow2",
                &[
                    "write -P 0x22 512k 512k",
                    "write -z 0 64k",
                    "discard 128k 64k",
                    "write -z 600k 4k",
                ],
            );
            let opts = format!("compat={compat},cluster_size={cluster}");
            if op == "convert" {
                let (mid, flat) = (t.path("input", "mid.qcow2"), t.path("input", "flat.qcow2"));
                qemu_img_ok(&[
                    "convert",
                    "-O",
                    "qcow2",
                    mid.to_str().unwrap(),
                    flat.to_str().unwrap(),
                ]);
                t.create("top.qcow2", "", Some("mid.qcow2"), None);
                t.io(
                    "top.qcow2",
                    &[
                        "write -P 0xcc 1M 64k",
                        "write -z 1M 4k",
                        "write -z 512k 128k",
                    ],
                );
                let args = [
                    "convert",
                    "-O",
                    "qcow2",
                    "-o",
                    &opts,
                    "-B",
                    "flat.qcow2",
                    "-F",
                    "qcow2",
                    "top.qcow2",
                    "out.qcow2",
                ];
                both_succeed(t.run_both(&args, &["out.qcow2"]));
            } else {
                t.create("top.qcow2", &opts, Some("mid.qcow2"), None);
                t.io("top.qcow2", &["write -P 0xcc 1M 64k"]);
                let args: Vec<&str> = if op == "rebase" {
                    vec!["rebase", "-b", "root.qcow2", "-F", "qcow2", "top.qcow2"]
                } else {
                    vec!["rebase", "-b", "", "top.qcow2"]
                };
                both_succeed(t.run_both(&args, &["top.qcow2"]));
            }
        },
    );
}
