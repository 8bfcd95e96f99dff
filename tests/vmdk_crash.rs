//! Crash consistency of VMDK writes, with the shared cut-at-every-write loop: the image's
//! files (descriptor and extents) live on fault-injecting storages behind one power supply,
//! a workload of writes runs in flushed rounds, and at every cut point the files a reboot
//! finds must open, read every round that completed its flush, read each byte of the round
//! in flight as old or new, and pass `qemu-img check`.

mod common;

use common::crash::every_cut;
use common::{qemu_img, rng, tempdir};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk::storage::{FaultStorage, MemFiles, MemStorage, Namespace, Storage};
use vdisk::vmdk::{self, Subformat, VmdkCreateOptions, VmdkOpenOptions};
use vdisk::BlockDevice;

const SIZE: u64 = 6 << 20;
const GRAIN: u64 = 64 << 10;

/// A fresh image of `subformat` in memory: its file names and contents.
fn fresh(subformat: Subformat) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let ns = MemFiles::new();
    let opts = VmdkCreateOptions {
        subformat,
        ..Default::default()
    };
    let mut img = vmdk::create_in(&ns, Path::new("disk.vmdk"), SIZE, &opts).expect("create");
    img.close().expect("close");
    drop(img);
    let names = ns.names();
    let bytes = names
        .iter()
        .map(|n| {
            let s = ns.get(n).expect("created file");
            let mut v = vec![0u8; s.len().expect("len") as usize];
            s.read_at(&mut v, 0).expect("read");
            v
        })
        .collect();
    (names, bytes)
}

/// Rounds of writes: whole grains, partial grains, writes across a grain boundary.
fn workload(seed: u64) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut r = rng(seed);
    (0..4)
        .map(|_| {
            (0..3)
                .map(|_| {
                    let off = r.below(SIZE - 2 * GRAIN);
                    let len = 1 + r.below(GRAIN + GRAIN / 2);
                    let mut d = vec![0u8; len as usize];
                    r.fill(&mut d);
                    (off, d)
                })
                .collect()
        })
        .collect()
}

fn open(ns: &dyn Namespace, read_only: bool) -> vdisk::Result<vmdk::Vmdk> {
    vmdk::open_in(
        ns,
        Path::new("disk.vmdk"),
        &VmdkOpenOptions {
            read_only,
            ..Default::default()
        },
    )
}

/// Run the workload; returns how many rounds completed their flush.
fn run(names: &[PathBuf], storages: &[Arc<FaultStorage>], rounds: &[Vec<(u64, Vec<u8>)>]) -> usize {
    let ns = MemFiles::new();
    for (n, s) in names.iter().zip(storages) {
        ns.insert(n.clone(), s.clone() as Arc<dyn Storage>);
    }
    let Ok(mut img) = open(&ns, false) else {
        return 0;
    };
    for (i, round) in rounds.iter().enumerate() {
        for (off, d) in round {
            if img.write_at(d, *off).is_err() {
                return i;
            }
        }
        if img.flush().is_err() {
            return i;
        }
    }
    rounds.len()
}

fn crash_at_every_cut(subformat: Subformat, seed: u64) -> u64 {
    let (names, initial) = fresh(subformat);
    let rounds = workload(seed);
    let mut models = vec![vec![0u8; SIZE as usize]];
    for round in &rounds {
        let mut m = models.last().cloned().unwrap_or_default();
        for (off, d) in round {
            m[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        models.push(m);
    }
    let what = format!("{subformat:?} writes");
    let dir = tempdir();
    every_cut(
        &what,
        &initial,
        |storages| run(&names, storages, &rounds),
        |c, done| {
            let cut = c.cut;
            if c.uncut {
                assert_eq!(done, rounds.len(), "{what}: the uncut run did not finish");
            }
            let ns = MemFiles::new();
            for (i, n) in names.iter().enumerate() {
                let bytes = c.durable(i);
                std::fs::write(dir.path().join(n), &bytes).expect("writing the durable file");
                ns.insert(n.clone(), Arc::new(MemStorage::from_vec(bytes)));
            }
            let mut img = open(&ns, true)
                .unwrap_or_else(|e| panic!("{what}: cut {cut}: image does not open: {e}"));
            let mut back = vec![0u8; SIZE as usize];
            img.read_at(&mut back, 0)
                .unwrap_or_else(|e| panic!("{what}: cut {cut}: read: {e}"));
            let old = &models[done];
            let new = &models[(done + 1).min(rounds.len())];
            if let Some(i) = (0..back.len()).find(|&i| back[i] != old[i] && back[i] != new[i]) {
                panic!(
                    "{what}: cut {cut} (after {done} flushed rounds): byte {i:#x} is {:#x}, expected {:#x} or {:#x}",
                    back[i], old[i], new[i]
                );
            }
            let out = qemu_img([
                "check",
                "-f",
                "vmdk",
                dir.path().join("disk.vmdk").to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "{what}: cut {cut}: qemu-img check: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        },
    )
}

#[test]
fn a_power_cut_at_any_write_of_a_monolithic_sparse_vmdk_loses_no_flushed_data() {
    assert!(crash_at_every_cut(Subformat::MonolithicSparse, 1) > 20);
}

#[test]
fn a_power_cut_at_any_write_of_a_split_sparse_vmdk_loses_no_flushed_data() {
    assert!(crash_at_every_cut(Subformat::TwoGbMaxExtentSparse, 2) > 20);
}

#[test]
fn a_power_cut_at_any_write_of_a_flat_vmdk_loses_no_flushed_data() {
    assert!(crash_at_every_cut(Subformat::MonolithicFlat, 3) > 5);
    assert!(crash_at_every_cut(Subformat::TwoGbMaxExtentFlat, 4) > 5);
}
