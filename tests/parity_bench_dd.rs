//! `bench` and `dd` against qemu-img 10 (issue 12): each command line runs with both tools
//! on identical copies of the same image; the output (with the timing number masked), the
//! error text and the exit code must match, and so must the images the commands leave
//! (`qemu-img compare` on the twins, `qemu-img check` on vdisk's qcow2).
//!
//! One difference is allowed and documented in the README: when an image cannot be opened
//! (missing file, wrong `-f`) or an option is unknown, vdisk words the reason its own way;
//! there only the exit code and standard output are compared.

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

/// `out`'s stdout with the number of "Run completed in N seconds." masked.
fn masked_stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.strip_prefix("Run completed in ") {
            Some(rest) if rest.ends_with(" seconds.") => "Run completed in X seconds.".into(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// Whether only the exit code and stdout are compared (an open failure, worded by vdisk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    Same,
    OwnWording,
}

/// `args` for `tool`: `@NAME`, alone or as the value of a dd operand (`if=@NAME`), is
/// the file NAME in that tool's directory.
fn args_for(t: &Twins, tool: Tool, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let (operand, value) = match a.split_once('=') {
                Some((k, v)) if v.starts_with('@') => (format!("{k}="), v),
                _ => (String::new(), *a),
            };
            match value.strip_prefix('@') {
                Some(name) => operand + s(&t.path(tool, name)),
                None => a.to_string(),
            }
        })
        .collect()
}

/// Run `args` with both tools and require the same exit code, masked stdout and (unless
/// `stderr` is `OwnWording`) error text.
#[track_caller]
fn same_run(t: &Twins, args: &[&str], stderr: Stderr) -> (Output, Output) {
    let q = qemu_img(args_for(t, Tool::Qemu, args));
    let v = vdisk(args_for(t, Tool::Vdisk, args));
    let both = format!(
        "{}\n{}",
        describe(&format!("qemu-img {args:?}"), &q),
        describe(&format!("vdisk {args:?}"), &v)
    );
    assert_eq!(
        q.status.code(),
        v.status.code(),
        "exit codes differ\n{both}"
    );
    assert_eq!(
        masked_stdout(&q),
        masked_stdout(&v),
        "stdout differs\n{both}"
    );
    if stderr == Stderr::Same {
        assert_eq!(
            t.error_text(Tool::Qemu, &q),
            t.error_text(Tool::Vdisk, &v),
            "stderr differs\n{both}"
        );
    } else {
        assert!(!v.stderr.is_empty(), "vdisk printed no error\n{both}");
    }
    (q, v)
}

/// A 1 MiB raw image and a 1 MiB qcow2 image with data, in both tools' directories.
fn bench_images(t: &Twins) {
    let qcow2 = t.work("img.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&qcow2), "1M"]);
    qemu_io_ok(&["-c", "write -P 0x11 0 300k", s(&qcow2)]);
    t.put("img.qcow2", &qcow2);
    let raw = t.work("img.raw");
    qemu_img_ok(&["convert", "-f", "qcow2", "-O", "raw", s(&qcow2), s(&raw)]);
    t.put("img.raw", &raw);
}

#[test]
fn bench_prints_what_qemu_img_prints_and_refuses_what_it_refuses() {
    let t = Twins::new();
    bench_images(&t);
    let same: &[&[&str]] = &[
        // Defaults and every flag accepted.
        &["bench", "@img.raw"],
        &["bench", "-f", "qcow2", "-c", "100", "-d", "1", "@img.qcow2"],
        &["bench", "-c", "0x10", "-q", "-d", "010", "@img.qcow2"],
        &["bench", "-c", " +5", "-s", "1000", "-S", "0", "@img.raw"],
        &[
            "bench", "-c", "3", "-s", "1.5k", "-S", "4k", "-o", "0.5k", "@img.raw",
        ],
        &["bench", "-c", "3", "-s", "0x200", "-o", "1k", "@img.raw"],
        &["bench", "-c", "1", "-s", "1M", "@img.raw"],
        &["bench", "-c", "4", "-S", "2147483647", "@img.raw"],
        &["bench", "-c", "2", "-t", "none", "@img.raw"],
        &["bench", "-c", "2", "-t", "writethrough", "-U", "@img.qcow2"],
        &["bench", "-c", "2", "-i", "threads", "@img.raw"],
        &["bench", "-c", "2", "-i", "io_uring", "@img.raw"],
        &["bench", "-c", "2", "-i", "native", "-t", "none", "@img.raw"],
        &["bench", "-c", "2", "-n", "-t", "directsync", "@img.raw"],
        &["bench", "-c", "2", "--pattern", "0xab", "@img.raw"],
        &["bench", "-c", "2", "--flush-interval", "0", "@img.raw"],
        &["bench", "-c", "2", "--no-drain", "@img.raw"],
        &["bench", "-c", "1", "-c", "2", "@img.raw"],
        &["bench", "--count=7", "--depth=2", "--offset=4k", "@img.raw"],
        &[
            "bench",
            "--buffer-size=8k",
            "--step-size=12k",
            "-c",
            "9",
            "@img.raw",
        ],
        &[
            "bench",
            "--cache=unsafe",
            "--aio=threads",
            "--force-share",
            "-c",
            "3",
            "@img.raw",
        ],
        &[
            "bench",
            "--format=raw",
            "--native",
            "--cache=none",
            "-c",
            "3",
            "@img.raw",
        ],
        &[
            "bench",
            "-f",
            "raw",
            "-w",
            "--flush-interval",
            "64",
            "-c",
            "130",
            "@img.raw",
        ],
        &[
            "bench",
            "-f",
            "raw",
            "-w",
            "-d",
            "4",
            "--flush-interval=4",
            "--no-drain",
            "-c",
            "10",
            "@img.raw",
        ],
        &[
            "bench",
            "-f",
            "qcow2",
            "--write",
            "--pattern=7",
            "-c",
            "10",
            "@img.qcow2",
        ],
        // The value refusals, with qemu-img's two messages each.
        &["bench", "-c", "0", "@img.raw"],
        &["bench", "-c", "-1", "@img.raw"],
        &["bench", "-c", "abc", "@img.raw"],
        &["bench", "-c", "1k", "@img.raw"],
        &["bench", "-c", "", "@img.raw"],
        &["bench", "-c", "2147483648", "@img.raw"],
        &["bench", "-c", "99999999999999999999", "@img.raw"],
        &["bench", "-d", "0", "@img.raw"],
        &["bench", "-d", "-0", "@img.raw"],
        &["bench", "-d", "x", "@img.raw"],
        &["bench", "-d", "2147483648", "@img.raw"],
        &["bench", "-o", "-1", "@img.raw"],
        &["bench", "-o", "-x", "@img.raw"],
        &["bench", "-o", "1x", "@img.raw"],
        &["bench", "-o", "0x", "@img.raw"],
        &["bench", "-o", "20E", "@img.raw"],
        &["bench", "-s", "0", "@img.raw"],
        &["bench", "-s", "3G", "@img.raw"],
        &["bench", "-s", "", "@img.raw"],
        &["bench", "-S", "-1", "@img.raw"],
        &["bench", "-S", "3G", "@img.raw"],
        &["bench", "-S", "x", "@img.raw"],
        &["bench", "-t", "foo", "@img.raw"],
        &["bench", "-i", "foo", "@img.raw"],
        &["bench", "--pattern", "256", "@img.raw"],
        &["bench", "--pattern", "-1", "@img.raw"],
        &["bench", "--pattern", "1k", "@img.raw"],
        &["bench", "-w", "--flush-interval", "x", "@img.raw"],
        &["bench", "-w", "--flush-interval", "-1", "@img.raw"],
        // The file name, then the combinations, then what opening refuses.
        &["bench"],
        &["bench", "@img.raw", "@img.raw"],
        &["bench", "--flush-interval", "4", "@img.raw"],
        &[
            "bench",
            "-w",
            "--flush-interval",
            "2",
            "-d",
            "4",
            "@img.raw",
        ],
        &["bench", "-w", "--flush-interval", "63", "@img.raw"],
        &["bench", "-i", "native", "-c", "1", "@img.raw"],
        &["bench", "-n", "-c", "1", "@img.raw"],
        &["bench", "-n", "-t", "writeback", "-c", "1", "@img.raw"],
        &["bench", "-U", "-w", "-c", "1", "@img.raw"],
        // Requests that do not fit in the disk fail after the summary line.
        &["bench", "-o", "2M", "-c", "1", "@img.raw"],
        &["bench", "-o", "1020k", "-c", "3", "-d", "1", "@img.qcow2"],
        &["bench", "-s", "2M", "-c", "1", "@img.raw"],
        &[
            "bench", "-f", "raw", "-w", "-d", "1", "-o", "1M", "-c", "5", "@img.raw",
        ],
    ];
    run_cases("bench", same, |args| {
        same_run(&t, args, Stderr::Same);
    });
    let own_wording: &[&[&str]] = &[
        &["bench", "@missing.raw"],
        &["bench", "-f", "qcow2", "@img.raw"],
        &["bench", "-f", "foo", "@img.raw"],
        // Unknown options: clap's message instead of qemu-img's, the same exit code.
        &["bench", "--foo", "@img.raw"],
        &["bench", "-c"],
    ];
    run_cases("bench, open failures", own_wording, |args| {
        same_run(&t, args, Stderr::OwnWording);
    });
    // The write cases above (and the refused one) left the same data in both copies.
    for name in ["img.raw", "img.qcow2"] {
        assert_qemu_compare_identical(&t.path(Tool::Qemu, name), &t.path(Tool::Vdisk, name));
    }
    assert_qemu_check_clean(&t.path(Tool::Vdisk, "img.qcow2"));
}

/// One write run: the image's format and `-o` options, the bench flags, and whether the
/// run completes (a wrapped request straddling the end fails it, as in qemu-img 10.0).
type WriteCase = (&'static str, &'static str, &'static [&'static str], bool);

#[test]
fn bench_writes_leave_the_image_qemu_img_bench_leaves() {
    // On a 4 MiB disk: steps that wrap, a start near the end, buffers straddling clusters,
    // a buffer as large as the disk, flushes, and runs that end on a straddling request.
    let cases: &[WriteCase] = &[
        (
            "qcow2",
            "cluster_size=65536",
            &[
                "-c", "1000", "-d", "16", "-s", "3000", "-S", "7777", "-o", "12345",
            ],
            true,
        ),
        (
            "qcow2",
            "cluster_size=4096",
            &["-c", "600", "-d", "1", "-s", "4k", "-S", "1052672"],
            true,
        ),
        (
            "qcow2",
            "cluster_size=512",
            &["-c", "300", "-s", "700", "-S", "64k", "-o", "4000k"],
            true,
        ),
        (
            "qcow2",
            "compat=0.10",
            &["-c", "50", "-s", "4M", "-S", "0"],
            true,
        ),
        (
            "raw",
            "",
            &["-c", "2000", "-d", "64", "-s", "512", "-S", "9k"],
            true,
        ),
        (
            "raw",
            "",
            &["-c", "40", "-d", "8", "-s", "64k", "--flush-interval", "8"],
            true,
        ),
        (
            "raw",
            "",
            &[
                "-c",
                "90",
                "-d",
                "1",
                "-s",
                "64k",
                "-S",
                "99k",
                "-t",
                "writethrough",
            ],
            false,
        ),
        (
            "vmdk",
            "",
            &["-c", "500", "-d", "4", "-s", "4k", "-S", "36k", "-o", "12k"],
            true,
        ),
        ("vmdk", "", &["-c", "3", "-s", "4M"], true),
    ];
    run_cases(
        "bench -w --pattern=0xab",
        cases,
        |&(fmt, opts, flags, completes)| {
            let t = Twins::new();
            let base = t.work("base");
            let mut create = vec!["create", "-q", "-f", fmt];
            if !opts.is_empty() {
                create.extend(["-o", opts]);
            }
            create.extend([s(&base), "4M"]);
            qemu_img_ok(&create);
            t.put("img", &base);
            let mut args = vec!["bench", "-w", "--pattern=0xab", "-f", fmt];
            args.extend(flags);
            args.push("@img");
            let (q, _) = same_run(&t, &args, Stderr::Same);
            assert_eq!(
                q.status.success(),
                completes,
                "{}",
                describe("qemu-img bench", &q)
            );
            let (qi, vi) = (t.path(Tool::Qemu, "img"), t.path(Tool::Vdisk, "img"));
            assert_qemu_compare_identical(&qi, &vi);
            // Something was written: the image is not what it was.
            let out = qemu_img([OsStr::new("compare"), base.as_os_str(), vi.as_os_str()]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}",
                describe("compare with base", &out)
            );
            if fmt == "qcow2" {
                assert_qemu_check_clean(&vi);
            }
        },
    );
}

#[test]
fn a_failed_qcow2_write_run_keeps_the_requests_before_the_failure_in_a_clean_image() {
    // The 42nd request (at 4059 KiB, 64 KiB long) straddles the end of the 4 MiB disk. qemu-img
    // then exits without writing back its qcow2 metadata cache, losing requests it had done;
    // vdisk flushes what it did, so its image holds what qemu-img's run leaves on a raw disk.
    let t = Twins::new();
    let flags = [
        "-w",
        "--pattern=0xab",
        "-c",
        "90",
        "-d",
        "1",
        "-s",
        "64k",
        "-S",
        "99k",
    ];
    let raw = t.work("base.raw");
    let qcow2 = t.work("base.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&raw), "4M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=2M",
        s(&qcow2),
        "4M",
    ]);
    let mut args = vec!["bench", "-f", "raw"];
    args.extend(flags);
    args.push(s(&raw));
    let q = qemu_img(&args);
    assert_eq!(
        q.status.code(),
        Some(1),
        "{}",
        describe("qemu-img bench", &q)
    );
    let mut args = vec!["bench", "-f", "qcow2"];
    args.extend(flags);
    args.push(s(&qcow2));
    let v = vdisk(&args);
    assert_eq!(v.status.code(), Some(1), "{}", describe("vdisk bench", &v));
    assert_eq!(masked_stdout(&v), masked_stdout(&q));
    assert_eq!(
        String::from_utf8_lossy(&v.stderr),
        "vdisk: Failed request: Input/output error\n"
    );
    assert_qemu_check_clean(&qcow2);
    let out = qemu_img(["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&qcow2)]);
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img compare", &out)
    );
}

/// A 1 MiB + 5 KiB input in every format, with data in several places (and zeros between).
fn dd_inputs(t: &Twins) {
    let qcow2 = t.work("in.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&qcow2), "1029k"]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x61 0 300k",
        "-c",
        "write -P 0x62 700k 100k",
        "-c",
        "write -P 0x63 1024k 5k",
        s(&qcow2),
    ]);
    t.put("in.qcow2", &qcow2);
    for fmt in ["raw", "vmdk"] {
        let out = t.work(&format!("in.{fmt}"));
        qemu_img_ok(&["convert", "-f", "qcow2", "-O", fmt, s(&qcow2), s(&out)]);
        t.put(&format!("in.{fmt}"), &out);
    }
}

#[test]
fn dd_refuses_and_warns_as_qemu_img_does() {
    let t = Twins::new();
    dd_inputs(&t);
    let same: &[&[&str]] = &[
        &["dd"],
        &["dd", "if=@in.qcow2"],
        &["dd", "of=@o.raw"],
        &["dd", "bs=0", "if=@in.qcow2", "of=@o.raw"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "bs=-1"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "bs=x"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "bs="],
        &["dd", "if=@in.qcow2", "of=@o.raw", "bs=3G"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "bs=1k=2"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "count=x"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "count=1k"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "count=-1"],
        &[
            "dd",
            "if=@in.qcow2",
            "of=@o.raw",
            "count=99999999999999999999",
        ],
        &["dd", "if=@in.qcow2", "of=@o.raw", "skip=x"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "skip=-1"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "foo=1"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "foo"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "=x"],
        &["dd", "if=@in.qcow2", "of=@o.raw", "@x.raw"],
        &["dd", "-O", "foo", "if=@in.qcow2", "of=@o.raw"],
        // Skipping past what is left: a warning, an empty output, exit 0.
        &[
            "dd",
            "if=@in.qcow2",
            "of=@w1.raw",
            "bs=64k",
            "skip=3",
            "count=2",
        ],
        &["dd", "if=@in.qcow2", "of=@w2.raw", "skip=5000"],
        // Open and create failures worded as qemu-img's.
        &["dd", "if=@missing.raw", "of=@o.raw"],
        &["dd", "-f", "qcow2", "if=@in.raw", "of=@o.raw"],
        &["dd", "if=@in.qcow2", "of=@nodir/o.raw"],
        &["dd", "if=", "of=@o.raw"],
        &["dd", "-f", "foo", "if=@in.qcow2", "of=@o.raw"],
    ];
    run_cases("dd", same, |args| {
        same_run(&t, args, Stderr::Same);
    });
    // Nothing was created by a refused command.
    for tool in [Tool::Qemu, Tool::Vdisk] {
        assert!(!t.path(tool, "o.raw").exists(), "{tool:?} created o.raw");
    }
    let own_wording: &[&[&str]] = &[&["dd", "-o", "x", "if=@in.qcow2", "of=@o.raw"]];
    run_cases("dd, open failures", own_wording, |args| {
        same_run(&t, args, Stderr::OwnWording);
    });
}

/// The virtual size `qemu-img info` reports for `path`.
fn virtual_size(path: &Path) -> u64 {
    let text = qemu_img_ok(&["info", "--output=json", s(path)]);
    parse_json("qemu-img info", &text)["virtual-size"]
        .as_u64()
        .expect("virtual-size")
}

/// Whether `ops` (from the matrix below) copy nothing from the 1029 KiB input.
fn empty_output(ops: &[&str]) -> bool {
    matches!(
        ops,
        ["count=0"] | ["skip=2058"] | ["bs=64k", "skip=3", "count=2"] | ["bs=300k", "skip=010"]
    )
}

#[test]
fn dd_outputs_match_qemu_img_for_every_format_and_operand_combination() {
    let operand_sets: &[&[&str]] = &[
        &[],
        &["bs=64k"],
        &["bs=1000", "skip=3"],
        &["bs=4k", "count=100", "skip=5"],
        &["bs=1.5k", "count=3", "skip=1"],
        &["bs=1M", "count=0x1", "skip=0"],
        &["bs=64k", "skip=3", "count=2"],
        &["count=0"],
        &["skip=2058"],
        &["bs=300k", "skip=010"],
    ];
    let mut cases = Vec::new();
    for input in ["qcow2", "raw", "vmdk"] {
        for output in ["raw", "qcow2", "vmdk"] {
            for ops in operand_sets {
                cases.push((input, output, *ops));
            }
        }
    }
    let t = Twins::new();
    dd_inputs(&t);
    run_cases("dd", &cases, |&(input, output, ops)| {
        let in_arg = format!("if=@in.{input}");
        let name = format!("out-{input}-{}.{output}", ops.join("_"));
        let out_arg = format!("of=@{name}");
        let mut args = vec!["dd", "-f", input, "-O", output, &in_arg, &out_arg];
        args.extend(ops);
        let (qo, vo) = (t.path(Tool::Qemu, &name), t.path(Tool::Vdisk, &name));
        if output == "vmdk" && empty_output(ops) {
            // The documented difference: qemu-img creates a VMDK of 0 sectors, then cannot
            // open it ("Unsupported image type") and fails; vdisk opens it and succeeds.
            let (q, v) = (
                qemu_img(args_for(&t, Tool::Qemu, &args)),
                vdisk(args_for(&t, Tool::Vdisk, &args)),
            );
            assert_eq!(q.status.code(), Some(1), "{}", describe("qemu-img dd", &q));
            let err = t.error_text(Tool::Qemu, &q);
            assert!(err.contains("Unsupported image type"), "{err}");
            assert!(v.status.success(), "{}", describe("vdisk dd", &v));
            let info = vdisk_ok(&["info", "--output=json", s(&vo)]);
            assert_eq!(parse_json("vdisk info", &info)["virtual-size"], 0);
            return;
        }
        let (q, _) = same_run(&t, &args, Stderr::Same);
        assert!(q.status.success(), "{}", describe("qemu-img dd", &q));
        assert_eq!(
            virtual_size(&vo),
            virtual_size(&qo),
            "virtual sizes of {name}"
        );
        let out = qemu_img(["compare", "-f", output, "-F", output, s(&qo), s(&vo)]);
        assert!(
            out.status.success(),
            "{}",
            describe("qemu-img compare", &out)
        );
        if output == "qcow2" {
            assert_qemu_check_clean(&vo);
        }
    });
}

#[test]
fn dd_overwrites_an_existing_output_and_reads_through_a_backing_chain() {
    let t = Twins::new();
    dd_inputs(&t);
    let base = t.work("base.qcow2");
    std::fs::copy(t.path(Tool::Qemu, "in.qcow2"), &base).expect("copying");
    t.put("base.qcow2", &base);
    let top = t.work("top.qcow2");
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
    qemu_io_ok(&["-c", "write -P 0x71 64k 64k", s(&top)]);
    t.put("top.qcow2", &top);
    // The output exists (a larger raw file) and is replaced; -U reads the input shared.
    t.put("out.raw", &t.path(Tool::Qemu, "in.raw"));
    let args = [
        "dd",
        "-U",
        "if=@top.qcow2",
        "of=@out.raw",
        "bs=32k",
        "skip=1",
        "count=20",
    ];
    same_run(&t, &args, Stderr::Same);
    let (qo, vo) = (
        t.path(Tool::Qemu, "out.raw"),
        t.path(Tool::Vdisk, "out.raw"),
    );
    assert_eq!(read(&vo), read(&qo), "dd output through the chain");
    assert_eq!(virtual_size(&vo), 19 * 32 * 1024);
}
