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

use common::hostile::{assert_one_line_failure, be32, be64, put_be32, put_be64, Poke};
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
    assert_eq!(be32(&img, field::CLUSTER_BITS.offset), 16);
    assert_eq!(
        be64(&img, field::REFCOUNT_TABLE_OFFSET.offset),
        REFCOUNT_TABLE
    );
    assert_eq!(be64(&img, field::L1_TABLE_OFFSET.offset), L1_TABLE);
    assert_eq!(
        be32(&img, field::HEADER_LENGTH.offset) as usize,
        FIRST_EXTENSION
    );
    assert_eq!(
        be32(&img, FIRST_EXTENSION),
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
    poke: Poke,
    error_contains: &'static str,
}

impl Case {
    fn new(
        name: &'static str,
        error_contains: &'static str,
        poke: impl Fn(&mut Vec<u8>) + 'static,
    ) -> Case {
        Case {
            name,
            poke: Box::new(poke),
            error_contains,
        }
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// One row of a table of pokes: the case's name, an offset or a value, and the text the
/// error must contain.
type Row<V> = (&'static str, usize, V, &'static str);

/// One case per row of `rows`, each applying `poke` to its offset and value.
fn table<V: Copy + 'static>(poke: fn(&mut Vec<u8>, usize, V), rows: &[Row<V>]) -> Vec<Case> {
    rows.iter()
        .map(|&(name, at, v, text)| Case::new(name, text, move |img| poke(img, at, v)))
        .collect()
}

/// Rename the feature table's entry for incompatible bit 4 to incompatible bit 20,
/// "hostile test feature", and set bit 20.
fn named_unknown_feature(img: &mut [u8]) {
    let table = FIRST_EXTENSION + 8;
    let len = be32(img, FIRST_EXTENSION + 4) as usize;
    let entry = (table..table + len)
        .step_by(48)
        .find(|&e| img[e] == 0 && img[e + 1] == 4)
        .expect("the feature table names incompatible bit 4");
    img[entry + 1] = 20;
    img[entry + 2..entry + 48].fill(0);
    let name = b"hostile test feature";
    img[entry + 2..entry + 2 + name.len()].copy_from_slice(name);
    let f = be64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << 20;
    put_be64(img, field::INCOMPATIBLE_FEATURES.offset, f);
}

/// Files cut short: (name, length kept, error text); the value column is unused.
#[rustfmt::skip]
const TRUNCATED: &[Row<()>] = &[
    ("file truncated to 10 bytes", 10, (), ""),
    ("file truncated to 100 bytes", 100, (), ""),
    ("header intact but the file ends before the L1 table", L1_TABLE as usize, (), "L1"),
    ("file ends inside the refcount table", REFCOUNT_TABLE as usize + 8, (), ""),
];

/// 32-bit header fields (and the first extension's length).
#[rustfmt::skip]
const HEADER_U32: &[Row<u32>] = &[
    ("version 1", field::VERSION.offset, 1, "version"),
    ("version 4", field::VERSION.offset, 4, "version"),
    ("cluster_bits 8 (below 512-byte clusters)", field::CLUSTER_BITS.offset, 8, "cluster"),
    ("cluster_bits 22 (above 2 MiB clusters)", field::CLUSTER_BITS.offset, 22, "cluster"),
    ("cluster_bits 0xffffffff", field::CLUSTER_BITS.offset, u32::MAX, "cluster"),
    ("v3 header_length 100 (below 104)", field::HEADER_LENGTH.offset, 100, "header_length"),
    ("v3 header_length 0", field::HEADER_LENGTH.offset, 0, "header_length"),
    ("header_length larger than a cluster", field::HEADER_LENGTH.offset, CLUSTER as u32 + 8,
        "header_length"),
    ("l1_size 0x7fffffff", field::L1_SIZE.offset, 0x7fff_ffff, "L1"),
    ("l1_size 0xffffffff", field::L1_SIZE.offset, u32::MAX, "L1"),
    ("l1_size 0 with a non-zero virtual size", field::L1_SIZE.offset, 0, "L1"),
    ("refcount_table_clusters 0xffffffff", field::REFCOUNT_TABLE_CLUSTERS.offset, u32::MAX,
        "refcount table"),
    ("refcount_table_clusters just over the 8 MiB limit", field::REFCOUNT_TABLE_CLUSTERS.offset,
        (8 << 20) / CLUSTER as u32 + 1, "refcount table"),
    ("refcount_table_clusters 0", field::REFCOUNT_TABLE_CLUSTERS.offset, 0, "refcount table"),
    ("refcount_order 7", field::REFCOUNT_ORDER.offset, 7, "refcount_order"),
    ("header extension length past the cluster", FIRST_EXTENSION + 4, CLUSTER as u32,
        "extension"),
    ("header extension length 0xffffffff", FIRST_EXTENSION + 4, u32::MAX, "extension"),
    ("unknown encryption method (crypt_method 3)", field::CRYPT_METHOD.offset, 3, "encrypt"),
    ("LUKS-encrypted (crypt_method 2) without its header extension", field::CRYPT_METHOD.offset,
        2, "encrypt"),
    ("nb_snapshots 65537 (over 65536)", field::NB_SNAPSHOTS.offset, 65_537, "snapshot"),
    ("nb_snapshots 0xffffffff", field::NB_SNAPSHOTS.offset, u32::MAX, "snapshot"),
];

/// 64-bit header fields.
#[rustfmt::skip]
const HEADER_U64: &[Row<u64>] = &[
    ("l1_size too small for the virtual size", field::SIZE.offset, 1 << 40, "L1"),
    ("L1 table past the end of the file", field::L1_TABLE_OFFSET.offset, 0x100_0000, "L1"),
    ("L1 table offset near 2^64", field::L1_TABLE_OFFSET.offset, u64::MAX - 0xffff, "L1"),
    ("unaligned L1 table offset", field::L1_TABLE_OFFSET.offset, L1_TABLE - 0x200, "L1"),
    ("refcount table past the end of the file", field::REFCOUNT_TABLE_OFFSET.offset, 0x100_0000,
        "refcount table"),
    ("unaligned refcount table offset", field::REFCOUNT_TABLE_OFFSET.offset,
        REFCOUNT_TABLE + 0x200, "refcount table"),
    ("virtual size near 2^64", field::SIZE.offset, u64::MAX - 511, "size"),
    ("virtual size 2^63", field::SIZE.offset, 1 << 63, "size"),
];

/// Incompatible feature bits set alone: (name, bit number, error text).
#[rustfmt::skip]
const INCOMPATIBLE_BITS: &[Row<()>] = &[
    ("unknown incompatible bit without a name", 20, (), "20"),
    ("unknown incompatible bit 63", 63, (), "63"),
    ("external data file bit", 2, (), "external data"),
];

/// Backing file names placed out of bounds: (name, offset, length, error text).
#[rustfmt::skip]
const BACKING: &[Row<u32>] = &[
    ("backing file name running past the first cluster", CLUSTER - 16, 100, "backing"),
    ("backing file offset near 2^64", usize::MAX - 10, 100, "backing"),
];

/// Set incompatible feature bit `bit`.
fn set_incompatible(img: &mut [u8], bit: usize) {
    let f = be64(img, field::INCOMPATIBLE_FEATURES.offset) | 1 << bit;
    put_be64(img, field::INCOMPATIBLE_FEATURES.offset, f);
}

/// Point the backing file name at `offset` and give it `len` bytes.
fn set_backing(img: &mut [u8], offset: u64, len: u32) {
    put_be64(img, field::BACKING_FILE_OFFSET.offset, offset);
    put_be32(img, field::BACKING_FILE_SIZE.offset, len);
}

fn cases() -> Vec<Case> {
    let mut all = table(|img, len, ()| img.truncate(len), TRUNCATED);
    all.extend(table(|img, at, v| put_be32(img, at, v), HEADER_U32));
    all.extend(table(|img, at, v| put_be64(img, at, v), HEADER_U64));
    all.extend(table(
        |img, bit, ()| set_incompatible(img, bit),
        INCOMPATIBLE_BITS,
    ));
    all.extend(table(
        |img, at, len| set_backing(img, at as u64, len),
        BACKING,
    ));
    all.extend(other_cases());
    all
}

/// The cases that are not one field set to one value.
fn other_cases() -> Vec<Case> {
    vec![
        Case::new("wrong magic", "not in qcow2 format", |img| {
            img[field::MAGIC.offset + 3] = 0xfa
        }),
        Case::new("L1 entry pointing at an unaligned L2 table", "L1", |img| {
            let at = L1_TABLE as usize;
            let e = be64(img, at);
            assert_ne!(e, 0, "the base image has an L2 table for L1 entry 0");
            put_be64(img, at, e + 0x200);
        }),
        Case::new(
            "refcount table entry not cluster aligned",
            "refcount table",
            |img| {
                let at = REFCOUNT_TABLE as usize;
                let e = be64(img, at);
                put_be64(img, at, e + 0x200);
            },
        ),
        Case::new(
            "unknown incompatible bit named in the feature name table",
            "hostile test feature",
            |img| named_unknown_feature(img),
        ),
        // (The bit alone is no longer hostile: vdisk reads extended L2 entries.)
        Case::new(
            "extended L2 bit with 8 KiB clusters",
            "extended L2",
            |img| {
                set_incompatible(img, 4);
                put_be32(img, field::CLUSTER_BITS.offset, 13);
            },
        ),
        Case::new("unknown compression type 9", "compression", |img| {
            img[field::COMPRESSION_TYPE.offset] = 9;
            set_incompatible(img, 3);
        }),
        Case::new(
            "compression type set without its feature bit",
            "compression",
            |img| img[field::COMPRESSION_TYPE.offset] = 1,
        ),
        Case::new(
            "backing file name longer than 1023 bytes",
            "backing",
            |img| {
                set_backing(img, 0x400, 1024);
                img[0x400..0x800].fill(b'a');
            },
        ),
        Case::new(
            "snapshot table offset not cluster aligned",
            "snapshot",
            |img| {
                put_be32(img, field::NB_SNAPSHOTS.offset, 1);
                put_be64(img, field::SNAPSHOTS_OFFSET.offset, 0x200);
            },
        ),
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
        assert_one_line_failure(&what, &out);
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
    let l2 = (be64(&base, L1_TABLE as usize) & 0x00ff_ffff_ffff_fe00) as usize;
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
