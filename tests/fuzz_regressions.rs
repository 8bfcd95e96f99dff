//! Regressions found by the fuzz targets in `fuzz/` (see the README, "Fuzzing"). Each test
//! names the target that found it; inputs too large to keep as fixtures are rebuilt here
//! with qemu-img, small ones live in `tests/regressions/`.

mod common;

use common::*;
use std::sync::Arc;
use vdisk::storage::MemStorage;
use vdisk::vmdk::sparse::SparseExtent;

/// vmdk_sparse: a read of a compressed (streamOptimized) grain that runs past the end of
/// the grain sliced the inflated grain out of range and panicked. It is an error now.
#[test]
fn a_read_crossing_a_compressed_grain_is_an_error_not_a_panic() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, pattern(1, 0, 256 << 10)).unwrap();
    let img = dir.path().join("stream.vmdk");
    qemu_img_ok(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "vmdk".as_ref(),
        "-o".as_ref(),
        "subformat=streamOptimized".as_ref(),
        raw.as_os_str(),
        img.as_os_str(),
    ]);
    let storage = Arc::new(MemStorage::from_vec(read(&img)));
    let mut extent = SparseExtent::open(storage, true).unwrap();
    let grain = extent.geometry().grain_bytes();
    let mut buf = vec![0u8; 4096];
    // Inside one grain: the data qemu-img wrote.
    extent.read(&mut buf, grain - 4096).unwrap();
    assert_eq!(buf, pattern(1, grain - 4096, 4096));
    // Across the end of the grain: an error.
    assert!(extent.read(&mut buf, grain - 2048).is_err());
}

/// qcow2_ops (timeout): an image whose refcount table has no block 0, so every cluster,
/// the header included, has refcount 0. The first allocating write chose cluster 0 for the
/// new refcount block, wrote it over the header and looped doing so forever. Now the
/// allocation is refused, the image is marked corrupt, and the header survives.
#[test]
fn an_allocation_over_the_header_is_refused_not_repeated_forever() {
    use vdisk::qcow2::{OpenOptions, Qcow2};
    use vdisk::BlockDevice;
    let bytes = std::fs::read("tests/regressions/qcow2-no-refcount-block-0.qcow2").unwrap();
    let storage = Arc::new(MemStorage::from_vec(bytes));
    let mut img = Qcow2::open(storage.clone(), OpenOptions::default()).unwrap();
    let e = img.write_at(&[1u8; 512], 0).unwrap_err();
    assert!(e.to_string().contains("image header"), "{e}");
    drop(img);
    let after = storage.to_vec();
    assert_eq!(&after[..4], b"QFI\xfb");
    // Marked corrupt: read-only opens still work, writable ones are refused.
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    Qcow2::open(Arc::new(MemStorage::from_vec(after.clone())), ro).unwrap();
    assert!(Qcow2::open(
        Arc::new(MemStorage::from_vec(after)),
        OpenOptions::default()
    )
    .is_err());
}

/// Replay a `qcow2_ops` fuzz input (see `fuzz/fuzz_targets/qcow2_ops.rs` for the layout),
/// ignoring errors as the target does. Returns the image bytes afterwards.
fn replay_qcow2_ops(data: &[u8]) -> Vec<u8> {
    use vdisk::qcow2::{check, OpenOptions, Qcow2, SnapshotTime};
    use vdisk::BlockDevice;
    let n = usize::from(data[0] % 33);
    let (ops, image) = data[1..].split_at(n * 8);
    let storage = Arc::new(MemStorage::from_vec(image.to_vec()));
    let opts = OpenOptions {
        read_only: false,
        l2_cache_bytes: 256 << 10,
        refcount_cache_bytes: 256 << 10,
    };
    let Ok(mut img) = Qcow2::open(storage.clone(), opts) else {
        return storage.to_vec();
    };
    let mut time = SnapshotTime::default();
    for op in ops.chunks_exact(8) {
        let a = u64::from(op[1]) | u64::from(op[2]) << 8 | u64::from(op[3]) << 16;
        let b = u64::from(op[4]) | u64::from(op[5]) << 8;
        let c = op[6];
        let size = img.virtual_size();
        let off = if size == 0 { 0 } else { (a * 512) % size };
        let len = ((b % 64 + 1) * 512).min(size - off);
        let name = format!("s{}", c % 4);
        let _ = match op[0] % 11 {
            0 => img.write_at(&vec![c; len as usize], off),
            1 => img.write_zeroes(off, len),
            2 => img.discard(off, len),
            3 => img.flush(),
            4 => {
                time.sec += 1;
                img.snapshot_create(&name, time)
            }
            5 => img.snapshot_apply(&name),
            6 => img.snapshot_delete(&[name.as_str()]),
            7 => img.resize_to(size.saturating_add(b * 512).min(size.max(1 << 30))),
            9 => {
                let _ = img.close();
                drop(img);
                let _ = vdisk::qcow2::check_image(&*storage, check::Repair::All);
                match Qcow2::open(storage.clone(), opts) {
                    Ok(i) => img = i,
                    Err(_) => return storage.to_vec(),
                }
                Ok(())
            }
            _ => Ok(()),
        };
    }
    let _ = img.close();
    drop(img);
    storage.to_vec()
}

/// qcow2_ops (timeout): after `check -r all` on a hostile image, a snapshot create's
/// transaction kept placing refcount blocks and tables without settling. The table size
/// limit is now checked before allocating and the rounds are capped: it finishes at once.
#[test]
fn placing_refcount_structures_for_a_snapshot_always_settles() {
    let input = std::fs::read("tests/regressions/qcow2_ops-refcount-placement-loop.bin").unwrap();
    let start = std::time::Instant::now();
    replay_qcow2_ops(&input);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
