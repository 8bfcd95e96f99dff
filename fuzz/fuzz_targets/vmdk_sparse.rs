//! VMDK sparse extents (hosted monolithicSparse, streamOptimized with compressed grains and
//! a footer, and COWD/vmfsSparse), opened from arbitrary bytes and read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk::storage::MemStorage;
use vdisk::vmdk::sparse::SparseExtent;

fuzz_target!(|data: &[u8]| {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let Ok(mut extent) = SparseExtent::open(storage, true) else {
        return;
    };
    let size = extent.capacity_bytes();
    let mut buf = vec![0u8; 4096];
    let mut pos = 0u64;
    for _ in 0..32 {
        if pos >= size {
            break;
        }
        match extent.lookup_run(pos) {
            Ok((_, len)) if len > 0 => pos = pos.saturating_add(len),
            _ => break,
        }
    }
    for k in 0..8u64 {
        if size == 0 {
            break;
        }
        let off = (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) % size) & !511;
        // `read` takes ranges within one grain (the VMDK device splits larger ones).
        let grain = extent.geometry().grain_bytes();
        let len = (buf.len() as u64).min(size - off).min(grain - off % grain) as usize;
        let _ = extent.read(&mut buf[..len], off);
    }
});
