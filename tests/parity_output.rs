//! What vdisk prints, compared with qemu-img on the same input: listings, sizes, refusals
//! and progress. Each test runs both tools on identical copies (`common::twins::Twins`) and
//! requires the same exit code and output, or names the difference it documents.

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::process::Output;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `args` run by both tools; same exit code, same error text and the same stdout once
/// each tool's directory is masked.
#[track_caller]
fn same_output(t: &Twins, args: &[&str]) -> (Output, Output) {
    let (q, v) = t.same_outcome(args);
    let mask = |tool, out: &Output| {
        stdout(out).replace(t.side(tool).to_str().expect("utf-8 path"), "<dir>")
    };
    assert_text_eq(
        &format!("stdout of {}", args.join(" ")),
        &mask(Tool::Vdisk, &v),
        &mask(Tool::Qemu, &q),
    );
    (q, v)
}

#[test]
fn snapshot_list_prints_nothing_for_images_without_snapshots() {
    let t = Twins::new();
    for (fmt, name) in [("qcow2", "a.qcow2"), ("raw", "a.raw"), ("vmdk", "a.vmdk")] {
        let src = t.work(name);
        qemu_img_ok(&["create", "-q", "-f", fmt, src.to_str().unwrap(), "1M"]);
        t.put(name, &src);
        let at = format!("@{name}");
        let (q, _) = same_output(&t, &["snapshot", "-l", &at]);
        assert!(q.status.success() && q.stdout.is_empty(), "{fmt}");
    }
}

#[test]
fn snapshot_list_prints_the_table_when_there_are_snapshots() {
    let t = Twins::new();
    let src = t.work("a.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "1M"]);
    qemu_img_ok(&["snapshot", "-c", "s1", src.to_str().unwrap()]);
    t.put("a.qcow2", &src);
    same_output(&t, &["snapshot", "-l", "@a.qcow2"]);
}

#[test]
fn create_accepts_the_sizes_qemu_img_accepts_and_refuses_the_others_with_its_message() {
    let t = Twins::new();
    for size in [
        "0x1000", "0X10B", "1.5M", ".5M", "1.M", "1.0", "1.3k", "+5", "0.0M",
    ] {
        same_output(&t, &["create", "-f", "raw", "@a.raw", size]);
    }
    for size in [
        "0x",
        "0x10k",
        "0x1.8",
        "1.5",
        "0.5",
        "1.5b",
        "1e3",
        "1k5",
        "00x10",
        "16E",
        "15.9E",
        "8E",
        "99999999999999999999",
    ] {
        let (q, _) = same_output(&t, &["create", "-f", "raw", "@a.raw", size]);
        assert!(!q.status.success(), "qemu-img accepted {size}");
    }
}

/// qemu-img finds these while creating the image, after it has printed its "Formatting"
/// line (and leaves an empty raw file behind for `preallocation=metadata`); vdisk refuses
/// them up front, with qemu-img's message and exit code, printing nothing on stdout.
#[test]
fn create_refuses_a_backing_format_without_a_backing_file_and_raw_metadata_preallocation() {
    let t = Twins::new();
    for args in [
        vec!["create", "-f", "qcow2", "-F", "raw", "@a.qcow2", "1M"],
        vec!["create", "-f", "raw", "-F", "raw", "@a.raw", "1M"],
        vec![
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=metadata",
            "@b.raw",
            "1M",
        ],
    ] {
        let (q, v) = t.same_outcome(&args);
        assert!(!q.status.success(), "{args:?}");
        assert_eq!(stdout(&v), "", "{args:?}");
    }
}
