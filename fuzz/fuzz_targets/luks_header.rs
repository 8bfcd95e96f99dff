//! The LUKS1 header parser and validator, fed arbitrary bytes as a whole header region;
//! a header that validates is unlocked with a fixed passphrase when its PBKDF2 counts are
//! small (so each input stays fast), and written back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk::crypto::luks::Luks;
use vdisk::crypto::Passphrase;

fuzz_target!(|data: &[u8]| {
    let Ok(luks) = Luks::parse(data, 0x40000) else {
        return;
    };
    let _ = luks.info_json();
    let bytes = luks.header.write();
    assert_eq!(bytes.len(), vdisk::crypto::luks_header::HEADER_LEN);
    let cheap = luks.header.mk_digest_iter <= 64
        && luks.header.slots.iter().all(|s| !s.active || s.iterations <= 64);
    if cheap {
        let _ = luks.unlock(data, &Passphrase::new(b"fuzz".to_vec()));
    }
});
