//! Randomized test: thousands of random unaligned writes, zero-writes and discards through
//! the library against an in-memory model of the disk, with reopens and a small metadata
//! cache to force evictions; then a full comparison and `qemu-img check`.

mod common;

use common::crash::qemu_check;
use common::rng;
use std::sync::Arc;
use vdisk::qcow2::{self, CreateOptions, OpenOptions, Qcow2};
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

struct Case {
    cluster_size: u64,
    version: u32,
    refcount_bits: u32,
    size: u64,
    ops: usize,
    extended_l2: bool,
}

fn open(s: &Arc<MemStorage>) -> Qcow2<Arc<MemStorage>> {
    let opts = OpenOptions {
        read_only: false,
        l2_cache_bytes: 0, // the cache keeps its minimum: constant evictions
        refcount_cache_bytes: 0,
    };
    Qcow2::open(s.clone(), opts).expect("reopen")
}

fn run(case: &Case, seed: u64) {
    let storage = Arc::new(MemStorage::new());
    let opts = CreateOptions {
        size: case.size,
        cluster_size: case.cluster_size,
        version: case.version,
        refcount_bits: case.refcount_bits,
        extended_l2: case.extended_l2,
        ..Default::default()
    };
    drop(qcow2::create(storage.clone(), &opts).expect("create"));
    let mut img = open(&storage);
    let mut model = vec![0u8; case.size as usize];
    let mut rng = rng(seed);
    let cs = case.cluster_size;
    let max_len = cs * 3 + 17;
    for step in 0..case.ops {
        let off = rng.below(case.size);
        let len = (1 + rng.below(max_len)).min(case.size - off);
        match rng.below(10) {
            0..=5 => {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                img.write_at(&buf, off)
                    .unwrap_or_else(|e| panic!("step {step}: write: {e}"));
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            6 | 7 => {
                img.write_zeroes(off, len)
                    .unwrap_or_else(|e| panic!("step {step}: zero: {e}"));
                model[off as usize..(off + len) as usize].fill(0);
            }
            8 => {
                img.discard(off, len)
                    .unwrap_or_else(|e| panic!("step {step}: discard: {e}"));
                // Whole clusters inside the range read as zeros; the rest is unchanged.
                let a = off.next_multiple_of(cs);
                let end = off + len;
                let b = if end == case.size { end } else { end / cs * cs };
                if b > a {
                    model[a as usize..b as usize].fill(0);
                }
            }
            _ => {
                if rng.below(4) == 0 {
                    img.flush().expect("flush");
                    drop(img);
                    img = open(&storage);
                } else {
                    let mut buf = vec![0u8; len as usize];
                    img.read_at(&mut buf, off).expect("read");
                    assert!(
                        buf == model[off as usize..(off + len) as usize],
                        "step {step}: read at {off} len {len} differs from the model"
                    );
                }
            }
        }
    }
    img.flush().expect("flush");
    let mut all = vec![0u8; case.size as usize];
    img.read_at(&mut all, 0).expect("read all");
    assert!(all == model, "final contents differ from the model");
    drop(img);
    let check = qemu_check(&storage.to_vec());
    assert_eq!(check.code, 0, "qemu-img check: {}", check.output);
}

#[test]
fn random_io_matches_the_model_with_subclusters() {
    for (cluster_size, seed) in [(16384, 7), (65536, 8), (2 << 20, 9)] {
        run(
            &Case {
                cluster_size,
                version: 3,
                refcount_bits: 16,
                size: 8 << 20,
                ops: 2000,
                extended_l2: true,
            },
            seed,
        );
    }
}

#[test]
fn random_io_matches_the_model_with_64k_clusters_v3() {
    run(
        &Case {
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            size: 8 << 20,
            ops: 3000,
            extended_l2: false,
        },
        1,
    );
}

#[test]
fn random_io_matches_the_model_with_4k_clusters_v2() {
    run(
        &Case {
            cluster_size: 4096,
            version: 2,
            refcount_bits: 16,
            size: 4 << 20,
            ops: 3000,
            extended_l2: false,
        },
        2,
    );
}

#[test]
fn random_io_matches_the_model_with_512_byte_clusters_and_64_bit_refcounts() {
    run(
        &Case {
            cluster_size: 512,
            version: 3,
            refcount_bits: 64,
            size: 1 << 20,
            ops: 3000,
            extended_l2: false,
        },
        3,
    );
}

#[test]
fn random_io_matches_the_model_with_1_bit_refcounts() {
    run(
        &Case {
            cluster_size: 4096,
            version: 3,
            refcount_bits: 1,
            size: 4 << 20,
            ops: 2000,
            extended_l2: false,
        },
        4,
    );
}

#[test]
fn random_io_matches_the_model_with_2m_clusters() {
    run(
        &Case {
            cluster_size: 2 << 20,
            version: 3,
            refcount_bits: 8,
            size: 16 << 20,
            ops: 300,
            extended_l2: false,
        },
        5,
    );
}

#[test]
fn filling_an_image_grows_the_refcount_table_and_stays_consistent() {
    // 512-byte clusters with 64-bit refcounts: one refcount block covers 32 KiB and the
    // first refcount table 2 MiB, so filling 6 MiB grows the table more than once.
    let storage = Arc::new(MemStorage::new());
    let opts = CreateOptions {
        size: 6 << 20,
        cluster_size: 512,
        refcount_bits: 64,
        ..Default::default()
    };
    drop(qcow2::create(storage.clone(), &opts).expect("create"));
    let mut img = open(&storage);
    let first_table = img.header().refcount_table_offset;
    let mut rng = rng(7);
    let mut data = vec![0u8; 6 << 20];
    rng.fill(&mut data);
    for (i, chunk) in data.chunks(12345).enumerate() {
        img.write_at(chunk, (i * 12345) as u64).expect("write");
    }
    img.flush().expect("flush");
    assert_ne!(
        img.header().refcount_table_offset,
        first_table,
        "the refcount table moved"
    );
    drop(img);
    let mut img = open(&storage);
    let mut back = vec![0u8; 6 << 20];
    img.read_at(&mut back, 0).expect("read");
    assert!(back == data);
    drop(img);
    let check = qemu_check(&storage.to_vec());
    assert_eq!(check.code, 0, "qemu-img check: {}", check.output);
}

/// Regression: with 1 KiB clusters and 64-bit refcounts a refcount block covers exactly one
/// L2 table's worth of clusters; large writes used to loop forever creating refcount blocks.
#[test]
fn large_writes_with_1k_clusters_and_64_bit_refcounts_stay_compact() {
    let storage = Arc::new(MemStorage::new());
    let opts = CreateOptions {
        size: 24 << 20,
        cluster_size: 1024,
        refcount_bits: 64,
        ..Default::default()
    };
    drop(qcow2::create(storage.clone(), &opts).expect("create"));
    let mut img = open(&storage);
    let mut data = vec![0u8; 20 << 20];
    rng(9).fill(&mut data);
    img.write_at(&data, 0).expect("write");
    img.flush().expect("flush");
    drop(img);
    let len = storage.to_vec().len() as u64;
    assert!(
        len < (21 << 20),
        "image grew to {len} bytes for 20 MiB of data"
    );
    let check = qemu_check(&storage.to_vec());
    assert_eq!(check.code, 0, "qemu-img check: {}", check.output);
}
