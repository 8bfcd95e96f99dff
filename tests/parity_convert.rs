//! qemu-img convert's flags beyond the basic copy, each run with qemu-img 10 and vdisk on
//! identical copies of the same inputs: `-n` and `--target-is-zero`, `-S`, `-l`, `-C`,
//! `-r`, `--salvage`, several sources, `--image-opts` / `--target-image-opts`, `--object`,
//! and `-O vmdk -c`. Each case compares exit codes and error text, and for a successful
//! conversion the resulting images (`qemu-img compare`, and `qemu-img check` on qcow2).

mod common;

use common::twins::{Tool, Twins};
use common::*;

/// A 4 MiB qcow2 source with data, a zeroed range and a hole, and snapshots `s1` (ID 1,
/// the first state) and `2` (ID 2, after more writes), as `src.qcow2` in both directories.
fn qcow2_source(t: &Twins) {
    let src = t.work("src.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&src), "4M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x61 0 1M",
        "-c",
        "write -z 256k 64k",
        s(&src),
    ]);
    qemu_img_ok(&["snapshot", "-c", "s1", s(&src)]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x62 0 64k",
        "-c",
        "write -P 0x63 3M 4k",
        s(&src),
    ]);
    qemu_img_ok(&["snapshot", "-c", "2", s(&src)]);
    qemu_io_ok(&["-c", "write -P 0x64 2M 64k", s(&src)]);
    t.put("src.qcow2", &src);
}

/// `name`, a raw file of `size` bytes: random bytes when `dirty`, else a hole.
fn raw_target(t: &Twins, name: &str, size: usize, dirty: bool) {
    let f = t.work(name);
    if dirty {
        std::fs::write(&f, random_bytes(7, size)).expect("writing a test target");
    } else {
        qemu_img_ok(&["create", "-q", "-f", "raw", s(&f), &size.to_string()]);
    }
    t.put(name, &f);
}

#[test]
fn convert_n_writes_into_the_existing_target_as_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    // A dirty target: what the source reads as zeros must be zeroed there too.
    raw_target(&t, "dirty.raw", 8 << 20, true);
    t.same_convert(&["convert", "-n", "@src.qcow2", "@dirty.raw"], "dirty.raw");
    raw_target(&t, "zero.raw", 4 << 20, false);
    t.same_convert(
        &[
            "convert",
            "-n",
            "--target-is-zero",
            "@src.qcow2",
            "@zero.raw",
        ],
        "zero.raw",
    );
    // -O names the target's format; an existing qcow2 with other data is overwritten.
    let q = t.work("old.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&q), "4M"]);
    qemu_io_ok(&["-c", "write -P 0x77 0 4M", s(&q)]);
    t.put("old.qcow2", &q);
    t.same_convert(
        &["convert", "-n", "-O", "qcow2", "@src.qcow2", "@old.qcow2"],
        "old.qcow2",
    );
    // Compressed into an existing empty qcow2: the same in both.
    let empty = t.work("empty.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&empty), "4M"]);
    t.put("empty.qcow2", &empty);
    t.same_convert(
        &[
            "convert",
            "-n",
            "-c",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@empty.qcow2",
        ],
        "empty.qcow2",
    );
    // Compressed into allocated clusters: qemu-img fails ("error while writing"); vdisk
    // zeroes the target first and succeeds (a documented difference).
    t.put("full.qcow2", &q);
    let (qo, vo) = t.run(&[
        "convert",
        "-n",
        "-c",
        "-O",
        "qcow2",
        "@src.qcow2",
        "@full.qcow2",
    ]);
    assert_eq!((qo.status.code(), vo.status.code()), (Some(1), Some(0)));
    assert_qemu_compare_identical(
        &t.path(Tool::Vdisk, "src.qcow2"),
        &t.path(Tool::Vdisk, "full.qcow2"),
    );
    assert_qemu_check_clean(&t.path(Tool::Vdisk, "full.qcow2"));
    // Refusals, in qemu-img's words.
    raw_target(&t, "small.raw", 1 << 20, true);
    for args in [
        &["convert", "-n", "@src.qcow2", "@small.raw"][..],
        &[
            "convert",
            "-n",
            "-o",
            "cluster_size=4k",
            "@src.qcow2",
            "@small.raw",
        ],
        &["convert", "--target-is-zero", "@src.qcow2", "@new.raw"],
        &["convert", "--target-image-opts", "@src.qcow2", "@new.raw"],
        &[
            "convert",
            "-n",
            "-c",
            "-O",
            "raw",
            "@src.qcow2",
            "@dirty.raw",
        ],
    ] {
        t.same_outcome(args);
    }
    t.assert_unchanged("small.raw", &t.work("small.raw"));
    // A missing target and a target of another format fail in both (the open error's
    // wording is vdisk's own; see the README).
    let (q, v) = t.run(&["convert", "-n", "@src.qcow2", "@missing.raw"]);
    assert_eq!((q.status.code(), v.status.code()), (Some(1), Some(1)));
    assert!(!t.path(Tool::Vdisk, "missing.raw").exists());
}

#[test]
fn sparse_size_decides_what_is_written_as_in_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    t.same_convert(
        &["convert", "-S", "0", "@src.qcow2", "@full.raw"],
        "full.raw",
    );
    // -S 0 allocates every byte of a raw output, as qemu-img does.
    let map = |tool, name| qemu_img_ok(&["map", "--output=json", s(&t.path(tool, name))]);
    assert_eq!(
        map(Tool::Qemu, "full.raw"),
        map(Tool::Vdisk, "full.raw"),
        "allocation of -S 0 output"
    );
    for (flag, out) in [
        ("0", "full.qcow2"),
        ("4k", "s4k.qcow2"),
        ("1M", "s1m.qcow2"),
    ] {
        t.same_convert(
            &[
                "convert",
                "-S",
                flag,
                "-O",
                "qcow2",
                "@src.qcow2",
                &format!("@{out}"),
            ],
            out,
        );
    }
    // qcow2 output too: every cluster allocated, zeros included.
    assert_eq!(
        map(Tool::Qemu, "full.qcow2"),
        map(Tool::Vdisk, "full.qcow2"),
        "allocation of -S 0 qcow2 output"
    );
    t.same_convert(
        &["convert", "-S", "8k", "@src.qcow2", "@s8k.raw"],
        "s8k.raw",
    );
    for bad in ["3", "x", "-1", "32M", "1000"] {
        t.same_outcome(&["convert", "-S", bad, "@src.qcow2", "@bad.raw"]);
    }
}

#[test]
fn source_snapshot_flag_reads_an_internal_snapshot_as_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    let cases: &[(&str, &str)] = &[
        ("s1", "bare_name.raw"),
        ("1", "bare_id.raw"),
        ("2", "bare_both.raw"),
        ("snapshot.name=s1", "name.raw"),
        ("snapshot.id=2", "id.raw"),
        ("snapshot.id=1,snapshot.name=s1", "id_name.raw"),
    ];
    for (param, out) in cases {
        t.same_convert(
            &["convert", "-l", param, "@src.qcow2", &format!("@{out}")],
            out,
        );
    }
    t.same_convert(
        &[
            "convert",
            "-l",
            "s1",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@snap.qcow2",
        ],
        "snap.qcow2",
    );
    // A snapshot keeps its own disk size when the image has grown since.
    let grown = t.work("grown.qcow2");
    std::fs::copy(t.work("src.qcow2"), &grown).expect("copying");
    qemu_img_ok(&["resize", "-q", s(&grown), "6M"]);
    qemu_io_ok(&["-c", "write -P 0x65 5M 64k", s(&grown)]);
    t.put("grown.qcow2", &grown);
    for (param, out) in [("s1", "old_size.raw"), ("snapshot.id=2", "old_size2.qcow2")] {
        let fmt = if out.ends_with("raw") { "raw" } else { "qcow2" };
        t.same_convert(
            &[
                "convert",
                "-l",
                param,
                "-O",
                fmt,
                "@grown.qcow2",
                &format!("@{out}"),
            ],
            out,
        );
    }
    assert_eq!(read(&t.path(Tool::Vdisk, "old_size.raw")).len(), 4 << 20);
    // The snapshot is read, not the active layer.
    let active = t.work("active.raw");
    qemu_img_ok(&["convert", s(&t.path(Tool::Qemu, "src.qcow2")), s(&active)]);
    assert_ne!(read(&active), read(&t.path(Tool::Vdisk, "name.raw")));
    raw_target(&t, "plain.raw", 1 << 20, true);
    for args in [
        &["convert", "-l", "nope", "@src.qcow2", "@x.raw"][..],
        &[
            "convert",
            "-l",
            "snapshot.id=1,snapshot.name=2",
            "@src.qcow2",
            "@x.raw",
        ],
        &["convert", "-l", "snapshot.bogus=1", "@src.qcow2", "@x.raw"],
        &["convert", "-l", "s1", "@plain.raw", "@x.raw"],
        &["convert", "-l", "s1", "@src.qcow2", "@plain.raw", "@x.raw"],
        // qemu-img 10 has no -s (the old spelling of -l) any more.
        &["convert", "-s", "s1", "@src.qcow2", "@x.raw"],
    ] {
        t.same_outcome(args);
    }
    t.assert_unchanged("src.qcow2", &t.work("src.qcow2"));
}

#[test]
fn copy_offloading_and_rate_limit_are_taken_and_refused_as_in_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    t.same_convert(&["convert", "-C", "@src.qcow2", "@c.raw"], "c.raw");
    t.same_convert(
        &[
            "convert",
            "-C",
            "-O",
            "qcow2",
            "-W",
            "-m",
            "2",
            "@src.qcow2",
            "@c.qcow2",
        ],
        "c.qcow2",
    );
    // The rate is honoured loosely; no timing is asserted.
    t.same_convert(&["convert", "-r", "64M", "@src.qcow2", "@r.raw"], "r.raw");
    t.same_convert(
        &[
            "convert",
            "--rate",
            "0",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@r.qcow2",
        ],
        "r.qcow2",
    );
    for args in [
        &[
            "convert",
            "-C",
            "-c",
            "-O",
            "qcow2",
            "@src.qcow2",
            "@x.qcow2",
        ][..],
        &["convert", "-C", "-S", "0", "@src.qcow2", "@x.raw"],
        &["convert", "-C", "--salvage", "@src.qcow2", "@x.raw"],
        &["convert", "-r", "x", "@src.qcow2", "@x.raw"],
        &["convert", "-r", "-5", "@src.qcow2", "@x.raw"],
    ] {
        t.same_outcome(args);
        assert!(!t.path(Tool::Vdisk, "x.raw").exists() && !t.path(Tool::Vdisk, "x.qcow2").exists());
    }
}

/// A 1 MiB compressed qcow2 image whose second cluster's compressed bytes are garbage.
fn broken_compressed(t: &Twins) {
    let plain = t.work("plain.qcow2");
    let img = t.work("broken.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&plain), "1M"]);
    qemu_io_ok(&["-c", "write -P 0x41 0 1M", s(&plain)]);
    qemu_img_ok(&["convert", "-c", "-O", "qcow2", s(&plain), s(&img)]);
    let mut bytes = read(&img);
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let l1 = be(&bytes, 40) as usize;
    let l2 = (be(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let entry = be(&bytes, l2 + 8);
    assert!(entry & (1 << 62) != 0, "cluster 1 is compressed");
    // 64 KiB clusters: the host offset is the low 62 - (16 - 8) = 54 bits.
    let host = (entry & ((1 << 54) - 1)) as usize;
    bytes[host..host + 16].fill(0xff);
    std::fs::write(&img, bytes).expect("writing the broken image");
    t.put("broken.qcow2", &img);
}

/// The warning lines of a salvaging run, each once, sorted.
fn warnings(t: &Twins, tool: Tool, out: &std::process::Output) -> Vec<String> {
    let mut lines: Vec<String> = t.error_text(tool, out).lines().map(String::from).collect();
    lines.sort();
    lines.dedup();
    lines
}

#[test]
fn salvage_writes_zeros_for_unreadable_sectors_and_warns_as_qemu_img() {
    let t = Twins::new();
    broken_compressed(&t);
    // Without --salvage both fail at the same byte; vdisk names the broken structure where
    // qemu-img says "Input/output error" (a documented difference).
    let (q, v) = t.run(&["convert", "@broken.qcow2", "@plain.raw"]);
    assert_eq!((q.status.code(), v.status.code()), (Some(1), Some(1)));
    let (qe, ve) = (t.error_text(Tool::Qemu, &q), t.error_text(Tool::Vdisk, &v));
    let at = |e: &str| {
        e.split("error while reading at byte ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .map(str::to_string)
    };
    assert!(qe.contains(": Input/output error"), "{qe}");
    assert!(at(&qe).is_some() && at(&qe) == at(&ve), "{qe}\n{ve}");
    assert!(ve.contains("compress"), "{ve}");
    for out in ["saved.raw", "saved.qcow2"] {
        let fmt = if out.ends_with("raw") { "raw" } else { "qcow2" };
        let (q, v) = t.same_outcome(&[
            "convert",
            "--salvage",
            "-O",
            fmt,
            "@broken.qcow2",
            &format!("@{out}"),
        ]);
        assert!(q.status.success());
        t.same_image(out);
        // qemu-img prints each sector's warning twice; the set of lines is the same.
        let want = warnings(&t, Tool::Qemu, &q);
        assert_eq!(
            want.len(),
            128,
            "one warning per 512-byte sector of the broken cluster"
        );
        assert_eq!(want, warnings(&t, Tool::Vdisk, &v));
    }
}

#[test]
fn several_sources_are_concatenated_as_in_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    let raw = t.work("b.raw");
    write_mixed_raw(&raw, 3 << 20, 256 << 10, 11);
    t.put("b.raw", &raw);
    let vmdk = t.work("c.vmdk");
    qemu_img_ok(&["convert", "-O", "vmdk", s(&raw), s(&vmdk)]);
    t.put("c.vmdk", &vmdk);
    t.same_convert(
        &[
            "convert",
            "@src.qcow2",
            "@b.raw",
            "@c.vmdk",
            "-O",
            "qcow2",
            "@all.qcow2",
        ],
        "all.qcow2",
    );
    t.same_convert(
        &["convert", "-f", "raw", "@b.raw", "@b.raw", "@twice.raw"],
        "twice.raw",
    );
    t.same_convert(
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "@b.raw",
            "@src.qcow2",
            "@packed.qcow2",
        ],
        "packed.qcow2",
    );
    t.same_outcome(&[
        "convert",
        "@src.qcow2",
        "@b.raw",
        "-B",
        "@src.qcow2",
        "-F",
        "qcow2",
        "-O",
        "qcow2",
        "@x.qcow2",
    ]);
}

#[test]
fn image_opts_name_the_source_and_target_as_in_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    let comma = t.work("a,b.qcow2");
    std::fs::copy(t.work("src.qcow2"), &comma).expect("copying");
    t.put("a,b.qcow2", &comma);
    let spec = |tool: Tool, opts: &str| opts.replace("DIR", s(&t.side(tool)));
    // Specifications name files by path; build each tool's own.
    let run = |args: &[&str], out: Option<&str>| {
        let per_tool = |tool| -> Vec<String> { args.iter().map(|a| spec(tool, a)).collect() };
        let (q, v) = (qemu_img(per_tool(Tool::Qemu)), vdisk(per_tool(Tool::Vdisk)));
        let what = args.join(" ");
        assert_eq!(
            q.status.code(),
            v.status.code(),
            "{what}\n{}\n{}",
            describe("qemu-img", &q),
            describe("vdisk", &v)
        );
        if !q.status.success() {
            assert_eq!(
                t.error_text(Tool::Qemu, &q),
                t.error_text(Tool::Vdisk, &v),
                "{what}"
            );
        } else if let Some(out) = out {
            t.same_image(out);
        }
    };
    for (opts, out) in [
        ("driver=qcow2,file.filename=DIR/src.qcow2", "a.raw"),
        (
            "driver=qcow2,file.driver=file,file.filename=DIR/src.qcow2",
            "b.raw",
        ),
        ("file.filename=DIR/src.qcow2", "c.raw"),
        ("driver=qcow2,file.filename=DIR/a,,b.qcow2,", "d.raw"),
        ("driver=raw,file.filename=DIR/src.qcow2", "e.raw"),
        ("driver=file,filename=DIR/src.qcow2", "f.raw"),
        ("driver=qcow2,file.filename=DIR/src.qcow2,backing=", "g.raw"),
    ] {
        run(
            &["convert", "--image-opts", opts, &format!("DIR/{out}")],
            Some(out),
        );
    }
    run(
        &[
            "convert",
            "--source-image-opts",
            "driver=qcow2,file.filename=DIR/src.qcow2",
            "-O",
            "qcow2",
            "DIR/h.qcow2",
        ],
        Some("h.qcow2"),
    );
    raw_target(&t, "t.raw", 4 << 20, true);
    run(
        &[
            "convert",
            "-n",
            "--target-image-opts",
            "DIR/src.qcow2",
            "driver=raw,file.filename=DIR/t.raw",
        ],
        Some("t.raw"),
    );
    for bad in [
        "driver=qcow2,file.filename=DIR/src.qcow2,bogus=1",
        "driver=raw,file.filename=DIR/src.qcow2,bogus=x",
        "driver=qcow2,file.filename=DIR/src.qcow2,file.bogus=1",
        "driver=qcow2,file.filename=DIR/src.qcow2,backing=null",
        "filename=DIR/src.qcow2",
        "driver=qcow2,filename=DIR/src.qcow2",
        "driver=bogus,file.filename=DIR/src.qcow2",
        "driver=qcow2,,file.filename=DIR/src.qcow2",
        "driver=file,file.filename=DIR/src.qcow2",
        "file.filename=DIR/src.qcow2,bogus=1",
        "DIR/src.qcow2",
    ] {
        run(&["convert", "--image-opts", bad, "DIR/x.raw"], None);
    }
    run(
        &[
            "convert",
            "--image-opts",
            "-f",
            "qcow2",
            "driver=qcow2,file.filename=DIR/src.qcow2",
            "DIR/x.raw",
        ],
        None,
    );
    run(
        &[
            "convert",
            "-n",
            "--target-image-opts",
            "-O",
            "raw",
            "DIR/src.qcow2",
            "driver=raw,file.filename=DIR/t.raw",
        ],
        None,
    );
}

#[test]
fn object_secrets_are_accepted_and_refused_as_in_qemu_img_and_never_printed() {
    let t = Twins::new();
    qcow2_source(&t);
    let secret_file = t.work("key.txt");
    std::fs::write(&secret_file, "file-secret").expect("writing a secret");
    for (obj, out) in [
        ("secret,id=sec0,data=hunter2", "a.raw"),
        ("secret,id=sec0,data=a,,b,format=raw", "b.raw"),
        ("qom-type=secret,id=s.1,data=eA==,format=base64", "c.raw"),
    ] {
        t.same_convert(
            &["convert", "--object", obj, "@src.qcow2", &format!("@{out}")],
            out,
        );
    }
    let from_file = format!("secret,id=k,file={}", s(&secret_file));
    t.same_convert(
        &["convert", "--object", &from_file, "@src.qcow2", "@d.raw"],
        "d.raw",
    );
    for obj in [
        "foo,id=x",
        "id=s,data=x",
        "secret,data=hunter2",
        "secret,id=sec0",
        "secret,id=sec0,data=hunter2,file=/etc/hostname",
        "secret,id=sec0,data=hunter2,bogus=1",
        "secret,id=sec0,data=hunter2,format=bin",
        "secret,id=1x,data=hunter2",
        "secret,id=sec0,data=hunter2,keyid=nokey",
        "secret,id=sec0,file=/nonexistent/key",
    ] {
        let (_, v) = t.same_outcome(&["convert", "--object", obj, "@src.qcow2", "@x.raw"]);
        let text = String::from_utf8_lossy(&v.stderr);
        assert!(!text.contains("hunter2"), "a secret was printed: {text}");
    }
    t.same_outcome(&[
        "convert",
        "--object",
        "secret,id=s,data=hunter2",
        "--object",
        "secret,id=s,data=other",
        "@src.qcow2",
        "@x.raw",
    ]);
}

#[test]
fn compressed_vmdk_output_behaves_as_in_qemu_img() {
    let t = Twins::new();
    qcow2_source(&t);
    // monolithicSparse takes -c and writes ordinary grains, as qemu-img does.
    t.same_convert(
        &["convert", "-O", "vmdk", "-c", "@src.qcow2", "@sparse.vmdk"],
        "sparse.vmdk",
    );
    t.same_convert(
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "-c",
            "@src.qcow2",
            "@stream.vmdk",
        ],
        "stream.vmdk",
    );
    // A flat extent cannot take it: both refuse (vdisk also removes what it created).
    t.same_outcome(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "-c",
        "@src.qcow2",
        "@flat.vmdk",
    ]);
    assert!(!t.path(Tool::Vdisk, "flat.vmdk").exists());
}

/// Run `args` with both tools, `DIR` in an argument standing for each tool's directory;
/// require the same exit code, error text, and (masked) standard output.
#[track_caller]
fn same_with_dir(t: &Twins, args: &[&str]) {
    let per_tool = |tool: Tool| -> Vec<String> {
        args.iter()
            .map(|a| a.replace("DIR", s(&t.side(tool))))
            .collect()
    };
    let (q, v) = (qemu_img(per_tool(Tool::Qemu)), vdisk(per_tool(Tool::Vdisk)));
    let what = args.join(" ");
    let both = format!("{}\n{}", describe("qemu-img", &q), describe("vdisk", &v));
    assert_eq!(q.status.code(), v.status.code(), "{what}\n{both}");
    assert_eq!(
        t.error_text(Tool::Qemu, &q),
        t.error_text(Tool::Vdisk, &v),
        "{what}\n{both}"
    );
    let stdout = |tool: Tool, o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).replace(s(&t.side(tool)), "DIR")
    };
    assert_eq!(
        stdout(Tool::Qemu, &q),
        stdout(Tool::Vdisk, &v),
        "{what}\n{both}"
    );
}

#[test]
fn image_opts_and_object_work_in_every_subcommand_that_takes_them() {
    let t = Twins::new();
    qcow2_source(&t);
    let top = t.work("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "src.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io_ok(&["-c", "write -P 0x71 64k 64k", s(&top)]);
    // The overlay names its backing file relative to itself: keep both in each directory.
    t.put("top.qcow2", &top);
    let plain = t.work("plain.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&plain), "2M"]);
    qemu_io_ok(&["-c", "write -P 0x72 64k 128k", s(&plain)]);
    t.put("plain.qcow2", &plain);
    let spec = "driver=qcow2,file.filename=DIR/src.qcow2";
    let top_spec = "driver=qcow2,file.filename=DIR/top.qcow2";
    let obj = "secret,id=sec0,data=x";
    let reads: &[&[&str]] = &[
        &["info", "--image-opts", spec],
        &["info", "--object", obj, "--image-opts", top_spec],
        &["check", "--image-opts", spec],
        &[
            "map",
            "--output=json",
            "--image-opts",
            "file.filename=DIR/plain.qcow2",
        ],
        &["compare", "--image-opts", spec, top_spec],
        &["measure", "-O", "qcow2", "--image-opts", spec],
        &["snapshot", "-l", "--image-opts", spec],
        // Refusals: qemu-img's messages.
        &["info", "--image-opts", "-f", "qcow2", spec],
        &[
            "check",
            "--image-opts",
            "driver=qcow2,file.filename=DIR/src.qcow2,bogus=1",
        ],
        &["map", "--image-opts", "filename=DIR/src.qcow2"],
        &["info", "--object", "foo,id=x", "DIR/src.qcow2"],
        &[
            "create",
            "--object",
            "secret,id=s",
            "-f",
            "qcow2",
            "DIR/new.qcow2",
            "1M",
        ],
    ];
    for args in reads {
        same_with_dir(&t, args);
    }
    let writes: &[(&[&str], &str)] = &[
        (
            &["snapshot", "-c", "third", "--image-opts", spec],
            "src.qcow2",
        ),
        (
            &["amend", "-o", "lazy_refcounts=on", "--image-opts", spec],
            "src.qcow2",
        ),
        (&["resize", "--image-opts", spec, "+1M"], "src.qcow2"),
        (
            &["commit", "--object", obj, "--image-opts", top_spec],
            "src.qcow2",
        ),
        (
            &["rebase", "-u", "-b", "", "--image-opts", top_spec],
            "top.qcow2",
        ),
        (
            &[
                "create",
                "-q",
                "--object",
                obj,
                "-f",
                "qcow2",
                "DIR/made.qcow2",
                "1M",
            ],
            "made.qcow2",
        ),
    ];
    for (args, out) in writes {
        same_with_dir(&t, args);
        t.same_image(out);
    }
}
