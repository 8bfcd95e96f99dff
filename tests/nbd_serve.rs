//! `vdisk serve` against real NBD clients (qemu-img, qemu-io, libnbd's nbdinfo and
//! nbdcopy), with `qemu-nbd` serving an identical copy of the same image as the oracle:
//! both servers must give every client the same answers.

mod common;
mod nbd_common;

use common::twins::{Tool, Twins};
use common::*;
use nbd_common::*;
use std::path::Path;
use std::time::Duration;

/// A qcow2 overlay over a qcow2 backing image, with data in both layers, a zero cluster in
/// each and unallocated ranges: `base.qcow2` and `top.qcow2` in both twins.
fn overlay_twins() -> Twins {
    let t = Twins::new();
    let base = t.work("base.qcow2");
    let top = t.work("top.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&base), "8M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -z 2M 64k",
        "-c",
        "write -P 3 5M 192k",
        s(&base),
    ]);
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
    qemu_io_ok(&[
        "-c",
        "write -P 2 512k 128k",
        "-c",
        "write -z 3M 64k",
        "-c",
        "write -P 4 6M 1M",
        "-c",
        "write -z 5M 64k",
        s(&top),
    ]);
    t.put("base.qcow2", &base);
    t.put("top.qcow2", &top);
    t
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// What one server answers to the read-only client session: qemu-img info and map,
/// nbdinfo (with the URI line left out: the sockets differ), both nbdinfo maps, and the
/// guest data as read by qemu-img convert.
fn read_only_session(server: &Server, dir: &Path) -> Vec<(String, String)> {
    let uri = server.uri("");
    let mask = |text: String| server.mask(&text);
    let raw = dir.join("converted.raw");
    let mut answers = vec![
        ("qemu-img info".into(), mask(qemu_img_ok(&["info", &uri]))),
        (
            "qemu-img map".into(),
            qemu_img_ok(&["map", "--output=json", &uri]),
        ),
        ("nbdinfo".into(), without_uri(sh(&["nbdinfo", &uri]))),
        ("nbdinfo --map".into(), sh(&["nbdinfo", "--map", &uri])),
        (
            "nbdinfo --map=qemu:allocation-depth".into(),
            sh(&["nbdinfo", "--map=qemu:allocation-depth", &uri]),
        ),
    ];
    qemu_img_ok(&["convert", "-O", "raw", &uri, s(&raw)]);
    answers.push(("converted data".into(), format!("{:x?}", sha(&read(&raw)))));
    answers
}

fn without_uri(text: String) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("uri:") && !l.contains("\"uri\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cheap digest for comparing large buffers in assertion messages.
fn sha(data: &[u8]) -> (usize, u64) {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (data.len(), h)
}

fn assert_same_answers(ours: &[(String, String)], theirs: &[(String, String)]) {
    for ((what, a), (_, b)) in ours.iter().zip(theirs) {
        assert_text_eq(what, a, b);
    }
}

#[test]
fn read_only_session_over_tcp_and_unix_answers_as_qemu_nbd_does() {
    let t = overlay_twins();
    for via in [Via::Tcp, Via::Unix] {
        let mut answers = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let top = t.path(tool, "top.qcow2");
            let server = Server::start(tool, &top, via, &["-r", "-t", "-A", "-f", "qcow2"]);
            answers.push(read_only_session(&server, &t.side(tool)));
            server.stop();
        }
        assert_same_answers(&answers[1], &answers[0]);
        // And the data is the image's.
        let direct = qemu_raw_contents(&t.path(Tool::Vdisk, "top.qcow2"), &t.work(""));
        assert_eq!(answers[1][5].1, format!("{:x?}", sha(&direct)), "{via:?}");
    }
}

/// qemu-io output without its timing lines.
fn io_text(out: String) -> String {
    out.lines()
        .filter(|l| !l.contains("ops;"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes of every kind through a writable export, then reads that check them.
const WRITE_SESSION: &[&str] = &[
    "write -P 0x11 0 64k",
    "write -P 0x12 -f 100k 4k",
    "write -z 512k 64k",
    "write -z -u 3M 128k",
    "write -P 0x13 7M 1M",
    "discard 6M 64k",
    "flush",
    "read -P 0x11 0 64k",
    "read -P 0x12 100k 4k",
    "read -P 0 512k 64k",
    "read -P 0 3M 128k",
    "read -P 0x13 7M 1M",
];

#[test]
fn qemu_io_writes_over_tcp_and_unix_land_as_through_qemu_nbd() {
    for via in [Via::Tcp, Via::Unix] {
        let t = overlay_twins();
        let mut outputs = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let top = t.path(tool, "top.qcow2");
            let server = Server::start(tool, &top, via, &["-f", "qcow2"]);
            let mut args = vec!["-f".to_string(), "raw".to_string()];
            for c in WRITE_SESSION {
                args.push("-c".into());
                args.push(c.to_string());
            }
            args.push(server.uri(""));
            outputs.push(io_text(qemu_io_ok(&args)));
            server.stop();
            assert_qemu_check_clean(&top);
        }
        assert_text_eq("qemu-io session", &outputs[1], &outputs[0]);
        assert_qemu_compare_identical(
            &t.path(Tool::Vdisk, "top.qcow2"),
            &t.path(Tool::Qemu, "top.qcow2"),
        );
    }
}

#[test]
fn nbdcopy_copies_into_and_out_of_an_export() {
    let dir = tempdir();
    let src = path_in(&dir, "src.raw");
    let data = write_mixed_raw(&src, 6 << 20, 256 << 10, 15);
    let image = path_in(&dir, "img.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&image), "6M"]);
    let server = Server::start(
        Tool::Vdisk,
        &image,
        Via::Unix,
        &["-t", "-e", "4", "--cache=unsafe"],
    );
    sh(&["nbdcopy", s(&src), &server.uri("")]);
    let back = path_in(&dir, "back.raw");
    sh(&["nbdcopy", &server.uri(""), s(&back)]);
    server.stop();
    assert_bytes_eq("nbdcopy out of the export", &read(&back), &data);
    assert_qemu_compare_identical(&src, &image);
    assert_qemu_check_clean(&image);
}

#[test]
fn two_clients_at_once_read_a_read_only_export_with_e_2() {
    let t = overlay_twins();
    let top = t.path(Tool::Vdisk, "top.qcow2");
    let server = Server::start(Tool::Vdisk, &top, Via::Tcp, &["-r", "-e", "2"]);
    let uri = server.uri("");
    let info = sh(&["nbdinfo", &uri]);
    assert!(info.contains("can_multi_conn: true"), "{info}");
    // -e 2 without -t: the server stays up while either client is connected. nbdinfo
    // above was the first client, so from here on `-t`-less qemu-nbd would have exited as
    // well: start again with -t to hold the two clients.
    drop(server);
    let server = Server::start(Tool::Vdisk, &top, Via::Tcp, &["-r", "-e", "2", "-t"]);
    let uri = server.uri("");
    let expected = qemu_raw_contents(&t.path(Tool::Qemu, "top.qcow2"), &t.work(""));
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let uri = uri.clone();
            let out = t.work(&format!("client{i}.raw"));
            std::thread::spawn(move || {
                qemu_img_ok(&["convert", "-O", "raw", &uri, s(&out)]);
                read(&out)
            })
        })
        .collect();
    for r in readers {
        let got = r.join().expect("a client thread");
        assert_bytes_eq("a concurrent client's copy", &got, &expected);
    }
    server.stop();
}

#[test]
fn a_read_only_export_refuses_writes_as_qemu_nbd_does() {
    let t = overlay_twins();
    let mut outputs = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        let server = Server::start(tool, &top, Via::Unix, &["-r"]);
        let out = qemu_io([
            "-f",
            "raw",
            "-c",
            "write -P 9 0 512",
            "-c",
            "write -z 0 4k",
            &server.uri(""),
        ]);
        outputs.push(
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        );
        server.stop();
    }
    let masked: Vec<String> = outputs
        .iter()
        .map(|o| io_text(o.replace("/vdisk/", "/SIDE/").replace("/qemu/", "/SIDE/")))
        .collect();
    assert!(outputs[1].contains("Permission denied"), "{}", outputs[1]);
    assert_text_eq("qemu-io on a read-only export", &masked[1], &masked[0]);
    assert_qemu_compare_identical(
        &t.path(Tool::Vdisk, "top.qcow2"),
        &t.path(Tool::Qemu, "top.qcow2"),
    );
}

#[test]
fn unknown_export_names_are_refused_and_the_description_is_sent() {
    let t = overlay_twins();
    let mut answers = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        let flags = ["-r", "-t", "-x", "disk0", "-D", "the test disk"];
        let server = Server::start(tool, &top, Via::Unix, &flags);
        let wrong = run_argv(&["nbdinfo", &server.uri("other")]);
        assert!(!wrong.status.success());
        let listed = sh(&["nbdinfo", "--list", &server.uri("")]);
        let right = sh(&["nbdinfo", &server.uri("disk0")]);
        answers.push((
            server.mask(&String::from_utf8_lossy(&wrong.stderr)),
            without_uri(listed),
            without_uri(right),
        ));
        server.stop();
    }
    assert!(
        answers[1].2.contains("description: the test disk"),
        "{}",
        answers[1].2
    );
    assert_text_eq("unknown export", &answers[1].0, &answers[0].0);
    assert_text_eq("nbdinfo --list", &answers[1].1, &answers[0].1);
    assert_text_eq("nbdinfo disk0", &answers[1].2, &answers[0].2);
}

#[test]
fn sigterm_stops_the_server_flushed_with_its_pid_file_removed() {
    let t = overlay_twins();
    let top = t.path(Tool::Vdisk, "top.qcow2");
    let server = Server::start(Tool::Vdisk, &top, Via::Unix, &["-t"]);
    let pid_file = server.pid_file.clone();
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert_eq!(pid, server.child.as_ref().expect("a server").id());
    qemu_io_ok(&["-f", "raw", "-c", "write -P 0x5a 1M 2M", &server.uri("")]);
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists());
    assert_qemu_check_clean(&top);
    qemu_io_ok(&["-c", "read -P 0x5a 1M 2M", s(&top)]);
}

#[test]
fn dash_b_exports_a_bitmap_as_qemu_nbd_does() {
    let t = Twins::new();
    let img = t.work("b.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    qemu_img_ok(&["bitmap", "--add", s(&img), "b0"]);
    qemu_io_ok(&[
        "-c",
        "write -P 1 64k 64k",
        "-c",
        "write -P 2 1M 200k",
        s(&img),
    ]);
    qemu_img_ok(&["bitmap", "--add", "-g", "4096", s(&img), "b1"]);
    qemu_io_ok(&["-c", "write -P 3 3M 5k", s(&img)]);
    qemu_img_ok(&["bitmap", "--disable", s(&img), "b1"]);
    t.put("b.qcow2", &img);
    // b0 (enabled) from a read-only export; b1 (disabled) from a writable one.
    for (flags, bitmap) in [
        (&["-r", "-t", "-B", "b0"][..], "b0"),
        (&["-t", "-B", "b1"], "b1"),
    ] {
        let mut answers = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let server = Server::start(tool, &t.path(tool, "b.qcow2"), Via::Unix, flags);
            let uri = server.uri("");
            let map = sh(&[
                "nbdinfo",
                &format!("--map=qemu:dirty-bitmap:{bitmap}"),
                &uri,
            ]);
            let contexts = sh(&["nbdinfo", "--list", "--json", &uri]);
            let contexts: Vec<&str> = contexts.lines().filter(|l| l.contains(":")).collect();
            answers.push((map, without_uri(contexts.join("\n"))));
            server.stop();
        }
        assert!(answers[1].0.contains("dirty"), "{}", answers[1].0);
        assert_text_eq(
            &format!("dirty map of {bitmap}"),
            &answers[1].0,
            &answers[0].0,
        );
        assert_text_eq("nbdinfo --list", &answers[1].1, &answers[0].1);
    }
    let top = t.path(Tool::Vdisk, "b.qcow2");
    let out = vdisk(["serve", "-B", "nope", "-r", s(&top)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Bitmap 'nope' is not found"), "{err}");
    // (An enabled bitmap under a writable export is served live: tests/nbd_writes.rs.)
}

/// The answers to a series of malformed and out-of-range requests: (what, errno or None
/// for a hang-up).
fn bad_requests(socket: &Path, read_only: bool) -> Vec<(&'static str, Option<u32>)> {
    let (mut c, size, _) = RawClient::connect(socket);
    let mut answers = Vec::new();
    let mut ask = |what, c: &mut RawClient, f, k, o, l, p: &[u8], data| {
        c.send(f, k, o, l, p);
        answers.push((what, c.reply(data)));
    };
    ask(
        "read past the end",
        &mut c,
        0,
        0,
        size - 512,
        1024,
        &[],
        1024,
    );
    ask("read at u64::MAX", &mut c, 0, 0, u64::MAX, 1, &[], 1);
    ask("read of 33 MiB", &mut c, 0, 0, 0, 33 << 20, &[], 33 << 20);
    ask(
        "read with an unknown flag",
        &mut c,
        1 << 15,
        0,
        0,
        512,
        &[],
        512,
    );
    ask("write past the end", &mut c, 0, 1, size, 512, &[7; 512], 0);
    ask(
        "zeroes past the end",
        &mut c,
        0,
        6,
        size - 4096,
        8192,
        &[],
        0,
    );
    ask("trim past the end", &mut c, 0, 4, size, 1, &[], 0);
    ask("cache in range", &mut c, 0, 5, 0, 4096, &[], 0);
    ask("block status unnegotiated", &mut c, 0, 7, 0, 4096, &[], 0);
    ask("unknown command", &mut c, 0, 99, 0, 0, &[], 0);
    ask("flush", &mut c, 0, 3, 0, 0, &[], 0);
    ask("write in range", &mut c, 0, 1, 0, 512, &[7; 512], 0);
    ask("fua zeroes in range", &mut c, 1, 6, 4096, 4096, &[], 0);
    ask("trim in range", &mut c, 0, 4, 0, 4096, &[], 0);
    if read_only {
        return answers;
    }
    // A WRITE announcing more than the 32 MiB limit: refused, and since the payload cannot
    // be skipped at a sane cost, the server hangs up.
    ask("write of 33 MiB", &mut c, 0, 1, 0, 33 << 20, &[], 0);
    ask("flush after it", &mut c, 0, 3, 0, 0, &[], 0);
    answers
}

#[test]
fn bad_requests_get_the_errors_qemu_nbd_gives_and_the_server_lives_on() {
    let t = overlay_twins();
    for read_only in [false, true] {
        let mut all = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let top = t.path(tool, "top.qcow2");
            let flags: &[&str] = if read_only { &["-t", "-r"] } else { &["-t"] };
            let server = Server::start(tool, &top, Via::Unix, flags);
            all.push(bad_requests(&server.socket, read_only));
            // The server still serves the next client.
            qemu_img_ok(&["info", &server.uri("")]);
            server.stop();
        }
        if read_only {
            // The one difference: the protocol says a write, trim or zeroing request to a
            // read-only export SHOULD get EPERM; qemu-nbd 10 answers EINVAL.
            for (what, errno) in &mut all[1] {
                let writes = ["write", "zeroes", "trim"].iter().any(|w| what.contains(w));
                if writes {
                    assert_eq!(*errno, Some(1), "{what}: EPERM");
                    *errno = Some(22);
                }
            }
        }
        assert_eq!(
            all[1], all[0],
            "vdisk (left) and qemu-nbd (right), read-only {read_only}"
        );
    }
    assert_qemu_check_clean(&t.path(Tool::Vdisk, "top.qcow2"));
    assert_qemu_compare_identical(
        &t.path(Tool::Vdisk, "top.qcow2"),
        &t.path(Tool::Qemu, "top.qcow2"),
    );
}

#[test]
fn an_internal_snapshot_is_served_read_only_as_qemu_nbd_serves_it() {
    let t = Twins::new();
    let img = t.work("snap.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    qemu_io_ok(&["-c", "write -P 1 0 1M", "-c", "write -z 2M 64k", s(&img)]);
    qemu_img_ok(&["snapshot", "-c", "first", s(&img)]);
    qemu_io_ok(&[
        "-c",
        "write -P 2 512k 1M",
        "-c",
        "write -P 3 3M 64k",
        s(&img),
    ]);
    qemu_img_ok(&["resize", "-q", s(&img), "6M"]);
    qemu_img_ok(&["snapshot", "-c", "second", s(&img)]);
    qemu_io_ok(&["-c", "write -P 4 5M 64k", s(&img)]);
    t.put("snap.qcow2", &img);
    for snapshot in ["first", "2"] {
        let mut answers = Vec::new();
        for tool in [Tool::Qemu, Tool::Vdisk] {
            let image = t.path(tool, "snap.qcow2");
            let flags = ["-t", "-A", "-l", snapshot];
            let server = Server::start(tool, &image, Via::Unix, &flags);
            answers.push(read_only_session(&server, &t.side(tool)));
            server.stop();
        }
        assert_same_answers(&answers[1], &answers[0]);
        assert!(
            answers[1][2].1.contains("is_read_only: true"),
            "{}",
            answers[1][2].1
        );
    }
    assert_qemu_compare_identical(&t.path(Tool::Vdisk, "snap.qcow2"), &img);
}

#[test]
fn dash_s_sends_writes_to_a_temporary_overlay_that_is_thrown_away() {
    let t = overlay_twins();
    let top = t.path(Tool::Vdisk, "top.qcow2");
    let pristine = t.work("top.qcow2");
    let server = Server::start(Tool::Vdisk, &top, Via::Unix, &["-s", "-t"]);
    let uri = server.uri("");
    qemu_io_ok(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x77 0 2M",
        "-c",
        "write -z 6M 1M",
        &uri,
    ]);
    qemu_io_ok(&[
        "-f",
        "raw",
        "-c",
        "read -P 0x77 0 2M",
        "-c",
        "read -P 0 6M 1M",
        &uri,
    ]);
    let pid = server.child.as_ref().expect("a server").id();
    server.stop();
    assert_qemu_compare_identical(&top, &pristine);
    assert_qemu_check_clean(&top);
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("the temporary directory")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("vdisk-serve-{pid}-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sigkill_in_the_middle_of_writes_keeps_the_image_clean_and_flushed_data_present() {
    let t = overlay_twins();
    let top = t.path(Tool::Vdisk, "top.qcow2");
    let server = Server::start(Tool::Vdisk, &top, Via::Unix, &["-t", "-e", "2"]);
    let uri = server.uri("");
    // Flushed: qemu-io flushes before it disconnects.
    qemu_io_ok(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x61 1M 1M",
        "-c",
        "write -P 0x62 4M 256k",
        &uri,
    ]);
    // Then a client keeps writing, and the server dies under it.
    let writer = {
        let uri = uri.clone();
        std::thread::spawn(move || {
            let mut args = vec!["-f".to_string(), "raw".to_string()];
            for i in 0..400u64 {
                args.push("-c".into());
                args.push(format!(
                    "write -P {} {} 64k",
                    i % 200 + 1,
                    (2 << 20) + (i % 16) * 65536
                ));
            }
            args.push(uri);
            run_program("qemu-io", &args)
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let status = server.stop_with(libc::SIGKILL);
    assert!(!status.success());
    let _ = writer.join();
    let check = common::crash::qemu_check_path(&top);
    assert!(check.is_consistent(), "{}", check.output);
    qemu_io_ok(&[
        "-c",
        "read -P 0x61 1M 1M",
        "-c",
        "read -P 0x62 4M 256k",
        s(&top),
    ]);
}

#[test]
fn tls_clients_get_in_and_clear_text_clients_are_told_tls_is_required() {
    let t = overlay_twins();
    let Some((server_creds, client_creds)) = tls_credentials(&t.work("")) else {
        return;
    };
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        s(&client_creds)
    );
    // vdisk asks clients for no certificate; qemu-nbd does unless told not to.
    let server_object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
        s(&server_creds)
    );
    let mut answers = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        let creds: Vec<String> = match tool {
            Tool::Qemu => vec![
                format!("--object={server_object}"),
                "--tls-creds=tls0".into(),
            ],
            Tool::Vdisk => vec![format!("--tls-creds={}", s(&server_creds))],
        };
        let mut flags: Vec<&str> = vec!["-r", "-t"];
        flags.extend(creds.iter().map(String::as_str));
        let server = Server::start(tool, &top, Via::Tcp, &flags);
        let opts = format!(
            "driver=nbd,host=127.0.0.1,port={},tls-creds=tls0",
            server.port
        );
        let info = qemu_img_ok(&["info", "--object", &object, "--image-opts", &opts]);
        let out = t.side(tool).join("tls.raw");
        qemu_img_ok(&[
            "convert",
            "--object",
            &object,
            "--image-opts",
            &opts,
            "-O",
            "raw",
            s(&out),
        ]);
        assert_qemu_compare_identical(&out, &top);
        let clear = qemu_img(["info", &server.uri("")]);
        assert!(!clear.status.success());
        let clear_err = String::from_utf8_lossy(&clear.stderr).into_owned();
        answers.push((server.mask(&info), server.mask(&clear_err)));
        server.stop();
    }
    assert_text_eq("qemu-img info over TLS", &answers[1].0, &answers[0].0);
    let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
    assert_text_eq(
        "a clear-text client",
        &first_line(&answers[1].1),
        &first_line(&answers[0].1),
    );
}

#[test]
fn a_client_silent_in_the_handshake_loses_its_slot_after_the_time_limit() {
    let t = overlay_twins();
    let top = t.path(Tool::Vdisk, "top.qcow2");
    let server = Server::start(Tool::Vdisk, &top, Via::Unix, &["-t", "-r"]);
    let silent = std::os::unix::net::UnixStream::connect(&server.socket).expect("connecting");
    std::thread::sleep(Duration::from_millis(200));
    // -e 1: the next client waits until the silent one is dropped, 10 s after it came.
    let start = std::time::Instant::now();
    let info = qemu_img_ok(&["info", &server.uri("")]);
    assert!(info.contains("virtual size: 8 MiB"), "{info}");
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
    server.stop();
}

#[test]
fn a_served_image_is_locked_against_qemu_as_qemu_nbd_locks_it() {
    let t = overlay_twins();
    let mut outcomes = Vec::new();
    for tool in [Tool::Qemu, Tool::Vdisk] {
        let top = t.path(tool, "top.qcow2");
        for flags in [&[][..], &["-r"][..]] {
            let server = Server::start(tool, &top, Via::Unix, flags);
            let info = qemu_img(["info", s(&top)]).status.success();
            let write = qemu_io(["-c", "write 0 512", s(&top)]);
            let wrote = write.status.success() && write.stderr.is_empty();
            outcomes.push((flags.len(), info, wrote));
            server.stop();
        }
    }
    assert_eq!(
        outcomes[2..],
        outcomes[..2],
        "vdisk (left) and qemu-nbd (right)"
    );
}
