//! Sector ciphers: AES (128, 192 or 256-bit keys) in XTS, CBC or ECB mode, with the IV of
//! each 512-byte sector made by the plain, plain64 or ESSIV generator, as LUKS1 names
//! them (`aes` + `xts-plain64`, `cbc-essiv:sha256`, ...).
//!
//! The block cipher and the modes come from the `aes`, `xts-mode` and `cbc` crates; this
//! file only picks them, derives the IV of each sector and walks a buffer sector by
//! sector (a last piece shorter than a sector, as the end of a key slot's material can
//! be, is processed with that sector's IV).

use super::{Hash, SECTOR_SIZE};
use crate::error::{Error, Result};
use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit,
};

/// The block cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
}

impl CipherAlg {
    /// Every algorithm, for option parsing.
    pub const ALL: [CipherAlg; 3] = [CipherAlg::Aes128, CipherAlg::Aes192, CipherAlg::Aes256];

    /// qemu-img's name (`cipher-alg`).
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
        }
    }

    /// Bytes of one key of this algorithm.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 => 16,
            CipherAlg::Aes192 => 24,
            CipherAlg::Aes256 => 32,
        }
    }

    /// The AES algorithm whose key is `len` bytes.
    pub fn aes_of_key_len(len: usize) -> Option<CipherAlg> {
        CipherAlg::ALL.into_iter().find(|a| a.key_len() == len)
    }

    /// The algorithm qemu-img names `name` (`aes-256`; `aes` alone is not a name there).
    pub fn parse(name: &str) -> Result<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::unsupported(format!("cipher algorithm '{name}'")))
    }
}

/// The block cipher mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Electronic codebook (no IV).
    Ecb,
    /// Cipher block chaining, restarted at each sector with its IV.
    Cbc,
    /// XEX with ciphertext stealing; the IV is the tweak; the key holds two AES keys.
    Xts,
}

impl Mode {
    /// The name in LUKS and qemu-img (`cipher-mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ecb => "ecb",
            Mode::Cbc => "cbc",
            Mode::Xts => "xts",
        }
    }

    /// The mode named `name`.
    pub fn parse(name: &str) -> Result<Mode> {
        [Mode::Ecb, Mode::Cbc, Mode::Xts]
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::unsupported(format!("cipher mode '{name}'")))
    }

    /// Key bytes of `alg` in this mode.
    pub fn key_len(self, alg: CipherAlg) -> usize {
        match self {
            Mode::Xts => 2 * alg.key_len(),
            _ => alg.key_len(),
        }
    }
}

/// How the IV of a sector is made from its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGenAlg {
    /// The low 32 bits of the sector number, little-endian, zero-padded.
    Plain,
    /// The sector number as 64 bits little-endian, zero-padded.
    Plain64,
    /// The plain64 IV encrypted with AES keyed by the hash of the key.
    Essiv,
}

impl IvGenAlg {
    /// The name in LUKS and qemu-img (`ivgen-alg`).
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv => "essiv",
        }
    }

    /// The generator named `name`.
    pub fn parse(name: &str) -> Result<IvGenAlg> {
        [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv]
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::unsupported(format!("IV generator '{name}'")))
    }
}

/// A complete description of a sector cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher.
    pub alg: CipherAlg,
    /// Its mode.
    pub mode: Mode,
    /// The IV generator.
    pub ivgen: IvGenAlg,
    /// The hash keying the ESSIV cipher (only with [`IvGenAlg::Essiv`]).
    pub ivgen_hash: Option<Hash>,
}

impl CipherSpec {
    /// qemu-img's default: AES-256 in XTS mode with the plain64 IV.
    pub const DEFAULT: CipherSpec = CipherSpec {
        alg: CipherAlg::Aes256,
        mode: Mode::Xts,
        ivgen: IvGenAlg::Plain64,
        ivgen_hash: None,
    };

    /// Bytes of the key.
    pub fn key_len(&self) -> usize {
        self.mode.key_len(self.alg)
    }

    /// The spec a LUKS1 header describes: cipher name `name` (`aes`), mode string `mode`
    /// (`xts-plain64`, `cbc-essiv:sha256`, `ecb`) and key size `key_bytes`.
    pub fn from_luks(name: &str, mode: &str, key_bytes: usize) -> Result<CipherSpec> {
        if name != "aes" {
            return Err(Error::unsupported(format!(
                "LUKS cipher '{name}' (vdisk supports aes)"
            )));
        }
        let (mode_name, ivgen_text) = mode.split_once('-').unwrap_or((mode, "plain64"));
        let mode_kind = Mode::parse(mode_name)?;
        let (ivgen_name, hash) = match ivgen_text.split_once(':') {
            Some((g, h)) => (g, Some(Hash::parse(h)?)),
            None => (ivgen_text, None),
        };
        let ivgen = IvGenAlg::parse(ivgen_name)?;
        let per_key = if mode_kind == Mode::Xts {
            key_bytes / 2
        } else {
            key_bytes
        };
        let alg = CipherAlg::aes_of_key_len(per_key)
            .filter(|_| mode_kind != Mode::Xts || key_bytes % 2 == 0)
            .ok_or_else(|| {
                Error::unsupported(format!("aes-{mode_name} with a {key_bytes}-byte key"))
            })?;
        let spec = CipherSpec {
            alg,
            mode: mode_kind,
            ivgen,
            ivgen_hash: hash,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The LUKS1 mode string (`xts-plain64`, `cbc-essiv:sha256`).
    pub fn luks_mode(&self) -> String {
        match self.ivgen_hash {
            Some(h) => format!("{}-{}:{}", self.mode.name(), self.ivgen.name(), h.name()),
            None => format!("{}-{}", self.mode.name(), self.ivgen.name()),
        }
    }

    /// Refuse combinations no cipher can be built for: ESSIV without a hash or with a hash
    /// whose digest is no AES key size; a hash given to another generator.
    pub fn validate(&self) -> Result<()> {
        match (self.ivgen, self.ivgen_hash) {
            (IvGenAlg::Essiv, None) => Err(Error::invalid(
                "the essiv IV generator needs a hash (ivgen-hash-alg)",
            )),
            (IvGenAlg::Essiv, Some(h)) if CipherAlg::aes_of_key_len(h.digest_len()).is_none() => {
                Err(Error::unsupported(format!(
                    "essiv with {}: no AES cipher takes a {}-byte key",
                    h.name(),
                    h.digest_len()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// One mode of one block cipher, keyed.
trait Engine: Send + Sync {
    fn encrypt(&self, data: &mut [u8], iv: &[u8; 16]);
    fn decrypt(&self, data: &mut [u8], iv: &[u8; 16]);
}

/// What a block cipher must offer to be used here.
trait Block16:
    BlockSizeUser<BlockSize = U16>
    + BlockCipher
    + BlockEncrypt
    + BlockDecrypt
    + KeyInit
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl Block16 for aes::Aes128 {}
impl Block16 for aes::Aes192 {}
impl Block16 for aes::Aes256 {}

struct Ecb<C>(C);
struct Cbc<C>(C);
struct Xts<C: Block16>(xts_mode::Xts128<C>);

impl<C: Block16> Engine for Ecb<C> {
    fn encrypt(&self, data: &mut [u8], _iv: &[u8; 16]) {
        for b in data.chunks_exact_mut(16) {
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, data: &mut [u8], _iv: &[u8; 16]) {
        for b in data.chunks_exact_mut(16) {
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
        }
    }
}

impl<C: Block16> Engine for Cbc<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
        let mut e =
            cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), GenericArray::from_slice(iv));
        for b in data.chunks_exact_mut(16) {
            e.encrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
        let mut d =
            cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), GenericArray::from_slice(iv));
        for b in data.chunks_exact_mut(16) {
            d.decrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
}

impl<C: Block16> Engine for Xts<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
        self.0.encrypt_sector(data, *iv);
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
        self.0.decrypt_sector(data, *iv);
    }
}

fn bad_key() -> Error {
    Error::invalid("encryption key of the wrong length for its cipher")
}

fn engine<C: Block16>(mode: Mode, key: &[u8]) -> Result<Box<dyn Engine>> {
    let new = |k: &[u8]| C::new_from_slice(k).map_err(|_| bad_key());
    Ok(match mode {
        Mode::Ecb => Box::new(Ecb(new(key)?)),
        Mode::Cbc => Box::new(Cbc(new(key)?)),
        Mode::Xts => {
            let (k1, k2) = key.split_at(key.len() / 2);
            Box::new(Xts(xts_mode::Xts128::new(new(k1)?, new(k2)?)))
        }
    })
}

fn engine_for(alg: CipherAlg, mode: Mode, key: &[u8]) -> Result<Box<dyn Engine>> {
    if key.len() != mode.key_len(alg) {
        return Err(bad_key());
    }
    match alg {
        CipherAlg::Aes128 => engine::<aes::Aes128>(mode, key),
        CipherAlg::Aes192 => engine::<aes::Aes192>(mode, key),
        CipherAlg::Aes256 => engine::<aes::Aes256>(mode, key),
    }
}

/// A keyed sector cipher. It holds the expanded key (wiped on drop by the `aes` crate's
/// `zeroize` feature) but not the key bytes themselves.
pub struct SectorCipher {
    spec: CipherSpec,
    engine: Box<dyn Engine>,
    /// The ESSIV cipher (AES in ECB mode keyed by the hash of the key).
    essiv: Option<Box<dyn Engine>>,
}

/// Buffers at least this long are encrypted on several threads.
const PARALLEL_MIN_BYTES: usize = 256 << 10;

impl SectorCipher {
    /// The cipher `spec` keyed with `key`.
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher> {
        spec.validate()?;
        let engine = engine_for(spec.alg, spec.mode, key)?;
        let essiv = match (spec.ivgen, spec.ivgen_hash) {
            (IvGenAlg::Essiv, Some(h)) => {
                let salt = h.digest(&[key]);
                let alg = CipherAlg::aes_of_key_len(salt.len()).ok_or_else(bad_key)?;
                Some(engine_for(alg, Mode::Ecb, &salt)?)
            }
            _ => None,
        };
        Ok(SectorCipher {
            spec,
            engine,
            essiv,
        })
    }

    /// What this cipher is.
    pub fn spec(&self) -> CipherSpec {
        self.spec
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.spec.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 | IvGenAlg::Essiv => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        }
        if let Some(e) = &self.essiv {
            e.encrypt(&mut iv, &[0; 16]);
        }
        iv
    }

    fn check_len(data: &[u8]) -> Result<()> {
        if data.len() % 16 != 0 {
            return Err(Error::invalid(format!(
                "encrypted data of {} bytes is not a whole number of cipher blocks",
                data.len()
            )));
        }
        Ok(())
    }

    /// Encrypt `data` in place: sector `first_sector` and those after it (the last piece
    /// may be shorter than a sector, but must be whole 16-byte blocks).
    pub fn encrypt(&self, first_sector: u64, data: &mut [u8]) -> Result<()> {
        Self::check_len(data)?;
        self.run(first_sector, data, true);
        Ok(())
    }

    /// Decrypt `data` in place, as [`encrypt`](Self::encrypt) encrypted it.
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) -> Result<()> {
        Self::check_len(data)?;
        self.run(first_sector, data, false);
        Ok(())
    }

    fn run(&self, first_sector: u64, data: &mut [u8], encrypt: bool) {
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads =
            *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if data.len() < PARALLEL_MIN_BYTES || threads < 2 {
            return self.run_serial(first_sector, data, encrypt);
        }
        // Split at sector boundaries into one piece per core.
        let per = data
            .len()
            .div_ceil(threads)
            .next_multiple_of(SECTOR_SIZE as usize);
        std::thread::scope(|s| {
            for (i, piece) in data.chunks_mut(per).enumerate() {
                let first = first_sector + (i * per) as u64 / SECTOR_SIZE;
                s.spawn(move || self.run_serial(first, piece, encrypt));
            }
        });
    }

    fn run_serial(&self, first_sector: u64, data: &mut [u8], encrypt: bool) {
        for (i, sector) in data.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            let iv = self.iv(first_sector.wrapping_add(i as u64));
            if encrypt {
                self.engine.encrypt(sector, &iv);
            } else {
                self.engine.decrypt(sector, &iv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: &str, key_bytes: usize) -> CipherSpec {
        CipherSpec::from_luks("aes", mode, key_bytes).unwrap()
    }

    #[test]
    fn xts_aes_128_matches_the_ieee_1619_vector_4() {
        // IEEE P1619 XTS-AES-128 vector 4: keys 2718..., 3141..., data unit 0, plaintext
        // bytes 0..=255 twice; first 16 ciphertext bytes.
        let key: Vec<u8> = [
            "27182818284590452353602874713526",
            "31415926535897932384626433832795",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        let c = SectorCipher::new(spec("xts-plain64", 32), &key).unwrap();
        let mut data: Vec<u8> = (0..512).map(|i| i as u8).collect();
        c.encrypt(0, &mut data).unwrap();
        assert_eq!(
            &data[..16],
            &[
                0x27, 0xa7, 0x47, 0x9b, 0xef, 0xa1, 0xd4, 0x76, 0x48, 0x9f, 0x30, 0x8c, 0xd4, 0xcf,
                0xa6, 0xe2
            ]
        );
        c.decrypt(0, &mut data).unwrap();
        assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn every_mode_round_trips_and_depends_on_the_sector_number() {
        for (mode, kb) in [
            ("xts-plain64", 64),
            ("xts-plain", 32),
            ("cbc-plain64", 16),
            ("cbc-essiv:sha256", 32),
            ("cbc-plain", 24),
            ("ecb", 16),
        ] {
            let key: Vec<u8> = (0..kb as u8).collect();
            let c = SectorCipher::new(spec(mode, kb), &key).unwrap();
            let plain = vec![7u8; 1024 + 256];
            let mut a = plain.clone();
            c.encrypt(5, &mut a).unwrap();
            assert_ne!(a, plain, "{mode}");
            let mut b = plain.clone();
            c.encrypt(6, &mut b).unwrap();
            if mode != "ecb" {
                assert_ne!(a[..512], b[..512], "{mode}: the IV follows the sector");
            }
            c.decrypt(5, &mut a).unwrap();
            assert_eq!(a, plain, "{mode}");
        }
    }

    #[test]
    fn large_buffers_encrypt_the_same_on_many_threads_as_on_one() {
        let key = [3u8; 64];
        let c = SectorCipher::new(CipherSpec::DEFAULT, &key).unwrap();
        let mut big = vec![1u8; 1 << 20];
        c.encrypt(9, &mut big).unwrap();
        let mut serial = vec![1u8; 1 << 20];
        c.run_serial(9, &mut serial, true);
        assert_eq!(big, serial);
    }

    #[test]
    fn unusable_specs_are_refused_with_a_reason() {
        let e = |n: &str, m: &str, k| CipherSpec::from_luks(n, m, k).unwrap_err().to_string();
        assert!(e("serpent", "xts-plain64", 64).contains("serpent"));
        assert!(e("aes", "xts-plain64", 40).contains("40-byte"));
        assert!(e("aes", "cbc-essiv:sha1", 16).contains("essiv"));
        assert!(e("aes", "ctr-plain64", 16).contains("ctr"));
        assert!(e("aes", "cbc-bogus", 16).contains("bogus"));
        let c = SectorCipher::new(CipherSpec::DEFAULT, &[0; 64]).unwrap();
        assert!(c.encrypt(0, &mut [0u8; 20]).is_err());
        assert!(SectorCipher::new(CipherSpec::DEFAULT, &[0; 32]).is_err());
    }
}
