//! What a sector cipher is, as LUKS1 and qemu-img name it: the block cipher and its key
//! size ([`CipherAlg`]: AES, Twofish and Serpent with 128, 192 or 256-bit keys, CAST5 with
//! 128), the mode ([`Mode`]: XTS, CBC, ECB, CTR), the IV generator ([`IvGenAlg`]: plain,
//! plain64, ESSIV with a hash), and the rules tying them together ([`CipherSpec`]).
//!
//! The names are the ones qemu-img's `encrypt.*` options take; a LUKS1 header spells the
//! same thing as a family name (`serpent`), a mode string (`xts-essiv:sha256`) and a key
//! size, which [`CipherSpec::from_luks`] reads back.

use super::Hash;
use crate::error::{Error, Result};

/// The block cipher with its key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
    /// Twofish with a 128-bit key.
    Twofish128,
    /// Twofish with a 192-bit key.
    Twofish192,
    /// Twofish with a 256-bit key.
    Twofish256,
    /// Serpent with a 128-bit key.
    Serpent128,
    /// Serpent with a 192-bit key.
    Serpent192,
    /// Serpent with a 256-bit key.
    Serpent256,
    /// CAST5 (CAST-128) with a 128-bit key; its blocks are 8 bytes.
    Cast5_128,
}

impl CipherAlg {
    /// Every algorithm, in qemu-img's order.
    pub const ALL: [CipherAlg; 10] = [
        CipherAlg::Aes128,
        CipherAlg::Aes192,
        CipherAlg::Aes256,
        CipherAlg::Twofish128,
        CipherAlg::Twofish192,
        CipherAlg::Twofish256,
        CipherAlg::Serpent128,
        CipherAlg::Serpent192,
        CipherAlg::Serpent256,
        CipherAlg::Cast5_128,
    ];

    /// qemu-img's name (`cipher-alg`).
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
            CipherAlg::Twofish128 => "twofish-128",
            CipherAlg::Twofish192 => "twofish-192",
            CipherAlg::Twofish256 => "twofish-256",
            CipherAlg::Serpent128 => "serpent-128",
            CipherAlg::Serpent192 => "serpent-192",
            CipherAlg::Serpent256 => "serpent-256",
            CipherAlg::Cast5_128 => "cast5-128",
        }
    }

    /// The family name a LUKS1 header stores (`aes`, `twofish`, `serpent`, `cast5`).
    pub fn luks_name(self) -> &'static str {
        self.name().split('-').next().unwrap_or("")
    }

    /// The family as QEMU's messages spell it.
    fn family_title(self) -> &'static str {
        match self.luks_name() {
            "aes" => "AES",
            "twofish" => "Twofish",
            "serpent" => "Serpent",
            _ => "CAST5",
        }
    }

    /// Bytes of one key of this algorithm.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 | CipherAlg::Twofish128 | CipherAlg::Serpent128 => 16,
            CipherAlg::Cast5_128 => 16,
            CipherAlg::Aes192 | CipherAlg::Twofish192 | CipherAlg::Serpent192 => 24,
            CipherAlg::Aes256 | CipherAlg::Twofish256 | CipherAlg::Serpent256 => 32,
        }
    }

    /// Bytes of one cipher block (and of an IV).
    pub fn block_len(self) -> usize {
        match self {
            CipherAlg::Cast5_128 => 8,
            _ => 16,
        }
    }

    /// The algorithm of LUKS family `family` whose key is `len` bytes.
    pub fn of_family(family: &str, len: usize) -> Option<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.luks_name() == family && a.key_len() == len)
    }

    /// The algorithm qemu-img names `name` (`aes-256`; `aes` alone is not a name there).
    pub fn parse(name: &str) -> Result<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::unsupported(format!("cipher algorithm '{name}'")))
    }

    /// The cipher of the same family keyed by a digest of `hash` (ESSIV's), with QEMU's
    /// messages when there is none.
    pub fn essiv_alg(self, hash: Hash) -> Result<CipherAlg> {
        if self == CipherAlg::Cast5_128 {
            return Err(Error::unsupported(format!(
                "Cipher {} not supported with essiv",
                self.name()
            )));
        }
        CipherAlg::of_family(self.luks_name(), hash.digest_len()).ok_or_else(|| {
            Error::unsupported(format!(
                "No {} cipher with key size {} available",
                self.family_title(),
                hash.digest_len()
            ))
        })
    }
}

/// The block cipher mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Electronic codebook (no IV).
    Ecb,
    /// Cipher block chaining, restarted at each sector with its IV.
    Cbc,
    /// XEX with ciphertext stealing; the IV is the tweak; the key holds two cipher keys.
    Xts,
    /// Counter mode: the IV is the first counter block, counted up as one big-endian
    /// number per block.
    Ctr,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Ecb, Mode::Cbc, Mode::Xts, Mode::Ctr];

    /// The name in LUKS and qemu-img (`cipher-mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ecb => "ecb",
            Mode::Cbc => "cbc",
            Mode::Xts => "xts",
            Mode::Ctr => "ctr",
        }
    }

    /// The mode named `name`.
    pub fn parse(name: &str) -> Result<Mode> {
        Mode::ALL
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
    /// The plain64 IV encrypted (ECB) with the same cipher family keyed by the hash of
    /// the key.
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

    /// The spec a LUKS1 header describes: cipher family `name` (`aes`), mode string
    /// `mode` (`xts-plain64`, `cbc-essiv:sha256`, `ecb`) and key size `key_bytes`.
    pub fn from_luks(name: &str, mode: &str, key_bytes: usize) -> Result<CipherSpec> {
        if CipherAlg::of_family(name, 16).is_none() {
            return Err(Error::unsupported(format!(
                "LUKS cipher '{name}' (vdisk supports aes, twofish, serpent and cast5)"
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
        let alg = CipherAlg::of_family(name, per_key)
            .filter(|_| mode_kind != Mode::Xts || key_bytes % 2 == 0)
            .ok_or_else(|| {
                Error::unsupported(format!("{name}-{mode_name} with a {key_bytes}-byte key"))
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

    /// Refuse combinations no cipher can be built for, with QEMU's messages: XTS over a
    /// cipher whose blocks are not 16 bytes, ESSIV without a hash or with a hash whose
    /// digest is no key size of the family.
    pub fn validate(&self) -> Result<()> {
        if self.mode == Mode::Xts && self.alg.block_len() != 16 {
            return Err(Error::unsupported("Unsupported cipher mode xts"));
        }
        match (self.ivgen, self.ivgen_hash) {
            (IvGenAlg::Essiv, None) => Err(Error::invalid(
                "the essiv IV generator needs a hash (ivgen-hash-alg)",
            )),
            (IvGenAlg::Essiv, Some(h)) => self.alg.essiv_alg(h).map(|_| ()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luks_names_map_to_algorithms_by_family_and_key_size() {
        for a in CipherAlg::ALL {
            assert_eq!(CipherAlg::parse(a.name()).unwrap(), a);
            assert_eq!(CipherAlg::of_family(a.luks_name(), a.key_len()), Some(a));
        }
        assert_eq!(CipherAlg::of_family("cast5", 32), None);
        let s = CipherSpec::from_luks("serpent", "xts-essiv:md5", 32).unwrap();
        assert_eq!(
            (s.alg, s.mode, s.ivgen, s.ivgen_hash),
            (
                CipherAlg::Serpent128,
                Mode::Xts,
                IvGenAlg::Essiv,
                Some(Hash::Md5)
            )
        );
        assert_eq!(s.luks_mode(), "xts-essiv:md5");
        let c = CipherSpec::from_luks("cast5", "ctr-plain64", 16).unwrap();
        assert_eq!((c.alg, c.mode), (CipherAlg::Cast5_128, Mode::Ctr));
    }

    #[test]
    fn combinations_qemu_refuses_are_refused_with_its_messages() {
        let e = |n: &str, m: &str, k| CipherSpec::from_luks(n, m, k).unwrap_err().to_string();
        assert!(e("cast5", "xts-plain64", 32).contains("Unsupported cipher mode xts"));
        assert!(e("cast5", "cbc-essiv:sha256", 16).contains("cast5-128 not supported with essiv"));
        assert!(e("twofish", "cbc-essiv:sha1", 16)
            .contains("No Twofish cipher with key size 20 available"));
        assert!(e("blowfish", "cbc-plain", 16).contains("blowfish"));
    }
}
