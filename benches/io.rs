//! Criterion benchmarks of 4 KiB guest I/O through the qcow2 driver on a 64 MiB image in a
//! temporary directory: sequential and random reads, overwrites of allocated clusters, and
//! allocating writes into a fresh image (which include the metadata flush). The write
//! benchmarks run twice: on a plain image, and (`..._bitmap`) on one with an enabled
//! persistent dirty bitmap, whose cost is the difference.
//!
//! `cargo bench --bench io` runs them (about a minute); `cargo bench --bench io -- read`
//! runs a subset. Files use `cache=unsafe` semantics (no fdatasync) so the numbers measure
//! the driver rather than the disk's sync latency.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use vdisk::qcow2::bitmap::Op;
use vdisk::qcow2::{self, CreateOptions, Qcow2};
use vdisk::storage::FileStorage;
use vdisk::BlockDevice;

const IMAGE_SIZE: u64 = 64 << 20;
const BLOCK: usize = 4096;
const BLOCKS: u64 = IMAGE_SIZE / BLOCK as u64;

/// A new, empty 64 MiB qcow2 image (64 KiB clusters) at `path`.
fn new_image(path: &Path) -> Qcow2<FileStorage> {
    let mut storage = FileStorage::create(path).expect("creating the image file");
    storage.set_unsafe_cache(true);
    let opts = CreateOptions {
        size: IMAGE_SIZE,
        ..Default::default()
    };
    qcow2::create(storage, &opts).expect("creating the qcow2 image")
}

/// A 64 MiB qcow2 image at `path` with every cluster allocated and filled.
fn full_image(path: &Path) -> Qcow2<FileStorage> {
    let mut img = new_image(path);
    let mut chunk = vec![0u8; 1 << 20];
    StdRng::seed_from_u64(1).fill(&mut chunk[..]);
    for off in (0..IMAGE_SIZE).step_by(chunk.len()) {
        img.write_at(&chunk, off).expect("filling the image");
    }
    img.flush().expect("flushing the image");
    img
}

/// Block numbers in a fixed random order.
fn random_blocks(n: usize) -> Vec<u64> {
    let mut r = StdRng::seed_from_u64(42);
    (0..n).map(|_| r.gen_range(0..BLOCKS)).collect()
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut img = full_image(&dir.path().join("read.qcow2"));
    let order = random_blocks(1 << 16);
    let mut buf = vec![0u8; BLOCK];
    let mut g = c.benchmark_group("read_4k");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    let mut next = 0u64;
    g.bench_function("sequential", |b| {
        b.iter(|| {
            img.read_at(&mut buf, next * BLOCK as u64).unwrap();
            next = (next + 1) % BLOCKS;
            black_box(&buf);
        })
    });
    let mut i = 0usize;
    g.bench_function("random", |b| {
        b.iter(|| {
            img.read_at(&mut buf, order[i] * BLOCK as u64).unwrap();
            i = (i + 1) % order.len();
            black_box(&buf);
        })
    });
    g.finish();
}

/// Add an enabled persistent dirty bitmap (QEMU's default granularity) when `bitmap`.
fn with_bitmap(mut img: Qcow2<FileStorage>, bitmap: bool) -> Qcow2<FileStorage> {
    if bitmap {
        img.bitmap_ops("b0", &[Op::Add { granularity: None }])
            .expect("adding a bitmap");
    }
    img
}

fn overwrites(c: &mut Criterion) {
    overwrites_with(c, "overwrite_4k", false);
    overwrites_with(c, "overwrite_4k_bitmap", true);
}

fn overwrites_with(c: &mut Criterion, group: &str, bitmap: bool) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut img = with_bitmap(full_image(&dir.path().join("overwrite.qcow2")), bitmap);
    let order = random_blocks(1 << 16);
    let data = vec![0x5au8; BLOCK];
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(BLOCK as u64));
    let mut next = 0u64;
    g.bench_function("sequential", |b| {
        b.iter(|| {
            img.write_at(&data, next * BLOCK as u64).unwrap();
            next = (next + 1) % BLOCKS;
        })
    });
    let mut i = 0usize;
    g.bench_function("random", |b| {
        b.iter(|| {
            img.write_at(&data, order[i] * BLOCK as u64).unwrap();
            i = (i + 1) % order.len();
        })
    });
    g.finish();
    img.flush().unwrap();
}

/// Time `blocks` 4 KiB writes into a fresh image, in the given order, plus the final flush.
fn allocating_run(path: &Path, blocks: &[u64], bitmap: bool) -> Duration {
    let data = vec![0xa5u8; BLOCK];
    let mut img = with_bitmap(new_image(path), bitmap);
    let start = Instant::now();
    for &b in blocks {
        img.write_at(&data, b * BLOCK as u64).unwrap();
    }
    img.flush().unwrap();
    start.elapsed()
}

fn allocating_writes(c: &mut Criterion) {
    allocating_writes_with(c, "allocating_write_4k", false);
    allocating_writes_with(c, "allocating_write_4k_bitmap", true);
}

fn allocating_writes_with(c: &mut Criterion, group: &str, bitmap: bool) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("alloc.qcow2");
    // Each sample writes 16 MiB into a fresh image, so every 16th 4 KiB write allocates a
    // cluster and every 8192nd an L2 table.
    let per_sample = 4096usize;
    let sequential: Vec<u64> = (0..per_sample as u64).collect();
    let random = random_blocks(per_sample);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes((per_sample * BLOCK) as u64));
    g.sample_size(10);
    for (name, order) in [("sequential", &sequential), ("random", &random)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| allocating_run(&path, order, bitmap))
                    .sum()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = reads, overwrites, allocating_writes
}
criterion_main!(benches);
