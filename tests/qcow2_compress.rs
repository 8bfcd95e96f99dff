//! Compressed clusters against QEMU: images vdisk compresses pass `qemu-img check` and
//! compare equal to their source; images qemu-img compresses read identically through
//! vdisk; guest writes into compressed clusters (through vdisk, then through qemu-io) keep
//! the image clean, with and without snapshots; hostile descriptors give a read error for
//! their cluster and nothing worse.

mod common;

use common::crash::qemu_check_path;
use common::rng;
use std::path::{Path, PathBuf};
use vdisk::qcow2::{OpenOptions, Qcow2};
use vdisk::storage::{FileStorage, OpenOptions as FileOptions};
use vdisk::BlockDevice;

const MIB: usize = 1 << 20;

fn run(args: &[&str]) -> String {
    let out = common::run_argv(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vdisk() -> &'static str {
    env!("CARGO_BIN_EXE_vdisk")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A 6 MiB (plus a partial cluster) raw image: holes, random data, text, a zero run, and
/// short random/text pieces that leave clusters partly zero.
fn source_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut rng = rng(0x5eed);
    let len = 6 * MIB + 5000;
    let mut data = vec![0u8; len];
    let words: Vec<&[u8]> = vec![b"qcow2 ", b"cluster ", b"deflate ", b"zstd ", b"guest\n"];
    for (i, chunk) in data.chunks_mut(256 << 10).enumerate() {
        match i % 4 {
            0 => {}
            1 => rng.fill(chunk),
            _ => {
                let mut pos = 0;
                while pos < chunk.len() {
                    let w = words[rng.below(words.len() as u64) as usize];
                    let n = w.len().min(chunk.len() - pos);
                    chunk[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
        }
    }
    rng.fill(&mut data[3 * MIB + 100..3 * MIB + 700]);
    data[len - 3000..len - 10].fill(b'z');
    let path = dir.join("src.raw");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn open_rw(path: &Path) -> Qcow2<FileStorage> {
    let s = FileStorage::open(
        path,
        FileOptions {
            write: true,
            unsafe_cache: true,
            force_share: false,
        },
    )
    .unwrap();
    Qcow2::open(s, OpenOptions::default()).unwrap()
}

fn open_ro(path: &Path) -> Qcow2<FileStorage> {
    let s = FileStorage::open(path, FileOptions::default()).unwrap();
    Qcow2::open(
        s,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn assert_clean(path: &Path) {
    let c = qemu_check_path(path);
    assert!(
        c.code == 0 && c.corruptions == 0 && c.leaks == 0,
        "{}",
        c.output
    );
}

fn read_all(dev: &mut dyn BlockDevice, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    dev.read_at(&mut out, 0).unwrap();
    out
}

/// Count compressed clusters through `qemu-img map` (its JSON has "compressed": true).
fn qemu_compressed_extents(path: &Path) -> usize {
    run(&["qemu-img", "map", "--output=json", p(path)])
        .matches("\"compressed\": true")
        .count()
}

#[test]
fn images_vdisk_compresses_pass_qemu_check_and_compare_for_every_type_and_cluster_size() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source_image(dir.path());
    for ty in ["zlib", "zstd"] {
        for cs in ["4k", "64k", "2M"] {
            let out = dir.path().join(format!("{ty}-{cs}.qcow2"));
            let o = format!("compression_type={ty},cluster_size={cs}");
            run(&[
                vdisk(),
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &o,
                p(&src),
                p(&out),
            ]);
            assert_clean(&out);
            run(&[vdisk(), "check", p(&out)]);
            run(&[
                "qemu-img",
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                p(&src),
                p(&out),
            ]);
            assert!(
                qemu_compressed_extents(&out) > 0,
                "{ty} {cs}: nothing compressed"
            );
            let info = run(&["qemu-img", "info", p(&out)]);
            assert!(info.contains(&format!("compression type: {ty}")), "{info}");
        }
    }
}

#[test]
fn out_of_order_and_single_worker_conversions_give_the_same_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source_image(dir.path());
    for args in [&["-m", "1"][..], &["-m", "3", "-W"][..]] {
        let out = dir.path().join("o.qcow2");
        let _ = std::fs::remove_file(&out);
        let mut cmd = vec![vdisk(), "convert", "-c", "-O", "qcow2"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&[p(&src), p(&out)]);
        run(&cmd);
        assert_clean(&out);
        run(&[
            "qemu-img",
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            p(&src),
            p(&out),
        ]);
    }
}

#[test]
fn images_qemu_img_compresses_read_identically_through_vdisk() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = source_image(dir.path());
    for ty in ["zlib", "zstd"] {
        for cs in ["512", "64k", "2M"] {
            let q = dir.path().join(format!("q-{ty}-{cs}.qcow2"));
            let o = format!("compression_type={ty},cluster_size={cs}");
            run(&[
                "qemu-img",
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &o,
                p(&src),
                p(&q),
            ]);
            let mut img = open_ro(&q);
            let back = read_all(&mut img, data.len());
            assert!(back == data, "{ty} {cs}: contents differ");
            // Unaligned reads across cluster boundaries.
            let mut buf = vec![0u8; 70_000];
            img.read_at(&mut buf, 1_000_003).unwrap();
            assert!(buf[..] == data[1_000_003..1_070_003]);
            // And through the CLI's convert engine.
            let raw = dir.path().join("back.raw");
            run(&[vdisk(), "convert", "-O", "raw", p(&q), p(&raw)]);
            let out = std::fs::read(&raw).unwrap();
            assert!(out[..data.len()] == data[..], "{ty} {cs}: convert differs");
        }
    }
}

#[test]
fn guest_writes_into_compressed_clusters_keep_the_image_clean_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = source_image(dir.path());
    for ty in ["zlib", "zstd"] {
        let img_path = dir.path().join(format!("w-{ty}.qcow2"));
        let o = format!("compression_type={ty}");
        run(&[
            vdisk(),
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &o,
            p(&src),
            p(&img_path),
        ]);
        let mut model = data.clone();
        {
            let mut img = open_rw(&img_path);
            // Partial writes into compressed text clusters, one spanning two of them.
            for &(off, len, byte) in &[
                (512 * 1024 + 100, 300usize, 0xa1u8),
                (2 * MIB - 1000, 5000, 0xb2),
                (5 * MIB + 65536, 65536, 0xc3),
            ] {
                let buf = vec![byte; len];
                img.write_at(&buf, off as u64).unwrap();
                model[off..off + len].copy_from_slice(&buf);
            }
            img.write_zeroes(5 * MIB as u64 + 3 * 65536, 65536).unwrap();
            model[5 * MIB + 3 * 65536..5 * MIB + 4 * 65536].fill(0);
            img.flush().unwrap();
            assert!(read_all(&mut img, model.len()) == model);
        }
        assert_clean(&img_path);
        // Now qemu-io writes into other compressed clusters of the same image.
        run(&[
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5d 1572964 70000",
            p(&img_path),
        ]);
        model[1_572_964..1_572_964 + 70_000].fill(0x5d);
        assert_clean(&img_path);
        let mut img = open_ro(&img_path);
        assert!(read_all(&mut img, model.len()) == model, "{ty}");
    }
}

#[test]
fn writes_into_compressed_clusters_shared_with_a_snapshot_copy_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = source_image(dir.path());
    let img_path = dir.path().join("snap.qcow2");
    run(&[
        vdisk(),
        "convert",
        "-c",
        "-O",
        "qcow2",
        p(&src),
        p(&img_path),
    ]);
    run(&["qemu-img", "snapshot", "-c", "before", p(&img_path)]);
    {
        let mut img = open_rw(&img_path);
        img.write_at(&[0xee; 4000], 600 * 1024).unwrap();
        img.write_at(&[0xef; 100], 2 * MIB as u64 + 10).unwrap();
        img.flush().unwrap();
    }
    assert_clean(&img_path);
    run(&["qemu-img", "snapshot", "-a", "before", p(&img_path)]);
    assert_clean(&img_path);
    let mut img = open_ro(&img_path);
    assert!(read_all(&mut img, data.len()) == data);
}

#[test]
fn an_image_created_with_zstd_sets_the_compression_type_feature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.qcow2");
    run(&[
        vdisk(),
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        p(&path),
        "1M",
    ]);
    let info = run(&["qemu-img", "info", p(&path)]);
    assert!(info.contains("compression type: zstd"), "{info}");
    let ours = run(&[vdisk(), "info", p(&path)]);
    assert!(ours.contains("compression type: zstd"), "{ours}");
    assert_clean(&path);
}

/// Locate the L2 entry of guest cluster 0 in a single-L2 image: (file offset, raw entry).
fn l2_entry_of(bytes: &[u8], guest_cluster: usize) -> (usize, u64) {
    let be = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().unwrap());
    let l1 = be(40) as usize;
    let l2 = (be(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let at = l2 + guest_cluster * 8;
    (at, be(at))
}

/// Append `stream` in a new host cluster at the end of the image and point the compressed
/// L2 entry at `entry_at` to it (64 KiB clusters). The new cluster is left unrefcounted,
/// which only matters to `check`.
fn append_stream(b: &mut Vec<u8>, entry_at: usize, stream: &[u8]) {
    let host = b.len().next_multiple_of(65536);
    b.resize(host, 0);
    b.extend_from_slice(stream);
    b.resize(b.len().next_multiple_of(65536), 0);
    let sectors = (stream.len() as u64 - 1) / 512;
    let raw = (1u64 << 62) | (sectors << 54) | host as u64;
    b[entry_at..entry_at + 8].copy_from_slice(&raw.to_be_bytes());
}

#[test]
fn hostile_compressed_descriptors_are_read_errors_for_their_cluster_only() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB clusters: compressed offset in bits 0..53, sector count in 54..61.
    let text: Vec<u8> = b"compressed cluster text "
        .iter()
        .cycle()
        .take(4 * 65536)
        .copied()
        .collect();
    let src = dir.path().join("t.raw");
    std::fs::write(&src, &text).unwrap();
    let good = dir.path().join("good.qcow2");
    run(&[
        "qemu-img",
        "convert",
        "-c",
        "-O",
        "qcow2",
        p(&src),
        p(&good),
    ]);
    let original = std::fs::read(&good).unwrap();
    let (at, raw) = l2_entry_of(&original, 1);
    assert!(
        raw & (1 << 62) != 0,
        "cluster 1 is not compressed: {raw:#x}"
    );
    let host = raw & ((1u64 << 54) - 1);
    let file_len = original.len() as u64;

    // A deflate stream of two clusters' worth of text: inflates to more than a cluster.
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 12);
    let mut overlong = Vec::with_capacity(1 << 18);
    c.compress_vec(
        &text[..2 * 65536],
        &mut overlong,
        flate2::FlushCompress::Finish,
    )
    .unwrap();
    // A stream of half a cluster: inflates to less than a cluster.
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 12);
    let mut short = Vec::with_capacity(1 << 18);
    c.compress_vec(&text[..32768], &mut short, flate2::FlushCompress::Finish)
        .unwrap();

    let descriptor = |host: u64, sectors: u64| (1u64 << 62) | (sectors << 54) | host;
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Patch)> = vec![
        (
            "offset past the end of the file",
            Box::new(move |b: &mut Vec<u8>| {
                b[at..at + 8].copy_from_slice(&descriptor(file_len + 65536, 0).to_be_bytes())
            }),
        ),
        (
            "sector count past the cluster",
            Box::new(move |b: &mut Vec<u8>| {
                b[at..at + 8].copy_from_slice(&descriptor(host, 255).to_be_bytes())
            }),
        ),
        (
            "data that does not inflate to a full cluster",
            Box::new(move |b: &mut Vec<u8>| append_stream(b, at, &short)),
        ),
        (
            "trailing garbage: the stream goes on past the cluster",
            Box::new(move |b: &mut Vec<u8>| append_stream(b, at, &overlong)),
        ),
        (
            "garbage instead of deflate data",
            Box::new(move |b: &mut Vec<u8>| append_stream(b, at, &[0xff; 600])),
        ),
    ];
    for (name, patch) in cases {
        let mut bytes = original.clone();
        patch(&mut bytes);
        let path = dir.path().join("hostile.qcow2");
        std::fs::write(&path, &bytes).unwrap();
        let opened = Qcow2::open(
            FileStorage::open(&path, FileOptions::default()).unwrap(),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let mut img = opened.unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
        let mut buf = vec![0u8; 65536];
        assert!(
            img.read_at(&mut buf, 65536).is_err(),
            "{name}: read succeeded"
        );
        img.read_at(&mut buf, 3 * 65536).unwrap();
        assert!(
            buf[..] == text[3 * 65536..],
            "{name}: other cluster damaged"
        );
        // The convert engine reports it as an error too.
        let out = dir.path().join("out.raw");
        let status = common::vdisk(["convert", "-O", "raw", p(&path), p(&out)]);
        assert_eq!(
            status.status.code(),
            Some(1),
            "{name}: convert did not fail"
        );
    }
}

#[test]
fn map_marks_the_compressed_extents_qemu_img_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source_image(dir.path());
    let q = dir.path().join("m.qcow2");
    run(&["qemu-img", "convert", "-c", "-O", "qcow2", p(&src), p(&q)]);
    let extents = |json: String| -> Vec<(u64, u64, bool)> {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["compressed"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    };
    let ours = extents(run(&[vdisk(), "map", "--output=json", p(&q)]));
    let theirs = extents(run(&["qemu-img", "map", "--output=json", p(&q)]));
    assert!(ours.iter().any(|e| e.2));
    assert_eq!(ours, theirs);
}
