//! Operations on LUKS-encrypted qcow2 images beyond reading and writing, each against
//! qemu-img: `amend --force` on key slots, preallocation of encrypted images, overlays
//! over an encrypted backing file (`backing.encrypt.key-secret`), and `serve` of an
//! encrypted image.
//!
//! Every image uses `encrypt.iter-time=10` so PBKDF2 stays cheap.

mod common;
mod nbd_common;

use common::*;
use nbd_common::{free_port, Server, Via};
use std::path::Path;

const OBJECT: &str = "secret,id=sec0,data=first phrase";
const OBJECT1: &str = "secret,id=sec1,data=second phrase";

fn opts_with(path: &Path, id: &str) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret={id}",
        path.display()
    )
}

fn luks(extra: &str) -> String {
    format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10{extra}")
}

fn vdisk_create_luks(img: &Path, extra: &str, size: &str) {
    vdisk_ok(&encrypted_create(
        OBJECT,
        &luks(extra),
        img.to_str().unwrap(),
        size,
    ));
}

/// Whether qemu-io opens `img` with secret `id` (its object `object`).
fn qemu_opens(img: &Path, object: &str, id: &str) -> bool {
    qemu_io([
        "--object",
        object,
        "--image-opts",
        &opts_with(img, id),
        "-c",
        "read 0 512",
    ])
    .status
    .success()
}

#[test]
fn amend_force_does_what_qemu_img_force_does_with_its_messages_and_exit_codes() {
    let dir = tempdir();
    let ours = dir.path().join("ours.qcow2");
    let theirs = dir.path().join("theirs.qcow2");
    vdisk_create_luks(&ours, "", "1M");
    // (force, key secret of the opening, -o) in order; each step runs on both copies.
    let steps: &[(bool, &str, &str)] = &[
        (false, "sec0", "encrypt.state=inactive,encrypt.keyslot=0"),
        (
            false,
            "sec0",
            "encrypt.state=active,encrypt.new-secret=sec1,encrypt.keyslot=0,encrypt.iter-time=10",
        ),
        (
            true,
            "sec0",
            "encrypt.state=active,encrypt.new-secret=sec1,encrypt.keyslot=0,encrypt.iter-time=10",
        ),
        (false, "sec1", "encrypt.state=inactive,encrypt.keyslot=3"),
        (true, "sec1", "encrypt.state=inactive,encrypt.keyslot=3"),
        (true, "sec1", "encrypt.state=inactive"),
        (
            false,
            "sec1",
            "encrypt.state=inactive,encrypt.old-secret=sec1",
        ),
        (
            true,
            "sec1",
            "encrypt.state=inactive,encrypt.old-secret=sec1",
        ),
    ];
    std::fs::copy(&ours, &theirs).unwrap();
    for (n, &(force, id, o)) in steps.iter().enumerate() {
        let run = |tool: fn(Vec<String>) -> std::process::Output, img: &Path| {
            let mut args = vec!["amend".to_string()];
            if force {
                args.push("--force".into());
            }
            for (k, v) in [
                ("--object", OBJECT),
                ("--object", OBJECT1),
                ("--image-opts", &opts_with(img, id)),
                ("-o", o),
            ] {
                args.push(k.into());
                args.push(v.into());
            }
            answer(tool(args))
        };
        let want = run(qemu_img, &theirs);
        let got = run(vdisk, &ours);
        assert_eq!(got, want, "step {n}: amend --force={force} -o {o}");
        for (object, id) in [(OBJECT, "sec0"), (OBJECT1, "sec1")] {
            assert_eq!(
                qemu_opens(&ours, object, id),
                qemu_opens(&theirs, object, id),
                "step {n}: whether {id} opens"
            );
        }
    }
    // The last step erased every slot: nothing opens either image any more.
    assert!(!qemu_opens(&ours, OBJECT1, "sec1"));
    let info = parse_json(
        "info",
        &vdisk_ok(&["info", "--output=json", ours.to_str().unwrap()]),
    );
    let slots = info["format-specific"]["data"]["encrypt"]["slots"]
        .as_array()
        .unwrap()
        .clone();
    assert!(slots.iter().all(|s| s["active"] == false), "{slots:?}");
}

/// `qemu-img map --output=json` of an encrypted image.
fn qemu_map(img: &Path) -> String {
    qemu_img_ok(&[
        "map",
        "--output=json",
        "--object",
        OBJECT,
        "--image-opts",
        &opts_with(img, "sec0"),
    ])
}

#[test]
fn encrypted_images_preallocate_as_qemu_img_preallocates_them() {
    let dir = tempdir();
    for mode in ["metadata", "falloc", "full"] {
        let ours = dir.path().join(format!("{mode}-ours.qcow2"));
        let theirs = dir.path().join(format!("{mode}-theirs.qcow2"));
        let o = luks(&format!(",preallocation={mode}"));
        qemu_img_ok(&encrypted_create(
            OBJECT,
            &o,
            theirs.to_str().unwrap(),
            "4M",
        ));
        vdisk_create_luks(&ours, &format!(",preallocation={mode}"), "4M");
        // Every cluster allocated as data (it decrypts to noise, as in QEMU), same layout.
        assert_eq!(qemu_map(&ours), qemu_map(&theirs), "{mode}");
        assert!(qemu_map(&ours).contains("\"data\": true"), "{mode}");
        let our_map = vdisk_ok(&[
            "map",
            "--output=json",
            "--object",
            OBJECT,
            "--image-opts",
            &opts_with(&ours, "sec0"),
        ]);
        assert_eq!(our_map, qemu_map(&theirs), "{mode}: vdisk map");
        assert_eq!(
            std::fs::metadata(&ours).unwrap().len(),
            std::fs::metadata(&theirs).unwrap().len(),
            "{mode}: file length"
        );
        let check = qemu_img_ok(&[
            "check",
            "--object",
            OBJECT,
            "--image-opts",
            &opts_with(&ours, "sec0"),
        ]);
        assert!(check.contains("No errors were found"), "{mode}: {check}");
        assert!(
            check.contains("64/64 = 100.00% allocated"),
            "{mode}: {check}"
        );
        // Guest writes into the preallocated clusters read back through QEMU.
        let src = dir.path().join("src.raw");
        let plain = pattern(0x9a11, 0, 4 << 20);
        std::fs::write(&src, &plain).unwrap();
        vdisk_ok(&[
            "convert",
            "-n",
            "--object",
            OBJECT,
            "-f",
            "raw",
            src.to_str().unwrap(),
            "--target-image-opts",
            &opts_with(&ours, "sec0"),
        ]);
        let back = dir.path().join("back.raw");
        qemu_img_ok(&[
            "convert",
            "--object",
            OBJECT,
            "--image-opts",
            &opts_with(&ours, "sec0"),
            "-O",
            "raw",
            back.to_str().unwrap(),
        ]);
        assert_bytes_eq(mode, &read(&back), &plain);
    }
}

/// `--image-opts` text for the overlay `img` whose backing file takes secret `sec0`.
fn overlay_opts(img: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},backing.encrypt.key-secret=sec0",
        img.display()
    )
}

/// The guest bytes of `spec` (an `--image-opts` text) as `tool` converts them to raw.
fn raw_through(tool: &str, spec: &str, out: &Path) -> Vec<u8> {
    let args = [
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        spec,
        "-O",
        "raw",
        out.to_str().unwrap(),
    ];
    match tool {
        "qemu-img" => qemu_img_ok(&args),
        _ => vdisk_ok(&args),
    };
    read(out)
}

#[test]
fn overlays_over_an_encrypted_backing_file_open_read_commit_and_rebase_with_backing_secrets() {
    let dir = tempdir();
    let d = dir.path();
    let base = d.join("base.qcow2");
    qemu_img_ok(&encrypted_create(
        OBJECT,
        &luks(""),
        base.to_str().unwrap(),
        "1M",
    ));
    let base_spec = opts_with(&base, "sec0");
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &base_spec,
        "-c",
        "write -P 0x42 0 128k",
    ]);
    // The overlay is made without the secret: only the backing file's size is needed.
    let ov = d.join("ov.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        ov.to_str().unwrap(),
    ]);
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &overlay_opts(&ov),
        "-c",
        "write -P 0x77 64k 4k",
    ]);
    let ours = raw_through("vdisk", &overlay_opts(&ov), &d.join("a.raw"));
    let theirs = raw_through("qemu-img", &overlay_opts(&ov), &d.join("b.raw"));
    assert_bytes_eq("overlay over an encrypted base", &ours, &theirs);
    assert_eq!(ours[0], 0x42);
    assert_eq!(ours[64 << 10], 0x77);
    // Without the backing file's secret: qemu-img's error, nothing read.
    let (_, err, code) = answer(vdisk([
        "convert",
        "--image-opts",
        &format!("driver=qcow2,file.filename={}", ov.display()),
        "-O",
        "raw",
        d.join("c.raw").to_str().unwrap(),
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("Parameter 'encrypt.key-secret' is required"),
        "{err}"
    );
    // info of the chain needs no secret (as qemu-img).
    vdisk_ok(&["info", "--backing-chain", ov.to_str().unwrap()]);
    // Rebase onto nothing copies the backing data in, as qemu-img's rebase does.
    let (ra, rb) = (d.join("ra.qcow2"), d.join("rb.qcow2"));
    std::fs::copy(&ov, &ra).unwrap();
    std::fs::copy(&ov, &rb).unwrap();
    let rebase = |tool: &str, img: &Path| {
        let args = [
            "rebase",
            "--object",
            OBJECT,
            "--image-opts",
            &overlay_opts(img),
            "-b",
            "",
        ];
        match tool {
            "qemu-img" => qemu_img_ok(&args),
            _ => vdisk_ok(&args),
        }
    };
    rebase("qemu-img", &ra);
    rebase("vdisk", &rb);
    assert_qemu_compare_identical(&ra, &rb);
    // Commit writes the overlay's data into the encrypted base, encrypted.
    vdisk_ok(&[
        "commit",
        "--object",
        OBJECT,
        "--image-opts",
        &overlay_opts(&ov),
    ]);
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &base_spec,
        "-c",
        "read -P 0x77 64k 4k",
        "-c",
        "read -P 0x42 68k 60k",
    ]);
    let check = qemu_img_ok(&["check", "--object", OBJECT, "--image-opts", &base_spec]);
    assert!(check.contains("No errors were found"), "{check}");
}

/// Start `vdisk serve -t` on the image `spec` (`--image-opts` text) in `dir`.
fn serve_encrypted(dir: &Path, spec: &str) -> Server {
    let port = free_port();
    let pid_file = dir.join("nbd.pid");
    let log = dir.join("nbd.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(vdisk_bin())
        .args(["serve", "-t", "--object", OBJECT, "--image-opts"])
        .arg(format!("--pid-file={}", pid_file.display()))
        .args(["--bind=127.0.0.1", &format!("--port={port}"), spec])
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut server = Server {
        child: Some(child),
        via: Via::Tcp,
        port,
        socket: dir.join("unused.sock"),
        pid_file,
        log,
    };
    server.wait_listening();
    server
}

#[test]
fn serve_exports_an_encrypted_image_and_an_overlay_over_one_decrypted() {
    let dir = tempdir();
    let d = dir.path();
    let img = d.join("enc.qcow2");
    vdisk_create_luks(&img, ",encrypt.cipher-alg=serpent-256", "2M");
    let spec = opts_with(&img, "sec0");
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &spec,
        "-c",
        "write -P 0x5c 0 1M",
    ]);
    let server = serve_encrypted(d, &spec);
    let uri = server.uri("");
    let info = sh(&["nbdinfo", &uri]);
    assert!(info.contains("export-size: 2097152"), "{info}");
    qemu_io_ok(&[
        "-f",
        "raw",
        &uri,
        "-c",
        "read -P 0x5c 0 1M",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "write -P 0xd1 1M 64k",
    ]);
    server.stop();
    // The write went in encrypted: QEMU reads it with the key, the host file never holds it.
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &spec,
        "-c",
        "read -P 0xd1 1M 64k",
    ]);
    assert!(!read(&img)
        .windows(512)
        .any(|w| w.iter().all(|&b| b == 0xd1)));
    // An overlay over the encrypted image, served with the backing file's secret.
    let ov = d.join("ov.qcow2");
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "enc.qcow2",
        "-F",
        "qcow2",
        ov.to_str().unwrap(),
    ]);
    let server = serve_encrypted(d, &overlay_opts(&ov));
    let out = d.join("served.raw");
    qemu_img_ok(&[
        "convert",
        "-f",
        "raw",
        &server.uri(""),
        "-O",
        "raw",
        out.to_str().unwrap(),
    ]);
    server.stop();
    let want = raw_through("qemu-img", &spec, &d.join("want.raw"));
    assert_bytes_eq("overlay served over NBD", &read(&out), &want);
}
