//! Operations on LUKS-encrypted qcow2 images beyond reading and writing, each against
//! qemu-img: `amend --force` on key slots, preallocation of encrypted images, overlays
//! over an encrypted backing file (`backing.encrypt.key-secret`), and `serve` of an
//! encrypted image.
//!
//! Every image uses `encrypt.iter-time=10` so PBKDF2 stays cheap.

mod common;

use common::*;
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
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        OBJECT,
        "-o",
        &luks(extra),
        img.to_str().unwrap(),
        size,
    ]);
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
        let want = run(|a| qemu_img(a), &theirs);
        let got = run(|a| vdisk(a), &ours);
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
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            OBJECT,
            "-o",
            &o,
            theirs.to_str().unwrap(),
            "4M",
        ]);
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
        assert!(check.contains("64/64 = 100.00% allocated"), "{mode}: {check}");
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
