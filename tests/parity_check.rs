//! Issue 12: data-safety defects of `check` and of opening damaged qcow2 images, each
//! compared with qemu-img on a twin copy of the same crafted image.
//!
//! Each test makes an image with qemu-img/qemu-io, pokes bytes into it (layouts in
//! `format-spec/qcow2.md`), then runs qemu-img on one copy and vdisk on the other and
//! compares exit codes, `check` counts, guest contents and `qemu-img check` after repair.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vdisk::qcow2::header::field;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Write `value` big-endian at `offset` of the file at `p`.
fn poke_u64(p: &Path, offset: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("opening the image to poke it");
    f.write_all_at(&value.to_be_bytes(), offset)
        .expect("poking the image");
}

/// Offsets of the 4 MiB image [`small_image`] makes (64 KiB clusters).
mod small {
    pub const REFCOUNT_TABLE: u64 = 0x10000;
    pub const REFCOUNT_BLOCK: u64 = 0x20000;
    pub const L1: u64 = 0x30000;
    pub const L2: u64 = 0x40000;
    /// Guest cluster 0 (0x11 bytes).
    pub const DATA0: u64 = 0x50000;
}

/// A 4 MiB image, 64 KiB clusters: header 0, refcount table 0x10000, refcount block
/// 0x20000, L1 0x30000, L2 0x40000, data 0x50000 (guest 0, bytes 0x11) and 0x60000
/// (guest 64 KiB, bytes 0x22).
fn small_image(p: &Path) {
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(p), "4M"]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "write -P 0x22 64k 64k",
        s(p),
    ]);
}

/// Offsets of the image [`two_table_image`] makes (4 KiB clusters, two L1 entries).
mod two {
    pub const REFCOUNT_TABLE: u64 = 0x1000;
    pub const L1: u64 = 0x3000;
    pub const L2: u64 = 0x4000;
}

/// A 4 MiB image with 4 KiB clusters, so that the L1 table has two entries: header 0,
/// refcount table 0x1000, refcount block 0x2000, L1 0x3000, L2 0x4000 (guest 0 → data
/// 0x5000, bytes 0x11), L2 0x6000 (guest 2 MiB → data 0x7000, bytes 0x22).
fn two_table_image(p: &Path) {
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        s(p),
        "4M",
    ]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x11 0 4k",
        "-c",
        "write -P 0x22 2M 4k",
        s(p),
    ]);
}

/// Exit code and JSON report (without the file name) of `check` by qemu-img or vdisk.
fn check_json(qemu: bool, path: &Path, repair: bool) -> (Option<i32>, Value) {
    let mut args = vec!["check", "--output=json"];
    if repair {
        args.extend(["-r", "all"]);
    }
    args.push(s(path));
    let out = if qemu { qemu_img(&args) } else { vdisk(&args) };
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("filename");
    }
    (out.status.code(), v)
}

/// Two copies of a crafted image: `qemu` for qemu-img, `ours` for vdisk.
struct Twin {
    dir: TempDir,
    qemu: PathBuf,
    ours: PathBuf,
}

fn twin(make: fn(&Path), pokes: &[(u64, u64)]) -> Twin {
    let dir = tempdir();
    let qemu = path_in(&dir, "qemu.qcow2");
    let ours = path_in(&dir, "vdisk.qcow2");
    make(&qemu);
    for &(at, v) in pokes {
        poke_u64(&qemu, at, v);
    }
    std::fs::copy(&qemu, &ours).expect("copying the image");
    Twin { dir, qemu, ours }
}

impl Twin {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `check` (no repair) gives the same exit code and counts with both tools.
    #[track_caller]
    fn assert_same_check(&self) -> Option<i32> {
        let q = check_json(true, &self.qemu, false);
        let v = check_json(false, &self.ours, false);
        assert_eq!(v, q, "vdisk check vs qemu-img check");
        q.0
    }
}

/// What `check -r all` did to a twin.
struct Repaired {
    /// qemu-img's exit code for `check -r all`.
    qemu_code: Option<i32>,
    /// vdisk's.
    ours_code: Option<i32>,
}

/// Check both copies, repair both with `-r all`; vdisk's repair must keep every guest byte
/// as qemu-img read it before the repair. Returns both exit codes.
#[track_caller]
fn check_and_repair(t: &Twin) -> Repaired {
    let code = t.assert_same_check();
    assert!(matches!(code, Some(2) | Some(3)), "nothing to repair");
    let before = qemu_raw_contents(&t.qemu, t.dir());
    let qemu_code = check_json(true, &t.qemu, true).0;
    let ours_code = check_json(false, &t.ours, true).0;
    let after = qemu_raw_contents(&t.ours, t.dir());
    assert_bytes_eq("guest contents after vdisk check -r all", &after, &before);
    Repaired {
        qemu_code,
        ours_code,
    }
}

// ---------------------------------------------------------------------------------------
// 10: repair keeps every reference qemu-img keeps
// ---------------------------------------------------------------------------------------

/// One crafted overlap: a description and the 8-byte value poked at an offset.
#[derive(Debug)]
struct Overlap {
    what: &'static str,
    make: fn(&Path),
    at: u64,
    value: u64,
}

#[track_caller]
fn assert_repair_keeps_everything_qemu_keeps(o: &Overlap) {
    let t = twin(o.make, &[(o.at, o.value)]);
    let r = check_and_repair(&t);
    assert_eq!(r.qemu_code, Some(0), "qemu-img repairs {}", o.what);
    assert_eq!(r.ours_code, Some(0), "vdisk repairs {}", o.what);
    assert_qemu_check_clean(&t.ours);
    assert_bytes_eq(
        "guest contents after the two repairs",
        &qemu_raw_contents(&t.ours, t.dir()),
        &qemu_raw_contents(&t.qemu, t.dir()),
    );
}

#[test]
fn check_all_rebuilds_the_refcounts_and_keeps_the_data_cluster_a_refcount_table_entry_points_at() {
    assert_repair_keeps_everything_qemu_keeps(&Overlap {
        what: "refcount table entry 1 → guest cluster 0's data",
        make: small_image,
        at: small::REFCOUNT_TABLE + 8,
        value: small::DATA0,
    });
}

#[test]
fn check_all_rebuilds_the_refcounts_and_keeps_the_l2_table_a_refcount_table_entry_points_at() {
    assert_repair_keeps_everything_qemu_keeps(&Overlap {
        what: "refcount table entry 1 → the L2 table",
        make: small_image,
        at: small::REFCOUNT_TABLE + 8,
        value: small::L2,
    });
}

#[test]
fn check_all_keeps_guest_data_and_l2_tables_that_lie_in_other_metadata_as_qemu_does() {
    const COPIED: u64 = 1 << 63;
    let cases = [
        Overlap {
            what: "refcount table entry 0 → the L2 table",
            make: two_table_image,
            at: two::REFCOUNT_TABLE,
            value: two::L2,
        },
        Overlap {
            what: "L2 entry 1 → the L1 table",
            make: small_image,
            at: small::L2 + 8,
            value: COPIED | small::L1,
        },
        Overlap {
            what: "L2 entry 1 → the refcount table",
            make: small_image,
            at: small::L2 + 8,
            value: COPIED | small::REFCOUNT_TABLE,
        },
        Overlap {
            what: "L2 entry 1 → the refcount block",
            make: small_image,
            at: small::L2 + 8,
            value: COPIED | small::REFCOUNT_BLOCK,
        },
        Overlap {
            what: "L1 entry 1 → the refcount table (read as an L2 table)",
            make: two_table_image,
            at: two::L1 + 8,
            value: COPIED | two::REFCOUNT_TABLE,
        },
    ];
    run_cases(
        "overlapping references",
        &cases,
        assert_repair_keeps_everything_qemu_keeps,
    );
}

#[test]
fn check_all_does_not_rewrite_an_l2_table_that_is_also_guest_data() {
    // A 1 GiB image with 64 KiB clusters: L1 entry 1 points at guest cluster 0's data
    // (0x11 bytes). Read as an L2 table every entry is broken, and 0x1111111111111111 is
    // an unaligned preallocated zero cluster, which QEMU's repair rewrites as a zero
    // entry: that overwrites guest cluster 0. vdisk leaves a cluster with two uses alone
    // and reports the image still corrupt. (With 4 KiB clusters the entries are aligned,
    // qemu-img rewrites nothing either, and both exit 2.)
    fn make(p: &Path) {
        qemu_img_ok(&["create", "-q", "-f", "qcow2", s(p), "1G"]);
        qemu_io_ok(&[
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0x22 512M 64k",
            s(p),
        ]);
    }
    let t = twin(make, &[(0x30008, (1 << 63) | small::DATA0)]);
    assert_eq!(t.assert_same_check(), Some(2));
    assert_eq!(check_json(true, &t.qemu, true).0, Some(0));
    assert_eq!(check_json(false, &t.ours, true).0, Some(2));
    assert_eq!(check_json(true, &t.ours, false).0, Some(2));
    qemu_io_ok(&["-c", "read -P 0x11 0 64k", s(&t.ours)]);
    let out = qemu_io(["-c", "read -P 0x11 0 64k", s(&t.qemu)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"),
        "qemu-img's repair no longer overwrites guest cluster 0: vdisk may repair this case too"
    );
}

#[test]
fn check_all_leaves_an_l1_table_that_is_its_own_l2_table_unchanged() {
    // QEMU's repair stops with an I/O error (its overlap check); vdisk must not change a
    // guest byte either: the L1 table is also read as guest data.
    let t = twin(two_table_image, &[(two::L1 + 8, (1 << 63) | two::L1)]);
    let r = check_and_repair(&t);
    assert_eq!(r.qemu_code, Some(1));
    assert_eq!(r.ours_code, Some(2));
}

// ---------------------------------------------------------------------------------------
// 14: check is linear in broken L2 entries; an L1 entry with only COPIED is corruption
// ---------------------------------------------------------------------------------------

#[test]
fn check_counts_l2_tables_full_of_broken_entries_as_qemu_img_does_in_linear_time() {
    // 2 MiB clusters: an L2 table has 262144 entries. Three L1 entries point at guest data
    // clusters read as L2 tables: two of 0xff bytes (each entry a compressed descriptor
    // with COPIED set and data past the end of the file) and one whose entries all map
    // a COPIED cluster at 2 GiB, past the end (its refcount is looked up in the refcount
    // block for each entry). The walk was quadratic in broken entries (35 s for one 0xff
    // table), and the COPIED check read a whole 2 MiB refcount block per entry (43 s for
    // one table): either would take minutes here.
    let dir = tempdir();
    let img = path_in(&dir, "ff.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=2M",
        s(&img),
        "2T",
    ]);
    qemu_io_ok(&["-c", "write -P 0xff 0 6M", s(&img)]);
    let l1 = be64_at(&img, field::L1_TABLE_OFFSET.offset);
    let map = parse_json(
        "qemu-img map",
        &qemu_img_ok(&["map", "--output=json", s(&img)]),
    );
    let data = map[0]["offset"].as_u64().expect("guest data is mapped");
    let past_end = (1u64 << 63) | (1 << 31);
    let table: Vec<u8> = (0..262144).flat_map(|_| past_end.to_be_bytes()).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("open");
        f.write_all_at(&table, data + (4 << 20))
            .expect("writing the table");
    }
    for k in 0..3u64 {
        poke_u64(&img, l1 + 8 * (k + 1), (1 << 63) | (data + k * (2 << 20)));
    }
    let t = Twin {
        qemu: path_in(&dir, "q.qcow2"),
        ours: path_in(&dir, "v.qcow2"),
        dir,
    };
    std::fs::copy(&img, &t.qemu).expect("copy");
    std::fs::copy(&img, &t.ours).expect("copy");
    assert_eq!(t.assert_same_check(), Some(2));
    // The tables are guest data: vdisk's repair leaves them alone. qemu-img's clears the
    // COPIED flags of the third "table", which changes guest data at 4 MiB.
    // (Guest 0..6M is host data..data+6M.)
    let guest = |p: &Path| read(p)[data as usize..(data + (6 << 20)) as usize].to_vec();
    let before = guest(&t.ours);
    assert_eq!(check_json(true, &t.qemu, true).0, Some(2));
    assert_eq!(check_json(false, &t.ours, true).0, Some(2));
    assert_bytes_eq(
        "guest data after vdisk check -r all",
        &guest(&t.ours),
        &before,
    );
    assert_ne!(guest(&t.qemu), before);
}

#[test]
fn an_l1_entry_with_only_the_copied_flag_is_a_corruption_and_repair_clears_it() {
    // QEMU reads it as an L2 table at offset 0 (the header): cluster 0 gains a reference
    // and the header's bytes are counted as L2 entries. Readers see an unallocated range.
    let t = twin(two_table_image, &[(two::L1 + 8, 1 << 63)]);
    let r = check_and_repair(&t);
    // QEMU's own repair leaves the header's "entries" broken (with 64 KiB clusters it
    // even tries to rewrite the header and stops with an I/O error).
    assert_eq!(r.qemu_code, Some(2));
    assert_eq!(r.ours_code, Some(0));
    assert_qemu_check_clean(&t.ours);
}

// ---------------------------------------------------------------------------------------
// 13: one bad snapshot table entry, a truncated file or an L1 table past the end of the
// file is corruption for check (exit 2), not a reason to refuse the image
// ---------------------------------------------------------------------------------------

/// A 4 MiB image with two snapshots: `snap1` (guest 0 = 0x11, 192 KiB = 0x55), `snap2`
/// (guest 0 = 0x22, 128 KiB = 0x33), then the active disk gets 0x44 at 64 KiB.
fn snapshot_image(p: &Path) {
    small_image_empty(p);
    qemu_io_ok(&[
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "write -P 0x55 192k 64k",
        s(p),
    ]);
    qemu_img_ok(&["snapshot", "-c", "snap1", s(p)]);
    qemu_io_ok(&[
        "-c",
        "write -P 0x22 0 64k",
        "-c",
        "write -P 0x33 128k 64k",
        s(p),
    ]);
    qemu_img_ok(&["snapshot", "-c", "snap2", s(p)]);
    qemu_io_ok(&["-c", "write -P 0x44 64k 64k", s(p)]);
}

fn small_image_empty(p: &Path) {
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(p), "4M"]);
}

fn be64_at(p: &Path, at: usize) -> u64 {
    let b = read(p);
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Offset of the L1-offset field of the first snapshot table entry (snap1).
fn snap1_l1_field(p: &Path) -> u64 {
    be64_at(p, field::SNAPSHOTS_OFFSET.offset)
}

/// How the first snapshot's table entry is broken.
#[derive(Debug, Clone, Copy)]
enum BadSnapshot {
    /// Its L1 table offset is not cluster aligned (QEMU refuses to use the snapshot).
    Unaligned,
    /// Its L1 table lies past the end of the file (QEMU reads it as zeros).
    PastTheEnd,
}

fn bad_snapshot_twin(how: BadSnapshot) -> (Twin, u64) {
    let t = twin(snapshot_image, &[]);
    let field = snap1_l1_field(&t.qemu);
    let good = be64_at(&t.qemu, field as usize);
    let bad = match how {
        BadSnapshot::Unaligned => good + 0x200,
        BadSnapshot::PastTheEnd => 16 << 20,
    };
    for p in [&t.qemu, &t.ours] {
        poke_u64(p, field, bad);
    }
    (t, good)
}

/// Exit codes of qemu-img and of vdisk running `args` on fresh copies of the twin (the
/// image replaces an `IMG` argument, or comes last), and vdisk's stderr.
fn both(t: &Twin, args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    let dir = t.dir();
    let q = dir.join("op-qemu.qcow2");
    let v = dir.join("op-vdisk.qcow2");
    std::fs::copy(&t.qemu, &q).expect("copy");
    std::fs::copy(&t.ours, &v).expect("copy");
    let with = |p: &Path| {
        let img = p.display().to_string();
        let mut a: Vec<String> = args
            .iter()
            .map(|&x| {
                if x == "IMG" {
                    img.clone()
                } else {
                    x.to_string()
                }
            })
            .collect();
        if !args.contains(&"IMG") {
            a.push(img);
        }
        a
    };
    let qo = qemu_img(with(&q));
    let vo = vdisk(with(&v));
    (
        qo.status.code(),
        vo.status.code(),
        String::from_utf8_lossy(&vo.stderr).into_owned(),
    )
}

#[test]
fn an_image_with_a_bad_snapshot_entry_opens_converts_and_checks_as_with_qemu_img() {
    for how in [BadSnapshot::Unaligned, BadSnapshot::PastTheEnd] {
        let (t, _) = bad_snapshot_twin(how);
        assert_eq!(t.assert_same_check(), Some(2), "{how:?}");
        let (q, v, err) = both(&t, &["info"]);
        assert_eq!((q, v), (Some(0), Some(0)), "{how:?}: info: {err}");
        let (q, v, err) = both(&t, &["snapshot", "-l"]);
        assert_eq!((q, v), (Some(0), Some(0)), "{how:?}: snapshot -l: {err}");
        assert_bytes_eq(
            &format!("{how:?}: guest contents"),
            &vdisk_raw_contents(&t.ours, t.dir()),
            &qemu_raw_contents(&t.qemu, t.dir()),
        );
    }
}

#[test]
fn operations_that_need_a_broken_snapshot_fail_with_a_message_and_the_others_work() {
    for how in [BadSnapshot::Unaligned, BadSnapshot::PastTheEnd] {
        let (t, _) = bad_snapshot_twin(how);
        // Applying or deleting the broken snapshot, or downgrading (which rewrites every
        // L2 table) needs its L1 table: refused with a message naming it. qemu-img
        // refuses too when the offset is unaligned; past the end of the file it applies an
        // empty L1 table (the guest disk reads as zeros) or fails to free its clusters.
        for op in [
            &["snapshot", "-a", "snap1"][..],
            &["snapshot", "-d", "snap1"][..],
            &["amend", "-o", "compat=0.10"][..],
        ] {
            let (q, v, err) = both(&t, op);
            assert_eq!(v, Some(1), "{how:?}: vdisk {op:?}: {err}");
            assert!(err.contains("snapshot 1 (snap1)"), "{how:?} {op:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{how:?} {op:?}: {err}");
            if matches!(how, BadSnapshot::Unaligned) {
                assert_eq!(q, Some(1), "{how:?}: qemu-img {op:?}");
            }
        }
        // What does not need it works, and leaves only the broken entry to report.
        for op in [
            &["snapshot", "-a", "snap2"][..],
            &["snapshot", "-d", "snap2"][..],
            &["snapshot", "-c", "snap3"][..],
            &["resize", "IMG", "8M"][..],
        ] {
            let (q, v, err) = both(&t, op);
            assert_eq!((q, v), (Some(0), Some(0)), "{how:?}: {op:?}: {err}");
            let after = t.dir().join("op-vdisk.qcow2");
            let c = check_json(true, &after, false);
            assert_eq!(c.0, Some(2), "{how:?}: {op:?}: qemu-img check {:?}", c.1);
            assert_eq!(c.1["corruptions"], 1, "{how:?}: {op:?}: {:?}", c.1);
        }
        // Guest writes, including copy-on-write of clusters the snapshots share.
        let w = t.dir().join("w.qcow2");
        std::fs::copy(&t.ours, &w).expect("copy");
        let dev = Path::new(&w);
        vdisk_write(dev, 0x66, 0, 4096);
        vdisk_write(dev, 0x66, 192 << 10, 4096);
        vdisk_write(dev, 0x66, 1 << 20, 4096);
        qemu_io_ok(&["-c", "read -P 0x66 192k 4k", s(dev)]);
        assert_eq!(check_json(true, dev, false).1["corruptions"], 1, "{how:?}");
    }
}

/// Write `len` bytes of `byte` at `offset` of a qcow2 image through the vdisk library.
fn vdisk_write(p: &Path, byte: u8, offset: u64, len: usize) {
    use vdisk::qcow2::{OpenOptions, Qcow2};
    use vdisk::storage::{FileStorage, OpenOptions as FileOptions};
    use vdisk::BlockDevice;
    let st = FileStorage::open(
        p,
        FileOptions {
            write: true,
            unsafe_cache: false,
            force_share: false,
        },
    )
    .expect("opening the image");
    let mut q = Qcow2::open(st, OpenOptions::default()).expect("opening the qcow2 image");
    q.write_at(&vec![byte; len], offset).expect("writing");
    q.flush().expect("flushing");
}

#[test]
fn check_all_keeps_the_clusters_a_snapshot_with_an_unreadable_l1_table_may_use() {
    // qemu-img frees them as leaks, so the snapshot's data is lost even once its table
    // entry is mended; vdisk keeps them: mending the entry brings the snapshot back.
    for how in [BadSnapshot::Unaligned, BadSnapshot::PastTheEnd] {
        let (t, good) = bad_snapshot_twin(how);
        assert_eq!(check_json(true, &t.qemu, true).0, Some(2), "{how:?}");
        assert_eq!(check_json(false, &t.ours, true).0, Some(2), "{how:?}");
        for p in [&t.qemu, &t.ours] {
            poke_u64(p, snap1_l1_field(p), good);
        }
        assert_qemu_check_clean(&t.ours);
        assert_ne!(check_json(true, &t.qemu, false).0, Some(0), "{how:?}");
        qemu_img_ok(&["snapshot", "-a", "snap1", s(&t.ours)]);
        qemu_io_ok(&[
            "-c",
            "read -P 0x11 0 64k",
            "-c",
            "read -P 0x55 192k 64k",
            s(&t.ours),
        ]);
    }
}

#[test]
fn a_truncated_image_is_a_corruption_for_check_and_repair_keeps_what_is_left() {
    // Cut inside guest data, inside the L2 table, at the L1 table, inside the refcount
    // block, inside the refcount table, inside the header cluster.
    let cuts: [u64; 6] = [0x58000, 0x40064, 0x30000, 0x20000, 0x10008, 0x1000];
    run_cases("truncated images", &cuts, |&cut| {
        let t = twin(small_image, &[]);
        for p in [&t.qemu, &t.ours] {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("open");
            f.set_len(cut).expect("truncating");
        }
        let code = t.assert_same_check();
        assert!(matches!(code, Some(0) | Some(2)), "{code:?}");
        let before = qemu_raw_contents(&t.qemu, t.dir());
        assert_eq!(check_json(false, &t.ours, true).0, Some(0));
        assert_qemu_check_clean(&t.ours);
        assert_bytes_eq(
            "guest contents after vdisk check -r all",
            &qemu_raw_contents(&t.ours, t.dir()),
            &before,
        );
    });
}

#[test]
fn an_l1_table_past_the_end_of_the_file_is_a_corruption_for_check_and_repair_keeps_its_clusters() {
    let t = twin(
        small_image,
        &[(field::L1_TABLE_OFFSET.file_offset(), 0x80000)],
    );
    assert_eq!(t.assert_same_check(), Some(2));
    assert_eq!(check_json(true, &t.qemu, true).0, Some(2));
    assert_eq!(check_json(false, &t.ours, true).0, Some(2));
    // Moving the table back shows what each repair kept.
    for p in [&t.qemu, &t.ours] {
        poke_u64(p, field::L1_TABLE_OFFSET.file_offset(), small::L1);
    }
    assert_qemu_check_clean(&t.ours);
    qemu_io_ok(&[
        "-c",
        "read -P 0x11 0 64k",
        "-c",
        "read -P 0x22 64k 64k",
        s(&t.ours),
    ]);
    assert_ne!(check_json(true, &t.qemu, false).0, Some(0));
}

// ---------------------------------------------------------------------------------------
// 15a: the header's size field is rounded down to 512 bytes, as QEMU does
// ---------------------------------------------------------------------------------------

#[test]
fn a_virtual_size_that_is_not_a_multiple_of_512_is_rounded_down_as_qemu_does() {
    let t = twin(small_image, &[(field::SIZE.file_offset(), (4 << 20) - 100)]);
    let info = |json: String| parse_json("info", &json)["virtual-size"].clone();
    let q = info(qemu_img_ok(&["info", "--output=json", s(&t.qemu)]));
    let v = info(vdisk_ok(&["info", "--output=json", s(&t.ours)]));
    assert_eq!(v, q);
    assert_eq!(q, (4 << 20) - 512);
    assert_text_eq(
        "map",
        &vdisk_ok(&["map", "--output=json", s(&t.ours)]),
        &qemu_img_ok(&["map", "--output=json", s(&t.qemu)]),
    );
    assert_bytes_eq(
        "convert",
        &vdisk_raw_contents(&t.ours, t.dir()),
        &qemu_raw_contents(&t.qemu, t.dir()),
    );
    t.assert_same_check();
}

#[test]
fn a_header_extension_area_is_read_as_qemu_reads_it_for_every_header_length() {
    // header_length is the v3 header's own size: QEMU reads the extensions right after it,
    // and checks each one's length before its type (at 108 the "end marker" found there
    // has a huge length, so QEMU refuses the image).
    for len in [104u32, 105, 108, 112, 113, 120] {
        let t = twin(small_image, &[]);
        for p in [&t.qemu, &t.ours] {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("open");
            f.write_all_at(&len.to_be_bytes(), 100).expect("poke");
        }
        let (q, v, err) = both(&t, &["info"]);
        assert_eq!(v, q, "header_length {len}: {err}");
        if q == Some(0) {
            assert_bytes_eq(
                &format!("header_length {len}"),
                &vdisk_raw_contents(&t.ours, t.dir()),
                &qemu_raw_contents(&t.qemu, t.dir()),
            );
        }
    }
}
