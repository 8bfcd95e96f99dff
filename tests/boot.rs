//! Proof that virtual machines boot from the images vdisk writes: vdisk puts a tiny boot
//! program (see `boot/bootsector.rs`) and marker sectors into each image, QEMU's x86 system
//! emulator boots it (TCG, no KVM), and the test checks the exact serial output: the banner,
//! then the first 16 bytes of each probed sector, which is the marker vdisk wrote there.
//!
//! The probes cover the start of the disk, past 1 MiB, past 8 GiB (beyond CHS addressing)
//! and the last sector of a 10 GiB disk. The matrix: raw, qcow2 v2 and v3 with 4 KiB,
//! 64 KiB and 2 MiB clusters, a qcow2 overlay on a raw base, a qcow2 after a snapshot
//! rollback, a base after `vdisk commit`, VMDK monolithicSparse and streamOptimized, and a
//! compressed qcow2 (once `vdisk convert -c` exists). QEMU also boots from `vdisk serve`
//! exports (NBD over TCP and a Unix socket) of a qcow2 overlay and of a VMDK.
//!
//! qemu-system-x86_64 is required: a missing binary fails the tests with the install steps.

#[path = "boot/bootsector.rs"]
mod bootsector;
mod common;
mod nbd_common;

use bootsector::{boot_sector, BANNER, EXIT_OK, PRINTED_BYTES};
use common::{path_in, tempdir, vdisk_ok};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vdisk::image::{self, Format, ImageOptions};

/// Virtual size of every test disk: sparse, so cheap, and past the 8 GiB CHS limit.
const DISK_SIZE: u64 = 10 << 30;
const SECTOR: u64 = 512;
/// The sectors the boot program reads: near the start, past 1 MiB, past 8 GiB, last.
const PROBES: [u64; 5] = [
    1,
    2048 + 7,
    (5 << 30) / SECTOR + 3,
    (8 << 30) / SECTOR + 4097,
    DISK_SIZE / SECTOR - 1,
];
/// Longest one boot may take before QEMU is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "qemu-system-x86_64 is not installed. The boot tests need QEMU's x86 \
system emulator matching qemu-img 10: add 'bookworm-backports' to the Suites line \
('bookworm bookworm-updates') of /etc/apt/sources.list.d/debian.sources, run 'apt-get update', \
then 'apt-get install -y -t bookworm-backports qemu-system-x86' (installing it from plain \
bookworm replaces qemu-utils 10 with 7.2), and check 'qemu-img --version'";

/// The 16-byte marker of generation `gen` at `lba`, e.g. `LBA0000002055-A.`.
fn marker(lba: u64, gen: char) -> [u8; 16] {
    let s = format!("LBA{lba:010}-{gen}.");
    let mut m = [0u8; 16];
    m.copy_from_slice(s.as_bytes());
    m
}

/// A marker sector: the marker, then filler that is not zero (so it is really stored).
fn marker_sector(lba: u64, gen: char) -> Vec<u8> {
    let mut s = vec![gen as u8; SECTOR as usize];
    s[..16].copy_from_slice(&marker(lba, gen));
    s
}

/// The serial output expected when probe `i` reads generation `gens[i]`.
fn expected_output(gens: &[char]) -> String {
    let mut out = BANNER.to_string();
    for (lba, gen) in PROBES.iter().zip(gens) {
        out += std::str::from_utf8(&marker(*lba, *gen)[..PRINTED_BYTES]).unwrap();
        out.push('\n');
    }
    out
}

/// Open an image (with its backing chain) through the vdisk library for writing.
fn open_rw(path: &Path, format: Format) -> image::Image {
    image::open(
        path,
        &ImageOptions {
            format: Some(format),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("vdisk opening {}: {e}", path.display()))
}

/// Write the boot sector (when `with_boot`) and generation `gen` markers at `lbas`.
fn write_markers(path: &Path, format: Format, with_boot: bool, lbas: &[u64], gen: char) {
    let mut img = open_rw(path, format);
    if with_boot {
        img.device.write_at(&boot_sector(&PROBES), 0).unwrap();
    }
    for &lba in lbas {
        img.device
            .write_at(&marker_sector(lba, gen), lba * SECTOR)
            .unwrap();
    }
    img.device.close().unwrap();
}

fn create(path: &Path, format: &str, opts: &str) {
    let mut args = vec!["create", "-q", "-f", format];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let p = path.to_str().unwrap();
    let size = DISK_SIZE.to_string();
    args.extend([p, size.as_str()]);
    vdisk_ok(&args);
}

/// Boot `path` in QEMU and return (exit status, serial output).
fn boot(path: &Path, format: &str) -> (i32, String) {
    let drive = format!("file={},format={format},if=ide,snapshot=on", path.display());
    boot_drive(&drive, &path.display().to_string())
}

/// Boot from the QEMU `-drive` spec `drive` (`what` names it in messages).
fn boot_drive(drive: &str, what: &str) -> (i32, String) {
    let mut child = match Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "32",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
            drive,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(e) => panic!("running qemu-system-x86_64: {e}"),
    };
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for QEMU") {
            break s;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let so = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            panic!("booting {what} timed out after {BOOT_TIMEOUT:?}; serial output so far: {so:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let so = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let se = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !se.trim().is_empty() {
        eprintln!("qemu-system-x86_64 stderr for {what}: {se}");
    }
    (status.code().unwrap_or(-1), so)
}

/// Boot `path` and require the exact serial output for `gens`, and a clean exit.
#[track_caller]
fn assert_boots(path: &Path, format: &str, gens: &[char]) {
    let (code, out) = boot(path, format);
    let want = expected_output(gens);
    assert_eq!(
        out,
        want,
        "serial output of {} ({format}) (QEMU exit status {code})",
        path.display()
    );
    assert_eq!(code, EXIT_OK, "QEMU exit status for {}", path.display());
}

#[test]
fn qemu_system_x86_64_is_installed_and_matches_qemu_img() {
    let out = match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) => o,
        Err(_) => panic!("{INSTALL_HINT}"),
    };
    let sys = String::from_utf8_lossy(&out.stdout).into_owned();
    let img = common::ok("qemu-img --version", common::qemu_img(["--version"]));
    let ver = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        ver(&sys),
        ver(&img),
        "qemu-system-x86_64: {sys}\nqemu-img: {img}"
    );
}

#[test]
fn boots_from_raw() {
    let dir = tempdir();
    let p = path_in(&dir, "disk.raw");
    create(&p, "raw", "");
    write_markers(&p, Format::RAW, true, &PROBES, 'A');
    assert_boots(&p, "raw", &['A'; 5]);
}

#[test]
fn boots_from_qcow2_v2_and_v3_with_4k_64k_and_2m_clusters() {
    let dir = tempdir();
    let cases: Vec<(&str, u64)> = ["0.10", "1.1"]
        .iter()
        .flat_map(|c| [4u64 << 10, 64 << 10, 2 << 20].map(|cs| (*c, cs)))
        .collect();
    common::run_cases("qcow2 boot", &cases, |(compat, cs)| {
        let p = path_in(&dir, &format!("disk-{compat}-{cs}.qcow2"));
        create(&p, "qcow2", &format!("compat={compat},cluster_size={cs}"));
        write_markers(&p, Format::QCOW2, true, &PROBES, 'A');
        common::assert_qemu_check_clean(&p);
        assert_boots(&p, "qcow2", &['A'; 5]);
    });
}

/// `top.qcow2` over `base.raw` in `dir`: the base has marker 'A' at every probe, and the
/// overlay changes probes 1 and 3 to 'B' (the others read through to the base).
fn overlay_on_raw_base(dir: &common::TempDir) -> std::path::PathBuf {
    overlay_with(dir, "cluster_size=65536")
}

/// [`overlay_on_raw_base`] with the overlay created with `-o opts`.
fn overlay_with(dir: &common::TempDir, opts: &str) -> std::path::PathBuf {
    let base = path_in(dir, "base.raw");
    let top = path_in(dir, "top.qcow2");
    create(&base, "raw", "");
    write_markers(&base, Format::RAW, true, &PROBES, 'A');
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        "-b",
        "base.raw",
        "-F",
        "raw",
        top.to_str().unwrap(),
    ]);
    write_markers(&top, Format::QCOW2, false, &[PROBES[1], PROBES[3]], 'B');
    top
}

#[test]
fn boots_from_a_qcow2_overlay_on_a_raw_base() {
    let dir = tempdir();
    let top = overlay_on_raw_base(&dir);
    assert_boots(&top, "qcow2", &['A', 'B', 'A', 'B', 'A']);
}

#[test]
fn boots_from_an_overlay_with_subclusters_on_a_raw_base() {
    // extended_l2=on: each 512-byte marker fills one subcluster, the rest of its cluster
    // still reads the base (and the boot sector comes from the base).
    let dir = tempdir();
    let top = overlay_with(&dir, "extended_l2=on,cluster_size=16384");
    common::assert_qemu_check_clean(&top);
    assert_boots(&top, "qcow2", &['A', 'B', 'A', 'B', 'A']);
}

#[test]
fn boots_from_qcow2_after_a_snapshot_rollback() {
    let dir = tempdir();
    let p = path_in(&dir, "snap.qcow2");
    create(&p, "qcow2", "cluster_size=65536");
    write_markers(&p, Format::QCOW2, true, &PROBES, 'A');
    let ps = p.to_str().unwrap();
    vdisk_ok(&["snapshot", "-c", "before", ps]);
    write_markers(&p, Format::QCOW2, false, &PROBES, 'B');
    assert_boots(&p, "qcow2", &['B'; 5]);
    vdisk_ok(&["snapshot", "-a", "before", ps]);
    common::assert_qemu_check_clean(&p);
    assert_boots(&p, "qcow2", &['A'; 5]);
}

#[test]
fn boots_from_the_base_after_commit() {
    let dir = tempdir();
    let base = path_in(&dir, "base.qcow2");
    let top = path_in(&dir, "top.qcow2");
    create(&base, "qcow2", "cluster_size=65536");
    write_markers(&base, Format::QCOW2, true, &PROBES, 'A');
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    write_markers(
        &top,
        Format::QCOW2,
        false,
        &[PROBES[0], PROBES[2], PROBES[4]],
        'C',
    );
    vdisk_ok(&["commit", "-q", top.to_str().unwrap()]);
    common::assert_qemu_check_clean(&base);
    assert_boots(&base, "qcow2", &['C', 'A', 'C', 'A', 'C']);
}

fn raw_source(dir: &common::TempDir) -> std::path::PathBuf {
    let p = path_in(dir, "source.raw");
    create(&p, "raw", "");
    write_markers(&p, Format::RAW, true, &PROBES, 'A');
    p
}

#[test]
fn boots_from_vmdk_monolithic_sparse_and_stream_optimized() {
    let dir = tempdir();
    let src = raw_source(&dir);
    let subformats = ["monolithicSparse", "streamOptimized"];
    common::run_cases("vmdk boot", &subformats, |sub| {
        let p = path_in(&dir, &format!("{sub}.vmdk"));
        vdisk_ok(&[
            "convert",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            src.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        assert_boots(&p, "vmdk", &['A'; 5]);
    });
}

#[test]
fn boots_from_a_compressed_qcow2() {
    let dir = tempdir();
    let src = raw_source(&dir);
    let p = path_in(&dir, "compressed.qcow2");
    vdisk_ok(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    common::assert_qemu_check_clean(&p);
    assert_boots(&p, "qcow2", &['A'; 5]);
}

#[test]
fn a_read_past_the_end_of_the_disk_is_reported_by_the_boot_program() {
    // Guards the test itself: a probe the BIOS cannot read must not pass silently.
    let dir = tempdir();
    let p = path_in(&dir, "short.raw");
    create(&p, "raw", "");
    let mut img = open_rw(&p, Format::RAW);
    img.device
        .write_at(&boot_sector(&[1, DISK_SIZE / SECTOR + 10]), 0)
        .unwrap();
    img.device.write_at(&marker_sector(1, 'A'), SECTOR).unwrap();
    img.device.close().unwrap();
    // QEMU refuses an image vdisk still holds open for writing (image locks).
    drop(img);
    let (code, out) = boot(&p, "raw");
    assert_eq!(
        out,
        format!("{BANNER}LBA0000000001-A.\nERR\n"),
        "serial output"
    );
    assert_eq!(code, bootsector::EXIT_READ_ERROR);
}

#[test]
fn boots_from_qcow2_after_amend_and_resize() {
    let dir = tempdir();
    let p = path_in(&dir, "amended.qcow2");
    let ps = p.to_str().unwrap();
    // Made 1 GiB smaller, then grown back by resize; markers written after the grow.
    let small = (DISK_SIZE - (1 << 30)).to_string();
    vdisk_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=65536",
        ps,
        &small,
    ]);
    vdisk_ok(&["resize", "-q", ps, "+1G"]);
    write_markers(&p, Format::QCOW2, true, &PROBES, 'A');
    vdisk_ok(&["amend", "-o", "refcount_bits=2", ps]);
    vdisk_ok(&["amend", "-o", "refcount_bits=16,compat=0.10", ps]);
    common::assert_qemu_check_clean(&p);
    assert_boots(&p, "qcow2", &['A'; 5]);
}

#[test]
fn boots_from_nbd_exports_of_a_qcow2_overlay_and_of_a_vmdk() {
    use nbd_common::{Server, Via};
    let dir = tempdir();
    let top = overlay_on_raw_base(&dir);
    let vmdk = path_in(&dir, "disk.vmdk");
    let src = raw_source(&dir);
    vdisk_ok(&[
        "convert",
        "-O",
        "vmdk",
        src.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    let cases = [
        (&top, "qcow2", Via::Tcp, ['A', 'B', 'A', 'B', 'A']),
        (&vmdk, "vmdk", Via::Unix, ['A'; 5]),
    ];
    for (image, format, via, gens) in cases {
        // Without -t the server exits once QEMU, its one client, has gone.
        let flags = ["-f", format, "-x", "boot"];
        let server = Server::start(common::twins::Tool::Vdisk, image, via, &flags);
        let uri = server.uri("boot");
        let (code, out) = boot_drive(&format!("file={uri},format=raw,if=ide"), &uri);
        assert_eq!(
            out,
            expected_output(&gens),
            "serial output booting {uri} ({format})"
        );
        assert_eq!(code, EXIT_OK, "QEMU exit status for {uri}");
        server.stop();
        common::assert_qemu_check_clean(image);
    }
}
