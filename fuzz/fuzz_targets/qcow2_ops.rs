//! A qcow2 image plus a short list of operations: writes, zero writes, discards, flushes,
//! snapshot create/apply/delete, resize, commit into a raw base, `check -r all`
//! followed by a reopen, and persistent-bitmap operations (add, clear, merge, disable,
//! remove, reading the dirty ranges). Errors are fine; panics, overflows, hangs and huge allocations
//! are not.
//!
//! Input layout: one byte `n` (number of operations, at most 32), then `n` operations of
//! 8 bytes each (`kind, a0, a1, a2, b0, b1, c0, c1`), then the image bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk::qcow2::bitmap::Op;
use vdisk::qcow2::{check, OpenOptions, Qcow2, SnapshotTime};
use vdisk::raw::Raw;
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

/// Largest virtual size for which commit (which grows the in-memory base) is tried.
const COMMIT_MAX: u64 = 64 << 20;

fn opts() -> OpenOptions {
    OpenOptions {
        read_only: false,
        l2_cache_bytes: 256 << 10,
        refcount_cache_bytes: 256 << 10,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 33);
    if rest.len() < n * 8 {
        return;
    }
    let (ops, image) = rest.split_at(n * 8);
    let storage = Arc::new(MemStorage::from_vec(image.to_vec()));
    let Ok(mut img) = Qcow2::open(storage.clone(), opts()) else {
        return;
    };
    let mut time = SnapshotTime::default();
    for op in ops.chunks_exact(8) {
        let kind = op[0] % 14;
        let a = u64::from(op[1]) | u64::from(op[2]) << 8 | u64::from(op[3]) << 16;
        let b = u64::from(op[4]) | u64::from(op[5]) << 8;
        let c = op[6];
        let size = img.virtual_size();
        let off = if size == 0 { 0 } else { (a * 512) % size };
        let len = ((b % 64) + 1) * 512;
        let len = len.min(size - off);
        let _ = match kind {
            0 => img.write_at(&vec![c; len as usize], off),
            1 => img.write_zeroes(off, len),
            2 => img.discard(off, len),
            3 => img.flush(),
            4 => {
                time.sec += 1;
                img.snapshot_create(&format!("s{}", c % 4), time)
            }
            5 => img.snapshot_apply(&format!("s{}", c % 4)),
            6 => img.snapshot_delete(&[&format!("s{}", c % 4)]),
            7 => img.resize_to(size.saturating_add(b * 512).min(size.max(1 << 30))),
            8 if size <= COMMIT_MAX => {
                // The image as an overlay of a raw base: fold it into the base.
                let base = Raw::create(MemStorage::new(), size / 2, Default::default());
                match base {
                    Ok(mut base) => vdisk::ops::chain_ops::commit(&mut img, &mut base, 1, &mut |_, _| {}),
                    Err(e) => Err(e),
                }
            }
            9 => {
                // check -r all on the closed image, then reopen it.
                let _ = img.close();
                drop(img);
                let _ = vdisk::qcow2::check_image(&*storage, check::Repair::All);
                match Qcow2::open(storage.clone(), opts()) {
                    Ok(i) => img = i,
                    Err(_) => return,
                }
                Ok(())
            }
            11 => {
                let g = 1u64 << (9 + c % 20);
                let name = format!("b{}", c % 3);
                img.bitmap_ops(&name, &[Op::Add { granularity: Some(g) }])
            }
            12 => {
                let ops = match c % 4 {
                    0 => vec![Op::Clear],
                    1 => vec![Op::MergeNamed(format!("b{}", (c / 4) % 3))],
                    2 => vec![Op::Disable, Op::Enable],
                    _ => vec![Op::Remove],
                };
                img.bitmap_ops(&format!("b{}", c % 3), &ops)
            }
            13 => {
                for e in img.bitmap_entries() {
                    let _ = img.bitmap_dirty_ranges(&e.name);
                }
                Ok(())
            }
            _ => {
                let mut buf = vec![0u8; len as usize];
                img.read_at(&mut buf, off)
            }
        };
    }
    let _ = img.close();
    drop(img);
    let _ = vdisk::qcow2::check_image(&*storage, check::Repair::None);
});
