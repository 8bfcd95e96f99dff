//! Every cipher, mode, IV generator and hash qemu-img 10 accepts for `encrypt.format=luks`,
//! both ways: qemu-img creates and qemu-io writes, vdisk reads the same bytes; vdisk creates
//! and writes, `qemu-img convert` reads the same bytes and `qemu-img check` is clean. The
//! combinations qemu-img refuses are refused by vdisk too.
//!
//! Every one of the 30 cipher/mode pairs qemu-img accepts is tested; the IV generators
//! (plain, plain64, ESSIV with each hash whose digest keys the family) and the eight
//! PBKDF2 hashes are spread over them so each appears several times, with
//! `iter-time=10` and 1 MiB images to keep the whole matrix to a few seconds.

mod common;

use common::*;
use std::path::Path;

const OBJECT: &str = "secret,id=sec0,data=matrix passphrase";
const SIZE: u64 = 1 << 20;

const ALGS: [&str; 10] = [
    "aes-128",
    "aes-192",
    "aes-256",
    "twofish-128",
    "twofish-192",
    "twofish-256",
    "serpent-128",
    "serpent-192",
    "serpent-256",
    "cast5-128",
];
const MODES: [&str; 4] = ["xts", "cbc", "ecb", "ctr"];
const HASHES: [&str; 8] = [
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "sm3",
];
/// IV generators: the three ESSIV hashes are those whose digest (16 or 32 bytes) is a key
/// size of AES, Twofish and Serpent.
const IVGENS: [&str; 5] = ["plain64", "plain", "essiv:md5", "essiv:sha256", "essiv:sm3"];

/// Whether qemu-img 10 makes an image with `alg` in `mode` (tried by hand: CAST5 has no
/// XTS; a 192-bit key outside XTS makes key material of a partial sector, on which
/// qemu-img aborts).
fn qemu_accepts(alg: &str, mode: &str) -> bool {
    match (alg, mode) {
        ("cast5-128", "xts") => false,
        (a, m) if a.ends_with("-192") => m == "xts",
        _ => true,
    }
}

#[derive(Debug, Clone)]
struct Combo {
    alg: &'static str,
    mode: &'static str,
    ivgen: &'static str,
    hash: &'static str,
}

impl Combo {
    fn options(&self) -> String {
        let mut o = format!(
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg={},encrypt.cipher-mode={},encrypt.hash-alg={}",
            self.alg, self.mode, self.hash
        );
        match self.ivgen.split_once(':') {
            Some((g, h)) => o.push_str(&format!(
                ",encrypt.ivgen-alg={g},encrypt.ivgen-hash-alg={h}"
            )),
            None => o.push_str(&format!(",encrypt.ivgen-alg={}", self.ivgen)),
        }
        o
    }
}

/// The accepted cipher/mode pairs, each with an IV generator and a hash, rotating so that
/// every generator and every hash is used.
fn combos() -> Vec<Combo> {
    let pairs = ALGS
        .iter()
        .flat_map(|a| MODES.iter().map(move |m| (*a, *m)))
        .filter(|(a, m)| qemu_accepts(a, m));
    pairs
        .enumerate()
        .map(|(i, (alg, mode))| {
            let mut ivgen = IVGENS[i % IVGENS.len()];
            if alg == "cast5-128" && ivgen.starts_with("essiv") {
                ivgen = "plain";
            }
            Combo {
                alg,
                mode,
                ivgen,
                hash: HASHES[i % HASHES.len()],
            }
        })
        .collect()
}

fn image_opts(path: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=sec0",
        path.display()
    )
}

/// What the guest holds after qemu-io's writes.
const WRITES: &[(u8, u64, u64)] = &[(0x11, 0, 65536), (0x22, 70_000, 5000), (0x33, 600_000, 700)];

/// qemu-img's image of combination `n`.
fn qemu_image(dir: &Path, n: usize) -> std::path::PathBuf {
    dir.join(format!("q{n}.qcow2"))
}

/// Create every combination's image with qemu-img, a few at a time: qemu-img times PBKDF2
/// for about a second of CPU per image whatever `iter-time` says, which is most of this
/// test's time.
fn qemu_create_all(cases: &[Combo], dir: &Path) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(c) = cases.get(n) else { break };
                qemu_create(c, &qemu_image(dir, n));
            });
        }
    });
}

fn qemu_create(c: &Combo, img: &Path) {
    qemu_img_ok(&encrypted_create(
        OBJECT,
        &c.options(),
        img.to_str().unwrap(),
        &SIZE.to_string(),
    ));
}

fn qemu_to_vdisk(img: &Path, dir: &Path) {
    let mut args = vec![
        "--object".to_string(),
        OBJECT.into(),
        "--image-opts".into(),
        image_opts(img),
    ];
    let mut want = vec![0u8; SIZE as usize];
    for &(p, off, len) in WRITES {
        args.push("-c".into());
        args.push(format!("write -P {p:#x} {off} {len}"));
        want[off as usize..(off + len) as usize].fill(p);
    }
    qemu_io_ok(&args);
    let out = dir.join("q.raw");
    vdisk_ok(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &image_opts(img),
        "-O",
        "raw",
        out.to_str().unwrap(),
    ]);
    assert_bytes_eq("vdisk reading qemu's image", &read(&out), &want);
}

fn vdisk_to_qemu(c: &Combo, dir: &Path, src: &Path, plain: &[u8]) {
    let img = dir.join("v.qcow2");
    let _ = std::fs::remove_file(&img);
    vdisk_ok(&[
        "convert",
        "--object",
        OBJECT,
        "-O",
        "qcow2",
        "-o",
        &c.options(),
        src.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let host = read(&img);
    assert!(
        !host.windows(64).any(|w| w == &plain[4096..4160]),
        "plaintext in the host file"
    );
    let out = dir.join("v.raw");
    qemu_img_ok(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &image_opts(&img),
        "-O",
        "raw",
        out.to_str().unwrap(),
    ]);
    assert_bytes_eq("qemu-img reading vdisk's image", &read(&out), plain);
    let check = qemu_img_ok(&[
        "check",
        "--object",
        OBJECT,
        "--image-opts",
        &image_opts(&img),
    ]);
    assert!(check.contains("No errors were found"), "{check}");
    assert!(!check.contains("leaked"), "{check}");
}

#[test]
fn every_luks_cipher_mode_ivgen_and_hash_qemu_img_accepts_works_both_ways() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    let mut plain = vec![0u8; SIZE as usize];
    for (i, chunk) in plain
        .chunks_mut(4096)
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
    {
        chunk.copy_from_slice(&pattern(0xc1f, (i * 4096) as u64, 4096));
    }
    std::fs::write(&src, &plain).unwrap();
    let cases = combos();
    assert_eq!(cases.len(), 30, "the cipher/mode pairs qemu-img accepts");
    for ivgen in IVGENS {
        assert!(cases.iter().any(|c| c.ivgen == ivgen), "{ivgen} unused");
    }
    for hash in HASHES {
        assert!(cases.iter().any(|c| c.hash == hash), "{hash} unused");
    }
    qemu_create_all(&cases, dir.path());
    let numbered: Vec<(usize, Combo)> = cases.into_iter().enumerate().collect();
    run_cases("LUKS interop", &numbered, |(n, c)| {
        qemu_to_vdisk(&qemu_image(dir.path(), *n), dir.path());
        vdisk_to_qemu(c, dir.path(), &src, &plain);
    });
}

#[test]
fn combinations_qemu_img_refuses_are_refused_by_vdisk_with_its_message() {
    let dir = tempdir();
    let img = dir.path().join("r.qcow2");
    let refused = [
        ("cast5-128", "xts", "plain64", "Unsupported cipher mode xts"),
        (
            "cast5-128",
            "cbc",
            "essiv:sha256",
            "Cipher cast5-128 not supported with essiv",
        ),
        (
            "aes-256",
            "cbc",
            "essiv:sha1",
            "No AES cipher with key size 20 available",
        ),
        (
            "serpent-128",
            "xts",
            "essiv:sha512",
            "No Serpent cipher with key size 64 available",
        ),
    ];
    for (alg, mode, ivgen, message) in refused {
        let c = Combo {
            alg,
            mode,
            ivgen,
            hash: "sha256",
        };
        let create = |tool: fn(Vec<String>) -> std::process::Output| {
            answer(tool(vec![
                "create".into(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "--object".into(),
                OBJECT.into(),
                "-o".into(),
                c.options(),
                img.to_str().unwrap().into(),
                "1M".into(),
            ]))
        };
        let (_, theirs, their_code) = create(qemu_img);
        let (_, ours, our_code) = create(vdisk);
        assert!(theirs.contains(message), "qemu-img: {theirs}");
        assert!(ours.contains(message), "{c:?}: {ours}");
        assert_eq!((our_code, their_code), (1, 1), "{c:?}");
    }
    // qemu-img aborts on a 192-bit key outside XTS; vdisk refuses it with a reason.
    for alg in ["aes-192", "twofish-192", "serpent-192"] {
        for mode in ["cbc", "ecb", "ctr"] {
            assert!(!qemu_accepts(alg, mode));
            let c = Combo {
                alg,
                mode,
                ivgen: "plain64",
                hash: "sha256",
            };
            let (_, ours, code) = answer(vdisk(encrypted_create(
                OBJECT,
                &c.options(),
                img.to_str().unwrap(),
                "1M",
            )));
            assert!(
                ours.contains("not a whole number of 512-byte sectors"),
                "{ours}"
            );
            assert_eq!(code, 1);
        }
    }
}
