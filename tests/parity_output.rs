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
