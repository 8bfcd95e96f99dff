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

/// The line of `text` that starts with `key`.
fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no '{key}' line in:\n{text}"))
}

#[test]
fn info_prints_1000_to_1023_units_as_a_fraction_of_the_next_unit() {
    let t = Twins::new();
    // 1000 KiB, 999.5 KiB (qemu-img's %0.3g rounds it to 1e+03), 1023 KiB, 1023.5 KiB,
    // 1000 MiB, 1023 MiB, 100.5 KiB (a tie, rounded to even) and 9.77 MiB.
    for size in [
        1_024_000u64,
        1_023_488,
        1_047_552,
        1_048_064,
        1_048_576_000,
        1_072_693_248,
        102_912,
        10_240_000,
    ] {
        let name = format!("{size}.raw");
        let src = t.work(&name);
        std::fs::File::create(&src)
            .and_then(|f| f.set_len(size))
            .expect("making a sparse raw image");
        t.put(&name, &src);
        let at = format!("@{name}");
        let (q, v) = t.same_outcome(&["info", "-f", "raw", &at]);
        assert_text_eq(
            &format!("virtual size of a {size}-byte image"),
            line(&stdout(&v), "virtual size:"),
            line(&stdout(&q), "virtual size:"),
        );
    }
}

#[test]
fn info_says_a_dirty_qcow2_image_was_not_cleanly_shut_down() {
    let t = Twins::new();
    let src = t.work("dirty.qcow2");
    let p = src.to_str().unwrap();
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        p,
        "1M",
    ]);
    // qemu-io kills itself with the image open: the dirty bit stays set.
    let killed = qemu_io(["-c", "write 0 64k", "-c", "sigraise 9", p]);
    assert!(!killed.status.success(), "{}", describe("qemu-io", &killed));
    t.put("dirty.qcow2", &src);
    let (q, _) = same_output(&t, &["info", "@dirty.qcow2"]);
    assert!(stdout(&q).contains("\ncleanly shut down: no\n"));
}

/// A 4 MiB qcow2 base with 1 MiB written and an empty qcow2 overlay on it, in both
/// directories as `base.qcow2` and `top.qcow2`.
fn base_and_overlay(t: &Twins) {
    let base = t.work("base.qcow2");
    let b = base.to_str().unwrap();
    qemu_img_ok(&["create", "-q", "-f", "qcow2", b, "4M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 7 0 1M", b]);
    t.put("base.qcow2", &base);
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        let base = t.path(tool, "base.qcow2");
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ]);
    }
}

#[test]
fn quiet_silences_the_progress_of_convert_commit_and_rebase() {
    let t = Twins::new();
    base_and_overlay(&t);
    for args in [
        vec![
            "convert",
            "-q",
            "-p",
            "-O",
            "raw",
            "@base.qcow2",
            "@out.raw",
        ],
        vec![
            "convert",
            "-p",
            "-q",
            "-O",
            "raw",
            "@base.qcow2",
            "@out.raw",
        ],
        vec!["commit", "-q", "-p", "@top.qcow2"],
        vec!["rebase", "-q", "-p", "-b", "", "@top.qcow2"],
    ] {
        let (q, v) = same_output(&t, &args);
        assert!(q.status.success() && q.stdout.is_empty() && v.stdout.is_empty());
    }
}

#[test]
fn convert_takes_1_to_16_coroutines_and_refuses_others_with_qemu_img_message() {
    let t = Twins::new();
    base_and_overlay(&t);
    for m in ["1", "16", " 2", "+3", "0x2", "010"] {
        let (q, _) = same_output(
            &t,
            &["convert", "-m", m, "-O", "raw", "@base.qcow2", "@o.raw"],
        );
        assert!(q.status.success(), "-m {m}");
    }
    for m in [
        "0",
        "17",
        "-1",
        "x",
        "1x",
        "2.0",
        "08",
        "",
        "4k",
        "99999999999999999999",
    ] {
        let (q, _) = same_output(
            &t,
            &["convert", "-m", m, "-O", "raw", "@base.qcow2", "@o.raw"],
        );
        assert!(!q.status.success(), "-m {m}");
    }
}

/// Images for `compare`, in both directories: `a` (2 MiB, zeros written over its first
/// 64 KiB), `b` (3 MiB, empty), `c` (3 MiB, one byte at 2 MiB + 12345), `d` (2 MiB, one
/// byte at 12345), `e` (2 MiB, zeros over its first 1 MiB and one byte at 700000).
fn compare_inputs(t: &Twins) {
    let make = |name: &str, size: &str, writes: &[&str]| {
        let p = t.work(name);
        let ps = p.to_str().unwrap();
        qemu_img_ok(&["create", "-q", "-f", "qcow2", ps, size]);
        for w in writes {
            qemu_io_ok(&["-f", "qcow2", "-c", w, ps]);
        }
        t.put(name, &p);
    };
    make("a", "2M", &["write -P 0 0 64k"]);
    make("b", "3M", &[]);
    make("c", "3M", &["write -P 1 2109441 1"]);
    make("d", "2M", &["write -P 1 12345 1"]);
    make("e", "2M", &["write -P 0 0 1M", "write -P 1 700000 1"]);
}

#[test]
fn compare_reports_the_sector_of_the_first_difference_as_qemu_img() {
    let t = Twins::new();
    compare_inputs(&t);
    for args in [
        vec!["compare", "@a", "@b"],
        vec!["compare", "@a", "@c"],
        vec!["compare", "@c", "@a"],
        vec!["compare", "@a", "@d"],
        vec!["compare", "@d", "@e"],
        vec!["compare", "@e", "@a"],
        vec!["compare", "-s", "@a", "@c"],
        vec!["compare", "-s", "@a", "@e"],
    ] {
        same_output(&t, &args);
    }
}

/// qemu-img's bar advances as its own chunks complete and prints the size-mismatch warning
/// between the common part and the tail; where neither shows, the output is the same
/// byte for byte: the bar starts at 0%, reaches 100% only for identical images, and a
/// newline follows the message.
#[test]
fn compare_progress_frames_the_message_as_qemu_img_and_quiet_silences_it() {
    let t = Twins::new();
    compare_inputs(&t);
    for args in [
        vec!["compare", "-p", "@a", "@d"],
        vec!["compare", "-p", "@a", "@a"],
        vec!["compare", "-p", "@d", "@d"],
        vec!["compare", "-p", "-s", "@a", "@c"],
        vec!["compare", "-p", "-s", "@a", "@e"],
        vec!["compare", "-p", "-q", "@a", "@d"],
    ] {
        same_output(&t, &args);
    }
}

/// qemu-img -s compares whole block statuses, whose end-of-file flag sets a run that
/// reaches the end of the image apart from one that stops short of it: an image with a
/// zero cluster differs at offset 0 from an empty one, and an overlay differs from its
/// backing file where the overlay's own allocation cuts an unallocated run short.
/// (VMDK statuses, which qemu-img gives one grain at a time, are not modelled.)
#[test]
fn strict_compare_reports_the_offset_where_qemu_img_block_status_differs() {
    let t = Twins::new();
    let make = |name: &str, writes: &[&str]| {
        let p = t.work(name);
        let ps = p.to_str().unwrap();
        qemu_img_ok(&["create", "-q", "-f", "qcow2", ps, "2M"]);
        for w in writes {
            qemu_io_ok(&["-f", "qcow2", "-c", w, ps]);
        }
        t.put(name, &p);
    };
    make("zero-cluster", &["write -z 64k 64k"]);
    make("empty", &[]);
    make("two", &["write -P 1 0 64k", "write -P 1 1M 64k"]);
    make("one", &["write -P 1 0 64k"]);
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top");
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "one",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ]);
        qemu_io_ok(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 2 1M 1",
            top.to_str().unwrap(),
        ]);
    }
    for args in [
        ["compare", "-s", "@zero-cluster", "@empty"],
        ["compare", "-s", "@two", "@one"],
        ["compare", "-s", "@one", "@two"],
        ["compare", "-s", "@top", "@one"],
        ["compare", "-s", "@one", "@top"],
        ["compare", "-s", "@two", "@two"],
    ] {
        same_output(&t, &args);
    }
}

/// qemu-img names the file it was creating before every reason `create` fails for
/// (`qemu-img: FILE: reason`), and words each reason its own way; vdisk must print the
/// same lines. Sizes are the exception: qemu-img parses them itself, without the name.
#[test]
fn create_refusals_name_the_file_and_give_qemu_img_s_reasons() {
    let t = Twins::new();
    let refused: &[&[&str]] = &[
        &["-f", "qcow2", "@x.qcow2"],
        &["-f", "bogus", "@x.qcow2", "1M"],
        &["-f", "qcow2", "@x.qcow2", "1Q"],
        &["-f", "qcow2", "-o", "cluster_size=1000", "@x.qcow2", "1G"],
        &["-f", "qcow2", "-o", "cluster_size=4M", "@x.qcow2", "1G"],
        &["-f", "qcow2", "-o", "refcount_bits=3", "@x.qcow2", "1G"],
        &["-f", "qcow2", "-o", "refcount_bits=128", "@x.qcow2", "1G"],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,lazy_refcounts=on",
            "@x.qcow2",
            "1G",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,extended_l2=on",
            "@x.qcow2",
            "1G",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,extended_l2=on",
            "@x.qcow2",
            "1G",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,data_file=d.raw",
            "@x.qcow2",
            "1G",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,refcount_bits=8",
            "@x.qcow2",
            "1G",
        ],
        &["-f", "qcow2", "-o", "compat=3", "@x.qcow2", "1M"],
        &[
            "-f",
            "qcow2",
            "-o",
            "compression_type=lz4",
            "@x.qcow2",
            "1M",
        ],
        &["-f", "qcow2", "-o", "preallocation=bogus", "@x.qcow2", "1G"],
        &["-f", "qcow2", "-o", "encrypt.format=luks", "@x.qcow2", "1G"],
        &[
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s",
            "@x.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-b",
            "@missing.qcow2",
            "-F",
            "qcow2",
            "@x.qcow2",
        ],
        &[
            "-f", "qcow2", "-b", "@x.qcow2", "-F", "qcow2", "@x.qcow2", "1M",
        ],
        &["-f", "qcow2", "@nodir/x.qcow2", "1M"],
        &["-f", "raw", "-o", "preallocation=bogus", "@x.raw", "1G"],
        &["-f", "vmdk", "-o", "subformat=bogus", "@x.vmdk", "1G"],
        &["-f", "vmdk", "-o", "adapter_type=bogus", "@x.vmdk", "1G"],
        &["-f", "vpc", "@x.vhd", "3T"],
        &["-f", "vpc", "-o", "subformat=bogus", "@x.vhd", "1M"],
        &["-f", "vhdx", "-o", "block_size=3M", "@x.vhdx", "1G"],
        &["-f", "vdi", "-o", "static=maybe", "@x.vdi", "1G"],
        &["-f", "vpc", "-o", "force_size=maybe", "@x.vhd", "1G"],
        &["-f", "vhdx", "-o", "subformat=bogus", "@x.vhdx", "1G"],
        &["-f", "vdi", "-o", "cluster_size=1M", "@x.vdi", "1G"],
        &["-f", "vdi", "@x.vdi", "2P"],
    ];
    for args in refused {
        let mut all = vec!["create", "-q"];
        all.extend_from_slice(args);
        let (q, _) = t.same_outcome(&all);
        assert!(!q.status.success(), "qemu-img accepted {all:?}");
    }
}

/// `convert` checks the output's options as qemu-img does: names and value types first
/// (`qemu-img: reason`), then what creating the output refuses
/// (`qemu-img: FILE: error while converting FMT: reason`), leaving no output behind;
/// `measure` words its own refusals. vdisk must print the same lines.
#[test]
fn convert_and_measure_refusals_match_qemu_img() {
    let t = Twins::new();
    let src = t.work("s.raw");
    std::fs::write(&src, vec![0x5a; 1 << 20]).unwrap();
    t.put("s.raw", &src);
    let converts: &[&[&str]] = &[
        &["-O", "qcow2", "-o", "foo=bar"],
        &["-O", "qcow2", "-o", "lazy_refcounts=maybe"],
        &["-O", "qcow2", "-o", "cluster_size=1000"],
        &["-O", "qcow2", "-o", "refcount_bits=3"],
        &["-O", "qcow2", "-o", "compat=0.10,lazy_refcounts=on"],
        &["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8"],
        &["-O", "qcow2", "-o", "compat=3"],
        &["-O", "qcow2", "-o", "compression_type=lz4"],
        &["-O", "qcow2", "-o", "preallocation=bogus"],
        &["-O", "qcow2", "-o", "backing_fmt=raw"],
        &["-O", "raw", "-o", "preallocation=bogus"],
        &["-O", "raw", "-o", "preallocation=metadata"],
        &["-O", "vmdk", "-o", "subformat=bogus"],
        &["-O", "vhdx", "-o", "block_size=3M"],
        &["-O", "vpc", "-o", "subformat=bogus"],
    ];
    for args in converts {
        let mut all = vec!["convert"];
        all.extend_from_slice(args);
        all.extend(["@s.raw", "@out.img"]);
        let (q, _) = t.same_outcome(&all);
        assert!(!q.status.success(), "qemu-img accepted {all:?}");
        // (qemu-img leaves an empty file for raw preallocation=metadata: it finds that
        // while creating; vdisk refuses first.)
        let _ = std::fs::remove_file(t.path(Tool::Qemu, "out.img"));
        assert!(
            !t.path(Tool::Vdisk, "out.img").exists(),
            "vdisk left {all:?}'s output"
        );
    }
    let (q, _) = t.same_outcome(&["convert", "-O", "qcow2", "@s.raw", "@nodir/o.qcow2"]);
    assert!(!q.status.success());
    let measures: &[&str] = &[
        "cluster_size=1000",
        "preallocation=bogus",
        "compat=3",
        "refcount_bits=3",
        "refcount_bits=128",
    ];
    for opts in measures {
        let args = ["measure", "-O", "qcow2", "-o", opts, "--size", "1G"];
        let (q, _) = t.same_outcome(&args);
        assert!(!q.status.success(), "qemu-img accepted {args:?}");
    }
}

/// A missing image file is the error users meet most: every command words it as qemu-img
/// (`Could not open 'X': Could not open 'X': No such file or directory`).
#[test]
fn a_missing_image_is_refused_in_qemu_img_s_words_by_every_command() {
    let t = Twins::new();
    let commands: &[&[&str]] = &[
        &["info", "@nx"],
        &["check", "@nx"],
        &["map", "@nx"],
        &["snapshot", "-l", "@nx"],
        &["snapshot", "-c", "s", "@nx"],
        &["resize", "@nx", "1G"],
        &["amend", "-o", "compat=1.1", "@nx"],
        &["commit", "@nx"],
        &["rebase", "-u", "-b", "", "@nx"],
        &["compare", "@nx", "@nx"],
        &["convert", "-O", "raw", "@nx", "@out.raw"],
        &["measure", "-O", "qcow2", "@nx"],
        &["bitmap", "--add", "@nx", "b"],
        &["bench", "@nx"],
        &["dd", "if=@nx", "of=@out.raw"],
    ];
    for args in commands {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success(), "{args:?}");
    }
}

/// Usage errors and bad sizes, in qemu-img's words: the hint line after a usage error
/// (`Try 'vdisk amend --help' for more info`), and a size given to an option as qemu's
/// option parser refuses it.
#[test]
fn usage_errors_and_bad_sizes_read_as_in_qemu_img() {
    let t = Twins::new();
    let img = t.work("a.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    t.put("a.qcow2", &img);
    let cases: &[&[&str]] = &[
        &["amend", "@a.qcow2"],
        &["amend", "-o", "size=x", "@a.qcow2"],
        &["amend", "-o", "size=-1", "@a.qcow2"],
        &["map", "--output=xml", "@a.qcow2"],
        &["info", "--output=xml", "@a.qcow2"],
        &["check", "--output=xml", "@a.qcow2"],
        &["measure", "--output=xml", "-O", "qcow2", "--size", "1M"],
        &["check", "-r", "bogus", "@a.qcow2"],
        &["resize", "@a.qcow2", "x"],
        &["resize", "@a.qcow2", "+x"],
        &["measure", "-O", "qcow2", "--size", "x"],
        &["create", "-f", "qcow2", "-o", "size=x", "@b.qcow2"],
    ];
    for args in cases {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success(), "qemu-img accepted {args:?}");
    }
}

/// A format name qemu-img does not know is refused in its words wherever one is given:
/// output formats, amend's `-f`, and a backing format (checked when the backing file is
/// opened, or with `-u` as a value of the `backing-fmt` option).
#[test]
fn unknown_format_names_are_refused_as_qemu_img_refuses_them() {
    let t = Twins::new();
    let img = t.work("a.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    t.put("a.qcow2", &img);
    let cases: &[&[&str]] = &[
        &["convert", "-O", "bogus", "@a.qcow2", "@o.img"],
        &["amend", "-f", "bogus", "-o", "help"],
        &["measure", "-O", "bogus", "--size", "1M"],
        &[
            "convert", "-B", "@a.qcow2", "-F", "bogus", "-O", "qcow2", "@a.qcow2", "@o.img",
        ],
        &[
            "create", "-f", "qcow2", "-b", "@a.qcow2", "-F", "bogus", "@o.img",
        ],
        &[
            "create", "-q", "-u", "-f", "qcow2", "-b", "@a.qcow2", "-F", "bogus", "@o.img", "1M",
        ],
    ];
    for args in cases {
        let (q, _) = t.same_outcome(args);
        assert!(!q.status.success(), "qemu-img accepted {args:?}");
        // (qemu-img leaves the output of a convert that fails to create it; vdisk does not.)
        let _ = std::fs::remove_file(t.path(Tool::Qemu, "o.img"));
        assert!(
            !t.path(Tool::Vdisk, "o.img").exists(),
            "vdisk left {args:?}'s output"
        );
    }
}
