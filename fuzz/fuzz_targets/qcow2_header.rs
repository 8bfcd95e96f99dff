//! The qcow2 header parser (fixed fields, header extensions, feature names, backing file
//! name) and the snapshot table reader, fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk::qcow2::{header::Header, snapshot};
use vdisk::storage::MemStorage;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes pick the claimed file length, the rest is the first cluster.
    if data.len() < 8 {
        return;
    }
    let claimed = u64::from_le_bytes(data[..8].try_into().unwrap());
    let buf = &data[8..];
    for file_len in [buf.len() as u64, claimed] {
        if let Ok(mut h) = Header::parse(buf, file_len) {
            let _ = h.feature_names();
            let _ = h.backing_format();
            let _ = h.l1_entries_needed();
            let _ = h.write();
        }
    }
    // Snapshot table: the same bytes as a file with the table anywhere in it.
    let storage = MemStorage::from_vec(buf.to_vec());
    let count = u32::from(data[0]) | (u32::from(data[1]) << 8);
    let cluster_bits = 9 + u32::from(data[2] % 13);
    let offset = u64::from(data[3]) << cluster_bits;
    for version in [2, 3] {
        if let Ok(snaps) = snapshot::read_table(
            &storage,
            offset,
            count,
            1 << cluster_bits,
            buf.len() as u64,
            version,
        ) {
            let _ = snapshot::encode_table(&snaps);
        }
    }
});
