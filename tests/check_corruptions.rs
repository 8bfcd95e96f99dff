//! `check` on images with corruptions crafted by poking bytes: each is found with exactly
//! the counts qemu-img reports, `-r all` repairs it so that qemu-img then finds the image
//! clean, and guest data that repair can keep is unchanged. Also: the dirty bit is
//! repaired on a writable open.

mod common;

use common::crash::qemu_check_path;
use std::path::Path;
use vdisk::qcow2::check::{CheckReport, Repair};
use vdisk::qcow2::check_image as check;
use vdisk::qcow2::{OpenOptions, Qcow2};
use vdisk::storage::{FileStorage, OpenOptions as FileOptions};
use vdisk::BlockDevice;

fn run(args: &[&str]) {
    let out = common::run_argv(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 4 MiB image, 64 KiB clusters: header 0, refcount table 0x10000, refcount block
/// 0x20000, L1 0x30000, L2 0x40000, data 0x50000 (guest 0) and 0x60000 (guest 64k).
fn base(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("img.qcow2");
    let s = p.to_str().unwrap();
    run(&["qemu-img", "create", "-q", "-f", "qcow2", s, "4M"]);
    run(&[
        "qemu-io",
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "write -P 0x22 64k 64k",
        s,
    ]);
    p
}

fn poke(p: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn storage(p: &Path, write: bool) -> FileStorage {
    FileStorage::open(
        p,
        FileOptions {
            write,
            unsafe_cache: false,
            force_share: false,
        },
    )
    .unwrap()
}

fn vdisk_check(p: &Path, repair: Repair) -> CheckReport {
    check(&storage(p, repair != Repair::None), repair).unwrap()
}

fn read_guest(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut q = Qcow2::open(
        storage(p, false),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; len];
    q.read_at(&mut buf, offset).unwrap();
    buf
}

/// Poke, check against the expected counts and qemu-img's, repair, re-check with qemu-img.
fn case(
    name: &str,
    pokes: &[(u64, Vec<u8>)],
    extend_to: Option<u64>,
    corruptions: u64,
    leaks: u64,
    keeps_data: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let p = base(dir.path());
    if let Some(len) = extend_to {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    for (off, b) in pokes {
        poke(&p, *off, b);
    }
    let r = vdisk_check(&p, Repair::None);
    let q = qemu_check_path(&p);
    assert_eq!(
        (r.corruptions, r.leaks),
        (corruptions, leaks),
        "{name}: {:?}",
        r.messages
    );
    assert_eq!(
        (q.corruptions, q.leaks),
        (corruptions, leaks),
        "{name}: qemu-img: {}",
        q.output
    );
    assert_eq!(i32::from(r.exit_code()), q.code, "{name}");
    let fixed = vdisk_check(&p, Repair::All);
    assert_eq!(
        fixed.exit_code(),
        0,
        "{name}: after -r all: {:?}",
        fixed.messages
    );
    assert!(fixed.corruptions_fixed + fixed.leaks_fixed > 0, "{name}");
    let q = qemu_check_path(&p);
    assert_eq!(q.code, 0, "{name}: qemu-img after repair: {}", q.output);
    if keeps_data {
        assert!(
            read_guest(&p, 0, 65536).iter().all(|&b| b == 0x11),
            "{name}"
        );
        assert!(
            read_guest(&p, 65536, 65536).iter().all(|&b| b == 0x22),
            "{name}"
        );
    }
}

fn be64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn be16(v: u16) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[test]
fn a_leaked_cluster_is_one_leak_and_repair_frees_it() {
    case(
        "leak",
        &[(0x20000 + 2 * 7, be16(1))],
        Some(0x80000),
        0,
        1,
        true,
    );
}

#[test]
fn a_refcount_one_too_high_on_data_is_a_leak_and_a_copied_mismatch() {
    case(
        "leak on data",
        &[(0x20000 + 2 * 5, be16(2))],
        None,
        1,
        1,
        true,
    );
}

#[test]
fn a_refcount_too_low_is_a_corruption_and_repair_rebuilds_the_refcounts() {
    // Cluster 5 (data at 0x50000) counted 0: a corruption plus its COPIED flag mismatch.
    case(
        "refcount 0",
        &[(0x20000 + 2 * 5, be16(0))],
        None,
        2,
        0,
        true,
    );
}

#[test]
fn an_l2_entry_into_the_l1_table_is_found_and_kept_shared_as_qemu_keeps_it() {
    case(
        "L2 into L1",
        &[(0x40000 + 8, be64(0x8000_0000_0003_0000))],
        None,
        1,
        1,
        false,
    );
}

#[test]
fn an_unaligned_l2_table_offset_is_found_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p = base(dir.path());
    poke(&p, 0x30000, &be64(0x8000_0000_0004_0200));
    let r = vdisk_check(&p, Repair::None);
    let q = qemu_check_path(&p);
    assert_eq!((r.corruptions, r.leaks), (q.corruptions, q.leaks));
    assert!(r
        .messages
        .iter()
        .any(|m| m.contains("Table is not cluster aligned")));
    assert_eq!(vdisk_check(&p, Repair::All).exit_code(), 0);
    assert_eq!(qemu_check_path(&p).code, 0);
}

#[test]
fn a_wrong_copied_flag_is_one_corruption_and_repair_sets_it() {
    case("COPIED", &[(0x40000, be64(0x50000))], None, 1, 0, true);
}

#[test]
fn a_compressed_descriptor_past_the_end_is_found_and_dropped() {
    let desc = 0x4000_0000_0000_0000u64 | (3 << 54) | 0x90_0000;
    case(
        "compressed past end",
        &[(0x40000 + 8 * 3, be64(desc))],
        None,
        1,
        0,
        true,
    );
}

#[test]
fn a_refcount_block_outside_the_image_is_rebuilt() {
    case(
        "refblock outside",
        &[(0x10008, be64(0x90_0000))],
        None,
        1,
        0,
        true,
    );
}

#[test]
fn leaks_only_repair_frees_leaks_and_leaves_corruptions() {
    let dir = tempfile::tempdir().unwrap();
    let p = base(dir.path());
    poke(&p, 0x20000 + 2 * 5, &be16(2));
    let r = vdisk_check(&p, Repair::Leaks);
    assert_eq!(r.leaks_fixed, 1);
    assert_eq!(
        r.exit_code(),
        0,
        "the COPIED flag is fixed once no leak is left: {:?}",
        r.messages
    );
    assert_eq!(qemu_check_path(&p).code, 0);
}

#[test]
fn a_dirty_image_is_repaired_when_opened_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let p = base(dir.path());
    // Lazy refcounts after a crash: the dirty bit is set and a data cluster's refcount
    // was never written.
    poke(
        &p,
        vdisk::qcow2::header::field::INCOMPATIBLE_FEATURES.file_offset() + 7,
        &[1],
    );
    poke(&p, 0x20000 + 2 * 6, &be16(0));
    {
        let mut q = Qcow2::open(storage(&p, true), OpenOptions::default()).unwrap();
        q.write_at(&[0x33; 512], 2 << 20).unwrap();
        q.flush().unwrap();
    }
    assert_eq!(qemu_check_path(&p).code, 0);
    assert!(read_guest(&p, 65536, 65536).iter().all(|&b| b == 0x22));
    let v = vdisk_check(&p, Repair::None);
    assert_eq!(v.exit_code(), 0);
}

#[test]
fn a_metadata_write_over_other_metadata_is_refused_and_marks_the_image_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = base(dir.path());
    // Point the active L2 table at the refcount block, COPIED so it is written in place.
    poke(&p, 0x30000, &be64(0x8000_0000_0002_0000));
    let err = {
        let mut q = Qcow2::open(storage(&p, true), OpenOptions::default()).unwrap();
        // Entry 50 of the "L2 table" holds zero refcounts: unallocated, so this allocates.
        q.write_at(&[0x44; 512], 50 << 16).unwrap();
        q.flush().unwrap_err()
    };
    assert!(err.to_string().contains("refcount block"), "{err}");
    assert!(err.to_string().contains("check -r all"), "{err}");
    // The corrupt bit is set: writable opens are refused, qemu-img sees it too.
    assert!(Qcow2::open(storage(&p, true), OpenOptions::default()).is_err());
    let q = qemu_check_path(&p);
    assert_ne!(q.code, 0);
    // check -r all is the way back.
    assert_eq!(vdisk_check(&p, Repair::All).exit_code(), 0);
    assert_eq!(qemu_check_path(&p).code, 0);
    assert!(Qcow2::open(storage(&p, true), OpenOptions::default()).is_ok());
}
