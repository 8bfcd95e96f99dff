//! `map`, `info` and `check` output compared with qemu-img 10 on identical inputs: every
//! qcow2 preallocation mode, compressed clusters, each multi-file VMDK subformat, images
//! vdisk made, leaked clusters and truncated VMDK extents. Each test runs both tools on
//! copies of the same files (`common::twins::Twins`) and requires the same exit code,
//! stdout and stderr (each tool's directory masked, the tool prefix dropped).

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;
use std::process::Output;

/// `args` run by both tools: same exit code, same stdout and same stderr.
#[track_caller]
fn same_everything(t: &Twins, args: &[&str]) -> (Output, Output) {
    let (q, v) = t.run(args);
    let what = args.join(" ");
    let both = format!(
        "{}\n{}",
        describe(&format!("qemu-img {what}"), &q),
        describe(&format!("vdisk {what}"), &v)
    );
    assert_eq!(
        q.status.code(),
        v.status.code(),
        "exit codes differ\n{both}"
    );
    let stdout = |tool, out: &Output| {
        let side = t.side(tool);
        String::from_utf8_lossy(&out.stdout).replace(side.to_str().expect("utf-8 path"), "<dir>")
    };
    assert_text_eq(
        &format!("stdout of {what}"),
        &stdout(Tool::Vdisk, &v),
        &stdout(Tool::Qemu, &q),
    );
    assert_text_eq(
        &format!("stderr of {what}"),
        &t.error_text(Tool::Vdisk, &v),
        &t.error_text(Tool::Qemu, &q),
    );
    (q, v)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Copy every file of the work directory whose name starts with `prefix` into both
/// sides (a VMDK descriptor and its extent files, named relative to each other), keeping
/// holes: a flat extent of a 5 GiB image must not fill the disk.
fn put_all(t: &Twins, prefix: &str) {
    let work = t.work("");
    for entry in std::fs::read_dir(&work).expect("listing the work directory") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_str().expect("utf-8 name");
        if name.starts_with(prefix) {
            for tool in [Tool::Qemu, Tool::Vdisk] {
                let to = t.path(tool, name);
                sh(&["cp", "--sparse=always", s(&work.join(name)), s(&to)]);
            }
        }
    }
}

/// Both map outputs of `@name`.
#[track_caller]
fn same_maps(t: &Twins, name: &str) {
    let at = format!("@{name}");
    same_everything(t, &["map", "--output=json", &at]);
    same_everything(t, &["map", &at]);
}

#[test]
fn map_matches_qemu_img_for_every_qcow2_preallocation_mode() {
    let t = Twins::new();
    for compat in ["1.1", "0.10"] {
        for prealloc in ["off", "metadata", "falloc", "full"] {
            let name = format!("p-{prealloc}-{compat}.qcow2");
            let src = t.work(&name);
            let opts = format!("preallocation={prealloc},compat={compat}");
            qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", &opts, s(&src), "4M"]);
            qemu_io_ok(&[
                "-c",
                "write -P 1 0 64k",
                "-c",
                "write -P 2 1M 192k",
                s(&src),
            ]);
            t.put(&name, &src);
            same_maps(&t, &name);
        }
    }
}

#[test]
fn map_keeps_the_host_offset_of_preallocated_zero_clusters_as_qemu_img() {
    let t = Twins::new();
    let src = t.work("z.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "2M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 1 0 512k",
        "-c",
        "write -z 0 128k",
        "-c",
        "write -z -u 128k 64k",
        "-c",
        "write -z 192k 64k",
        "-c",
        "write -z 320k 64k",
        "-c",
        "write -z 1M 64k",
        s(&src),
    ]);
    t.put("z.qcow2", &src);
    same_maps(&t, "z.qcow2");
}

#[test]
fn map_of_images_vdisk_made_matches_qemu_img() {
    let t = Twins::new();
    let raw = t.work("data.raw");
    std::fs::write(&raw, pattern(7, 0, 3 << 20)).expect("writing a raw image");
    qemu_io_ok(&["-f", "raw", "-c", "write -z 1M 1M", s(&raw)]);
    for (fmt, opts, name) in [
        ("qcow2", "preallocation=metadata", "vd-meta.qcow2"),
        ("qcow2", "compat=0.10", "vd-v2.qcow2"),
        ("vmdk", "subformat=monolithicSparse", "vd-sparse.vmdk"),
        ("vmdk", "subformat=monolithicFlat", "vd-flat.vmdk"),
    ] {
        let out = t.work(name);
        vdisk_ok(&["convert", "-O", fmt, "-o", opts, s(&raw), s(&out)]);
        put_all(
            &t,
            name.trim_end_matches(".vmdk").trim_end_matches(".qcow2"),
        );
        same_maps(&t, name);
    }
    let created = t.work("vd-created.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        s(&created),
        "2M",
    ]);
    t.put("vd-created.qcow2", &created);
    same_maps(&t, "vd-created.qcow2");
}

#[test]
fn map_of_raw_images_and_backing_chains_matches_qemu_img() {
    let t = Twins::new();
    let base = t.work("base.raw");
    qemu_img_ok(&["create", "-q", "-f", "raw", s(&base), "2M"]);
    qemu_io_ok(&["-f", "raw", "-c", "write -P 3 64k 64k", s(&base)]);
    t.put("base.raw", &base);
    same_maps(&t, "base.raw");
    // The overlay names its backing file relative to itself, so each side has its own.
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&top),
        ]);
    }
    let top = t.path(Tool::Qemu, "top.qcow2");
    qemu_io_ok(&["-c", "write -P 4 1M 64k", s(&top)]);
    std::fs::copy(&top, t.path(Tool::Vdisk, "top.qcow2")).expect("copying the overlay");
    same_maps(&t, "top.qcow2");
}

#[test]
fn map_in_human_form_refuses_compressed_data_after_printing_what_comes_before() {
    let t = Twins::new();
    let raw = t.work("data.raw");
    std::fs::write(&raw, pattern(5, 0, 1 << 20)).expect("writing a raw image");
    let compressed = t.work("c.qcow2");
    qemu_img_ok(&["convert", "-c", "-O", "qcow2", s(&raw), s(&compressed)]);
    // An uncompressed cluster first, so that a line is printed before the error.
    qemu_io_ok(&["-c", "write -P 9 0 64k", s(&compressed)]);
    t.put("c.qcow2", &compressed);
    let (q, _) = same_everything(&t, &["map", "@c.qcow2"]);
    assert_eq!(
        q.status.code(),
        Some(1),
        "qemu-img accepted compressed data"
    );
    assert!(
        !q.stdout.is_empty(),
        "qemu-img printed no line before the error"
    );
    same_everything(&t, &["map", "--output=json", "@c.qcow2"]);

    let stream = t.work("s.vmdk");
    qemu_img_ok(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&stream),
    ]);
    t.put("s.vmdk", &stream);
    same_maps(&t, "s.vmdk");
}

/// A VMDK of each multi-file subformat (and the single-file ones), 5 GiB so that the
/// twoGbMaxExtent ones have three extents, with data in the first two.
fn vmdk_of_each_subformat(t: &Twins) -> Vec<String> {
    let mut names = Vec::new();
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let name = format!("v-{sub}.vmdk");
        let src = t.work(&name);
        let opts = format!("subformat={sub}");
        qemu_img_ok(&["create", "-q", "-f", "vmdk", "-o", &opts, s(&src), "5G"]);
        qemu_io_ok(&[
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -P 2 2047M 2M",
            s(&src),
        ]);
        put_all(t, &format!("v-{sub}"));
        names.push(name);
    }
    names
}

#[test]
fn map_names_the_extent_file_of_multi_file_vmdk_and_reports_flat_extents_as_qemu_img() {
    let t = Twins::new();
    for name in vmdk_of_each_subformat(&t) {
        same_maps(&t, &name);
    }
}

#[test]
fn info_lists_each_extent_file_of_multi_file_vmdk_and_counts_it_in_disk_size() {
    let t = Twins::new();
    for name in vmdk_of_each_subformat(&t) {
        let at = format!("@{name}");
        same_everything(&t, &["info", &at]);
        let (q, _) = same_everything(&t, &["info", "--output=json", &at]);
        let text = String::from_utf8_lossy(&q.stdout);
        if name.contains("twoGb") {
            assert!(
                text.contains("extents.2"),
                "qemu-img listed no extent child"
            );
        }
    }
}

#[test]
fn map_start_offset_and_max_length_match_qemu_img_including_its_refusals() {
    let t = Twins::new();
    let src = t.work("a.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "1M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 2 512k 64k",
        s(&src),
    ]);
    t.put("a.qcow2", &src);
    let cases: &[&[&str]] = &[
        &["-s", "100"],
        &["--start-offset", "64k", "-l", "1000"],
        &["-l", "0"],
        &["-s", "2M"],
        &["-s", "1M"],
        &["-s", "512", "-l", "511"],
        &["-l", "1.5k"],
        &["-l", "1.1k"],
        &["--max-length", "0x10"],
        &["-s", "500k", "-l", "100k"],
        &["-s", "x"],
        &["-s", "-1"],
        &["-l", "1.5"],
        &["-l", "1e3"],
        &["-l", "8E"],
        &["-s", "99999999999999999999"],
        &["-l", ""],
    ];
    for case in cases {
        for output in ["--output=json", "--output=human"] {
            let mut args = vec!["map", output];
            args.extend_from_slice(case);
            args.push("@a.qcow2");
            same_everything(&t, &args);
        }
    }
    // Unaligned ranges over other formats (grains, flat extents, file holes).
    for (fmt, opts, name) in [
        ("raw", "", "r.raw"),
        ("vmdk", "subformat=monolithicSparse", "s.vmdk"),
        ("vmdk", "subformat=monolithicFlat", "f.vmdk"),
        ("qcow2", "cluster_size=512", "small.qcow2"),
    ] {
        let src = t.work(name);
        let mut create = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            create.extend(["-o", opts]);
        }
        create.extend([s(&src), "4M"]);
        qemu_img_ok(&create);
        qemu_io_ok(&["-f", fmt, "-c", "write -P 1 100k 100k", s(&src)]);
        put_all(&t, name.split('.').next().expect("a name"));
        let at = format!("@{name}");
        for range in [
            ["-s", "1"],
            ["-s", "101k"],
            ["-s", "511"],
            ["-s", "123457"],
            ["-l", "7"],
            ["-s", "5M"],
        ] {
            for output in ["--output=json", "--output=human"] {
                same_everything(&t, &["map", output, range[0], range[1], &at]);
            }
        }
        same_everything(&t, &["map", "-s", "511", "-l", "2", &at]);
        same_everything(&t, &["map", "-s", "101k", "-l", "3", "--output=json", &at]);
    }
}

/// A 1 GiB qcow2 image whose first L1 entry is cleared after `mib` MiB were written:
/// every cluster it mapped, and its L2 table, is leaked.
fn leaky_qcow2(t: &Twins, name: &str, mib: u64) {
    let src = t.work(name);
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "1G"]);
    qemu_io_ok(&["-c", &format!("write -P 1 0 {mib}M"), s(&src)]);
    let bytes = read(&src);
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes")) as usize;
    let mut bytes = bytes;
    bytes[l1..l1 + 8].fill(0);
    std::fs::write(&src, bytes).expect("writing the leaky image");
    t.put(name, &src);
}

#[test]
fn check_prints_the_leaked_lines_and_then_the_repairing_lines_as_qemu_img() {
    let t = Twins::new();
    leaky_qcow2(&t, "leak.qcow2", 4);
    let pristine = t.work("leak.qcow2");
    for repair in [None, Some("leaks"), Some("all")] {
        t.put("leak.qcow2", &pristine);
        let mut args = vec!["check"];
        if let Some(r) = repair {
            args.extend(["-r", r]);
        }
        args.push("@leak.qcow2");
        let (q, _) = same_everything(&t, &args);
        let err = String::from_utf8_lossy(&q.stderr);
        assert!(err.contains("Leaked cluster"), "qemu-img reported no leak");
        if repair.is_some() {
            assert!(
                err.contains("Repairing cluster"),
                "qemu-img repaired nothing"
            );
            assert_qemu_compare_identical(
                &t.path(Tool::Qemu, "leak.qcow2"),
                &t.path(Tool::Vdisk, "leak.qcow2"),
            );
        }
    }
}

#[test]
fn check_reports_a_refcount_rebuild_and_the_old_structure_it_frees_as_qemu_img() {
    let t = Twins::new();
    let src = t.work("rc.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "64M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", s(&src)]);
    let mut bytes = read(&src);
    let reftable = u64::from_be_bytes(bytes[48..56].try_into().expect("8 bytes")) as usize;
    let block = u64::from_be_bytes(bytes[reftable..reftable + 8].try_into().expect("8 bytes"));
    let block = block as usize;
    // Cluster 6 (data) counts 0, so only a rebuild can fix it; 7 counts 2, 100 is leaked.
    for (cluster, refcount) in [(6, 0u16), (7, 2), (100, 1)] {
        bytes[block + cluster * 2..block + cluster * 2 + 2]
            .copy_from_slice(&refcount.to_be_bytes());
    }
    std::fs::write(&src, bytes).expect("writing the broken image");
    for repair in [None, Some("leaks"), Some("all")] {
        t.put("rc.qcow2", &src);
        let mut args = vec!["check"];
        if let Some(r) = repair {
            args.extend(["-r", r]);
        }
        args.push("@rc.qcow2");
        let (q, _) = same_everything(&t, &args);
        if repair == Some("all") {
            let err = String::from_utf8_lossy(&q.stderr);
            assert!(err.contains("Rebuilding refcount structure"), "no rebuild");
            assert_qemu_check_clean(&t.path(Tool::Vdisk, "rc.qcow2"));
        }
    }
}

#[test]
fn check_reports_a_refcount_too_low_then_its_repair_as_qemu_img() {
    let t = Twins::new();
    let src = t.work("low.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "64M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", s(&src)]);
    qemu_img_ok(&["snapshot", "-c", "s1", s(&src)]);
    let mut bytes = read(&src);
    let reftable = u64::from_be_bytes(bytes[48..56].try_into().expect("8 bytes")) as usize;
    let block = u64::from_be_bytes(bytes[reftable..reftable + 8].try_into().expect("8 bytes"));
    let at = block as usize + 6 * 2;
    // Cluster 6 holds data shared with the snapshot (refcount 2); record 1.
    bytes[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    std::fs::write(&src, bytes).expect("writing the broken image");
    for repair in [None, Some("leaks"), Some("all")] {
        t.put("low.qcow2", &src);
        let mut args = vec!["check"];
        if let Some(r) = repair {
            args.extend(["-r", r]);
        }
        args.push("@low.qcow2");
        let (q, _) = same_everything(&t, &args);
        let err = String::from_utf8_lossy(&q.stderr);
        assert!(
            err.contains("ERROR cluster 6 refcount=1 reference=2"),
            "{err}"
        );
    }
}

#[test]
fn check_reports_every_finding_with_no_cap() {
    let t = Twins::new();
    // 128 MiB of 64 KiB clusters: 2048 leaked data clusters, more than any cap we had.
    leaky_qcow2(&t, "many.qcow2", 128);
    let (q, _) = same_everything(&t, &["check", "@many.qcow2"]);
    let lines = String::from_utf8_lossy(&q.stderr)
        .lines()
        .filter(|l| l.starts_with("Leaked cluster"))
        .count();
    assert!(lines > 2000, "qemu-img printed only {lines} leak lines");
    same_everything(&t, &["check", "--output=json", "@many.qcow2"]);
}

#[test]
fn a_truncated_vmdk_gives_qemu_imgs_answer_in_check_and_info() {
    let t = Twins::new();
    let src = t.work("t.vmdk");
    qemu_img_ok(&["create", "-q", "-f", "vmdk", s(&src), "64M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", "-c", "write -P 2 32M 64k", s(&src)]);
    let whole = read(&src);
    // The metadata ends at 64 KiB (a cut inside its last sector still opens: file
    // lengths count whole sectors); grains follow, the last one at 0x110000.
    for cut in [
        65535, 65536, 65537, 200000, 0x40000, 600000, 1000000, 0x110000, 0x110001,
    ] {
        let cut_file = t.work("cut.vmdk");
        std::fs::write(&cut_file, &whole[..cut]).expect("writing a cut image");
        t.put("cut.vmdk", &cut_file);
        same_everything(&t, &["check", "@cut.vmdk"]);
        same_everything(&t, &["check", "--output=json", "@cut.vmdk"]);
        same_everything(&t, &["info", "@cut.vmdk"]);
        same_maps(&t, "cut.vmdk");
    }
    // Cut inside the metadata: both refuse to open it (the wording differs, see README).
    for cut in [100, 512, 4096, 65000] {
        let cut_file = t.work("cut.vmdk");
        std::fs::write(&cut_file, &whole[..cut]).expect("writing a cut image");
        t.put("cut.vmdk", &cut_file);
        for cmd in ["check", "info"] {
            let (q, v) = t.run(&[cmd, "@cut.vmdk"]);
            assert_eq!(q.status.code(), Some(1), "qemu-img {cmd} of a cut at {cut}");
            assert_eq!(v.status.code(), Some(1), "vdisk {cmd} of a cut at {cut}");
        }
    }
}

#[test]
fn a_truncated_extent_of_a_two_gb_sparse_vmdk_fails_check_as_in_qemu_img() {
    let t = Twins::new();
    let src = t.work("m.vmdk");
    let opts = "subformat=twoGbMaxExtentSparse";
    qemu_img_ok(&["create", "-q", "-f", "vmdk", "-o", opts, s(&src), "5G"]);
    qemu_io_ok(&[
        "-c",
        "write -P 1 0 64k",
        "-c",
        "write -P 2 2048M 1M",
        s(&src),
    ]);
    let second = t.work("m-s002.vmdk");
    let len = std::fs::metadata(&second).expect("the second extent").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .expect("opening the second extent");
    file.set_len(len - 300_000)
        .expect("truncating the second extent");
    put_all(&t, "m");
    same_everything(&t, &["check", "@m.vmdk"]);
    same_everything(&t, &["info", "@m.vmdk"]);
    same_maps(&t, "m.vmdk");
}
