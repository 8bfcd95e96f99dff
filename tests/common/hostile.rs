//! The harness of the hostile-image suites (`tests/hostile_suite.rs` for qcow2,
//! `tests/hostile_suite_vmdk.rs` for VMDK, `tests/hostile_suite_formats.rs` for VDI, VHD
//! and VHDX): base images made by qemu-img, a [`Case`] that
//! pokes one field of a base, and [`run_suite`], which runs every case through the `vdisk`
//! binary with its address space capped at 256 MiB (`prlimit --as`) and a time limit, so a
//! huge allocation or a hang fails the case:
//!
//! * `vdisk convert -O raw` (opens the image and reads every byte) must either fail with
//!   exit 1 and one clear line on stderr, or, where the case is one QEMU accepts, succeed
//!   and produce exactly what `qemu-img convert` produces;
//! * `vdisk info` and `vdisk check` must exit normally (no signal, no panic) with one-line
//!   errors.

use super::*;
use std::path::Path;
use std::process::Output;
use Base::*;
use Expect::*;

/// Address-space cap for every vdisk run.
const MEMORY_LIMIT: u64 = 256 << 20;
/// Wall-clock cap for every vdisk run, in seconds.
const TIME_LIMIT: u32 = 60;

/// The base images the cases start from, made by qemu-img.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Base {
    /// qcow2 v3, 64 KiB clusters, 4 MiB, data in the first and last MiB.
    Qcow2,
    /// `Qcow2` plus two internal snapshots.
    Qcow2Snapshots,
    /// `Qcow2` plus a persistent bitmap.
    Qcow2Bitmap,
    /// compressed qcow2 (zlib), 64 KiB clusters.
    Qcow2Compressed,
    /// qcow2 overlay of `base.raw`, backing format raw.
    Qcow2Overlay,
    /// monolithicSparse VMDK with data.
    VmdkSparse,
    /// streamOptimized VMDK with data.
    VmdkStream,
    /// monolithicFlat VMDK: a descriptor file and `img-flat.vmdk`.
    VmdkFlat,
    /// dynamic VDI, 4 MiB, data in the first and last MiB.
    Vdi,
    /// dynamic VHD (`vpc`), 4 MiB, data in the first and last MiB.
    Vhd,
    /// dynamic VHDX with 1 MiB blocks, 4 MiB, data in the first and last MiB.
    Vhdx,
}

impl Base {
    fn format(self) -> &'static str {
        match self {
            Base::VmdkSparse | Base::VmdkStream | Base::VmdkFlat => "vmdk",
            Base::Vdi => "vdi",
            Base::Vhd => "vpc",
            Base::Vhdx => "vhdx",
            _ => "qcow2",
        }
    }
}

/// What vdisk must do with a case.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// `vdisk convert` fails with a one-line error containing this text (case-insensitive).
    Error(&'static str),
    /// QEMU accepts the image: `vdisk convert` succeeds and matches `qemu-img convert`.
    SameAsQemu,
}

/// The change that makes an image hostile, applied to the bytes of its base.
pub type Poke = Box<dyn Fn(&mut Vec<u8>)>;

/// One crafted image: `poke` applied to the bytes of `base`.
pub struct Case {
    /// What the poke does, as the failure message shows it.
    pub name: &'static str,
    /// The image the poke starts from.
    pub base: Base,
    /// The change that makes the image hostile.
    pub poke: Poke,
    /// What vdisk must do with the result.
    pub expect: Expect,
}

impl Case {
    /// A case of `base` whose image is made by `poke`.
    pub fn new(
        name: &'static str,
        base: Base,
        expect: Expect,
        poke: impl Fn(&mut Vec<u8>) + 'static,
    ) -> Case {
        Case {
            name,
            base,
            poke: Box::new(poke),
            expect,
        }
    }
}

/// One row of a table of single-field pokes: the case's name, the byte offset of the
/// field in the base image, the value written there, and what vdisk must do.
pub type FieldRow<V> = (&'static str, usize, V, Expect);

/// One case of `base` per row of `rows`, each writing its value at its offset with `put`
/// (one of the `put_*` helpers below, or one that also re-sums a checksum).
pub fn field_cases<V: Copy + 'static>(
    base: Base,
    put: fn(&mut [u8], usize, V),
    rows: &[FieldRow<V>],
) -> Vec<Case> {
    rows.iter()
        .map(|&(name, at, v, expect)| Case::new(name, base, expect, move |i| put(i, at, v)))
        .collect()
}

/// Read or write an integer field of an image: `be`/`le` for big/little-endian, then
/// the width in bits.
pub fn be32(img: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(img[at..at + 4].try_into().unwrap())
}
pub fn be64(img: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(img[at..at + 8].try_into().unwrap())
}
pub fn le32(img: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
}
pub fn le64(img: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
}
pub fn put_be32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
pub fn put_be64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
/// Write `v` big-endian into the `width` bytes (1 to 8) at `at`; `v` must fit.
pub fn put_be(img: &mut [u8], at: usize, width: usize, v: u64) {
    assert!((1..=8).contains(&width), "a field of {width} bytes");
    assert!(
        width == 8 || v >> (8 * width) == 0,
        "{v:#x} does not fit in {width} bytes"
    );
    img[at..at + width].copy_from_slice(&v.to_be_bytes()[8 - width..]);
}
pub fn put_le32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_le64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}] {}", self.base, self.name)
    }
}

/// Make the base image `base` in `dir`; returns its bytes.
fn make_base(dir: &Path, base: Base) -> Vec<u8> {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let img = p("img");
    let data = |f: &str| {
        qemu_io_ok(&[
            "-f",
            f,
            "-c",
            "write -P 0x5c 0 1M",
            "-c",
            "write -P 0x3a 3M 1M",
            &img,
        ])
    };
    match base {
        Qcow2 | Qcow2Snapshots | Qcow2Bitmap => {
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=64k",
                &img,
                "4M",
            ]);
            data("qcow2");
            if base == Qcow2Snapshots {
                qemu_img_ok(&["snapshot", "-c", "first", &img]);
                qemu_img_ok(&["snapshot", "-c", "second", &img]);
            }
            if base == Qcow2Bitmap {
                qemu_img_ok(&["bitmap", "--add", &img, "bm0"]);
            }
        }
        Qcow2Compressed => {
            let raw = p("src.raw");
            std::fs::write(&raw, pattern(3, 0, 1 << 20)).unwrap();
            qemu_img_ok(&["convert", "-c", "-f", "raw", "-O", "qcow2", &raw, &img]);
            std::fs::remove_file(&raw).unwrap();
        }
        Qcow2Overlay => {
            std::fs::write(dir.join("base.raw"), pattern(4, 0, 4 << 20)).unwrap();
            qemu_img_ok(&[
                "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", &img, "4M",
            ]);
            qemu_io_ok(&["-f", "qcow2", "-c", "write -P 0x77 64k 64k", &img]);
        }
        VmdkSparse | VmdkStream => {
            let raw = p("src.raw");
            let mut bytes = vec![0u8; 4 << 20];
            bytes[..1 << 20].copy_from_slice(&pattern(5, 0, 1 << 20));
            std::fs::write(&raw, bytes).unwrap();
            let sub = if base == VmdkSparse {
                "subformat=monolithicSparse"
            } else {
                "subformat=streamOptimized"
            };
            qemu_img_ok(&["convert", "-f", "raw", "-O", "vmdk", "-o", sub, &raw, &img]);
            std::fs::remove_file(&raw).unwrap();
        }
        Vdi | Vhd | Vhdx => {
            let fmt = base.format();
            let opts: &[&str] = if base == Vhdx {
                &["-o", "block_size=1M"]
            } else {
                &[]
            };
            qemu_img_ok(
                &[
                    &["create", "-q", "-f", fmt][..],
                    opts,
                    &[img.as_str(), "4M"],
                ]
                .concat(),
            );
            data(fmt);
        }
        VmdkFlat => {
            qemu_img_ok(&[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=monolithicFlat",
                &img,
                "4M",
            ]);
            // qemu-img names the extent after the image: rename both to fixed names.
            let text = std::fs::read_to_string(&img).unwrap();
            assert!(text.contains("\"img-flat\""), "{text}");
            qemu_io_ok(&["-f", "vmdk", "-c", "write -P 0x66 0 1M", &img]);
        }
    }
    read(Path::new(&img))
}

/// Run `vdisk ARGS` capped at [`MEMORY_LIMIT`] bytes of address space and [`TIME_LIMIT`].
fn vdisk_limited(args: &[&std::ffi::OsStr]) -> Output {
    let mut argv: Vec<std::ffi::OsString> = vec![
        TIME_LIMIT.to_string().into(),
        "prlimit".into(),
        format!("--as={MEMORY_LIMIT}").into(),
        vdisk_bin().into(),
    ];
    argv.extend(args.iter().map(|a| a.to_os_string()));
    run_program("timeout", argv)
}

/// A run that ended normally: an exit code that is not a panic (101), a signal or a
/// timeout (124). (`check` reports what it finds on several lines: that is its output.)
fn assert_orderly(what: &str, out: &Output) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0..=3) | Some(63)),
        "{}",
        describe(what, out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", describe(what, out));
}

/// A vdisk run (`what`) that failed as a user error: exit 1 and one `vdisk: ` line on
/// stderr.
pub fn assert_one_line_failure(what: &str, out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", describe(what, out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{}",
        describe(what, out)
    );
    assert!(stderr.starts_with("vdisk: "), "{}", describe(what, out));
}

fn check_case(dir: &Path, bases: &[(Base, Vec<u8>)], index: usize, case: &Case) {
    let cdir = dir.join(format!("case-{index:02}"));
    std::fs::create_dir_all(&cdir).unwrap();
    let base = &bases.iter().find(|(b, _)| *b == case.base).unwrap().1;
    let mut img = base.clone();
    (case.poke)(&mut img);
    assert_ne!(&img, base, "the poke changed nothing");
    let path = cdir.join("img");
    std::fs::write(&path, &img).unwrap();
    // Companion files of the base: the overlay's backing file, the flat extent.
    let base_dir = dir.join(format!("base-{:?}", case.base));
    for f in ["base.raw", "img-flat"] {
        if base_dir.join(f).exists() {
            std::fs::copy(base_dir.join(f), cdir.join(f)).unwrap();
        }
    }
    let fmt = case.base.format();
    let out_path = cdir.join("out.raw");
    let p = path.as_os_str();
    let os = |s: &'static str| std::ffi::OsStr::new(s);

    let info = vdisk_limited(&[os("info"), os("-f"), os(fmt), p]);
    assert_orderly("vdisk info", &info);
    let check = vdisk_limited(&[os("check"), os("-f"), os(fmt), p]);
    assert_orderly("vdisk check", &check);

    let conv = vdisk_limited(&[
        os("convert"),
        os("-f"),
        os(fmt),
        os("-O"),
        os("raw"),
        p,
        out_path.as_os_str(),
    ]);
    let what = format!("vdisk convert ({case:?})");
    match case.expect {
        Error(text) => {
            assert_one_line_failure(&what, &conv);
            let stderr = String::from_utf8_lossy(&conv.stderr);
            assert!(
                stderr.to_lowercase().contains(&text.to_lowercase()),
                "error does not mention {text:?}: {}",
                describe(&what, &conv)
            );
        }
        SameAsQemu => {
            assert_eq!(conv.status.code(), Some(0), "{}", describe(&what, &conv));
            let theirs = cdir.join("qemu.raw");
            let q = qemu_img([
                os("convert"),
                os("-U"),
                os("-f"),
                os(fmt),
                os("-O"),
                os("raw"),
                p,
                theirs.as_os_str(),
            ]);
            assert!(q.status.success(), "{}", describe("qemu-img convert", &q));
            assert_bytes_eq(&what, &read(&out_path), &read(&theirs));
        }
    }
}

/// Make each of `bases` (and check that it converts exactly as QEMU converts it), then check
/// every case of `cases`, which may start only from those bases.
pub fn run_suite(what: &str, bases: &[Base], cases: Vec<Case>) {
    let dir = tempdir();
    let mut made = Vec::new();
    for &b in bases {
        let bdir = dir.path().join(format!("base-{b:?}"));
        std::fs::create_dir_all(&bdir).unwrap();
        let bytes = make_base(&bdir, b);
        // Every base itself converts exactly as QEMU converts it.
        let img = bdir.join("img");
        let ours = vdisk_raw_contents(&img, &bdir);
        assert_bytes_eq(
            &format!("base {b:?}"),
            &ours,
            &qemu_raw_contents(&img, &bdir),
        );
        made.push((b, bytes));
    }
    let indexed: Vec<(usize, Case)> = cases.into_iter().enumerate().collect();
    run_cases(what, &indexed, |(i, case)| {
        check_case(dir.path(), &made, *i, case)
    });
    eprintln!("{} hostile images checked", indexed.len());
}
