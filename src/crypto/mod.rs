//! Disk encryption: the LUKS1 header and key slots, the legacy qcow AES scheme, and the
//! sector ciphers both use, for the formats that encrypt guest data (qcow2's
//! `encrypt.format=luks|aes`).
//!
//! # Map of the module
//!
//! | file | owns |
//! | --- | --- |
//! | this file | hash algorithms ([`Hash`]), [`Passphrase`], random bytes, the hard limits |
//! | [`keyring`] | the process-wide secrets (`--object secret`) and which image uses which |
//! | [`cipher_spec`] | what a sector cipher is: algorithm and key size, mode, IV generator, and which combinations exist |
//! | [`sector`] | [`sector::SectorCipher`]: AES, Twofish, Serpent or CAST5 in XTS, CBC, ECB or CTR mode with the plain, plain64 or ESSIV IV, per 512-byte sector |
//! | [`afsplit`] | the anti-forensic splitter: merging (unlock) and splitting (new key slots) |
//! | [`luks_header`] | the LUKS1 header: parsing, validation against the limits, writing |
//! | [`luks`] | unlocking a key slot, creating a header, adding and erasing key slots, `info` |
//! | [`qcow_aes`] | the legacy qcow AES-CBC scheme (`encrypt.format=aes`) |
//!
//! Every primitive (AES, Twofish, Serpent, CAST5, XTS, CBC, CTR, PBKDF2, HMAC, MD5, SHA-1/2,
//! RIPEMD-160, SM3) comes from the RustCrypto crates;
//! nothing here implements a cipher. Key material lives in [`zeroize::Zeroizing`] buffers
//! and is wiped when dropped; master-key digests are compared in constant time.

pub mod afsplit;
pub mod cipher_spec;
pub mod keyring;
pub mod luks;
pub mod luks_header;
pub mod qcow_aes;
pub mod sector;

use crate::error::{Error, Result};
use sha2::Digest;
use std::io::Read;
use zeroize::Zeroizing;

/// Bytes of one encryption sector: every scheme here derives the IV from a 512-byte
/// sector number.
pub const SECTOR_SIZE: u64 = 512;
/// Most PBKDF2 iterations accepted from an image for one key slot or the master-key
/// digest (about a minute of CPU time on a current core; larger counts could keep an
/// open busy for hours).
pub const MAX_PBKDF2_ITERATIONS: u32 = 64_000_000;
/// Most PBKDF2 iterations one unlock may need in all: each active key slot's count plus
/// the master-key digest's once per slot (a wrong passphrase tries every slot). Eight slots
/// at the per-slot limit could keep an open busy for over ten minutes; this keeps the
/// worst case to a few minutes while leaving room for images made with long iter-times.
pub const MAX_UNLOCK_ITERATIONS: u64 = 256_000_000;
/// Largest master key in bytes (AES-256 in XTS mode).
pub const MAX_KEY_BYTES: u32 = 64;
/// Anti-forensic stripes of a LUKS1 key slot: the format's fixed value, which QEMU and
/// cryptsetup both require.
pub const LUKS_STRIPES: u32 = 4000;
/// Largest LUKS header region (header plus eight key slots) read into memory.
pub const MAX_LUKS_REGION_BYTES: u64 = 16 << 20;

/// A secret passphrase (or a raw key for the legacy AES scheme), wiped when dropped and
/// never shown by `Debug`.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Wrap the secret bytes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Passphrase {
        Passphrase(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<hidden>)")
    }
}

/// The hash algorithms LUKS1 names (`hash_spec`, `essiv:HASH`): the ones qemu-img 10
/// accepts for `hash-alg` and `ivgen-hash-alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256 (qemu-img's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// RIPEMD-160.
    Ripemd160,
    /// SM3.
    Sm3,
}

impl Hash {
    /// Every hash, in qemu-img's order.
    pub const ALL: [Hash; 8] = [
        Hash::Md5,
        Hash::Sha1,
        Hash::Sha224,
        Hash::Sha256,
        Hash::Sha384,
        Hash::Sha512,
        Hash::Ripemd160,
        Hash::Sm3,
    ];

    /// The name as LUKS and qemu-img spell it.
    pub fn name(self) -> &'static str {
        match self {
            Hash::Md5 => "md5",
            Hash::Sha1 => "sha1",
            Hash::Sha224 => "sha224",
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
            Hash::Ripemd160 => "ripemd160",
            Hash::Sm3 => "sm3",
        }
    }

    /// The hash named `name`.
    pub fn parse(name: &str) -> Result<Hash> {
        Hash::ALL
            .into_iter()
            .find(|h| h.name() == name)
            .ok_or_else(|| Error::unsupported(format!("hash algorithm '{name}'")))
    }

    /// Bytes of a digest.
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Md5 => 16,
            Hash::Sha1 | Hash::Ripemd160 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
            Hash::Sm3 => 32,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            Zeroizing::new(h.finalize().to_vec())
        }
        match self {
            Hash::Md5 => run::<md5::Md5>(parts),
            Hash::Sha1 => run::<sha1::Sha1>(parts),
            Hash::Sha224 => run::<sha2::Sha224>(parts),
            Hash::Sha256 => run::<sha2::Sha256>(parts),
            Hash::Sha384 => run::<sha2::Sha384>(parts),
            Hash::Sha512 => run::<sha2::Sha512>(parts),
            Hash::Ripemd160 => run::<ripemd::Ripemd160>(parts),
            Hash::Sm3 => run::<sm3::Sm3>(parts),
        }
    }

    /// PBKDF2 with HMAC over this hash: fill `out` from `password`, `salt` and
    /// `iterations` (callers bound it by [`MAX_PBKDF2_ITERATIONS`]).
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            Hash::Md5 => pbkdf2_hmac::<md5::Md5>(password, salt, iterations, out),
            Hash::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            Hash::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, out),
            Hash::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            Hash::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            Hash::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
            Hash::Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, iterations, out),
            Hash::Sm3 => pbkdf2_hmac::<sm3::Sm3>(password, salt, iterations, out),
        }
    }

    /// PBKDF2 iterations of this hash that take about `millis` milliseconds here, at least
    /// `floor` (qemu-img's `iter-time`), measured on a short run.
    pub fn pbkdf2_iterations_for(self, millis: u64, floor: u32) -> u32 {
        const PROBE: u32 = 1 << 13;
        let mut out = [0u8; 32];
        let start = std::time::Instant::now();
        self.pbkdf2(b"vdisk-probe", &[0u8; 32], PROBE, &mut out);
        let nanos = start.elapsed().as_nanos().max(1);
        let per_ms = u128::from(PROBE) * 1_000_000 / nanos;
        let want = per_ms.saturating_mul(u128::from(millis));
        want.clamp(u128::from(floor), u128::from(MAX_PBKDF2_ITERATIONS / 4)) as u32
    }
}

/// Fill `buf` from the system's random source; key material has no fallback.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("reading random bytes for key material", e))
}

/// A corruption error in an encryption header at byte `offset` of the image file.
pub(crate) fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::corrupt("LUKS header", offset, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_sha1_matches_the_rfc_6070_vector() {
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        let want = [
            0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
            0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn hashes_parse_by_their_luks_names_and_refuse_others() {
        for h in Hash::ALL {
            assert_eq!(Hash::parse(h.name()).unwrap(), h);
            assert_eq!(h.digest(&[b"x"]).len(), h.digest_len());
        }
        assert!(Hash::parse("whirlpool")
            .unwrap_err()
            .to_string()
            .contains("whirlpool"));
    }

    #[test]
    fn passphrases_never_show_their_bytes() {
        let p = Passphrase::new(b"hunter2".to_vec());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
