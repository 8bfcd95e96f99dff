//! Hostile qcow2 images: each case pokes one field of a valid small image (made by
//! qemu-img) and requires that opening it fails cleanly.
//!
//! * In-process, `Qcow2::open` must return `Err` (read-only and read-write), never panic.
//! * Through the binary, `vdisk info` must exit with status 1 (not a signal) and print one
//!   line on stderr, while its address space is capped at 256 MiB, so a header that makes
//!   the driver size a buffer from an unchecked field shows up as a failure here.
//!
//! A seeded mutation pass at the end flips bytes all over the header and metadata and
//! requires only that nothing panics.

mod common;

use common::*;
use rand::Rng;
use std::path::{Path, PathBuf};
use vdisk::qcow2::header::field;
use vdisk::qcow2::{self, Qcow2};
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

/// Address-space cap for `vdisk info` on hostile images.
const MEMORY_LIMIT: u64 = 256 << 20;

// Layout of the base image (`qemu-img create -o cluster_size=64k`, 4 MiB, some data), as
// qemu-img 10 lays it out: header in cluster 0, refcount table at 0x10000, first refcount
// block at 0x20000, L1 table at 0x30000. The tests check these before relying on them.
const CLUSTER: usize = 0x10000;
const REFCOUNT_TABLE: u64 = 0x10000;
const L1_TABLE: u64 = 0x30000;
/// Start of the first header extension (the feature name table) in a v3 header.
const FIRST_EXTENSION: usize = 112;

fn put_u32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn get_u32(img: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(img[at..at + 4].try_into().unwrap())
}

fn get_u64(img: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(img[at..at + 8].try_into().unwrap())
}

/// The valid image every case starts from: 4 MiB, 64 KiB clusters, compat 1.1, with data
/// in the first and last megabyte so that L2 tables exist.
fn base_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("base.qcow2");
    let p = path.to_str().unwrap();
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=64k",
        p,
        "4M",
    ]);
    qemu_io_ok(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5c 0 1M",
        "-c",
        "write -P 0x3a 3M 1M",
        p,
    ]);
    let img = read(&path);
    assert_eq!(get_u32(&img, field::CLUSTER_BITS.offset), 16);
    assert_eq!(
        get_u64(&img, field::REFCOUNT_TABLE_OFFSET.offset),
        REFCOUNT_TABLE
    );
    assert_eq!(get_u64(&img, field::L1_TABLE_OFFSET.offset), L1_TABLE);
    assert_eq!(
        get_u32(&img, field::HEADER_LENGTH.offset) as usize,
        FIRST_EXTENSION
    );
    assert_eq!(
        get_u32(&img, FIRST_EXTENSION),
        0x6803_f857,
        "feature name table"
    );
    // The base itself must open: every failure below is due to the poke alone.
    let mut q = Qcow2::open(MemStorage::from_vec(img.clone()), read_only())
        .expect("the unmodified base image opens");
    let mut buf = vec![0u8; 4096];
    q.read_at(&mut buf, 3 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0x3a));
    img
}

fn read_only() -> qcow2::OpenOptions {
    qcow2::OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

/// One hostile image: a name, the poke that makes it, and text the error must contain.
struct Case {
    name: &'static str,
    poke: fn(&mut Vec<u8>),
    error_contains: &'static str,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Rename the feature table's entry for incompatible bit 4 to incompatible bit 20,
/// "hostile test feature", and set bit 20.
fn named_unknown_feature(img: &mut [u8]) {
    let table = FIRST_EXTENSION + 8;
    let len = get_u32(img, FIRST_EXTENSION + 4) as usize;
    let entry = (table..table + len)
        .step_by(48)
        .find(|&e| img[e] == 0 && img[e + 1] == 4)
        .expect("the feature table names incompatible bit 4");
    img[entry + 1] = 20;
    img[entry + 2..entry + 48].fill(0);
    let name = b"hostile test feature";
    img[entry + 2..entry + 2 + name.len()].copy_from_slice(name);
    let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 20;
    put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "file truncated to 10 bytes",
            poke: |img| img.truncate(10),
            error_contains: "",
        },
        Case {
            name: "file truncated to 100 bytes",
            poke: |img| img.truncate(100),
            error_contains: "",
        },
        Case {
            name: "header intact but the file ends before the L1 table",
            poke: |img| img.truncate(L1_TABLE as usize),
            error_contains: "L1",
        },
        Case {
            name: "file ends inside the refcount table",
            poke: |img| img.truncate(REFCOUNT_TABLE as usize + 8),
            error_contains: "",
        },
        Case {
            name: "wrong magic",
            poke: |img| img[field::MAGIC.offset + 3] = 0xfa,
            error_contains: "magic",
        },
        Case {
            name: "version 1",
            poke: |img| put_u32(img, field::VERSION.offset, 1),
            error_contains: "version",
        },
        Case {
            name: "version 4",
            poke: |img| put_u32(img, field::VERSION.offset, 4),
            error_contains: "version",
        },
        Case {
            name: "cluster_bits 8 (below 512-byte clusters)",
            poke: |img| put_u32(img, field::CLUSTER_BITS.offset, 8),
            error_contains: "cluster",
        },
        Case {
            name: "cluster_bits 22 (above 2 MiB clusters)",
            poke: |img| put_u32(img, field::CLUSTER_BITS.offset, 22),
            error_contains: "cluster",
        },
        Case {
            name: "cluster_bits 0xffffffff",
            poke: |img| put_u32(img, field::CLUSTER_BITS.offset, u32::MAX),
            error_contains: "cluster",
        },
        Case {
            name: "v3 header_length 100 (below 104)",
            poke: |img| put_u32(img, field::HEADER_LENGTH.offset, 100),
            error_contains: "header_length",
        },
        Case {
            name: "v3 header_length 0",
            poke: |img| put_u32(img, field::HEADER_LENGTH.offset, 0),
            error_contains: "header_length",
        },
        Case {
            name: "header_length larger than a cluster",
            poke: |img| put_u32(img, field::HEADER_LENGTH.offset, CLUSTER as u32 + 8),
            error_contains: "header_length",
        },
        Case {
            name: "l1_size 0x7fffffff",
            poke: |img| put_u32(img, field::L1_SIZE.offset, 0x7fff_ffff),
            error_contains: "L1",
        },
        Case {
            name: "l1_size 0xffffffff",
            poke: |img| put_u32(img, field::L1_SIZE.offset, u32::MAX),
            error_contains: "L1",
        },
        Case {
            name: "l1_size too small for the virtual size",
            poke: |img| put_u64(img, field::SIZE.offset, 1 << 40),
            error_contains: "L1",
        },
        Case {
            name: "l1_size 0 with a non-zero virtual size",
            poke: |img| put_u32(img, field::L1_SIZE.offset, 0),
            error_contains: "L1",
        },
        Case {
            name: "L1 table past the end of the file",
            poke: |img| put_u64(img, field::L1_TABLE_OFFSET.offset, 0x100_0000),
            error_contains: "L1",
        },
        Case {
            name: "L1 table offset near 2^64",
            poke: |img| put_u64(img, field::L1_TABLE_OFFSET.offset, u64::MAX - 0xffff),
            error_contains: "L1",
        },
        Case {
            name: "unaligned L1 table offset",
            poke: |img| put_u64(img, field::L1_TABLE_OFFSET.offset, L1_TABLE - 0x200),
            error_contains: "L1",
        },
        Case {
            name: "L1 entry pointing at an unaligned L2 table",
            poke: |img| {
                let at = L1_TABLE as usize;
                let e = get_u64(img, at);
                assert_ne!(e, 0, "the base image has an L2 table for L1 entry 0");
                put_u64(img, at, e + 0x200);
            },
            error_contains: "L1",
        },
        Case {
            name: "refcount table past the end of the file",
            poke: |img| put_u64(img, field::REFCOUNT_TABLE_OFFSET.offset, 0x100_0000),
            error_contains: "refcount table",
        },
        Case {
            name: "refcount_table_clusters 0xffffffff",
            poke: |img| put_u32(img, field::REFCOUNT_TABLE_CLUSTERS.offset, u32::MAX),
            error_contains: "refcount table",
        },
        Case {
            name: "refcount_table_clusters just over the 8 MiB limit",
            poke: |img| {
                put_u32(
                    img,
                    field::REFCOUNT_TABLE_CLUSTERS.offset,
                    (8 << 20) / CLUSTER as u32 + 1,
                )
            },
            error_contains: "refcount table",
        },
        Case {
            name: "refcount_table_clusters 0",
            poke: |img| put_u32(img, field::REFCOUNT_TABLE_CLUSTERS.offset, 0),
            error_contains: "refcount table",
        },
        Case {
            name: "unaligned refcount table offset",
            poke: |img| {
                put_u64(
                    img,
                    field::REFCOUNT_TABLE_OFFSET.offset,
                    REFCOUNT_TABLE + 0x200,
                )
            },
            error_contains: "refcount table",
        },
        Case {
            name: "refcount table entry not cluster aligned",
            poke: |img| {
                let at = REFCOUNT_TABLE as usize;
                let e = get_u64(img, at);
                put_u64(img, at, e + 0x200);
            },
            error_contains: "refcount table",
        },
        Case {
            name: "refcount_order 7",
            poke: |img| put_u32(img, field::REFCOUNT_ORDER.offset, 7),
            error_contains: "refcount_order",
        },
        Case {
            name: "unknown incompatible bit without a name",
            poke: |img| {
                let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 20;
                put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
            },
            error_contains: "20",
        },
        Case {
            name: "unknown incompatible bit named in the feature name table",
            poke: |img| named_unknown_feature(img),
            error_contains: "hostile test feature",
        },
        Case {
            name: "unknown incompatible bit 63",
            poke: |img| {
                let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 63;
                put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
            },
            error_contains: "63",
        },
        Case {
            name: "external data file bit",
            poke: |img| {
                let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 2;
                put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
            },
            error_contains: "external data",
        },
        Case {
            // (The bit alone is no longer hostile: vdisk reads extended L2 entries.)
            name: "extended L2 bit with 8 KiB clusters",
            poke: |img| {
                let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 4;
                put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
                put_u32(img, field::CLUSTER_BITS.offset, 13);
            },
            error_contains: "extended L2",
        },
        Case {
            name: "unknown compression type 9",
            poke: |img| {
                img[field::COMPRESSION_TYPE.offset] = 9;
                let f = get_u64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 3;
                put_u64(img, field::INCOMPATIBLE_FEATURES.offset, f);
            },
            error_contains: "compression",
        },
        Case {
            name: "compression type set without its feature bit",
            poke: |img| img[field::COMPRESSION_TYPE.offset] = 1,
            error_contains: "compression",
        },
        Case {
            name: "virtual size near 2^64",
            poke: |img| put_u64(img, field::SIZE.offset, u64::MAX - 511),
            error_contains: "size",
        },
        Case {
            name: "virtual size 2^63",
            poke: |img| put_u64(img, field::SIZE.offset, 1 << 63),
            error_contains: "size",
        },
        Case {
            name: "backing file name longer than 1023 bytes",
            poke: |img| {
                put_u64(img, field::BACKING_FILE_OFFSET.offset, 0x400);
                put_u32(img, field::BACKING_FILE_SIZE.offset, 1024);
                img[0x400..0x800].fill(b'a');
            },
            error_contains: "backing",
        },
        Case {
            name: "backing file name running past the first cluster",
            poke: |img| {
                put_u64(img, field::BACKING_FILE_OFFSET.offset, CLUSTER as u64 - 16);
                put_u32(img, field::BACKING_FILE_SIZE.offset, 100);
            },
            error_contains: "backing",
        },
        Case {
            name: "backing file offset near 2^64",
            poke: |img| {
                put_u64(img, field::BACKING_FILE_OFFSET.offset, u64::MAX - 10);
                put_u32(img, field::BACKING_FILE_SIZE.offset, 100);
            },
            error_contains: "backing",
        },
        Case {
            name: "header extension length past the cluster",
            poke: |img| put_u32(img, FIRST_EXTENSION + 4, CLUSTER as u32),
            error_contains: "extension",
        },
        Case {
            name: "header extension length 0xffffffff",
            poke: |img| put_u32(img, FIRST_EXTENSION + 4, u32::MAX),
            error_contains: "extension",
        },
        Case {
            name: "unknown encryption method (crypt_method 3)",
            poke: |img| put_u32(img, field::CRYPT_METHOD.offset, 3),
            error_contains: "encrypt",
        },
        Case {
            name: "LUKS-encrypted (crypt_method 2) without its header extension",
            poke: |img| put_u32(img, field::CRYPT_METHOD.offset, 2),
            error_contains: "encrypt",
        },
        Case {
            name: "nb_snapshots 65537 (over 65536)",
            poke: |img| put_u32(img, field::NB_SNAPSHOTS.offset, 65_537),
            error_contains: "snapshot",
        },
        Case {
            name: "nb_snapshots 0xffffffff",
            poke: |img| put_u32(img, field::NB_SNAPSHOTS.offset, u32::MAX),
            error_contains: "snapshot",
        },
        Case {
            name: "snapshot table offset not cluster aligned",
            poke: |img| {
                put_u32(img, field::NB_SNAPSHOTS.offset, 1);
                put_u64(img, field::SNAPSHOTS_OFFSET.offset, 0x200);
            },
            error_contains: "snapshot",
        },
    ]
}

fn hostile_image(base: &[u8], case: &Case) -> Vec<u8> {
    let mut img = base.to_vec();
    (case.poke)(&mut img);
    assert_ne!(img, base, "the poke changed nothing");
    img
}

#[test]
fn every_hostile_header_is_an_error_from_qcow2_open_never_a_panic() {
    let dir = tempdir();
    let base = base_image(dir.path());
    run_cases("Qcow2::open on hostile images", &cases(), |case| {
        let img = hostile_image(&base, case);
        for opts in [read_only(), qcow2::OpenOptions::default()] {
            match Qcow2::open(MemStorage::from_vec(img.clone()), opts) {
                Ok(_) => panic!("opened (read_only: {}) without an error", opts.read_only),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.to_lowercase()
                            .contains(&case.error_contains.to_lowercase()),
                        "error {msg:?} does not mention {:?}",
                        case.error_contains
                    );
                    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
                }
            }
        }
    });
}

fn write_case_file(dir: &Path, base: &[u8], case: &Case, index: usize) -> PathBuf {
    let path = dir.join(format!("hostile-{index:02}.qcow2"));
    std::fs::write(&path, hostile_image(base, case)).unwrap();
    path
}

#[test]
fn vdisk_info_fails_with_one_line_and_exit_1_on_every_hostile_header_within_256_mib() {
    let dir = tempdir();
    let base = base_image(dir.path());
    let cases: Vec<(usize, Case)> = cases().into_iter().enumerate().collect();
    run_cases("vdisk info on hostile images", &cases, |(i, case)| {
        let path = write_case_file(dir.path(), &base, case, *i);
        let out = common::run_program(
            "prlimit",
            [
                format!("--as={MEMORY_LIMIT}").as_ref(),
                vdisk_bin().as_ref(),
                "info".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                path.as_os_str(),
            ],
        );
        let what = format!("prlimit --as={MEMORY_LIMIT} vdisk info -f qcow2 ({case:?})");
        assert_eq!(out.status.code(), Some(1), "{}", describe(&what, &out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{}",
            describe(&what, &out)
        );
        assert!(stderr.starts_with("vdisk: "), "{}", describe(&what, &out));
        assert!(out.stdout.is_empty(), "{}", describe(&what, &out));
        // The file is not modified by a failed open.
        assert_eq!(read(&path), hostile_image(&base, case));
    });
}

#[test]
fn named_and_unnamed_unknown_features_are_reported_by_name_or_bit() {
    let dir = tempdir();
    let base = base_image(dir.path());
    let mut img = base.clone();
    named_unknown_feature(&mut img);
    let path = dir.path().join("named.qcow2");
    std::fs::write(&path, &img).unwrap();
    let out = vdisk(["info".as_ref(), path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hostile test feature"), "{stderr}");
    // QEMU names it the same way.
    let q = qemu_img(["info".as_ref(), path.as_os_str()]);
    assert!(!q.status.success());
    assert!(String::from_utf8_lossy(&q.stderr).contains("hostile test feature"));
}

/// Flip random bytes of the header cluster, the refcount structures, the L1 table and the
/// L2 tables; opening and reading must never panic (errors are fine).
#[test]
fn random_metadata_corruption_never_panics() {
    let dir = tempdir();
    let base = base_image(dir.path());
    let l2 = (get_u64(&base, L1_TABLE as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    let regions = [
        (0usize, 256usize),
        (REFCOUNT_TABLE as usize, 64),
        (0x20000, 256),
        (L1_TABLE as usize, 8),
        (l2, 512),
    ];
    let mut r = rng(0x5eed);
    let mut opened = 0;
    for round in 0..2000 {
        let mut img = base.clone();
        for _ in 0..r.gen_range(1..=4) {
            let (start, len) = regions[r.gen_range(0..regions.len())];
            let at = start + r.gen_range(0..len);
            img[at] ^= 1 << r.gen_range(0..8);
            if r.gen_bool(0.3) {
                img[at] = r.gen();
            }
        }
        let result = std::panic::catch_unwind(|| {
            let Ok(mut q) = Qcow2::open(MemStorage::from_vec(img.clone()), read_only()) else {
                return false;
            };
            let size = q.virtual_size();
            let mut buf = vec![0u8; 65536 + 512];
            for k in 0..16u64 {
                if size == 0 {
                    break;
                }
                let off = (k * 0x4_0000 + 512 * k) % size;
                let len = (buf.len() as u64).min(size - off) as usize;
                let _ = q.read_at(&mut buf[..len], off);
                let _ = q.block_status(off, size - off);
            }
            true
        });
        match result {
            Ok(true) => opened += 1,
            Ok(false) => {}
            Err(_) => panic!("round {round}: a corrupted image made vdisk panic"),
        }
    }
    // Some mutations hit bytes that do not matter: the pass must exercise reads, too.
    assert!(opened > 100, "only {opened} of 2000 mutated images opened");
}
