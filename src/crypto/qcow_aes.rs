//! The legacy qcow encryption (`encrypt.format=aes`, qcow2 crypt method 1): AES-128 in
//! CBC mode with the plain64 IV of each 512-byte sector, keyed directly by the passphrase
//! (its first 16 bytes, zero-padded). There is no header and no way to tell a wrong
//! passphrase from a right one: a wrong one reads as noise, as in QEMU.

use super::sector::{CipherAlg, CipherSpec, IvGenAlg, Mode, SectorCipher};
use super::Passphrase;
use crate::error::Result;
use zeroize::Zeroizing;

/// The legacy scheme's cipher.
pub const SPEC: CipherSpec = CipherSpec {
    alg: CipherAlg::Aes128,
    mode: Mode::Cbc,
    ivgen: IvGenAlg::Plain64,
    ivgen_hash: None,
};

/// The cipher keyed by `pass`.
pub fn cipher(pass: &Passphrase) -> Result<SectorCipher> {
    let mut key = Zeroizing::new([0u8; 16]);
    let n = pass.bytes().len().min(16);
    key[..n].copy_from_slice(&pass.bytes()[..n]);
    SectorCipher::new(SPEC, &key[..])
}

/// qemu-img's `encrypt` object for `info`.
pub fn info_json() -> serde_json::Value {
    serde_json::json!({ "format": "aes" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_passphrases_are_cut_to_sixteen_bytes() {
        let a = cipher(&Passphrase::new(b"0123456789abcdefXYZ".to_vec())).unwrap();
        let b = cipher(&Passphrase::new(b"0123456789abcdef".to_vec())).unwrap();
        let (mut x, mut y) = ([1u8; 512], [1u8; 512]);
        a.encrypt(3, &mut x).unwrap();
        b.encrypt(3, &mut y).unwrap();
        assert_eq!(x, y);
    }
}
