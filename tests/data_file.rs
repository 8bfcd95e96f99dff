//! qcow2 images with an external data file (issue 17): images qemu-img makes read, map and
//! check as in qemu-img; vdisk writes into them as qemu-io does (the data file holding each
//! cluster at its guest offset, and a raw data file reading as the disk); images vdisk
//! makes are read by QEMU; and what QEMU refuses is refused.

mod common;

use common::twins::{Tool, Twins};
use common::*;
use std::path::Path;
use vdisk::image::{self, ImageOptions};

/// Guest operations as qemu-io commands; vdisk applies the same through the library.
const OPS: &[&str] = &[
    "write -P 1 0 64k",
    "write -P 2 100k 300k",
    "write -z 192k 128k",
    "discard 448k 64k",
    "write -P 3 1020k 8k",
    "write -P 4 2M 4k",
    "discard 2M 64k",
    "write -z 3M 4k",
];

fn vdisk_apply(img: &Path, ops: &[&str]) {
    let mut im = image::open(img, &ImageOptions::default()).expect("writable open");
    for op in ops {
        let w: Vec<&str> = op.split_whitespace().collect();
        let num = |t: &str| -> u64 {
            let (n, mul) = match t.strip_suffix('k') {
                Some(n) => (n, 1024),
                None => match t.strip_suffix('M') {
                    Some(n) => (n, 1 << 20),
                    None => (t, 1),
                },
            };
            n.parse::<u64>().expect("a number") * mul
        };
        let r = match w.as_slice() {
            ["write", "-P", p, o, l] => im.device.write_at(
                &vec![p.parse::<u8>().expect("pattern"); num(l) as usize],
                num(o),
            ),
            ["write", "-z", o, l] => im.device.write_zeroes(num(o), num(l)),
            ["discard", o, l] => im.device.discard(num(o), num(l)),
            other => panic!("unknown op {other:?}"),
        };
        r.expect("guest operation");
    }
    im.device.close().expect("close");
}

/// The images of this test live in one directory, which is the working directory of the
/// qemu commands too: QEMU opens a relative data file name from there, vdisk from the
/// image's directory.
fn create_in(dir: &Path, name: &str, data: &str, raw: bool, cs: &str) {
    let o = format!(
        "data_file={data},data_file_raw={},cluster_size={cs}",
        if raw { "on" } else { "off" }
    );
    let out = std::process::Command::new("qemu-img")
        .current_dir(dir)
        .args(["create", "-q", "-f", "qcow2", "-o", &o, name, "4M"])
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img create", &out)
    );
}

/// Run `ops` with qemu-io on `img.qcow2` in `dir`.
fn qemu_io_in(dir: &Path, ops: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for op in ops {
        args.extend(["-c", op]);
    }
    args.push("img.qcow2");
    let out = in_dir(dir, "qemu-io", &args);
    assert!(out.status.success(), "{}", describe("qemu-io", &out));
}

fn in_dir(dir: &Path, program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running a tool")
}

#[test]
fn images_qemu_makes_with_a_data_file_read_map_and_check_as_in_qemu_img() {
    for (raw, cs) in [(false, "64k"), (true, "64k"), (false, "4k"), (true, "16k")] {
        let dir = tempdir();
        let d = dir.path();
        create_in(d, "img.qcow2", "img.data", raw, cs);
        qemu_io_in(d, OPS);
        let what = format!("raw={raw} cluster_size={cs}");
        for args in [
            vec!["info", "img.qcow2"],
            vec!["info", "--output=json", "img.qcow2"],
            vec!["map", "img.qcow2"],
            vec!["map", "--output=json", "img.qcow2"],
            vec!["check", "img.qcow2"],
            vec!["check", "--output=json", "img.qcow2"],
        ] {
            let q = in_dir(d, "qemu-img", &args);
            let v = in_dir(d, vdisk_bin(), &args);
            assert_eq!(
                q.status.code(),
                v.status.code(),
                "{what}: {}",
                args.join(" ")
            );
            assert_text_eq(
                &format!("{what}: {}", args.join(" ")),
                &String::from_utf8_lossy(&v.stdout),
                &String::from_utf8_lossy(&q.stdout),
            );
        }
        let q = in_dir(
            d,
            "qemu-img",
            &["convert", "-O", "raw", "img.qcow2", "q.raw"],
        );
        assert!(q.status.success());
        let v = in_dir(
            d,
            vdisk_bin(),
            &["convert", "-O", "raw", "img.qcow2", "v.raw"],
        );
        assert!(v.status.success(), "{}", describe("vdisk convert", &v));
        assert_bytes_eq(&what, &read(&d.join("v.raw")), &read(&d.join("q.raw")));
    }
}

#[test]
fn vdisk_writes_into_a_data_file_image_as_qemu_io_does() {
    for (raw, cs) in [(false, "64k"), (true, "64k"), (false, "512")] {
        let what = format!("raw={raw} cluster_size={cs}");
        let dir = tempdir();
        let (q, v) = (dir.path().join("q"), dir.path().join("v"));
        for d in [&q, &v] {
            std::fs::create_dir(d).expect("mkdir");
            create_in(d, "img.qcow2", "img.data", raw, cs);
        }
        qemu_io_in(&q, OPS);
        vdisk_apply(&v.join("img.qcow2"), OPS);
        let c = in_dir(&v, "qemu-img", &["check", "img.qcow2"]);
        assert!(
            c.status.success(),
            "{what}: {}",
            describe("qemu-img check", &c)
        );
        // (QEMU opens a relative data file name from its working directory.)
        for d in [&q, &v] {
            let conv = in_dir(
                d,
                "qemu-img",
                &["convert", "-O", "raw", "img.qcow2", "guest.raw"],
            );
            assert!(
                conv.status.success(),
                "{}",
                describe("qemu-img convert", &conv)
            );
        }
        let guest = read(&q.join("guest.raw"));
        assert_bytes_eq(&what, &read(&v.join("guest.raw")), &guest);
        let data = read(&v.join("img.data"));
        if raw {
            // A raw data file reads as the disk.
            assert_bytes_eq(&what, &data, &guest);
        } else {
            // Each cluster written holds its data at its guest offset of the data file.
            for (off, len) in [(0usize, 64usize << 10), (1020 << 10, 8 << 10)] {
                assert_bytes_eq(&what, &data[off..off + len], &guest[off..off + len]);
            }
        }
    }
}

#[test]
fn subclusters_with_a_data_file_take_the_same_history_as_in_qemu() {
    // Extended L2 entries: offset 0 with COPIED is cluster 0 of the data file, and zeroing
    // goes by subcluster. One random history through qemu-io and through vdisk.
    let dir = tempdir();
    let (q, v) = (dir.path().join("q"), dir.path().join("v"));
    let o = "extended_l2=on,data_file=img.data";
    let mut ops = vec!["write -P 9 512 1024".to_string()];
    ops.extend(guest_ops::random_ops(41, 4 << 20, 65536));
    for d in [&q, &v] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let c = in_dir(
        &q,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", o, "img.qcow2", "4M"],
    );
    assert!(c.status.success(), "{}", describe("qemu-img create", &c));
    let img = v.join("img.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        o,
        img.to_str().unwrap(),
        "4M",
    ]);
    let args = guest_ops::qemu_io_args(&ops, "img.qcow2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = in_dir(&q, "qemu-io", &args);
    assert!(out.status.success(), "{}", describe("qemu-io", &out));
    let mut im = image::open(&img, &ImageOptions::default()).expect("writable open");
    for op in &ops {
        guest_ops::apply(&mut *im.device, op).expect(op);
    }
    im.device.close().expect("close");
    drop(im);
    let c = in_dir(&v, "qemu-img", &["check", "img.qcow2"]);
    assert!(c.status.success(), "{}", describe("qemu-img check", &c));
    let mut maps = Vec::new();
    for d in [&q, &v] {
        let m = in_dir(d, "qemu-img", &["map", "--output=json", "img.qcow2"]);
        maps.push(guest_ops::map_kinds(&String::from_utf8_lossy(&m.stdout)));
        let conv = in_dir(
            d,
            "qemu-img",
            &["convert", "-O", "raw", "img.qcow2", "guest.raw"],
        );
        assert!(
            conv.status.success(),
            "{}",
            describe("qemu-img convert", &conv)
        );
    }
    assert_eq!(maps[1], maps[0], "qemu-img map (vdisk's image second)");
    assert_bytes_eq(
        "guest data",
        &read(&v.join("guest.raw")),
        &read(&q.join("guest.raw")),
    );
}

#[test]
fn images_vdisk_creates_with_a_data_file_are_what_qemu_img_creates() {
    let t = Twins::new();
    for o in [
        "data_file=plain.data",
        "data_file=raw.data,data_file_raw=on",
        "data_file=full.data,preallocation=full",
    ] {
        let name = format!(
            "{}.qcow2",
            o.split('=')
                .nth(1)
                .unwrap_or("x")
                .split('.')
                .next()
                .unwrap_or("x")
        );
        // Each tool in its own directory: QEMU makes a relative data file name in its
        // working directory.
        let args = ["create", "-q", "-f", "qcow2", "-o", o, name.as_str(), "4M"];
        let q = in_dir(&t.side(Tool::Qemu), "qemu-img", &args);
        let v = in_dir(&t.side(Tool::Vdisk), vdisk_bin(), &args);
        assert!(
            q.status.success() && v.status.success(),
            "{}",
            describe("vdisk create", &v)
        );
        let v = t.path(Tool::Vdisk, &name);
        let qi = in_dir(
            &t.side(Tool::Qemu),
            "qemu-img",
            &["info", "--output=json", &name],
        );
        let vi = in_dir(
            &t.side(Tool::Vdisk),
            "qemu-img",
            &["info", "--output=json", &name],
        );
        // (Host allocation of a new image differs, data file or not: not compared.)
        let info = |o: &std::process::Output| -> String {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.contains("actual-size"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_text_eq(o, &info(&vi), &info(&qi));
        let w = in_dir(
            &t.side(Tool::Vdisk),
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 9 1M 64k", &name],
        );
        assert!(
            w.status.success(),
            "{}",
            describe("qemu-io on vdisk's image", &w)
        );
        vdisk_apply(&v, &["write -P 7 3M 4k"]);
        let r = in_dir(
            &t.side(Tool::Vdisk),
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "read -P 9 1M 64k",
                "-c",
                "read -P 7 3M 4k",
                "-c",
                "read -P 0 0 1M",
                &name,
            ],
        );
        assert!(r.status.success(), "{}", describe("qemu-io read", &r));
        let c = in_dir(&t.side(Tool::Vdisk), "qemu-img", &["check", &name]);
        assert!(
            c.status.success(),
            "{o}: {}",
            describe("qemu-img check", &c)
        );
    }
}

#[test]
fn what_qemu_refuses_with_a_data_file_is_refused() {
    let t = Twins::new();
    t.put("x.raw", &{
        let p = t.work("x.raw");
        std::fs::write(&p, vec![0u8; 1 << 20]).expect("a backing file");
        p
    });
    // (qemu-img names the image before its message, as for every create error.)
    for (args, text) in [
        (
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file_raw=on",
                "@a.qcow2",
                "1M",
            ][..],
            "data-file-raw requires data-file",
        ),
        (
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=a.data,compat=0.10",
                "@a.qcow2",
                "1M",
            ],
            "External data files are only supported with compatibility level 1.1",
        ),
        (
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=a.data,data_file_raw=on",
                "-b",
                "x.raw",
                "-F",
                "raw",
                "@a.qcow2",
                "1M",
            ],
            "Backing file and data-file-raw cannot be used at the same time",
        ),
    ] {
        let (q, v) = t.run(args);
        assert_eq!(
            (q.status.code(), v.status.code()),
            (Some(1), Some(1)),
            "{}",
            describe("vdisk", &v)
        );
        for out in [&q, &v] {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(text),
                "{}",
                describe(text, out)
            );
        }
        assert!(
            !t.path(Tool::Vdisk, "a.qcow2").exists() && !t.path(Tool::Vdisk, "a.data").exists()
        );
    }
    let dir = tempdir();
    let d = dir.path();
    create_in(d, "img.qcow2", "img.data", false, "64k");
    for args in [
        vec!["snapshot", "-c", "s", "img.qcow2"],
        vec![
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "data_file=c.data",
            "img.qcow2",
            "c.qcow2",
        ],
    ] {
        let q = in_dir(d, "qemu-img", &args);
        let v = in_dir(d, vdisk_bin(), &args);
        assert!(!q.status.success(), "qemu-img {}", args.join(" "));
        assert_eq!(
            v.status.code(),
            Some(1),
            "{}",
            describe(&args.join(" "), &v)
        );
        assert!(
            String::from_utf8_lossy(&v.stderr).contains("external data file"),
            "{}",
            describe(&args.join(" "), &v)
        );
    }
    // A data file named outside the image's directory is not opened.
    let out = in_dir(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=../outside.data",
            "evil.qcow2",
            "1M",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        describe("qemu-img create", &out)
    );
    let v = in_dir(
        d,
        vdisk_bin(),
        &["convert", "-O", "raw", "evil.qcow2", "e.raw"],
    );
    assert_eq!(
        v.status.code(),
        Some(1),
        "{}",
        describe("vdisk convert", &v)
    );
    assert!(String::from_utf8_lossy(&v.stderr).contains("outside the image's directory"));
}

#[test]
fn resize_and_amend_treat_the_data_file_as_qemu_img_does() {
    let dir = tempdir();
    let (q, v) = (dir.path().join("q"), dir.path().join("v"));
    let steps: &[&[&str]] = &[
        &["resize", "-q", "r.qcow2", "8M"],
        &["resize", "-q", "n.qcow2", "8M"],
        &["resize", "-q", "--shrink", "n.qcow2", "2M"],
        &["amend", "-o", "data_file=renamed.data", "n.qcow2"],
        &["amend", "-o", "data_file_raw=off", "r.qcow2"],
        &["amend", "-o", "data_file=x.data", "plain.qcow2"],
    ];
    for d in [&q, &v] {
        std::fs::create_dir(d).expect("mkdir");
        create_in(d, "r.qcow2", "r.data", true, "64k");
        create_in(d, "n.qcow2", "n.data", false, "64k");
        let p = in_dir(
            d,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"],
        );
        assert!(p.status.success());
        for f in ["r.qcow2", "n.qcow2"] {
            let w = in_dir(d, "qemu-io", &["-f", "qcow2", "-c", "write -P 1 1M 1M", f]);
            assert!(w.status.success());
        }
    }
    for args in steps {
        let qo = in_dir(&q, "qemu-img", args);
        let vo = in_dir(&v, vdisk_bin(), args);
        assert_eq!(
            qo.status.code(),
            vo.status.code(),
            "{}\n{}",
            describe("qemu-img", &qo),
            describe("vdisk", &vo)
        );
        if args[2].starts_with("data_file=") && qo.status.success() {
            // Renamed: both point at a file that does not exist yet.
            std::fs::rename(q.join("n.data"), q.join("renamed.data")).expect("rename");
            std::fs::rename(v.join("n.data"), v.join("renamed.data")).expect("rename");
        }
    }
    for f in ["r.qcow2", "n.qcow2"] {
        let qi = in_dir(&q, "qemu-img", &["info", "--output=json", f]);
        let vi = in_dir(&v, "qemu-img", &["info", "--output=json", f]);
        // The guest's size and the format's fields (not the host file's).
        let info = |o: &std::process::Output| {
            let v = parse_json("info", &String::from_utf8_lossy(&o.stdout));
            (v["virtual-size"].clone(), v["format-specific"].clone())
        };
        assert_eq!(info(&vi), info(&qi), "{f}");
        let qm = in_dir(&q, "qemu-img", &["map", "--output=json", f]);
        let vm = in_dir(&v, "qemu-img", &["map", "--output=json", f]);
        assert_text_eq(
            f,
            &String::from_utf8_lossy(&vm.stdout),
            &String::from_utf8_lossy(&qm.stdout),
        );
        let c = in_dir(&v, "qemu-img", &["check", f]);
        assert!(c.status.success(), "{}", describe("qemu-img check", &c));
    }
}

#[test]
fn a_power_cut_at_any_write_keeps_every_flushed_write_of_a_data_file_image() {
    use common::crash::every_cut;
    use std::sync::Arc;
    use vdisk::qcow2::{OpenOptions, Qcow2};
    use vdisk::BlockDevice;
    for raw in [false, true] {
        let dir = tempdir();
        create_in(dir.path(), "img.qcow2", "img.data", raw, "4k");
        let initial = [
            read(&dir.path().join("img.qcow2")),
            read(&dir.path().join("img.data")),
        ];
        // Round k writes pattern k+1 into its own stripe of the disk, then flushes.
        let rounds: Vec<(u64, usize)> = (0..6)
            .map(|k| (k * 300_000, 200_000 + k as usize * 1000))
            .collect();
        let cuts = every_cut(
            "data file writes",
            &initial,
            |st| -> usize {
                let Ok(mut q) = Qcow2::open(st[0].clone(), OpenOptions::default()) else {
                    return 0;
                };
                q.attach_data_file(st[1].clone(), "img.data".into());
                for (k, &(off, len)) in rounds.iter().enumerate() {
                    if q.write_at(&vec![k as u8 + 1; len], off).is_err() || q.flush().is_err() {
                        return k;
                    }
                }
                rounds.len()
            },
            |c, acked| {
                let d = tempdir();
                std::fs::write(d.path().join("img.qcow2"), c.durable(0)).expect("write");
                std::fs::write(d.path().join("img.data"), c.durable(1)).expect("write");
                let chk = in_dir(
                    d.path(),
                    "qemu-img",
                    &["check", "--output=json", "img.qcow2"],
                );
                let code = chk.status.code();
                assert!(
                    matches!(code, Some(0) | Some(3)),
                    "raw={raw} cut {}: {}",
                    c.cut,
                    describe("check", &chk)
                );
                let mut q = Qcow2::open(
                    Arc::new(vdisk::storage::MemStorage::from_vec(c.durable(0))),
                    OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .expect("reopen");
                q.attach_data_file(
                    Arc::new(vdisk::storage::MemStorage::from_vec(c.durable(1))),
                    "img.data".into(),
                );
                for (k, &(off, len)) in rounds.iter().enumerate().take(acked) {
                    let mut b = vec![0u8; len];
                    q.read_at(&mut b, off).expect("read");
                    assert!(
                        b.iter().all(|&x| x == k as u8 + 1),
                        "raw={raw} cut {}: round {k} lost",
                        c.cut
                    );
                }
            },
        );
        assert!(cuts > 10, "{cuts} cut points");
    }
}
