//! qcow2 images with extended L2 entries (subclusters), made by qemu-img and changed by
//! qemu-io at subcluster granularity: vdisk reads them as QEMU does (`info`, `map`, `check`,
//! `convert`, `compare`), over a backing file and without. Writing them is in
//! `tests/extended_l2_write.rs`.

mod common;

use common::*;
use std::path::Path;

fn same_as_qemu(what: &str, img: &Path) {
    for args in [
        vec!["info", s(img)],
        vec!["info", "--output=json", s(img)],
        vec!["map", s(img)],
        vec!["map", "--output=json", s(img)],
        vec!["check", s(img)],
        vec!["check", "--output=json", s(img)],
    ] {
        let q = qemu_img(&args);
        let v = vdisk(&args);
        let w = format!("{what}: {}", args[..args.len() - 1].join(" "));
        assert_eq!(
            q.status.code(),
            v.status.code(),
            "{w}\n{}",
            describe("vdisk", &v)
        );
        assert_text_eq(
            &w,
            &String::from_utf8_lossy(&v.stdout),
            &String::from_utf8_lossy(&q.stdout),
        );
    }
    let dir = img.parent().expect("a directory");
    let (qr, vr) = (dir.join("q.raw"), dir.join("v.raw"));
    qemu_img_ok(&["convert", "-O", "raw", s(img), s(&qr)]);
    vdisk_ok(&["convert", "-O", "raw", s(img), s(&vr)]);
    assert_bytes_eq(what, &read(&vr), &read(&qr));
    let c = vdisk(["compare", s(img), s(&qr)]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}",
        describe("vdisk compare", &c)
    );
}

#[test]
fn images_with_subclusters_read_map_and_check_as_in_qemu() {
    for (seed, cs, backing) in [
        (1, 65536u64, true),
        (2, 65536, false),
        (3, 16384, true),
        (4, 2 << 20, true),
    ] {
        let dir = tempdir();
        let size = 8u64 << 20;
        let img = dir.path().join("e.qcow2");
        let mut create = vec![
            "create".to_string(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-o".into(),
        ];
        create.push(format!("extended_l2=on,cluster_size={cs}"));
        if backing {
            let base = dir.path().join("base.raw");
            std::fs::write(&base, pattern(seed as u32, 0, size as usize)).expect("base");
            create.extend(["-b".into(), "base.raw".into(), "-F".into(), "raw".into()]);
        }
        create.extend([s(&img).to_string(), size.to_string()]);
        qemu_img_ok(&create);
        qemu_io_ok(&guest_ops::qemu_io_args(
            &guest_ops::random_ops(seed, size, cs),
            s(&img),
        ));
        same_as_qemu(
            &format!("seed {seed} cluster_size {cs} backing {backing}"),
            &img,
        );
    }
}

#[test]
fn compressed_clusters_in_an_image_with_subclusters_read_as_in_qemu() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, pattern(7, 0, 4 << 20)).expect("source");
    let img = dir.path().join("c.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "extended_l2=on",
        s(&raw),
        s(&img),
    ]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 9 64k 2k",
        "-c",
        "write -z 1M 4k",
        s(&img),
    ]);
    same_as_qemu("compressed", &img);
}

#[test]
fn an_invalid_subcluster_bitmap_is_one_clear_error() {
    let dir = tempdir();
    let img = dir.path().join("h.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        s(&img),
        "1M",
    ]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 1 0 2k", s(&img)]);
    let mut bytes = read(&img);
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes")) as usize;
    let l2 = (u64::from_be_bytes(bytes[l1..l1 + 8].try_into().expect("8 bytes"))
        & 0x00ff_ffff_ffff_fe00) as usize;
    // Subcluster 0 allocated and zero at once.
    bytes[l2 + 8..l2 + 16].copy_from_slice(&(1u64 | 1 << 32).to_be_bytes());
    std::fs::write(&img, &bytes).expect("poke");
    let out = vdisk([
        "convert",
        "-O",
        "raw",
        s(&img),
        s(&dir.path().join("o.raw")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe("convert", &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both allocated and zero"));
    let c = vdisk(["check", s(&img)]);
    assert_eq!(c.status.code(), Some(2), "{}", describe("check", &c));
}

#[test]
fn measure_counts_extended_l2_tables_as_qemu_img_does() {
    for o in [
        "extended_l2=on",
        "extended_l2=on,cluster_size=16k",
        "extended_l2=on,cluster_size=2M",
    ] {
        for size in ["10G", "1M", "3T"] {
            let args = ["measure", "-O", "qcow2", "-o", o, "--size", size];
            assert_text_eq(&args.join(" "), &vdisk_ok(&args), &qemu_img_ok(&args));
        }
    }
    let args = [
        "measure",
        "-O",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=8k",
        "--size",
        "1G",
    ];
    let (q, v) = (qemu_img(args), vdisk(args));
    assert_eq!((q.status.code(), v.status.code()), (Some(1), Some(1)));
    assert!(String::from_utf8_lossy(&v.stderr).contains("at least 16384 bytes"));
}
