//! Integration tests of the `vdisk` binary: create, info and convert, their output, exit
//! codes and error messages, with qemu-img as the reference where both should agree.
//!
//! Conventions checked throughout (qemu-img's): success exits 0; a user error exits 1 with
//! one line on stderr; a failed `create` or `convert` leaves no output file behind.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 1 and exactly one non-empty line on stderr, starting with "vdisk: ".
#[track_caller]
fn assert_one_line_error(what: &str, out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", describe(what, out));
    let err = stderr_of(out);
    assert_eq!(err.trim_end().lines().count(), 1, "{}", describe(what, out));
    assert!(err.starts_with("vdisk: "), "{}", describe(what, out));
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------------------

#[test]
fn create_qcow2_prints_a_formatting_line_and_makes_a_clean_image() {
    let dir = tempdir();
    let img = dir.path().join("new.qcow2");
    let out = vdisk_ok(&["create", "-f", "qcow2", s(&img), "1G"]);
    let line = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        line.starts_with(&format!("Formatting '{}', fmt=qcow2 ", img.display())),
        "{line}"
    );
    assert!(line.contains("size=1073741824"), "{line}");
    assert_qemu_check_clean(&img);
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(&img)]),
    );
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 1u64 << 30);
    assert_eq!(info["cluster-size"], 65536);
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
}

#[test]
fn create_quiet_prints_nothing() {
    let dir = tempdir();
    let img = dir.path().join("q.qcow2");
    let out = vdisk_ok(&["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    assert_eq!(out, "");
}

#[test]
fn create_raw_makes_a_sparse_file_of_the_requested_size() {
    let dir = tempdir();
    let img = dir.path().join("disk.raw");
    vdisk_ok(&["create", "-q", "-f", "raw", s(&img), "1G"]);
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < 1 << 20, "a new raw image is sparse");
    assert!(read(&img).iter().all(|&b| b == 0));
}

#[test]
fn create_defaults_to_raw_like_qemu_img() {
    let dir = tempdir();
    let img = dir.path().join("default");
    vdisk_ok(&["create", "-q", s(&img), "64k"]);
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(&img)]),
    );
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 65536);
}

#[test]
fn size_suffixes_give_the_same_virtual_size_as_qemu_img() {
    let dir = tempdir();
    let sizes = [
        "512", "100", "1000", "100b", "1k", "1K", "64k", "1.5k", "1M", "0.5M", "1.5M", "1G",
        "1.5G", "2T",
    ];
    let cases: Vec<(&str, &str)> = sizes
        .iter()
        .flat_map(|&sz| [("raw", sz), ("qcow2", sz)])
        .collect();
    run_cases("create SIZE", &cases, |&(fmt, size)| {
        let ours = dir.path().join(format!("ours-{size}.{fmt}"));
        let theirs = dir.path().join(format!("theirs-{size}.{fmt}"));
        vdisk_ok(&["create", "-q", "-f", fmt, s(&ours), size]);
        qemu_img_ok(&["create", "-q", "-f", fmt, s(&theirs), size]);
        let vs = |p: &Path| {
            parse_json(
                "qemu-img info",
                &qemu_img_ok(&["info", "--output=json", s(p)]),
            )["virtual-size"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(vs(&ours), vs(&theirs), "virtual size for '{size}'");
        if fmt == "raw" {
            assert_eq!(
                std::fs::metadata(&ours).unwrap().len(),
                std::fs::metadata(&theirs).unwrap().len(),
                "raw file length for '{size}'"
            );
        }
        let _ = std::fs::remove_file(&ours);
        let _ = std::fs::remove_file(&theirs);
    });
}

#[test]
fn the_size_option_works_like_the_size_argument() {
    let dir = tempdir();
    let img = dir.path().join("o.qcow2");
    vdisk_ok(&["create", "-q", "-f", "qcow2", "-o", "size=3M", s(&img)]);
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(&img)]),
    );
    assert_eq!(info["virtual-size"], 3 << 20);
}

#[test]
fn invalid_sizes_fail_with_exit_1_and_one_line() {
    let dir = tempdir();
    let cases = ["1x", "", "1kk", "16E", "abc", "1.5.5M"];
    run_cases("create with a bad size", &cases, |&size| {
        let img = dir.path().join("bad-size.qcow2");
        let out = vdisk(["create", "-f", "qcow2", s(&img), size]);
        assert_one_line_error(&format!("vdisk create ... '{size}'"), &out);
        assert!(!img.exists(), "a failed create left {}", img.display());
        // qemu-img refuses it too.
        assert!(!qemu_img(["create", "-q", "-f", "qcow2", s(&img), size])
            .status
            .success());
        let _ = std::fs::remove_file(&img);
    });
}

#[test]
fn create_without_a_size_fails_with_one_line() {
    let dir = tempdir();
    let img = dir.path().join("nosize.qcow2");
    let out = vdisk(["create", "-f", "qcow2", s(&img)]);
    assert_one_line_error("create without a size", &out);
    assert!(!img.exists());
}

#[test]
fn bad_create_options_fail_with_exit_1_one_line_and_no_file_like_qemu_img() {
    let dir = tempdir();
    let cases = [
        ("qcow2", "bogus=1"),
        ("qcow2", "cluster_size=3000"),
        ("qcow2", "cluster_size=256"),
        ("qcow2", "cluster_size=4M"),
        ("qcow2", "compat=2.0"),
        ("qcow2", "refcount_bits=3"),
        ("qcow2", "refcount_bits=128"),
        ("qcow2", "compat=0.10,refcount_bits=8"),
        ("qcow2", "compat=0.10,lazy_refcounts=on"),
        ("qcow2", "preallocation=bogus"),
        ("qcow2", "lazy_refcounts=maybe"),
        ("qcow2", "novalue"),
        ("raw", "cluster_size=4k"),
        ("raw", "preallocation=sometimes"),
    ];
    run_cases("create -o BAD", &cases, |&(fmt, opts)| {
        let ours = dir.path().join("ours.img");
        let theirs = dir.path().join("theirs.img");
        let out = vdisk(["create", "-f", fmt, "-o", opts, s(&ours), "1M"]);
        let q = qemu_img(["create", "-f", fmt, "-o", opts, s(&theirs), "1M"]);
        assert!(!q.status.success(), "qemu-img accepts -o {opts}");
        assert_one_line_error(&format!("vdisk create -f {fmt} -o {opts}"), &out);
        assert!(!ours.exists(), "a failed create left a file");
        // qemu-img prints its "Formatting ..." line only once the options parsed.
        assert_eq!(
            out.stdout.is_empty(),
            q.stdout.is_empty(),
            "vdisk stdout {:?}, qemu-img stdout {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&q.stdout)
        );
        let _ = std::fs::remove_file(&ours);
        let _ = std::fs::remove_file(&theirs);
    });
}

#[test]
fn create_with_an_unknown_format_fails_with_one_line() {
    let dir = tempdir();
    let img = dir.path().join("x.img");
    let out = vdisk(["create", "-f", "bogus", s(&img), "1M"]);
    assert_one_line_error("create -f bogus", &out);
    assert!(stderr_of(&out).contains("bogus"));
    assert!(!img.exists());
}

#[test]
fn create_in_a_missing_directory_fails_with_one_line() {
    let dir = tempdir();
    let img = dir.path().join("no/such/dir/x.qcow2");
    let out = vdisk(["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    assert_one_line_error("create in a missing directory", &out);
}

// ---------------------------------------------------------------------------------------
// info
// ---------------------------------------------------------------------------------------

/// A few images of different kinds, made by qemu-img (so both tools describe the same file).
fn sample_images(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut make = |name: &str, args: &[&str]| {
        let p = dir.join(name).to_str().unwrap().to_string();
        let mut a = vec!["create", "-q"];
        a.extend_from_slice(args);
        a.push(&p);
        if !args.contains(&"-b") {
            a.push("100M");
        }
        qemu_img_ok(&a);
        v.push(p);
    };
    make("plain.qcow2", &["-f", "qcow2"]);
    make("v2.qcow2", &["-f", "qcow2", "-o", "compat=0.10"]);
    make(
        "big-clusters.qcow2",
        &["-f", "qcow2", "-o", "cluster_size=2M,lazy_refcounts=on"],
    );
    make(
        "small-refcounts.qcow2",
        &["-f", "qcow2", "-o", "cluster_size=512,refcount_bits=1"],
    );
    make("disk.raw", &["-f", "raw"]);
    let base = dir.join("plain.qcow2");
    make(
        "overlay.qcow2",
        &["-f", "qcow2", "-b", base.to_str().unwrap(), "-F", "qcow2"],
    );
    let data = dir.join("plain.qcow2");
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 3M",
        data.to_str().unwrap(),
    ]);
    // A raw file whose length is not a multiple of 512 (qemu-img rounds it up).
    let odd = dir.join("odd.raw");
    std::fs::write(&odd, vec![7u8; 1000]).unwrap();
    v.push(odd.to_str().unwrap().to_string());
    // An image vdisk made.
    let ours = dir.join("by-vdisk.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        ours.to_str().unwrap(),
        "9M",
    ]);
    v.push(ours.to_str().unwrap().to_string());
    v
}

#[test]
fn info_human_output_is_the_same_as_qemu_img() {
    let dir = tempdir();
    let images = sample_images(dir.path());
    run_cases("info (human)", &images, |img| {
        let ours = vdisk_ok(&["info", img]);
        let theirs = qemu_img_ok(&["info", img]);
        assert_text_eq(&format!("vdisk info {img}"), &ours, &theirs);
    });
}

#[test]
fn info_json_has_the_same_values_as_qemu_img() {
    let dir = tempdir();
    let images = sample_images(dir.path());
    run_cases("info --output=json (values)", &images, |img| {
        let ours = parse_json("vdisk info", &vdisk_ok(&["info", "--output=json", img]));
        let theirs = parse_json(
            "qemu-img info",
            &qemu_img_ok(&["info", "--output=json", img]),
        );
        if ours != theirs {
            // Name the differing values rather than printing both documents.
            let (a, b) = (ours.to_string(), theirs.to_string());
            let at = first_difference(a.as_bytes(), b.as_bytes()).unwrap_or(0);
            let from = a[..at].rfind(',').map_or(0, |i| i + 1);
            panic!(
                "vdisk info --output=json {img}: values differ near {:?} (qemu-img: {:?})",
                &a[from..(at + 40).min(a.len())],
                &b[from..(at + 40).min(b.len())]
            );
        }
    });
}

#[test]
fn info_json_text_is_the_same_as_qemu_img() {
    let dir = tempdir();
    let images = sample_images(dir.path());
    run_cases("info --output=json (text)", &images, |img| {
        let ours = vdisk_ok(&["info", "--output=json", img]);
        let theirs = qemu_img_ok(&["info", "--output=json", img]);
        assert_text_eq(&format!("vdisk info --output=json {img}"), &ours, &theirs);
    });
}

#[test]
fn info_of_a_missing_file_fails_with_one_line_naming_it() {
    let dir = tempdir();
    let img = dir.path().join("missing.qcow2");
    for args in [
        vec!["info", s(&img)],
        vec!["info", "--output=json", s(&img)],
    ] {
        let out = vdisk(&args);
        assert_one_line_error("info of a missing file", &out);
        assert!(
            stderr_of(&out).contains("missing.qcow2"),
            "{}",
            stderr_of(&out)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn info_with_an_unknown_format_or_output_fails_as_qemu_img_does() {
    let dir = tempdir();
    let img = dir.path().join("a.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&img), "1M"]);
    assert_one_line_error("info -f bogus", &vdisk(["info", "-f", "bogus", s(&img)]));
    // A usage error: qemu-img's reason, then its line pointing at the help.
    let out = vdisk(["info", "--output=xml", s(&img)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        "vdisk: --output expects 'human' or 'json' not 'xml'\nTry 'vdisk info --help' for more info\n"
    );
}

#[test]
fn info_with_the_wrong_format_forced_fails_with_one_line() {
    let dir = tempdir();
    let img = dir.path().join("a.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&img), "1M"]);
    assert_one_line_error(
        "info -f qcow2 on raw",
        &vdisk(["info", "-f", "qcow2", s(&img)]),
    );
}

// ---------------------------------------------------------------------------------------
// convert
// ---------------------------------------------------------------------------------------

#[test]
fn convert_with_progress_copies_the_image_and_reports_100_percent_like_qemu_img() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    write_mixed_raw(&src, 8 << 20, 512 << 10, 3);
    let dst = dir.path().join("dst.qcow2");
    let out = vdisk(["convert", "-p", "-O", "qcow2", s(&src), s(&dst)]);
    assert!(out.status.success(), "{}", describe("convert -p", &out));
    assert_qemu_check_clean(&dst);
    assert_qemu_compare_identical(&src, &dst);
    // qemu-img -p writes "    (NN.NN/100%)\r" updates to stdout, even into a pipe.
    let theirs = qemu_img([
        "convert",
        "-p",
        "-O",
        "qcow2",
        s(&src),
        s(&dir.path().join("q.qcow2")),
    ]);
    assert!(String::from_utf8_lossy(&theirs.stdout).contains("(100.00/100%)"));
    let progress = String::from_utf8_lossy(&out.stdout);
    assert!(
        progress.contains("(100.00/100%)"),
        "vdisk convert -p printed {progress:?} on stdout (qemu-img prints {:?})",
        String::from_utf8_lossy(&theirs.stdout)
    );
}

#[test]
fn convert_without_progress_prints_nothing() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    write_mixed_raw(&src, 1 << 20, 64 << 10, 4);
    let dst = dir.path().join("dst.raw");
    let out = vdisk(["convert", "-O", "raw", s(&src), s(&dst)]);
    assert!(out.status.success(), "{}", describe("convert", &out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        describe("convert", &out)
    );
    assert_eq!(read(&src), read(&dst));
}

#[test]
fn convert_defaults_to_raw_output_and_probes_the_source() {
    let dir = tempdir();
    let src = dir.path().join("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "2M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 0x61 4k 8k", s(&src)]);
    let dst = dir.path().join("dst");
    vdisk_ok(&["convert", s(&src), s(&dst)]);
    let data = read(&dst);
    assert_eq!(data.len(), 2 << 20);
    assert!(data[4096..12288].iter().all(|&b| b == 0x61));
    assert!(data[..4096].iter().chain(&data[12288..]).all(|&b| b == 0));
}

#[test]
fn convert_with_output_options_applies_them() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    write_mixed_raw(&src, 2 << 20, 64 << 10, 5);
    let dst = dir.path().join("dst.qcow2");
    vdisk_ok(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k,compat=0.10",
        s(&src),
        s(&dst),
    ]);
    let info = parse_json(
        "qemu-img info",
        &qemu_img_ok(&["info", "--output=json", s(&dst)]),
    );
    assert_eq!(info["cluster-size"], 4096);
    assert_eq!(info["format-specific"]["data"]["compat"], "0.10");
    assert_qemu_compare_identical(&src, &dst);
}

#[test]
fn convert_of_a_missing_source_fails_with_one_line_and_creates_nothing() {
    let dir = tempdir();
    let src = dir.path().join("missing.raw");
    let dst = dir.path().join("dst.qcow2");
    let out = vdisk(["convert", "-O", "qcow2", s(&src), s(&dst)]);
    assert_one_line_error("convert of a missing file", &out);
    assert!(stderr_of(&out).contains("missing.raw"));
    assert!(!dst.exists());
}

#[test]
fn convert_to_or_from_an_unknown_format_fails_with_one_line_and_creates_nothing() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&src), "1M"]);
    let dst = dir.path().join("dst.img");
    let out = vdisk(["convert", "-O", "bogus", s(&src), s(&dst)]);
    assert_one_line_error("convert -O bogus", &out);
    assert!(!dst.exists());
    let out = vdisk(["convert", "-f", "bogus", "-O", "raw", s(&src), s(&dst)]);
    assert_one_line_error("convert -f bogus", &out);
    assert!(!dst.exists());
}

#[test]
fn convert_with_bad_output_options_fails_with_one_line() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&src), "1M"]);
    let dst = dir.path().join("dst.qcow2");
    let out = vdisk([
        "convert",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=3000",
        s(&src),
        s(&dst),
    ]);
    assert_one_line_error("convert -o cluster_size=3000", &out);
    assert!(!dst.exists());
}

// ---------------------------------------------------------------------------------------
// The command line itself
// ---------------------------------------------------------------------------------------

#[test]
fn no_arguments_or_an_unknown_subcommand_exit_1() {
    let out = vdisk(Vec::<&str>::new());
    assert_eq!(out.status.code(), Some(1), "{}", describe("vdisk", &out));
    let out = vdisk(["frobnicate"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("vdisk frobnicate", &out)
    );
}

#[test]
fn version_and_help_exit_0() {
    let out = vdisk_ok(&["--version"]);
    assert!(out.starts_with("vdisk "), "{out}");
    let out = vdisk_ok(&["--help"]);
    for sub in ["create", "info", "convert"] {
        assert!(out.contains(sub), "--help does not list {sub}:\n{out}");
    }
}

// ---------------------------------------------------------------------------------------
// compare and check: exit codes as qemu-img's
// ---------------------------------------------------------------------------------------

#[test]
fn compare_exits_0_when_identical_1_when_different_and_2_on_error_like_qemu_img() {
    let dir = tempdir();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.raw");
    let c = dir.path().join("c.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&a), "4M"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 9 1M 64k", s(&a)]);
    qemu_img_ok(&["convert", "-O", "raw", s(&a), s(&b)]);
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&c), "4M"]);
    let missing = dir.path().join("missing.qcow2");
    let cases = [
        (s(&a), s(&b), 0),
        (s(&a), s(&c), 1),
        (s(&a), s(&missing), 2),
    ];
    run_cases("compare exit codes", &cases, |&(x, y, code)| {
        let ours = vdisk(["compare", x, y]);
        let theirs = qemu_img(["compare", x, y]);
        assert_eq!(
            theirs.status.code(),
            Some(code),
            "{}",
            describe("qemu-img compare", &theirs)
        );
        assert_eq!(
            ours.status.code(),
            Some(code),
            "{}",
            describe("vdisk compare", &ours)
        );
        assert_eq!(
            ours.stdout,
            theirs.stdout,
            "{}",
            describe("vdisk compare", &ours)
        );
        if code == 2 {
            let err = stderr_of(&ours);
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(err.contains("missing.qcow2"), "{err}");
            assert!(
                !err.contains("backing"),
                "the second image of compare is not a backing file: {err}"
            );
        }
    });
}

/// Set the 16-bit refcount of `cluster` in the first refcount block of a qemu-made image
/// with 64 KiB clusters (refcount block at 0x20000).
fn set_refcount(path: &Path, cluster: usize, value: u16) {
    let mut img = read(path);
    assert_eq!(
        &img[vdisk::qcow2::header::field::REFCOUNT_TABLE_OFFSET.range()],
        &0x10000u64.to_be_bytes(),
        "refcount table at 0x10000"
    );
    assert_eq!(
        &img[0x10000..0x10008],
        &0x20000u64.to_be_bytes(),
        "block at 0x20000"
    );
    let at = 0x20000 + 2 * cluster;
    img[at..at + 2].copy_from_slice(&value.to_be_bytes());
    std::fs::write(path, img).unwrap();
}

#[test]
fn check_exits_0_clean_3_for_leaks_and_2_for_corruption_like_qemu_img() {
    let dir = tempdir();
    let make = |name: &str| {
        let p = dir.path().join(name);
        qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&p), "4M"]);
        qemu_io_ok(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 9 0 128k",
            "-c",
            "discard 64k 64k",
            s(&p),
        ]);
        p
    };
    let clean = make("clean.qcow2");
    // Clusters 0-3: header, refcount table, refcount block, L1; 4: L2; 5: data; 6: data
    // freed by the discard (still inside the file).
    let leaky = make("leaky.qcow2");
    set_refcount(&leaky, 6, 1);
    let corrupt = make("corrupt.qcow2");
    set_refcount(&corrupt, 5, 0);
    let cases = [(clean, 0), (leaky, 3), (corrupt, 2)];
    run_cases("check exit codes", &cases, |(path, code)| {
        let theirs = qemu_img(["check", s(path)]);
        assert_eq!(
            theirs.status.code(),
            Some(*code),
            "{}",
            describe("qemu-img check", &theirs)
        );
        let ours = vdisk(["check", s(path)]);
        assert_eq!(
            ours.status.code(),
            Some(*code),
            "{}",
            describe("vdisk check", &ours)
        );
        let json = vdisk(["check", "--output=json", s(path)]);
        assert_eq!(
            json.status.code(),
            Some(*code),
            "{}",
            describe("vdisk check --output=json", &json)
        );
        let ours = parse_json("vdisk check", &String::from_utf8_lossy(&json.stdout));
        let theirs = parse_json(
            "qemu-img check",
            &String::from_utf8_lossy(&qemu_img(["check", "--output=json", s(path)]).stdout),
        );
        for key in ["leaks", "corruptions", "check-errors", "image-end-offset"] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "check --output=json key {key}"
            );
        }
    });
}
