//! qemu-img 10's long option names: every subcommand accepts them as qemu-img does, and a
//! command spelled with long options does what the same command with short options does
//! (each line runs qemu-img and vdisk on identical copies and compares the outcome).

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The guest contents of both tools' copies of `name` must be equal, and qemu-img must find
/// vdisk's copy clean.
#[track_caller]
fn same_image(t: &Twins, name: &str) {
    let (q, v) = (t.path(Tool::Qemu, name), t.path(Tool::Vdisk, name));
    assert_qemu_compare_identical(&q, &v);
    if name.ends_with(".qcow2") {
        assert_qemu_check_clean(&v);
    }
}

#[test]
fn every_subcommand_takes_qemu_img_long_option_names() {
    let t = Twins::new();
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "4M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x61 0 256k",
        "-c",
        "write -P 0x62 1M 64k",
        s(&src),
    ]);
    t.put("img.qcow2", &src);
    let steps: &[&[&str]] = &[
        &[
            "create",
            "--quiet",
            "--format",
            "qcow2",
            "--options",
            "cluster_size=4096",
            "@new.qcow2",
            "2M",
        ],
        &[
            "create",
            "--quiet",
            "--format",
            "qcow2",
            "--backing",
            "img.qcow2",
            "--backing-format",
            "qcow2",
            "@top.qcow2",
        ],
        // qemu-img 10.0.2 declares --create/--apply/--delete without an argument, so only
        // their short forms work there (vdisk takes both; see below).
        &[
            "snapshot",
            "--quiet",
            "--format",
            "qcow2",
            "-c",
            "one",
            "@img.qcow2",
        ],
        &["snapshot", "--quiet", "-a", "one", "@img.qcow2"],
        &["snapshot", "--quiet", "-d", "one", "@img.qcow2"],
        &[
            "check",
            "--quiet",
            "--format",
            "qcow2",
            "--repair",
            "leaks",
            "@img.qcow2",
        ],
        &[
            "compare",
            "--quiet",
            "--strict",
            "--a-format",
            "qcow2",
            "--b-format",
            "qcow2",
            "@img.qcow2",
            "@img.qcow2",
        ],
        // qemu-img 10.0.2 lists --target-format, --target-options and --compress in its help
        // but does not recognise them: their short forms here (vdisk takes both).
        &[
            "convert",
            "--quiet",
            "--source-format",
            "qcow2",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=65536",
            "-c",
            "--parallel",
            "2",
            "@img.qcow2",
            "@conv.qcow2",
        ],
        &["resize", "--quiet", "--format", "qcow2", "@new.qcow2", "3M"],
        &[
            "amend",
            "--quiet",
            "--format",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "@new.qcow2",
        ],
        // -o and --options name one option list everywhere (tools/vdisk/flags.rs).
        &["amend", "--options", "lazy_refcounts=off", "@new.qcow2"],
        &[
            "commit",
            "--quiet",
            "--format",
            "qcow2",
            "--drop",
            "@top.qcow2",
        ],
        &[
            "rebase",
            "--quiet",
            "--format",
            "qcow2",
            "--backing-unsafe",
            "--backing",
            "conv.qcow2",
            "--backing-format",
            "qcow2",
            "@top.qcow2",
        ],
    ];
    for step in steps {
        let (q, v) = t.same_outcome(step);
        assert!(
            q.status.success(),
            "{}",
            describe(&format!("qemu-img {step:?}"), &q)
        );
        assert_eq!(q.stdout, v.stdout, "stdout of {step:?}");
    }
    for name in ["new.qcow2", "top.qcow2", "img.qcow2", "conv.qcow2"] {
        same_image(&t, name);
    }
    // vdisk's own long forms of -c/-a/-d.
    let img = t.path(Tool::Vdisk, "img.qcow2");
    for step in [["--create", "two"], ["--apply", "two"], ["--delete", "two"]] {
        vdisk_ok(&["snapshot", step[0], step[1], s(&img)]);
    }
    assert_qemu_check_clean(&img);
    // Read-only commands on one file: the same output with long names.
    let conv = t.path(Tool::Qemu, "conv.qcow2");
    let img = t.path(Tool::Qemu, "img.qcow2");
    for step in [
        &["info", "--format", "qcow2", "--output", "json", s(&conv)][..],
        &["map", "--format", "qcow2", "--output", "json", s(&conv)][..],
        &["snapshot", "--list", s(&img)][..],
        &[
            "measure",
            "--target-format",
            "qcow2",
            "--format",
            "qcow2",
            "--output",
            "json",
            s(&conv),
        ][..],
        // Repeated option lists are joined in order (the last cluster_size wins), and
        // --options is the long name of -o.
        &[
            "measure",
            "-O",
            "qcow2",
            "--options",
            "cluster_size=4096",
            "-o",
            "cluster_size=65536",
            s(&conv),
        ][..],
    ] {
        assert_text_eq(&format!("{step:?}"), &vdisk_ok(step), &qemu_img_ok(step));
    }
}

#[test]
fn info_b_is_the_short_form_of_backing_chain() {
    let dir = tempdir();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    for output in ["human", "json"] {
        let args = ["info", "-b", "--output", output, s(&top)];
        assert_text_eq(
            &format!("info -b --output {output}"),
            &vdisk_ok(&args),
            &qemu_img_ok(&args),
        );
    }
}
