//! The LUKS1 header parser and validator, fed arbitrary bytes as the start of a header
//! region (padded with zeros to 600,000 bytes, room for eight AES-128 key slots); a
//! header that validates is unlocked with a fixed passphrase when its PBKDF2 counts are
//! small (so each input stays fast), and written back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk::crypto::luks::Luks;
use vdisk::crypto::Passphrase;

/// Bytes of the region the input starts.
const REGION: usize = 600_000;

fuzz_target!(|data: &[u8]| {
    let mut region = data.to_vec();
    region.resize(data.len().max(REGION), 0);
    let Ok(luks) = Luks::parse(&region, 0x40000) else {
        return;
    };
    let _ = luks.info_json();
    let bytes = luks.header.write();
    assert_eq!(bytes.len(), vdisk::crypto::luks_header::HEADER_LEN);
    let cheap = luks.header.mk_digest_iter <= 64
        && luks.header.slots.iter().all(|s| !s.active || s.iterations <= 64);
    if cheap {
        let _ = luks.unlock(&region, &Passphrase::new(b"fuzz".to_vec()));
    }
});
