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
fn check_counts_several_l2_tables_of_0xff_as_qemu_img_does_in_linear_time() {
    // 2 MiB clusters: an L2 table has 262144 entries. Four L1 entries point at clusters
    // of 0xff bytes (guest data): over a million broken entries, each a compressed
    // descriptor with COPIED set and data past the end of the file. A walk that is
    // quadratic in broken entries takes hours here (it took 35 s for one table).
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
    qemu_io_ok(&["-c", "write -P 0xff 0 8M", s(&img)]);
    let l1 = {
        let h = read(&img);
        u64::from_be_bytes(h[40..48].try_into().expect("8 bytes"))
    };
    let map = parse_json(
        "qemu-img map",
        &qemu_img_ok(&["map", "--output=json", s(&img)]),
    );
    let data = map[0]["offset"].as_u64().expect("guest data is mapped");
    let t = Twin {
        qemu: path_in(&dir, "q.qcow2"),
        ours: path_in(&dir, "v.qcow2"),
        dir,
    };
    std::fs::copy(&img, &t.qemu).expect("copy");
    for k in 1..4u64 {
        poke_u64(
            &t.qemu,
            l1 + 8 * k,
            (1 << 63) | (data + (k - 1) * (2 << 20)),
        );
    }
    std::fs::copy(&t.qemu, &t.ours).expect("copy");
    assert_eq!(t.assert_same_check(), Some(2));
    let q = check_json(true, &t.qemu, true);
    let v = check_json(false, &t.ours, true);
    assert_eq!(v, q, "check -r all: vdisk vs qemu-img");
    // The 0xff clusters are guest data: repair left them alone.
    qemu_io_ok(&["-c", "read -P 0xff 0 8M", s(&t.ours)]);
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
