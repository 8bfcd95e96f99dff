//! Encrypted qcow2 images (LUKS and the legacy AES scheme) against QEMU both ways: images
//! qemu-img encrypts read identically through vdisk; images vdisk encrypts are read by
//! qemu-io and pass `qemu-img check`; no plaintext reaches the host file; a wrong
//! passphrase is one clear error and changes nothing; `info` and `map` match qemu-img.
//!
//! Every image uses `encrypt.iter-time=10` so PBKDF2 stays cheap.

mod common;

use common::*;
use std::path::Path;

const PASS: &str = "correct horse";
const OBJECT: &str = "secret,id=sec0,data=correct horse";
const SIZE: u64 = 4 << 20;

/// `--image-opts` text opening `path` with secret `sec0`.
fn opts(path: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=sec0",
        path.display()
    )
}

/// `encrypt.*` options for `-o`: LUKS with `extra` (`encrypt.cipher-alg=...`).
fn luks_options(extra: &str) -> String {
    let mut o = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10".to_string();
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

/// qemu-io writes: pattern bytes at cluster-aligned, sector-aligned and unaligned places.
const WRITES: &[(u8, u64, u64)] = &[
    (0x11, 0, 65536),
    (0x22, 70_000, 5000),
    (0x33, 1 << 20, 512),
    (0x44, (3 << 20) + 100, 200_000),
];

fn qemu_write_patterns(img: &Path) {
    for &(p, off, len) in WRITES {
        qemu_io_ok(&[
            "--object",
            OBJECT,
            "--image-opts",
            &opts(img),
            "-c",
            &format!("write -P {p:#x} {off} {len}"),
        ]);
    }
}

fn expected_contents() -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    for &(p, off, len) in WRITES {
        v[off as usize..(off + len) as usize].fill(p);
    }
    v
}

/// The guest bytes of an encrypted image as vdisk reads them.
fn vdisk_read(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("vdisk-read.raw");
    vdisk_ok(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &opts(img),
        "-O",
        "raw",
        out.to_str().unwrap(),
    ]);
    let data = read(&out);
    std::fs::remove_file(&out).unwrap();
    data
}

/// `qemu-img check` (which needs the secret to open an encrypted image) finds no error
/// and no leak.
#[track_caller]
fn qemu_check_clean(img: &Path) {
    let text = qemu_img_ok(&["check", "--object", OBJECT, "--image-opts", &opts(img)]);
    assert!(
        text.contains("No errors were found on the image."),
        "{text}"
    );
    assert!(!text.contains("leaked"), "{text}");
}

fn qemu_create(img: &Path, o: &str) {
    qemu_img_ok(&encrypted_create(
        OBJECT,
        o,
        img.to_str().unwrap(),
        &SIZE.to_string(),
    ));
}

#[test]
fn images_qemu_img_encrypts_read_identically_through_vdisk() {
    let dir = tempdir();
    let want = expected_contents();
    for (name, extra) in [
        ("default", ""),
        (
            "cbc-essiv",
            "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1",
        ),
        (
            "xts-192-plain-sha512",
            "encrypt.cipher-alg=aes-192,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha512",
        ),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        qemu_create(&img, &luks_options(extra));
        qemu_write_patterns(&img);
        let got = vdisk_read(&img, dir.path());
        assert_bytes_eq(name, &got, &want);
        // info's encrypt block is qemu-img's, key for key.
        let q = parse_json("qemu-img info", &qemu_img_ok(&["info", "--output=json", img.to_str().unwrap()]));
        let v = parse_json("vdisk info", &vdisk_ok(&["info", "--output=json", img.to_str().unwrap()]));
        assert_eq!(v["format-specific"], q["format-specific"], "{name}");
        assert_eq!(v["encrypted"], true);
    }
}

#[test]
fn images_vdisk_encrypts_are_read_by_qemu_io_and_pass_qemu_img_check() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    let mut plain = vec![0u8; SIZE as usize];
    // A recognisable pattern that must never appear in the encrypted file.
    for (i, chunk) in plain
        .chunks_mut(4096)
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
    {
        chunk.copy_from_slice(&pattern(0x5eed, (i * 4096) as u64, 4096));
    }
    std::fs::write(&src, &plain).unwrap();
    for (name, extra) in [
        ("default", ""),
        (
            "cbc-plain64",
            "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64",
        ),
        (
            "cbc-essiv",
            "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha512",
        ),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        vdisk_ok(&[
            "convert",
            "--object",
            OBJECT,
            "-O",
            "qcow2",
            "-o",
            &luks_options(extra),
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        qemu_check_clean(&img);
        let host = read(&img);
        let needle = &pattern(0x5eed, 0, 64);
        assert!(
            !host.windows(64).any(|w| w == needle.as_slice()),
            "{name}: plaintext found in the host file"
        );
        assert!(!host.windows(PASS.len()).any(|w| w == PASS.as_bytes()));
        // qemu-img reads what vdisk wrote.
        let out = dir.path().join(format!("{name}.qemu.raw"));
        qemu_img_ok(&[
            "convert",
            "--object",
            OBJECT,
            "--image-opts",
            &opts(&img),
            "-O",
            "raw",
            out.to_str().unwrap(),
        ]);
        assert_bytes_eq(name, &read(&out), &plain);
        qemu_io_ok(&[
            "--object",
            OBJECT,
            "--image-opts",
            &opts(&img),
            "-c",
            "read -P 0 4096 4096",
        ]);
    }
}

#[test]
fn vdisk_writes_in_place_into_a_qemu_image_at_unaligned_offsets() {
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    qemu_create(&img, &luks_options(""));
    qemu_write_patterns(&img);
    // A raw file of the same size written over the image with convert -n: every byte
    // is rewritten in place through vdisk's encryption.
    let src = dir.path().join("new.raw");
    let data = random_bytes(7, SIZE as usize);
    std::fs::write(&src, &data).unwrap();
    vdisk_ok(&[
        "convert",
        "-n",
        "--object",
        OBJECT,
        "--target-image-opts",
        src.to_str().unwrap(),
        &opts(&img),
    ]);
    qemu_check_clean(&img);
    let out = dir.path().join("back.raw");
    qemu_img_ok(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &opts(&img),
        "-O",
        "raw",
        out.to_str().unwrap(),
    ]);
    assert_bytes_eq("rewritten", &read(&out), &data);
}

#[test]
fn a_wrong_passphrase_is_one_clear_error_and_nothing_is_written() {
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    vdisk_ok(&encrypted_create(
        OBJECT,
        &luks_options(""),
        img.to_str().unwrap(),
        "1M",
    ));
    let before = read(&img);
    let bad = "secret,id=sec0,data=wrong";
    let out_raw = dir.path().join("o.raw");
    let spec = opts(&img);
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "convert",
            "--object",
            bad,
            "--image-opts",
            &spec,
            "-O",
            "raw",
            out_raw.to_str().unwrap(),
        ],
        vec!["resize", "--object", bad, "--image-opts", &spec, "2M"],
        vec!["commit", "--object", bad, "--image-opts", &spec],
        vec!["map", "--object", bad, "--image-opts", &spec],
    ];
    for args in cases {
        let (_, err, code) = answer(vdisk(&args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("Invalid password, cannot unlock any keyslot"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(!err.contains("wrong"), "the secret is never printed: {err}");
    }
    assert!(read(&img) == before, "a failed unlock changed the image");
    // Without any secret: qemu-img's message.
    let (_, err, code) = answer(vdisk([
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        out_raw.to_str().unwrap(),
    ]));
    let (_, qerr, qcode) = answer(qemu_img([
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        out_raw.to_str().unwrap(),
    ]));
    assert_eq!(code, qcode);
    assert!(
        err.contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{err}"
    );
    assert!(qerr.contains("Parameter 'encrypt.key-secret' is required for cipher"));
}

#[test]
fn info_and_map_of_an_encrypted_image_match_qemu_img() {
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    qemu_create(&img, &luks_options(""));
    qemu_write_patterns(&img);
    let p = img.to_str().unwrap();
    let strip = |t: String| {
        t.lines()
            .filter(|l| !l.contains("disk size"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_text_eq(
        "info",
        &strip(vdisk_ok(&["info", p])),
        &strip(qemu_img_ok(&["info", p])),
    );
    let spec = opts(&img);
    for output in ["--output=json", "--output=human"] {
        let args = ["map", output, "--object", OBJECT, "--image-opts", &spec];
        let (vo, ve, vc) = answer(vdisk(args));
        let (qo, qe, qc) = answer(qemu_img(args));
        assert_eq!((vo, vc), (qo, qc), "map {output}: {ve} / {qe}");
    }
}

#[test]
fn compressed_convert_to_an_encrypted_target_is_refused_as_qemu_img_does() {
    let dir = tempdir();
    let src = dir.path().join("s.raw");
    std::fs::write(&src, vec![1u8; 65536]).unwrap();
    let dst = dir.path().join("d.qcow2");
    let args = |tool: &str| {
        let out = run_program(
            tool,
            [
                "convert",
                "-c",
                "--object",
                OBJECT,
                "-O",
                "qcow2",
                "-o",
                &luks_options(""),
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
        );
        answer(out)
    };
    let (_, ve, vc) = args(vdisk_bin());
    let (_, qe, qc) = args("qemu-img");
    assert_eq!((ve.trim(), vc), (qe.trim(), qc));
    assert!(!dst.exists());
}

#[test]
fn legacy_aes_images_read_and_write_as_qemu_does() {
    let dir = tempdir();
    let img = dir.path().join("aes.qcow2");
    qemu_create(&img, "encrypt.format=aes,encrypt.key-secret=sec0");
    qemu_write_patterns(&img);
    assert_bytes_eq(
        "aes read",
        &vdisk_read(&img, dir.path()),
        &expected_contents(),
    );
    // vdisk creates one qemu-io reads.
    let mine = dir.path().join("mine.qcow2");
    let src = dir.path().join("s.raw");
    std::fs::write(&src, vec![0x5au8; 1 << 20]).unwrap();
    vdisk_ok(&[
        "convert",
        "--object",
        OBJECT,
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        src.to_str().unwrap(),
        mine.to_str().unwrap(),
    ]);
    qemu_check_clean(&mine);
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &opts(&mine),
        "-c",
        "read -P 0x5a 0 1M",
    ]);
}

#[test]
fn measure_counts_the_luks_header_as_qemu_img_does() {
    for extra in ["", "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc"] {
        let o = luks_options(extra);
        let args = [
            "measure",
            "--object",
            OBJECT,
            "-O",
            "qcow2",
            "-o",
            o.as_str(),
            "--size",
            "1G",
        ];
        let (v, ve, vc) = answer(vdisk(args));
        let (q, qe, qc) = answer(qemu_img(args));
        assert_eq!((v, vc), (q, qc), "{extra}: {ve} / {qe}");
    }
    // Without the secret: qemu-img's refusal.
    let args = [
        "measure",
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=luks",
        "--size",
        "1G",
    ];
    let (_, ve, vc) = answer(vdisk(args));
    let (_, qe, qc) = answer(qemu_img(args));
    assert_eq!((ve.trim(), vc), (qe.trim(), qc));
}

#[test]
fn amend_adds_and_erases_key_slots_that_qemu_io_then_honours() {
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    let p = img.to_str().unwrap();
    vdisk_ok(&encrypted_create(OBJECT, &luks_options(""), p, "1M"));
    let spec = opts(&img);
    qemu_io_ok(&[
        "--object",
        OBJECT,
        "--image-opts",
        &spec,
        "-c",
        "write -P 0x61 0 64k",
    ]);
    let new = "secret,id=sec1,data=second phrase";
    vdisk_ok(&[
        "amend",
        "--object",
        OBJECT,
        "--object",
        new,
        "--image-opts",
        &spec,
        "-o",
        "encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10",
    ]);
    vdisk_ok(&[
        "amend",
        "--object",
        OBJECT,
        "--image-opts",
        &spec,
        "-o",
        "encrypt.state=inactive,encrypt.keyslot=0",
    ]);
    let by_new = format!("driver=qcow2,file.filename={p},encrypt.key-secret=sec1");
    let text = qemu_img_ok(&["check", "--object", new, "--image-opts", &by_new]);
    assert!(
        text.contains("No errors were found on the image."),
        "{text}"
    );
    qemu_io_ok(&[
        "--object",
        new,
        "--image-opts",
        &by_new,
        "-c",
        "read -P 0x61 0 64k",
    ]);
    let old = qemu_io([
        "--object",
        OBJECT,
        "--image-opts",
        &spec,
        "-c",
        "read 0 512",
    ]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("Invalid password"));
    let info = parse_json("info", &vdisk_ok(&["info", "--output=json", p]));
    let slots = &info["format-specific"]["data"]["encrypt"]["slots"];
    assert_eq!(slots[0]["active"], false);
    assert_eq!(slots[1]["active"], true);
    // The last slot is not erased (qemu-img's refusal without --force).
    let (_, err, code) = answer(vdisk([
        "amend",
        "--object",
        new,
        "--image-opts",
        &by_new,
        "-o",
        "encrypt.state=inactive,encrypt.keyslot=1",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("Attempt to erase the only active keyslot 1"),
        "{err}"
    );
}

/// Where the encryption extension's data (offset, length) sits in the header cluster.
fn crypto_extension_at(img: &[u8]) -> usize {
    let magic = [0x05, 0x37, 0xbe, 0x77];
    img[..65536]
        .windows(4)
        .position(|w| w == magic)
        .expect("the encryption extension")
        + 8
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn hostile_luks_headers_are_one_clear_error_never_a_long_wait() {
    let dir = tempdir();
    let img = dir.path().join("base.qcow2");
    vdisk_ok(&encrypted_create(
        OBJECT,
        &luks_options(""),
        img.to_str().unwrap(),
        "1M",
    ));
    let base = read(&img);
    let ext = crypto_extension_at(&base);
    let luks = be64(&base, ext) as usize;
    type Poke = fn(&mut Vec<u8>, usize, usize);
    let cases: &[(&str, Poke, &str)] = &[
        (
            "slot iterations 2^32-1",
            |b, _, l| b[l + 212..l + 216].copy_from_slice(&u32::MAX.to_be_bytes()),
            "PBKDF2 iterations",
        ),
        (
            "digest iterations 2^32-1",
            |b, _, l| b[l + 164..l + 168].copy_from_slice(&u32::MAX.to_be_bytes()),
            "PBKDF2 iterations",
        ),
        (
            "key slot past the region",
            |b, _, l| b[l + 248..l + 252].copy_from_slice(&0x00ff_ffffu32.to_be_bytes()),
            "past the end",
        ),
        (
            "one stripe",
            |b, _, l| b[l + 252..l + 256].copy_from_slice(&1u32.to_be_bytes()),
            "stripes",
        ),
        (
            "key size 2^31",
            |b, _, l| b[l + 108..l + 112].copy_from_slice(&(1u32 << 31).to_be_bytes()),
            "key size",
        ),
        ("no magic", |b, _, l| b[l] = b'X', "magic"),
        (
            "unknown hash",
            |b, _, l| b[l + 72..l + 79].copy_from_slice(b"md4\0\0\0\0"),
            "md4",
        ),
        (
            "region of 2^40 bytes",
            |b, e, _| b[e + 8..e + 16].copy_from_slice(&(1u64 << 40).to_be_bytes()),
            "LUKS header length",
        ),
        (
            "region past the end of the file",
            |b, e, _| b[e..e + 8].copy_from_slice(&(1u64 << 30).to_be_bytes()),
            "past the end of the file",
        ),
        (
            "unaligned region",
            |b, e, _| b[e..e + 8].copy_from_slice(&0x10200u64.to_be_bytes()),
            "cluster-aligned",
        ),
    ];
    run_cases("hostile LUKS headers", cases, |(name, poke, want)| {
        let mut bytes = base.clone();
        poke(&mut bytes, ext, luks);
        let path = dir.path().join("hostile.qcow2");
        std::fs::write(&path, &bytes).unwrap();
        for args in [
            vec!["info".to_string(), path.display().to_string()],
            vec![
                "convert".into(),
                "--object".into(),
                OBJECT.into(),
                "--image-opts".into(),
                opts(&path),
                "-O".into(),
                "raw".into(),
                dir.path().join("o.raw").display().to_string(),
            ],
        ] {
            let (_, err, code) = answer(vdisk(&args));
            assert_eq!(code, 1, "{name}: {err}");
            assert!(
                err.contains(want),
                "{name}: {err:?} does not mention {want:?}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        }
        assert!(
            read(&path) == bytes,
            "{name}: a failed open changed the file"
        );
    });
}
