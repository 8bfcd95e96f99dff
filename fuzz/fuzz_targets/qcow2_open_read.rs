//! Open arbitrary bytes as a qcow2 image (read-only), read and map the whole disk at a
//! few offsets, list snapshots, and run the consistency check without repairing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk::qcow2::{check, OpenOptions, Qcow2};
use vdisk::storage::MemStorage;
use vdisk::BlockDevice;

fuzz_target!(|data: &[u8]| {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let ro = OpenOptions {
        read_only: true,
        l2_cache_bytes: 1 << 20,
        refcount_cache_bytes: 1 << 20,
    };
    if let Ok(mut img) = Qcow2::open(storage.clone(), ro) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 8192];
        let mut pos = 0u64;
        // Walk the first extents of the mapping, then read a few places.
        for _ in 0..64 {
            if pos >= size {
                break;
            }
            match img.block_status(pos, size - pos) {
                Ok(e) if e.length > 0 => pos = pos.saturating_add(e.length),
                _ => break,
            }
        }
        for k in 0..8u64 {
            if size == 0 {
                break;
            }
            let off = (k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % size;
            let len = (buf.len() as u64).min(size - off) as usize;
            let _ = img.read_at(&mut buf[..len], off);
        }
        let _ = img.snapshots().len();
    }
    let _ = vdisk::qcow2::check_image(&*storage, check::Repair::None);
});
