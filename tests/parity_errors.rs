//! Refusals worded as qemu-img words them, run side by side with qemu-img on copies of
//! the same small images: a file forced to a format it is not in (`-f qcow2` on a raw
//! file, ...) for every command that opens one, snapshots and bitmaps on images that
//! cannot hold them, rebase and commit refusals, command lines missing their file
//! operands, and the remaining bad values of map, compare, dd, bench and resize. Each case
//! must be refused by qemu-img, with vdisk giving the same exit code and error text.

mod common;

use common::twins::Twins;
use common::*;

/// Small images of every format, made by qemu-img, in both tools' directories: `r.raw`,
/// `q.qcow2` (snapshot `s1`), `b.qcow2` (bitmap `b1`), `v2.qcow2` (compat 0.10),
/// `ov.qcow2` over `q.qcow2`, `ov2.qcow2` over `ov.qcow2`, `k.vmdk`, `p.vhd`, `d.vdi`,
/// `x.vhdx`.
fn images() -> Twins {
    let t = Twins::new();
    let make = |name: &str, args: &[&str]| {
        let path = t.work(name);
        let mut all = vec!["create", "-q"];
        all.extend_from_slice(args);
        all.extend([s(&path), "1M"]);
        qemu_img_ok(&all);
        path
    };
    make("r.raw", &["-f", "raw"]);
    let q = make("q.qcow2", &["-f", "qcow2"]);
    qemu_img_ok(&["snapshot", "-c", "s1", s(&q)]);
    let b = make("b.qcow2", &["-f", "qcow2"]);
    qemu_img_ok(&["bitmap", "--add", s(&b), "b1"]);
    make("v2.qcow2", &["-f", "qcow2", "-o", "compat=0.10"]);
    make("k.vmdk", &["-f", "vmdk"]);
    make("p.vhd", &["-f", "vpc"]);
    make("d.vdi", &["-f", "vdi"]);
    make("x.vhdx", &["-f", "vhdx"]);
    for name in ["r.raw", "q.qcow2", "b.qcow2", "v2.qcow2"] {
        t.put(name, &t.work(name));
    }
    for name in ["k.vmdk", "p.vhd", "d.vdi", "x.vhdx"] {
        t.put(name, &t.work(name));
    }
    // The overlays name their backing files relatively, so both copies find their own.
    for (name, base) in [("ov.qcow2", "q.qcow2"), ("ov2.qcow2", "ov.qcow2")] {
        let path = t.work(name);
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base,
            "-F",
            "qcow2",
            s(&path),
            "1M",
        ]);
        t.put(name, &path);
    }
    t
}

/// Run each case (a command line) with both tools: qemu-img must refuse it, and vdisk
/// must refuse it with the same exit code and error text.
#[track_caller]
fn refused_alike(t: &Twins, cases: &[&[&str]]) {
    for args in cases {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success(), "qemu-img accepted {args:?}");
    }
}

/// `-f FMT` on a file of another format: `Could not open 'X': ` and the format's own
/// words (VHDX has none: the open fails with EINVAL), for every command that opens it.
#[test]
fn a_file_forced_to_a_format_it_is_not_in_is_refused_as_qemu_img_refuses_it() {
    let t = images();
    let forced: &[(&str, &str)] = &[
        ("qcow2", "r.raw"),
        ("qcow2", "k.vmdk"),
        ("vmdk", "r.raw"),
        ("vmdk", "p.vhd"),
        ("vpc", "q.qcow2"),
        ("vpc", "d.vdi"),
        ("vdi", "r.raw"),
        ("vdi", "x.vhdx"),
        ("vdi", "q.qcow2"),
        ("vhdx", "q.qcow2"),
        ("vhdx", "d.vdi"),
    ];
    for &(fmt, file) in forced {
        let img = format!("@{file}");
        for cmd in ["info", "map", "check"] {
            refused_alike(&t, &[&[cmd, "-f", fmt, &img]]);
        }
    }
    refused_alike(
        &t,
        &[
            &["compare", "-f", "qcow2", "@r.raw", "@q.qcow2"],
            &["compare", "-F", "qcow2", "@q.qcow2", "@r.raw"],
            &["compare", "-F", "vpc", "@q.qcow2", "@r.raw"],
            &["bench", "-f", "qcow2", "@r.raw"],
            &["bench", "-f", "vdi", "@q.qcow2"],
            &["resize", "-f", "qcow2", "@r.raw", "2M"],
            &["snapshot", "-l", "-f", "qcow2", "@r.raw"],
            &["snapshot", "-c", "s", "-f", "vmdk", "@r.raw"],
            &["commit", "-f", "qcow2", "@r.raw"],
            &["measure", "-f", "qcow2", "-O", "raw", "@r.raw"],
            &["amend", "-f", "qcow2", "-o", "compat=1.1", "@r.raw"],
            &["convert", "-f", "vpc", "-O", "raw", "@r.raw", "@o.raw"],
            &["rebase", "-f", "qcow2", "-u", "-b", "", "@r.raw"],
            &["bitmap", "-f", "qcow2", "--add", "@r.raw", "b"],
            &["dd", "-f", "vpc", "if=@q.qcow2", "of=@o.raw"],
        ],
    );
}

/// `-f NAME` naming no format: `Could not open 'X': Unknown driver 'NAME'` (compare exits
/// 2, as for every failed open).
#[test]
fn an_unknown_format_name_fails_the_open_as_in_qemu_img() {
    let t = images();
    refused_alike(
        &t,
        &[
            &["info", "-f", "bogus", "@q.qcow2"],
            &["info", "-f", "bogus", "@nx"],
            &["map", "-f", "bogus", "@q.qcow2"],
            &["check", "-f", "bogus", "@q.qcow2"],
            &["commit", "-f", "bogus", "@ov.qcow2"],
            &["resize", "-f", "bogus", "@q.qcow2", "2M"],
            &["snapshot", "-l", "-f", "bogus", "@q.qcow2"],
            &["snapshot", "-c", "s", "-f", "bogus", "@q.qcow2"],
            &["amend", "-f", "bogus", "-o", "compat=1.1", "@q.qcow2"],
            &["bitmap", "-f", "bogus", "--add", "@q.qcow2", "b"],
            &["rebase", "-f", "bogus", "-u", "-b", "", "@q.qcow2"],
            &["bench", "-f", "bogus", "@q.qcow2"],
            &["compare", "-f", "bogus", "@q.qcow2", "@r.raw"],
            &["compare", "-F", "bogus", "@q.qcow2", "@q.qcow2"],
        ],
    );
}

/// An empty file name fails its open: `Could not open '': The 'file' block driver
/// requires a file name`.
#[test]
fn an_empty_file_name_fails_the_open_as_in_qemu_img() {
    let t = images();
    refused_alike(
        &t,
        &[
            &["info", ""],
            &["info", "--output=json", ""],
            &["check", ""],
            &["map", "-f", "raw", ""],
            &["snapshot", "-l", ""],
            &["resize", "", "1M"],
            &["compare", "", ""],
            &["convert", "-O", "raw", "", "@o.raw"],
            &["bench", ""],
            &["dd", "if=", "of=@o.raw"],
        ],
    );
}

/// Snapshots and bitmaps where there can be none, or where the name is wrong.
#[test]
fn snapshot_and_bitmap_refusals_read_as_in_qemu_img() {
    let t = images();
    refused_alike(
        &t,
        &[
            &["snapshot", "-c", "s", "@k.vmdk"],
            &["snapshot", "-c", "s", "@p.vhd"],
            &["snapshot", "-c", "s", "-f", "raw", "@r.raw"],
            &["snapshot", "-d", "s", "@k.vmdk"],
            &["snapshot", "-a", "s", "@k.vmdk"],
            &["snapshot", "-d", "", "@q.qcow2"],
            &["snapshot", "-a", "99", "@q.qcow2"],
            &["bitmap", "--add", "@b.qcow2", ""],
            &["bitmap", "--add", "@b.qcow2", "b1"],
            &["bitmap", "--add", "-g", "100", "@b.qcow2", "c"],
            &["bitmap", "--remove", "@b.qcow2", "nx"],
            &["bitmap", "--clear", "@b.qcow2", "nx"],
            &["bitmap", "--enable", "@b.qcow2", "nx"],
            &["bitmap", "--merge", "nx", "@b.qcow2", "b1"],
            &[
                "bitmap", "--merge", "nx", "-b", "@q.qcow2", "@b.qcow2", "b1",
            ],
            &["bitmap", "--merge", "b1", "-b", "@nx", "@b.qcow2", "b1"],
        ],
    );
}

/// rebase (a new backing file that does not open, -F that names no format, no -b in
/// safe mode), commit (no backing file, a base outside the chain) and amend's downgrade.
#[test]
fn rebase_and_commit_refusals_read_as_in_qemu_img() {
    let t = images();
    refused_alike(
        &t,
        &[
            &["rebase", "-b", "@nx", "-F", "qcow2", "@ov.qcow2"],
            &["rebase", "-b", "@nx", "@ov.qcow2"],
            &["rebase", "-b", "@r.raw", "-F", "qcow2", "@ov.qcow2"],
            &["rebase", "-b", "@r.raw", "-F", "vmdk", "@ov.qcow2"],
            &["rebase", "-b", "@q.qcow2", "@ov.qcow2"],
            &["rebase", "-u", "-b", "@q.qcow2", "@ov.qcow2"],
            &["rebase", "-b", "@q.qcow2", "-F", "bogus", "@ov.qcow2"],
            &["rebase", "-b", "@q.qcow2", "-F", "qcow2", "@k.vmdk"],
            &["rebase", "@ov.qcow2"],
            &["commit", "@q.qcow2"],
            &["commit", "@k.vmdk"],
            &["commit", "-f", "raw", "@ov.qcow2"],
            &["commit", "-b", "@r.raw", "@ov2.qcow2"],
            &["commit", "-b", "@ov2.qcow2", "@ov2.qcow2"],
            &["commit", "-b", "@nx", "@ov2.qcow2"],
        ],
    );
    // A downgrade both snapshots and bitmaps refuse reads as qemu-img's snapshot refusal.
    let sb = t.work("sb.qcow2");
    std::fs::copy(t.work("q.qcow2"), &sb).unwrap();
    qemu_img_ok(&["bitmap", "--add", s(&sb), "b"]);
    qemu_img_ok(&["resize", "-q", s(&sb), "2M"]);
    t.put("sb.qcow2", &sb);
    refused_alike(&t, &[&["amend", "-o", "compat=0.10", "@sb.qcow2"]]);
    // Unsafe mode may leave -b out: the backing file is removed, as by qemu-img.
    let (q, _) = t.same_outcome(&["rebase", "-u", "@ov.qcow2"]);
    assert!(q.status.success());
    for tool in [common::twins::Tool::Qemu, common::twins::Tool::Vdisk] {
        let info = qemu_img_ok(&["info", s(&t.path(tool, "ov.qcow2"))]);
        assert!(!info.contains("backing file"), "{tool:?}: {info}");
    }
}

/// A command line without its file operands: qemu-img's words instead of clap's.
#[test]
fn missing_file_operands_read_as_in_qemu_img() {
    let t = images();
    refused_alike(
        &t,
        &[
            &["info"],
            &["check"],
            &["map"],
            &["snapshot", "-l"],
            &["commit"],
            &["rebase", "-u"],
            &["rebase", "-b", "x"],
            &["bench"],
            &["create"],
            &["create", "-f", "qcow2"],
            &["compare"],
            &["compare", "@q.qcow2"],
            &["resize"],
            &["resize", "@q.qcow2"],
            &["bitmap", "--add"],
            &["bitmap", "--add", "@q.qcow2"],
            &["convert"],
        ],
    );
}

/// The remaining bad values: map's range, compare's strict mode, dd's output, bench's
/// numbers and resize's preallocation and shrinking.
#[test]
fn bad_values_of_map_compare_dd_bench_and_resize_read_as_in_qemu_img() {
    let t = images();
    std::fs::write(t.work("r2.raw"), vec![0u8; 2 << 20]).unwrap();
    t.put("r2.raw", &t.work("r2.raw"));
    refused_alike(
        &t,
        &[
            &["map", "--start-offset=-1", "@q.qcow2"],
            &["map", "--start-offset=x", "@q.qcow2"],
            &["map", "--max-length=-1", "@q.qcow2"],
            &["map", "--max-length=x", "@q.qcow2"],
            &["compare", "-s", "@r.raw", "@r2.raw"],
            &["compare", "-f", "raw", "-F", "qcow2", "@q.qcow2", "@r.raw"],
            &["dd", "if=@q.qcow2", "of=@nodir/o.raw"],
            &["bench", "-c", "x", "@q.qcow2"],
            &["bench", "-c", "0", "@q.qcow2"],
            &["bench", "-d", "0", "@q.qcow2"],
            &["bench", "-o", "-1", "@q.qcow2"],
            &["bench", "-S", "x", "@q.qcow2"],
            &["bench", "-s", "0", "@q.qcow2"],
            &["bench", "-w", "-U", "@q.qcow2"],
            &["bench", "-w", "--pattern=300", "@q.qcow2"],
            &["resize", "@q.qcow2", "512k"],
            &["resize", "@q.qcow2", "0"],
            &[
                "resize",
                "-f",
                "raw",
                "--preallocation=metadata",
                "@r.raw",
                "2M",
            ],
            &[
                "resize",
                "-f",
                "raw",
                "--preallocation=bogus",
                "@r.raw",
                "2M",
            ],
            &["resize", "@k.vmdk", "2M"],
            &["resize", "--shrink", "@x.vhdx", "512k"],
            &["resize", "@d.vdi", "512k"],
            &["check", "-r", "all", "@p.vhd"],
            &["check", "-r", "all", "@k.vmdk"],
        ],
    );
}
