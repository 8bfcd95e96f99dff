//! Crash consistency of every mutating qcow2 operation not already replayed elsewhere:
//! create, resize (grow, shrink, and growing an overlay over a longer backing), rebase,
//! convert into qcow2, and `check -r` (leaks and corruptions). (Allocating writes, zero
//! writes and discards: `tests/qcow2_crash.rs`; snapshot create/apply/delete:
//! `tests/qcow2_snapshot.rs`; commit: `tests/chain.rs`;
//! amend: `tests/resize_amend.rs`.)
//!
//! Each operation runs on the fault-injecting storage, cut after each of its mutating
//! calls in turn (every write, resize and flush), and the bytes a reboot would find (the
//! state at the last completed flush) must:
//!
//! * open as qcow2 (for `create`: or not look like qcow2 at all);
//! * have no corruption by `qemu-img check` and by vdisk's own check (leaks are allowed);
//! * read back what the guest was promised: the old or the new contents, never a mix that
//!   loses flushed data.

mod common;

use common::crash::{every_cut_one, qemu_check, qemu_check_path};
use common::rng;
use std::sync::Arc;
use vdisk::ops::chain_ops;
use vdisk::ops::convert::{convert, ConvertOptions};
use vdisk::qcow2::check::Repair;
use vdisk::qcow2::{self, CreateOptions, OpenOptions, Qcow2};
use vdisk::raw::Raw;
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

/// The durable image opens read-only; returns its guest contents and virtual size.
fn contents(what: &str, cut: u64, bytes: &[u8]) -> Vec<u8> {
    let mut img = Qcow2::open(Arc::new(MemStorage::from_vec(bytes.to_vec())), ro())
        .unwrap_or_else(|e| panic!("{what}: cut {cut}: image does not open: {e}"));
    let mut buf = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut buf, 0)
        .unwrap_or_else(|e| panic!("{what}: cut {cut}: read: {e}"));
    buf
}

/// No corruption, by qemu-img check and by vdisk's check; leaks are allowed.
fn assert_not_corrupt(what: &str, cut: u64, bytes: &[u8]) {
    assert_not_corrupt_with(what, cut, bytes, &[]);
}

/// [`assert_not_corrupt`] for an image whose backing files (name, contents) sit next to it.
fn assert_not_corrupt_with(what: &str, cut: u64, bytes: &[u8], files: &[(&str, &[u8])]) {
    let q = if files.is_empty() {
        qemu_check(bytes)
    } else {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let p = dir.path().join("img.qcow2");
        std::fs::write(&p, bytes).unwrap();
        qemu_check_path(&p)
    };
    assert!(
        q.corruptions == 0 && (q.code == 0 || q.code == 3),
        "{what}: cut {cut}: qemu-img check found corruption: {}",
        q.output
    );
    let ours = vdisk::qcow2::check_image(&MemStorage::from_vec(bytes.to_vec()), Repair::None)
        .unwrap_or_else(|e| panic!("{what}: cut {cut}: vdisk check failed: {e}"));
    assert_eq!(
        ours.corruptions, 0,
        "{what}: cut {cut}: vdisk check: {:?}",
        ours.messages
    );
}

/// `count` writes of random data at random offsets of `img` (each up to two clusters
/// long), applied to `model` as well.
fn scatter_writes(
    img: &mut dyn BlockDevice,
    model: &mut [u8],
    rng: &mut common::TestRng,
    count: usize,
    cluster_size: u64,
) {
    let size = model.len() as u64;
    for _ in 0..count {
        let off = rng.below(size - 1);
        let len = (1 + rng.below(cluster_size * 2)).min(size - off);
        let mut d = vec![0u8; len as usize];
        rng.fill(&mut d);
        img.write_at(&d, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
}

/// A small image with data spread over it (written through vdisk, then flushed).
fn image_with_data(opts: &CreateOptions, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let base = Arc::new(MemStorage::new());
    let mut img = qcow2::create(base.clone(), opts).expect("create");
    let mut model = vec![0u8; opts.size as usize];
    scatter_writes(&mut img, &mut model, &mut rng(seed), 24, opts.cluster_size);
    img.close().unwrap();
    drop(img);
    (base.to_vec(), model)
}

fn small_opts(cluster_size: u64, size: u64) -> CreateOptions {
    CreateOptions {
        size,
        cluster_size,
        ..Default::default()
    }
}

#[test]
fn a_power_cut_during_create_leaves_no_image_or_a_clean_empty_one() {
    let mut cuts = 0;
    for opts in [
        small_opts(65536, 64 << 20),
        small_opts(512, 8 << 20),
        CreateOptions {
            version: 2,
            ..small_opts(4096, 1 << 20)
        },
        CreateOptions {
            refcount_bits: 1,
            preallocation: vdisk::Preallocation::Metadata,
            ..small_opts(4096, 4 << 20)
        },
    ] {
        let what = format!("create {opts:?}");
        cuts += every_cut_one(
            &what,
            &[],
            |fs| {
                let mut q = qcow2::create(fs.clone(), &opts)?;
                q.close()?;
                Ok(fs.ops())
            },
            |cut, bytes, done| {
                let looks_like_qcow2 = bytes.len() >= 4 && bytes[..4] == *b"QFI\xfb";
                if !looks_like_qcow2 {
                    assert!(!done, "{what}: completed but no qcow2 header");
                    return;
                }
                let data = contents(&what, cut, bytes);
                assert!(data.iter().all(|&b| b == 0), "{what}: cut {cut}: not empty");
                assert_not_corrupt(&what, cut, bytes);
            },
        );
    }
    assert!(cuts > 20, "{cuts}");
}

/// Resize from `from_size` to `to_size` with data written first.
fn replay_resize(cluster_size: u64, from_size: u64, to_size: u64, seed: u64) -> u64 {
    let (initial, model) = image_with_data(&small_opts(cluster_size, from_size), seed);
    let what = format!("resize {from_size} -> {to_size} ({cluster_size}-byte clusters)");
    every_cut_one(
        &what,
        &initial,
        |fs| {
            let mut q = Qcow2::open(fs.clone(), OpenOptions::default())?;
            q.resize_to(to_size)?;
            q.close()?;
            Ok(fs.ops())
        },
        |cut, bytes, done| {
            let data = contents(&what, cut, bytes);
            let size = data.len() as u64;
            assert!(
                size == from_size || size == to_size,
                "{what}: cut {cut}: size {size}"
            );
            if done {
                assert_eq!(size, to_size, "{what}: completed at the old size");
            }
            // Below both sizes nothing changes. A shrink may have dropped some of the tail
            // before the header records the new size: there the old data or zeros.
            let keep = from_size.min(to_size).min(size) as usize;
            assert!(
                data[..keep] == model[..keep],
                "{what}: cut {cut}: data below the new end changed"
            );
            for (i, &b) in data.iter().enumerate().skip(keep) {
                let old = model.get(i).copied().unwrap_or(0);
                assert!(b == old || b == 0, "{what}: cut {cut}: byte {i} is {b:#x}");
            }
            assert_not_corrupt(&what, cut, bytes);
        },
    )
}

#[test]
fn a_power_cut_during_resize_leaves_the_old_or_the_new_size_with_data_intact() {
    let mut cuts = 0;
    // Growth that needs a bigger L1 table (512-byte clusters: 64 entries per L2 table).
    cuts += replay_resize(512, 256 << 10, 2 << 20, 1);
    cuts += replay_resize(4096, 1 << 20, 64 << 20, 2);
    // Shrinking frees clusters past the new end and drops L2 tables.
    cuts += replay_resize(512, 1 << 20, 128 << 10, 3);
    cuts += replay_resize(4096, 2 << 20, 1 << 20, 4);
    assert!(cuts > 40, "{cuts}");
}

/// A raw device over memory, for backing images.
fn raw_device(bytes: Vec<u8>) -> Box<dyn BlockDevice> {
    Box::new(Raw::open(MemStorage::from_vec(bytes), true).unwrap())
}

/// Grow an overlay over a raw backing image longer than the overlay (`backing.raw`, all
/// data): at every cut the old size with the old contents, or the new size reading zeros
/// from the old end on (the backing's data must never show there).
fn replay_grow_over_longer_backing(
    opts: &CreateOptions,
    to_size: u64,
    prealloc: vdisk::Preallocation,
    seed: u64,
) -> u64 {
    let from_size = opts.size;
    let mut rng = rng(seed);
    let mut backing = vec![0u8; to_size as usize];
    rng.fill(&mut backing);
    let base = Arc::new(MemStorage::new());
    let mut top = qcow2::create(base.clone(), opts).expect("create");
    top.set_backing_file(Some("backing.raw"), Some("raw"))
        .unwrap();
    top.set_backing(Some(raw_device(backing.clone())));
    let mut model = backing[..from_size as usize].to_vec();
    scatter_writes(&mut top, &mut model, &mut rng, 8, opts.cluster_size);
    top.close().unwrap();
    drop(top);
    let initial = base.to_vec();
    let what = format!(
        "grow v{} {from_size} -> {to_size} over a longer backing ({}-byte clusters, {prealloc:?})",
        opts.version, opts.cluster_size
    );
    every_cut_one(
        &what,
        &initial,
        |fs| {
            let mut q = Qcow2::open(fs.clone(), OpenOptions::default())?;
            q.set_backing(Some(raw_device(backing.clone())));
            q.resize_preallocated(to_size, prealloc)?;
            q.close()?;
            Ok(fs.ops())
        },
        |cut, bytes, done| {
            let mut q = Qcow2::open(Arc::new(MemStorage::from_vec(bytes.to_vec())), ro())
                .unwrap_or_else(|e| panic!("{what}: cut {cut}: image does not open: {e}"));
            q.set_backing(Some(raw_device(backing.clone())));
            let size = q.virtual_size();
            assert!(
                size == from_size || size == to_size,
                "{what}: cut {cut}: size {size}"
            );
            if done {
                assert_eq!(size, to_size, "{what}: completed at the old size");
            }
            let mut data = vec![0u8; size as usize];
            q.read_at(&mut data, 0).unwrap();
            let old = from_size as usize;
            assert!(
                data[..old] == model[..],
                "{what}: cut {cut}: old contents changed"
            );
            if let Some(i) = data[old..].iter().position(|&b| b != 0) {
                panic!(
                    "{what}: cut {cut}: byte {:#x} of the new area is not zero",
                    old + i
                );
            }
            assert_not_corrupt_with(&what, cut, bytes, &[("backing.raw", &backing)]);
        },
    )
}

#[test]
fn a_power_cut_while_growing_an_overlay_over_a_longer_backing_never_shows_the_backing_data() {
    use vdisk::Preallocation::{Full, Metadata, Off};
    let mut cuts = 0;
    // From inside a cluster: explicit zeros to the cluster's end, then zero clusters.
    cuts += replay_grow_over_longer_backing(&small_opts(4096, (1 << 20) + 12288), 3 << 20, Off, 5);
    // A larger L1 table first (1 KiB clusters: 128 entries per L2 table).
    cuts += replay_grow_over_longer_backing(&small_opts(1024, 256 << 10), 1 << 20, Off, 6);
    // Preallocated zero clusters; and fresh clusters in a v2 image.
    cuts += replay_grow_over_longer_backing(&small_opts(4096, 1 << 20), 2 << 20, Metadata, 7);
    let v2 = CreateOptions {
        version: 2,
        ..small_opts(4096, (1 << 20) + 512)
    };
    cuts += replay_grow_over_longer_backing(&v2, 2 << 20, Full, 8);
    assert!(cuts > 40, "{cuts}");
}

#[test]
fn a_power_cut_during_rebase_never_changes_what_the_guest_reads() {
    // An overlay with some clusters of its own over `old.raw`, rebased onto `new.raw`,
    // which differs from the old backing file in places.
    let size = 1u64 << 20;
    let cs = 4096;
    let mut rng = rng(9);
    let mut old = vec![0u8; size as usize];
    rng.fill(&mut old);
    let mut new = old.clone();
    for _ in 0..12 {
        let off = rng.below(size - 3 * cs) as usize;
        let len = 1 + rng.below(2 * cs) as usize;
        rng.fill(&mut new[off..off + len]);
    }
    let base = Arc::new(MemStorage::new());
    let mut top = qcow2::create(base.clone(), &small_opts(cs, size)).unwrap();
    top.set_backing_file(Some("old.raw"), Some("raw")).unwrap();
    top.set_backing(Some(raw_device(old.clone())));
    let mut guest = old.clone();
    for k in 0..6u64 {
        let off = k * 150_000 + 77;
        let d = vec![0xa0 + k as u8; 9000];
        top.write_at(&d, off).unwrap();
        guest[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    top.close().unwrap();
    drop(top);
    let initial = base.to_vec();

    let what = "rebase onto a different backing file";
    let cuts = every_cut_one(
        what,
        &initial,
        |fs| {
            let mut q = Qcow2::open(fs.clone(), OpenOptions::default())?;
            q.set_backing(Some(raw_device(old.clone())));
            let mut nb = Raw::open(MemStorage::from_vec(new.clone()), true)?;
            chain_ops::rebase_copy(&mut q, Some(&mut nb), &mut |_, _| {})?;
            q.set_backing_file(Some("new.raw"), Some("raw"))?;
            q.close()?;
            Ok(fs.ops())
        },
        |cut, bytes, done| {
            let mut q = Qcow2::open(Arc::new(MemStorage::from_vec(bytes.to_vec())), ro())
                .unwrap_or_else(|e| panic!("{what}: cut {cut}: does not open: {e}"));
            let name = q.header().backing_file.clone();
            let backing = match name.as_deref() {
                Some("old.raw") => old.clone(),
                Some("new.raw") => new.clone(),
                other => panic!("{what}: cut {cut}: backing name {other:?}"),
            };
            if done {
                assert_eq!(name.as_deref(), Some("new.raw"));
            }
            q.set_backing(Some(raw_device(backing)));
            let mut data = vec![0u8; size as usize];
            q.read_at(&mut data, 0).unwrap();
            assert!(
                data == guest,
                "{what}: cut {cut}: guest contents changed (backing {name:?})"
            );
            assert_not_corrupt_with(what, cut, bytes, &[("old.raw", &old), ("new.raw", &new)]);
        },
    );
    assert!(cuts > 10, "{cuts}");
}

#[test]
fn a_power_cut_during_convert_into_qcow2_leaves_a_consistent_image() {
    let size = 2u64 << 20;
    let mut src = vec![0u8; size as usize];
    let mut rng = rng(21);
    for k in 0..20u64 {
        let off = (k * 97_001 + rng.below(4096)) as usize;
        let len = (1 + rng.below(20_000) as usize).min(src.len() - off);
        rng.fill(&mut src[off..off + len]);
    }
    let mut cuts = 0;
    for cs in [512u64, 65536] {
        let base = Arc::new(MemStorage::new());
        drop(qcow2::create(base.clone(), &small_opts(cs, size)).unwrap());
        let what = format!("convert raw -> qcow2 ({cs}-byte clusters)");
        cuts += every_cut_one(
            &what,
            &base.to_vec(),
            |fs| {
                let mut dst = Qcow2::open(fs.clone(), OpenOptions::default())?;
                let mut s = Raw::open(MemStorage::from_vec(src.clone()), true)?;
                let opts = ConvertOptions {
                    unallocated_is_zero: true,
                    ..Default::default()
                };
                convert(&mut s, &mut dst, opts, &mut |_, _| {})?;
                Ok(fs.ops())
            },
            |cut, bytes, done| {
                let data = contents(&what, cut, bytes);
                if done {
                    assert!(data == src, "{what}: completed but contents differ");
                }
                // Whatever reached the disk is source data or still zero.
                for (i, (&d, &s)) in data.iter().zip(&src).enumerate() {
                    assert!(d == s || d == 0, "{what}: cut {cut}: byte {i} is {d:#x}");
                }
                assert_not_corrupt(&what, cut, bytes);
            },
        );
    }
    assert!(cuts > 20, "{cuts}");
}

#[test]
fn a_power_cut_during_a_compressed_convert_leaves_a_consistent_image() {
    // Compressible, non-zero text in most clusters, a few holes: every written cluster goes
    // through the compressed-cluster packing (several per host cluster).
    let size = 1u64 << 20;
    let mut src = Vec::with_capacity(size as usize);
    let mut line = 0u32;
    while src.len() < size as usize {
        src.extend_from_slice(
            format!("{line:06} compressed cluster packing under power cuts\n").as_bytes(),
        );
        line += 1;
    }
    src.truncate(size as usize);
    src[200_000..300_000].fill(0);
    let mut cuts = 0;
    for (cs, ty) in [(4096u64, "zlib"), (65536, "zstd")] {
        let base = Arc::new(MemStorage::new());
        let mut o = small_opts(cs, size);
        o.set("compression_type", ty).unwrap();
        drop(qcow2::create(base.clone(), &o).unwrap());
        let what = format!("convert -c raw -> qcow2 ({cs}-byte clusters, {ty})");
        cuts += every_cut_one(
            &what,
            &base.to_vec(),
            |fs| {
                let mut dst = Qcow2::open(fs.clone(), OpenOptions::default())?;
                let mut s = Raw::open(MemStorage::from_vec(src.clone()), true)?;
                let opts = ConvertOptions {
                    unallocated_is_zero: true,
                    compress: true,
                    workers: 1,
                    ..Default::default()
                };
                convert(&mut s, &mut dst, opts, &mut |_, _| {})?;
                Ok(fs.ops())
            },
            |cut, bytes, done| {
                let data = contents(&what, cut, bytes);
                if done {
                    assert!(data == src, "{what}: completed but contents differ");
                }
                for (i, (&d, &s)) in data.iter().zip(&src).enumerate() {
                    assert!(d == s || d == 0, "{what}: cut {cut}: byte {i} is {d:#x}");
                }
                assert_not_corrupt(&what, cut, bytes);
            },
        );
    }
    eprintln!("{cuts} cut points in compressed converts");
    assert!(cuts > 10, "{cuts}");
}

#[test]
fn a_power_cut_during_guest_writes_into_compressed_clusters_loses_nothing_flushed() {
    // An image whose clusters are all compressed (packed several to a host cluster); partial
    // writes then decompress, reallocate and free the compressed bytes' references.
    let size = 512u64 << 10;
    let mut text = Vec::with_capacity(size as usize);
    let mut line = 0u32;
    while text.len() < size as usize {
        text.extend_from_slice(format!("{line:06} a line that compresses well\n").as_bytes());
        line += 1;
    }
    text.truncate(size as usize);
    let base = Arc::new(MemStorage::new());
    {
        let mut img = qcow2::create(base.clone(), &small_opts(4096, size)).unwrap();
        let mut s = Raw::open(MemStorage::from_vec(text.clone()), true).unwrap();
        let opts = ConvertOptions {
            unallocated_is_zero: true,
            compress: true,
            workers: 1,
            ..Default::default()
        };
        convert(&mut s, &mut img, opts, &mut |_, _| {}).unwrap();
    }
    let writes: Vec<(u64, Vec<u8>)> = (0..6u64)
        .map(|k| (k * 70_001 + 100, vec![0xc0 | k as u8; 3000]))
        .collect();
    let mut expect = text.clone();
    for (off, d) in &writes {
        expect[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    let what = "guest writes into compressed clusters";
    let cuts = every_cut_one(
        what,
        &base.to_vec(),
        |fs| {
            let mut img = Qcow2::open(fs.clone(), OpenOptions::default())?;
            for (off, d) in &writes {
                img.write_at(d, *off)?;
                img.flush()?;
            }
            Ok(fs.ops())
        },
        |cut, bytes, done| {
            let data = contents(what, cut, bytes);
            if done {
                assert!(data == expect, "{what}: completed but contents differ");
            }
            for (i, (&d, (&old, &new))) in data.iter().zip(text.iter().zip(&expect)).enumerate() {
                assert!(
                    d == old || d == new,
                    "{what}: cut {cut}: byte {i} is {d:#x}"
                );
            }
            assert_not_corrupt(what, cut, bytes);
        },
    );
    assert!(cuts > 10, "{cuts}");
}

/// Set the refcount of cluster `index` in the first refcount block of a 16-bit image.
fn poke_refcount(img: &mut [u8], index: usize, value: u16) {
    let rt = vdisk::qcow2::header::field::REFCOUNT_TABLE_OFFSET.get(img) as usize;
    let rb = u64::from_be_bytes(img[rt..rt + 8].try_into().unwrap()) as usize;
    img[rb + 2 * index..rb + 2 * index + 2].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn a_power_cut_during_check_repair_never_makes_an_image_worse() {
    let opts = small_opts(4096, 1 << 20);
    let (clean, model) = image_with_data(&opts, 33);
    let clusters = clean.len() / 4096;
    let mut cuts = 0;

    // Leaks only: clusters past the end with refcount 1. Every cut must stay corruption-free.
    let mut leaky = clean.clone();
    leaky.resize(leaky.len() + 3 * 4096, 0);
    for k in 0..3 {
        poke_refcount(&mut leaky, clusters + k, 1);
    }
    assert!(qemu_check(&leaky).leaks >= 3);
    for repair in [Repair::Leaks, Repair::All] {
        let what = format!("check -r {repair:?} of a leaky image");
        cuts += every_cut_one(
            &what,
            &leaky,
            |fs| vdisk::qcow2::check_image(&*fs, repair).map(|_| fs.ops()),
            |cut, bytes, done| {
                assert!(
                    contents(&what, cut, bytes) == model,
                    "{what}: cut {cut}: data"
                );
                assert_not_corrupt(&what, cut, bytes);
                if done {
                    assert_eq!(qemu_check(bytes).code, 0, "{what}: leaks left");
                }
            },
        );
    }

    // A corruption: a data cluster whose refcount is 0. `-r all` repairs it; a cut may
    // leave it unrepaired, but never more corrupt, and the guest data never changes.
    let mut corrupt = clean.clone();
    let victim = (clusters - 1) as u64;
    poke_refcount(&mut corrupt, victim as usize, 0);
    let before = qemu_check(&corrupt).corruptions;
    assert!(before > 0);
    let what = "check -r all of an image with a refcount too low";
    cuts += every_cut_one(
        what,
        &corrupt,
        |fs| vdisk::qcow2::check_image(&*fs, Repair::All).map(|_| fs.ops()),
        |cut, bytes, done| {
            assert!(
                contents(what, cut, bytes) == model,
                "{what}: cut {cut}: data"
            );
            let q = qemu_check(bytes);
            assert!(
                q.corruptions <= before,
                "{what}: cut {cut}: {} corruptions, {before} before:\n{}",
                q.corruptions,
                q.output
            );
            if done {
                assert_eq!(q.code, 0, "{what}: not repaired:\n{}", q.output);
            }
        },
    );
    eprintln!("check -r: {cuts} cut points in all");
    assert!(cuts > 5, "{cuts}");
}
