//! Sector ciphers: a block cipher (AES, Twofish, Serpent, CAST5) in XTS, CBC, ECB or CTR
//! mode, with the IV of each 512-byte sector made by the plain, plain64 or ESSIV
//! generator, as LUKS1 names them (`aes` + `xts-plain64`, `serpent` + `cbc-essiv:sha256`).
//!
//! The block ciphers and the modes come from RustCrypto crates (`aes`, `twofish`,
//! `serpent`, `cast5`, `xts-mode`, `cbc`, `ctr`); ECB is the block cipher applied to each
//! block in turn. This file only picks them, derives the IV of each sector and walks a
//! buffer sector by sector (a last piece shorter than a sector, as the end of a key
//! slot's material can be, is processed with that sector's IV).

pub use super::cipher_spec::{CipherAlg, CipherSpec, IvGenAlg, Mode};
use super::SECTOR_SIZE;
use crate::error::{Error, Result};
use aes::cipher::consts::{U16, U8};
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit, StreamCipher,
};

/// One mode of one block cipher, keyed. `iv` is one block long (empty for ECB).
trait Engine: Send + Sync {
    fn encrypt(&self, data: &mut [u8], iv: &[u8]);
    fn decrypt(&self, data: &mut [u8], iv: &[u8]);
}

/// What a block cipher must offer to be used here.
trait BlockAlg:
    BlockCipher + BlockEncrypt + BlockDecrypt + KeyInit + Clone + Send + Sync + 'static
{
}
impl<T> BlockAlg for T where
    T: BlockCipher + BlockEncrypt + BlockDecrypt + KeyInit + Clone + Send + Sync + 'static
{
}

struct Ecb<C>(C);
struct Cbc<C>(C);
struct Ctr128<C>(C);
struct Ctr64<C>(C);
struct Xts<C: BlockAlg + BlockSizeUser<BlockSize = U16>>(xts_mode::Xts128<C>);

impl<C: BlockAlg> Engine for Ecb<C> {
    fn encrypt(&self, data: &mut [u8], _iv: &[u8]) {
        for b in data.chunks_exact_mut(C::block_size()) {
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, data: &mut [u8], _iv: &[u8]) {
        for b in data.chunks_exact_mut(C::block_size()) {
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
        }
    }
}

impl<C: BlockAlg> Engine for Cbc<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8]) {
        let mut e =
            cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), GenericArray::from_slice(iv));
        for b in data.chunks_exact_mut(C::block_size()) {
            e.encrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8]) {
        let mut d =
            cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), GenericArray::from_slice(iv));
        for b in data.chunks_exact_mut(C::block_size()) {
            d.decrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
}

// A counter of a whole block never runs out within one sector, so the keystream errors
// of `try_apply_keystream` cannot happen; they would leave the data unchanged.
impl<C: BlockAlg + BlockSizeUser<BlockSize = U16>> Engine for Ctr128<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8]) {
        let core = ctr::CtrCore::<C, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.0.clone(),
            GenericArray::from_slice(iv),
        );
        let mut c = ctr::Ctr128BE::<C>::from_core(core);
        let _ = c.try_apply_keystream(data);
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8]) {
        self.encrypt(data, iv)
    }
}

impl<C: BlockAlg + BlockSizeUser<BlockSize = U8>> Engine for Ctr64<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8]) {
        let core = ctr::CtrCore::<C, ctr::flavors::Ctr64BE>::inner_iv_init(
            self.0.clone(),
            GenericArray::from_slice(iv),
        );
        let mut c = ctr::Ctr64BE::<C>::from_core(core);
        let _ = c.try_apply_keystream(data);
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8]) {
        self.encrypt(data, iv)
    }
}

impl<C: BlockAlg + BlockSizeUser<BlockSize = U16>> Engine for Xts<C> {
    fn encrypt(&self, data: &mut [u8], iv: &[u8]) {
        let mut tweak = [0u8; 16];
        tweak.copy_from_slice(iv);
        self.0.encrypt_sector(data, tweak);
    }
    fn decrypt(&self, data: &mut [u8], iv: &[u8]) {
        let mut tweak = [0u8; 16];
        tweak.copy_from_slice(iv);
        self.0.decrypt_sector(data, tweak);
    }
}

fn bad_key() -> Error {
    Error::invalid("encryption key of the wrong length for its cipher")
}

fn new_key<C: BlockAlg>(k: &[u8]) -> Result<C> {
    C::new_from_slice(k).map_err(|_| bad_key())
}

/// The engines of a cipher with 16-byte blocks: every mode.
fn engine16<C: BlockAlg + BlockSizeUser<BlockSize = U16>>(
    mode: Mode,
    key: &[u8],
) -> Result<Box<dyn Engine>> {
    Ok(match mode {
        Mode::Ecb => Box::new(Ecb(new_key::<C>(key)?)),
        Mode::Cbc => Box::new(Cbc(new_key::<C>(key)?)),
        Mode::Ctr => Box::new(Ctr128(new_key::<C>(key)?)),
        Mode::Xts => {
            let (k1, k2) = key.split_at(key.len() / 2);
            Box::new(Xts(xts_mode::Xts128::new(
                new_key::<C>(k1)?,
                new_key::<C>(k2)?,
            )))
        }
    })
}

/// The engines of a cipher with 8-byte blocks: every mode but XTS.
fn engine8<C: BlockAlg + BlockSizeUser<BlockSize = U8>>(
    mode: Mode,
    key: &[u8],
) -> Result<Box<dyn Engine>> {
    Ok(match mode {
        Mode::Ecb => Box::new(Ecb(new_key::<C>(key)?)),
        Mode::Cbc => Box::new(Cbc(new_key::<C>(key)?)),
        Mode::Ctr => Box::new(Ctr64(new_key::<C>(key)?)),
        Mode::Xts => return Err(Error::unsupported("Unsupported cipher mode xts")),
    })
}

fn engine_for(alg: CipherAlg, mode: Mode, key: &[u8]) -> Result<Box<dyn Engine>> {
    if key.len() != mode.key_len(alg) {
        return Err(bad_key());
    }
    match alg {
        CipherAlg::Aes128 => engine16::<aes::Aes128>(mode, key),
        CipherAlg::Aes192 => engine16::<aes::Aes192>(mode, key),
        CipherAlg::Aes256 => engine16::<aes::Aes256>(mode, key),
        CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => {
            engine16::<twofish::Twofish>(mode, key)
        }
        CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => {
            engine16::<serpent::Serpent>(mode, key)
        }
        CipherAlg::Cast5_128 => engine8::<cast5::Cast5>(mode, key),
    }
}

/// A keyed sector cipher. It holds the expanded key (wiped on drop through the cipher
/// crates' `zeroize` feature) but not the key bytes themselves.
pub struct SectorCipher {
    spec: CipherSpec,
    engine: Box<dyn Engine>,
    /// The ESSIV cipher (the same family in ECB mode, keyed by the hash of the key).
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
                let alg = spec.alg.essiv_alg(h)?;
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

    /// The IV of `sector` (the first block-length bytes count; none in ECB mode).
    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.spec.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 | IvGenAlg::Essiv => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        }
        if let Some(e) = &self.essiv {
            e.encrypt(&mut iv[..self.spec.alg.block_len()], &[]);
        }
        iv
    }

    fn iv_len(&self) -> usize {
        match self.spec.mode {
            Mode::Ecb => 0,
            _ => self.spec.alg.block_len(),
        }
    }

    fn check_len(&self, data: &[u8]) -> Result<()> {
        if data.len() % self.spec.alg.block_len() != 0 {
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
        self.check_len(data)?;
        self.run(first_sector, data, true);
        Ok(())
    }

    /// Decrypt `data` in place, as [`encrypt`](Self::encrypt) encrypted it.
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) -> Result<()> {
        self.check_len(data)?;
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
            let iv = &iv[..self.iv_len()];
            if encrypt {
                self.engine.encrypt(sector, iv);
            } else {
                self.engine.decrypt(sector, iv);
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

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ctr_counts_the_whole_block_big_endian_as_nist_sp800_38a_f51() {
        // AES-128 CTR, the first two blocks of NIST SP 800-38A F.5.1: the counter's last
        // byte goes from 0xff to 0x00 with a carry into the byte before it.
        let e = engine_for(
            CipherAlg::Aes128,
            Mode::Ctr,
            &hex("2b7e151628aed2a6abf7158809cf4f3c"),
        )
        .unwrap();
        let mut data = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        e.encrypt(&mut data, &hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"));
        assert_eq!(
            data,
            hex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")
        );
    }

    #[test]
    fn twofish_ecb_matches_the_published_zero_key_vector() {
        let e = engine_for(CipherAlg::Twofish128, Mode::Ecb, &[0; 16]).unwrap();
        let mut block = [0u8; 16];
        e.encrypt(&mut block, &[]);
        assert_eq!(block.to_vec(), hex("9f589f5cf6122c32b6bfec2f2ae8c35a"));
    }

    #[test]
    fn cast5_uses_eight_byte_blocks_and_ivs() {
        let spec = CipherSpec::from_luks("cast5", "cbc-plain64", 16).unwrap();
        let c = SectorCipher::new(spec, &[7; 16]).unwrap();
        assert_eq!(c.iv_len(), 8);
        let mut a = vec![3u8; 520];
        c.encrypt(1, &mut a).unwrap();
        c.decrypt(1, &mut a).unwrap();
        assert_eq!(a, vec![3u8; 520]);
        assert!(c.encrypt(1, &mut [0u8; 12]).is_err());
    }

    #[test]
    fn unusable_specs_are_refused_with_a_reason() {
        let e = |n: &str, m: &str, k| CipherSpec::from_luks(n, m, k).unwrap_err().to_string();
        assert!(e("blowfish", "xts-plain64", 64).contains("blowfish"));
        assert!(e("aes", "xts-plain64", 40).contains("40-byte"));
        assert!(e("aes", "cbc-essiv:sha1", 16).contains("key size 20"));
        assert!(e("aes", "gcm-plain64", 16).contains("gcm"));
        assert!(e("aes", "cbc-bogus", 16).contains("bogus"));
        let c = SectorCipher::new(CipherSpec::DEFAULT, &[0; 64]).unwrap();
        assert!(c.encrypt(0, &mut [0u8; 20]).is_err());
        assert!(SectorCipher::new(CipherSpec::DEFAULT, &[0; 32]).is_err());
    }
}
