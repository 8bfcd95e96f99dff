//! Crash test: a workload of allocating writes, zero writes (plain, and qemu-style
//! `zero_range` keeping or releasing storage) and discards runs on the
//! fault-injecting storage, cut after every possible write and flush. Each durable image
//! must open, read back every byte acknowledged by a completed flush (bytes written after
//! it may read old or new), and pass `qemu-img check` without corruption (leaks allowed).

mod common;

use common::crash::{every_cut, qemu_check};
use common::rng;
use std::sync::Arc;
use vdisk::qcow2::{self, CreateOptions, OpenOptions, Qcow2};
use vdisk::storage::{FaultStorage, MemStorage};
use vdisk::BlockDevice;

enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    /// `zero_range` with `may_unmap`.
    ZeroRange(u64, u64, bool),
    Discard(u64, u64),
}

/// Rounds of non-overlapping operations; the image is flushed after each round.
fn workload(size: u64, cs: u64, seed: u64) -> Vec<Vec<Op>> {
    let mut rng = rng(seed);
    let mut rounds = Vec::new();
    for _ in 0..12 {
        let mut ops = Vec::new();
        // Split the disk into 8 stripes and touch a few, so ops in a round never overlap.
        let stripe = size / 8;
        for s in 0..8 {
            if rng.below(3) == 0 {
                continue;
            }
            let base = s * stripe;
            let off = base + rng.below(stripe / 2);
            let len = (1 + rng.below(cs * 3)).min(base + stripe - off);
            ops.push(match rng.below(8) {
                0 => Op::Zero(off, len),
                1 => Op::Discard(off, len),
                2 => Op::ZeroRange(off, len, false),
                3 => Op::ZeroRange(off, len, true),
                _ => {
                    let mut d = vec![0u8; len as usize];
                    rng.fill(&mut d);
                    Op::Write(off, d)
                }
            });
        }
        rounds.push(ops);
    }
    rounds
}

fn apply_model(model: &mut [u8], op: &Op, cs: u64) {
    match op {
        Op::Write(off, d) => model[*off as usize..*off as usize + d.len()].copy_from_slice(d),
        Op::Zero(off, len) | Op::ZeroRange(off, len, _) => {
            model[*off as usize..(*off + *len) as usize].fill(0)
        }
        Op::Discard(off, len) => {
            let a = off.next_multiple_of(cs);
            let b = (off + len) / cs * cs;
            if b > a {
                model[a as usize..b as usize].fill(0);
            }
        }
    }
}

/// Run the workload; returns how many rounds completed their flush.
fn run(storage: Arc<FaultStorage>, rounds: &[Vec<Op>]) -> usize {
    let Ok(mut img) = Qcow2::open(storage, OpenOptions::default()) else {
        return 0;
    };
    for (i, ops) in rounds.iter().enumerate() {
        for op in ops {
            let r = match op {
                Op::Write(off, d) => img.write_at(d, *off),
                Op::Zero(off, len) => img.write_zeroes(*off, *len),
                Op::ZeroRange(off, len, unmap) => img.zero_range(*off, *len, *unmap),
                Op::Discard(off, len) => img.discard(*off, *len),
            };
            if r.is_err() {
                return i;
            }
        }
        if img.flush().is_err() {
            return i;
        }
    }
    rounds.len()
}

fn crash_at_every_cut(opts: CreateOptions, seed: u64) -> u64 {
    let base = Arc::new(MemStorage::new());
    drop(qcow2::create(base.clone(), &opts).expect("create"));
    let initial = base.to_vec();
    let cs = opts.cluster_size;
    let rounds = workload(opts.size, cs, seed);
    let mut models = vec![vec![0u8; opts.size as usize]];
    for ops in &rounds {
        let mut m = models.last().cloned().unwrap_or_default();
        for op in ops {
            apply_model(&mut m, op, cs);
        }
        models.push(m);
    }
    every_cut(
        "allocating writes",
        &[initial],
        |s| run(s[0].clone(), &rounds),
        |c, done| {
            let cut = c.cut;
            if c.uncut {
                assert_eq!(done, rounds.len(), "the uncut run did not finish");
            }
            let durable = c.durable(0);
            let ro = OpenOptions {
                read_only: true,
                ..Default::default()
            };
            let mut img = Qcow2::open(Arc::new(MemStorage::from_vec(durable.clone())), ro)
                .unwrap_or_else(|e| panic!("cut {cut}: image does not open: {e}"));
            let mut back = vec![0u8; opts.size as usize];
            img.read_at(&mut back, 0)
                .unwrap_or_else(|e| panic!("cut {cut}: read: {e}"));
            let old = &models[done];
            let new = &models[(done + 1).min(rounds.len())];
            for (i, &b) in back.iter().enumerate() {
                assert!(
                    b == old[i] || b == new[i],
                    "cut {cut} (after {done} flushed rounds): byte {i} is {b:#x}, expected {:#x} or {:#x}",
                    old[i],
                    new[i]
                );
            }
            let check = qemu_check(&durable);
            assert!(
                check.is_consistent(),
                "cut {cut}: qemu-img check found corruption: {}",
                check.output
            );
        },
    )
}

#[test]
fn a_power_cut_at_any_write_of_allocating_writes_loses_no_flushed_data() {
    let opts = CreateOptions {
        size: 2 << 20,
        cluster_size: 4096,
        ..Default::default()
    };
    let cuts = crash_at_every_cut(opts, 11);
    assert!(cuts > 50, "workload too small: {cuts} cut points");
}

#[test]
fn a_power_cut_while_refcount_structures_grow_loses_no_flushed_data() {
    // 512-byte clusters and 64-bit refcounts: new refcount blocks and table growth happen
    // inside the workload.
    let opts = CreateOptions {
        size: 2 << 20,
        cluster_size: 512,
        refcount_bits: 64,
        ..Default::default()
    };
    let cuts = crash_at_every_cut(opts, 12);
    assert!(cuts > 50, "workload too small: {cuts} cut points");
}

#[test]
fn a_power_cut_at_any_write_into_subclusters_loses_no_flushed_data() {
    // Extended L2 entries with 16 KiB clusters: most writes and zeroings cover parts of a
    // cluster, filling or zeroing single 512-byte subclusters in place or in new clusters.
    let opts = CreateOptions {
        size: 2 << 20,
        cluster_size: 16384,
        extended_l2: true,
        ..Default::default()
    };
    let cuts = crash_at_every_cut(opts, 14);
    assert!(cuts > 50, "workload too small: {cuts} cut points");
    eprintln!("subcluster writes: {cuts} cut points");
}

#[test]
fn a_power_cut_in_a_version_2_image_loses_no_flushed_data() {
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: 1024,
        version: 2,
        ..Default::default()
    };
    crash_at_every_cut(opts, 13);
}
