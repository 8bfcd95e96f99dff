//! `vdisk serve` under writes, against qemu-nbd as the oracle: how zeroing requests and
//! `--detect-zeroes` leave the image's clusters (per `qemu-img map`), and SIGTERM in the
//! middle of a client's writes (every acknowledged write kept, the image clean), and
//! enabled persistent bitmaps marked by writes and zeroing through the server.

mod common;
mod nbd_common;

use common::twins::{Tool, Twins};
use common::*;
use nbd_common::*;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `qemu-img map --output=json` with each host offset replaced by `X`: which clusters keep
/// storage matters, not where the two servers put it.
fn map_without_offsets(image: &Path) -> String {
    let map = qemu_img_ok(&["map", "--output=json", s(image)]);
    let mut parts = map.split("\"offset\": ");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        out += "\"offset\": X";
        out += p.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out
}

#[test]
fn detect_zeroes_and_write_zeroes_leave_the_clusters_qemu_nbd_leaves() {
    // Plain clusters, and subclusters (extended L2 entries: zeroing by subcluster).
    for o in ["cluster_size=65536", "extended_l2=on"] {
        served_zeroing_matches_qemu_nbd(o);
    }
}

/// Zero data and zeroing requests through each server on copies of one image made with
/// `-o o`: the same `qemu-img map` and data afterwards.
fn served_zeroing_matches_qemu_nbd(o: &str) {
    let t = Twins::new();
    let img = t.work("z.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-o", o, s(&img), "4M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", s(&img)]);
    // Zero data over allocated, unallocated and partial clusters; zeroing requests with
    // NO_HOLE (-z) and without (-z -u); one real write.
    let session = [
        "write -P 0 0 64k",
        "write -P 0 2M 64k",
        "write -P 0 100k 1k",
        "write -z 256k 64k",
        "write -z -u 512k 64k",
        "write -z -u 3M 64k",
        "write -z 1100k 6k",
        "write -P 5 3200k 64k",
    ];
    let modes: [&[&str]; 4] = [
        &[],
        &["--detect-zeroes=on"],
        &["--discard=unmap"],
        &["--discard=unmap", "--detect-zeroes=unmap"],
    ];
    for flags in modes {
        let mut maps = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let image = t.path(tool, "z.qcow2");
            std::fs::copy(&img, &image).expect("a fresh copy");
            let mut all = vec!["-f", "qcow2"];
            all.extend_from_slice(flags);
            let server = Server::start(tool, &image, Via::Unix, &all);
            let mut args = vec!["-f".to_string(), "raw".to_string()];
            for c in session {
                args.extend(["-c".to_string(), c.to_string()]);
            }
            args.push(server.uri(""));
            qemu_io_ok(&args);
            server.stop();
            assert_qemu_check_clean(&image);
            maps.push(map_without_offsets(&image));
        }
        assert_text_eq(
            &format!("{o}: qemu-img map after {flags:?}"),
            &maps[1],
            &maps[0],
        );
        assert_qemu_compare_identical(
            &t.path(Tool::Vdisk, "z.qcow2"),
            &t.path(Tool::Qemu, "z.qcow2"),
        );
    }
}

#[test]
fn serve_refuses_the_zeroing_modes_qemu_nbd_refuses() {
    let t = Twins::new();
    let img = t.work("z.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    for bad in [
        &["--detect-zeroes=unmap"][..],
        &["--detect-zeroes=bogus"][..],
    ] {
        let mut args = vec!["serve"];
        args.extend_from_slice(bad);
        args.push(s(&img));
        let out = vdisk(&args);
        let q = run_argv(&[&["qemu-nbd"][..], bad, &[s(&img)]].concat());
        assert!(!out.status.success() && !q.status.success());
        let ours = String::from_utf8_lossy(&out.stderr).into_owned();
        let theirs = String::from_utf8_lossy(&q.stderr).replace("qemu-nbd: ", "");
        assert!(
            ours.contains(theirs.trim()),
            "vdisk: {ours}\nqemu-nbd: {theirs}"
        );
    }
}

#[test]
fn sigterm_in_the_middle_of_writes_finishes_them_and_keeps_every_acknowledged_one() {
    let dir = tempdir();
    let image = path_in(&dir, "w.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&image), "64M"]);
    let server = Server::start(Tool::Vdisk, &image, Via::Unix, &["-t"]);
    let uri = server.uri("");
    // 1000 writes of 64 KiB, each with its own pattern at its own offset, none flushed by
    // the client: only the server's stop can make them durable.
    let writer = std::thread::spawn(move || {
        let mut args = vec!["-f".to_string(), "raw".to_string()];
        for i in 0..1000u64 {
            args.push("-c".into());
            args.push(format!("write -P {} {} 64k", i % 250 + 1, i * 65536));
        }
        args.push(uri);
        run_program("qemu-io", &args)
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let out = writer.join().expect("the writer thread");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let acked: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("wrote 65536/65536 bytes at offset "))
        .map(|o| o.trim().parse().expect("an offset"))
        .collect();
    assert!(!acked.is_empty(), "no write completed: {stdout}");
    assert_qemu_check_clean(&image);
    let mut args = Vec::new();
    for off in &acked {
        args.push("-c".to_string());
        args.push(format!("read -P {} {off} 64k", off / 65536 % 250 + 1));
    }
    args.push(s(&image).to_string());
    let check = run_program("qemu-io", &args);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    eprintln!(
        "{} of 1000 writes acknowledged before the stop",
        acked.len()
    );
}

#[test]
fn writable_exports_advertise_what_qemu_nbd_advertises() {
    // nbdinfo prints every transmission flag (can_fua, can_zero, can_fast_zero, can_cache,
    // can_multi_conn, ...), the block sizes and the meta contexts.
    let t = Twins::new();
    let img = t.work("f.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    for flags in [
        &["-t"][..],
        &["-t", "-e", "2"],
        &["-t", "-e", "2", "--discard=unmap"],
    ] {
        let mut answers = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let image = t.path(tool, "f.qcow2");
            std::fs::copy(&img, &image).expect("a copy");
            let server = Server::start(tool, &image, Via::Unix, flags);
            let info = sh(&["nbdinfo", &server.uri("")]);
            let info: Vec<&str> = info.lines().filter(|l| !l.contains("uri:")).collect();
            answers.push(info.join("\n"));
            server.stop();
        }
        assert_text_eq(&format!("nbdinfo with {flags:?}"), &answers[1], &answers[0]);
    }
}

#[test]
fn writes_and_zeroing_through_the_server_mark_enabled_bitmaps_as_through_qemu_nbd() {
    let t = Twins::new();
    let img = t.work("m.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", s(&img)]);
    qemu_img_ok(&["bitmap", "--add", s(&img), "b0"]);
    let session = [
        "write -P 7 64k 4k",
        "write -P 0 512k 64k",
        "write -z 2M 64k",
        "write -z -u 3M 128k",
        "discard 1536k 64k",
    ];
    let mut maps = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let image = t.path(tool, "m.qcow2");
        std::fs::copy(&img, &image).expect("a copy");
        let flags = ["-f", "qcow2", "--discard=unmap", "--detect-zeroes=on"];
        let server = Server::start(tool, &image, Via::Unix, &flags);
        let mut args = vec!["-f".to_string(), "raw".to_string()];
        for c in session {
            args.extend(["-c".to_string(), c.to_string()]);
        }
        args.push(server.uri(""));
        qemu_io_ok(&args);
        server.stop();
        assert_qemu_check_clean(&image);
        // qemu-nbd reads the stored bitmap back for both images.
        let reader = Server::start(Tool::Qemu, &image, Via::Unix, &["-r", "-B", "b0"]);
        maps.push(sh(&[
            "nbdinfo",
            "--map=qemu:dirty-bitmap:b0",
            &reader.uri(""),
        ]));
        reader.stop();
    }
    assert!(maps[1].contains("dirty"), "{}", maps[1]);
    assert_text_eq("bitmap b0 after the session", &maps[1], &maps[0]);
}

#[test]
fn an_enabled_bitmap_served_with_a_writable_export_shows_writes_at_once_as_qemu_nbd() {
    // -B on a writable export: the dirty map read over the export while it is served
    // includes the writes just made through it, as qemu-nbd's does.
    let t = Twins::new();
    let img = t.work("l.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    qemu_img_ok(&["bitmap", "--add", s(&img), "b0"]);
    qemu_io_ok(&["-f", "qcow2", "-c", "write -P 1 1M 64k", s(&img)]);
    let mut maps = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let image = t.path(tool, "l.qcow2");
        std::fs::copy(&img, &image).expect("a copy");
        let server = Server::start(tool, &image, Via::Unix, &["-f", "qcow2", "-B", "b0", "-t"]);
        qemu_io_ok(&[
            "-f",
            "raw",
            "-c",
            "write -P 2 64k 4k",
            "-c",
            "write -z 3M 64k",
            &server.uri(""),
        ]);
        maps.push(sh(&[
            "nbdinfo",
            "--map=qemu:dirty-bitmap:b0",
            &server.uri(""),
        ]));
        server.stop();
        assert_qemu_check_clean(&image);
    }
    assert!(maps[1].contains("dirty"), "{}", maps[1]);
    assert_text_eq("bitmap b0 served live", &maps[1], &maps[0]);
}
