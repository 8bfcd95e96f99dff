//! LUKS1 key management over a header region held in memory: unlocking the master key
//! with a passphrase, laying out a new header with one key slot, adding and erasing key
//! slots, and the `encrypt` block of `info`.
//!
//! A region is the header followed by the key material of the eight slots, each slot's
//! material starting on a 4 KiB boundary, as qemu-img lays it out; for qcow2 the region is
//! a run of clusters named by a header extension. Unlocking a slot: PBKDF2 of the
//! passphrase with the slot's salt and iterations gives the slot key, which decrypts the
//! slot's material (sector numbers counted from the material's start); merging the
//! anti-forensic stripes gives a candidate master key, accepted when its PBKDF2 digest
//! matches the header's (compared in constant time).

use super::luks_header::{KeySlot, LuksHeader, DIGEST_LEN, HEADER_LEN, NUM_SLOTS, SALT_LEN};
use super::sector::{CipherSpec, SectorCipher};
use super::{afsplit, random_bytes, Hash, Passphrase, LUKS_STRIPES, SECTOR_SIZE};
use crate::error::{Error, Result};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Alignment of each key slot's material, as qemu-img and cryptsetup place it.
const SLOT_ALIGN: u64 = 4096;
/// Fewest PBKDF2 iterations of a new key slot or master-key digest (qemu-img's floor).
const MIN_ITERATIONS: u32 = 1000;

/// A LUKS1 header, validated against its region.
#[derive(Debug, Clone)]
pub struct Luks {
    /// The header fields.
    pub header: LuksHeader,
    /// The data cipher it names.
    pub spec: CipherSpec,
    /// The hash of its PBKDF2 and splitter.
    pub hash: Hash,
}

/// The message for a passphrase no key slot takes (qemu-img's).
pub const WRONG_PASSPHRASE: &str = "Invalid password, cannot unlock any keyslot";

impl Luks {
    /// Parse and validate the header at the start of `region` (the whole region, whose
    /// first byte is at file offset `base`).
    pub fn parse(region: &[u8], base: u64) -> Result<Luks> {
        let header = LuksHeader::parse(region, base)?;
        let (spec, hash) = header.validate(region.len() as u64, base)?;
        Ok(Luks { header, spec, hash })
    }

    fn material_range(&self, slot: &KeySlot) -> std::ops::Range<usize> {
        let start = u64::from(slot.key_offset) * SECTOR_SIZE;
        start as usize..(start + self.header.material_len()) as usize
    }

    /// Whether `key` is the master key (its digest matches, compared in constant time).
    fn is_master_key(&self, key: &[u8]) -> bool {
        let mut d = Zeroizing::new([0u8; DIGEST_LEN]);
        let h = &self.header;
        self.hash
            .pbkdf2(key, &h.mk_digest_salt, h.mk_digest_iter, &mut d[..]);
        d[..].ct_eq(&h.mk_digest[..]).into()
    }

    /// The master key held by `slot` for `pass`, if the passphrase opens it.
    fn try_slot(
        &self,
        region: &[u8],
        slot: &KeySlot,
        pass: &Passphrase,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let kb = self.header.key_bytes as usize;
        let mut slot_key = Zeroizing::new(vec![0u8; kb]);
        self.hash
            .pbkdf2(pass.bytes(), &slot.salt, slot.iterations, &mut slot_key);
        let range = self.material_range(slot);
        let mut material = Zeroizing::new(region[range].to_vec());
        SectorCipher::new(self.spec, &slot_key)?.decrypt(0, &mut material)?;
        let key = afsplit::merge(self.hash, kb, slot.stripes, &material)?;
        Ok(self.is_master_key(&key).then_some(key))
    }

    /// The master key, from the first active slot `pass` opens (with its index).
    pub fn unlock(&self, region: &[u8], pass: &Passphrase) -> Result<(usize, Zeroizing<Vec<u8>>)> {
        for (n, slot) in self
            .header
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
        {
            if let Some(key) = self.try_slot(region, slot, pass)? {
                return Ok((n, key));
            }
        }
        Err(Error::invalid(WRONG_PASSPHRASE))
    }

    /// The active slots `pass` opens.
    pub fn slots_opened_by(&self, region: &[u8], pass: &Passphrase) -> Result<Vec<usize>> {
        let mut opened = Vec::new();
        for (n, slot) in self
            .header
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
        {
            if self.try_slot(region, slot, pass)?.is_some() {
                opened.push(n);
            }
        }
        Ok(opened)
    }

    /// Where slot `n`'s key material lies in the region.
    pub fn slot_material(&self, n: usize) -> Option<std::ops::Range<usize>> {
        self.header.slots.get(n).map(|s| self.material_range(s))
    }

    /// The data cipher keyed with the master key `key`.
    pub fn cipher(&self, key: &[u8]) -> Result<SectorCipher> {
        SectorCipher::new(self.spec, key)
    }

    /// Store `key` (the master key) in free slot `n` for `pass`, with PBKDF2 tuned to
    /// `iter_time_ms`; rewrites the slot's material and the header in `region`.
    pub fn set_slot(
        &mut self,
        region: &mut [u8],
        n: usize,
        key: &[u8],
        pass: &Passphrase,
        iter_time_ms: u64,
    ) -> Result<()> {
        let hash = self.hash;
        let slot = self.header.slots.get(n).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "Invalid keyslot {n} is specified, it must be in range 0..{}",
                NUM_SLOTS - 1
            ))
        })?;
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let iterations = hash.pbkdf2_iterations_for(iter_time_ms, MIN_ITERATIONS);
        let mut slot_key = Zeroizing::new(vec![0u8; key.len()]);
        hash.pbkdf2(pass.bytes(), &salt, iterations, &mut slot_key);
        let mut material = afsplit::split(hash, key, LUKS_STRIPES)?;
        SectorCipher::new(self.spec, &slot_key)?.encrypt(0, &mut material)?;
        let range = self.material_range(&slot);
        region[range].copy_from_slice(&material);
        self.header.slots[n] = KeySlot {
            active: true,
            iterations,
            salt,
            ..slot
        };
        region[..HEADER_LEN].copy_from_slice(&self.header.write());
        Ok(())
    }

    /// Free slot `n`: its material is overwritten with random bytes, then the header says
    /// so.
    pub fn erase_slot(&mut self, region: &mut [u8], n: usize) -> Result<()> {
        let slot = self
            .header
            .slots
            .get(n)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("Invalid keyslot {n}")))?;
        let range = self.material_range(&slot);
        random_bytes(&mut region[range])?;
        self.header.slots[n] = KeySlot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            ..slot
        };
        region[..HEADER_LEN].copy_from_slice(&self.header.write());
        Ok(())
    }

    /// Bytes of the region a new header for `spec` needs: header and eight slots, each
    /// 4 KiB-aligned.
    pub fn region_len(spec: &CipherSpec) -> u64 {
        let material = spec.key_len() as u64 * u64::from(LUKS_STRIPES);
        SLOT_ALIGN + NUM_SLOTS as u64 * material.next_multiple_of(SLOT_ALIGN)
    }

    /// A new header for `spec` and `hash` with a random master key held by slot 0 for
    /// `pass`: the region's bytes (free slots filled with random bytes) and the master key.
    pub fn create(
        spec: CipherSpec,
        hash: Hash,
        pass: &Passphrase,
        iter_time_ms: u64,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        spec.validate()?;
        let kb = spec.key_len();
        let material = kb as u64 * u64::from(LUKS_STRIPES);
        if material % SECTOR_SIZE != 0 {
            // qemu-img 10 aborts on such a key slot (it encrypts whole sectors only), so an
            // image made with one could never be opened by QEMU.
            return Err(Error::unsupported(format!(
                "{} in {} mode: a key slot's material ({material} bytes) is not a whole number of {SECTOR_SIZE}-byte sectors, which QEMU cannot open",
                spec.alg.name(),
                spec.mode.name()
            )));
        }
        let mut key = Zeroizing::new(vec![0u8; kb]);
        random_bytes(&mut key)?;
        let region_len = Self::region_len(&spec);
        let mut region = vec![0u8; region_len as usize];
        random_bytes(&mut region[HEADER_LEN..])?;
        let stride = (kb as u64 * u64::from(LUKS_STRIPES)).next_multiple_of(SLOT_ALIGN);
        let slots = (0..NUM_SLOTS as u64)
            .map(|n| KeySlot {
                active: false,
                iterations: 0,
                salt: [0; SALT_LEN],
                key_offset: ((SLOT_ALIGN + n * stride) / SECTOR_SIZE) as u32,
                stripes: LUKS_STRIPES,
            })
            .collect();
        let mut mk_digest_salt = [0u8; SALT_LEN];
        random_bytes(&mut mk_digest_salt)?;
        let mk_digest_iter = hash.pbkdf2_iterations_for(iter_time_ms / 8, MIN_ITERATIONS);
        let mut mk_digest = [0u8; DIGEST_LEN];
        hash.pbkdf2(&key, &mk_digest_salt, mk_digest_iter, &mut mk_digest);
        let header = LuksHeader {
            cipher_name: spec.alg.luks_name().into(),
            cipher_mode: spec.luks_mode(),
            hash_spec: hash.name().into(),
            payload_offset: (region_len / SECTOR_SIZE) as u32,
            key_bytes: kb as u32,
            mk_digest,
            mk_digest_salt,
            mk_digest_iter,
            uuid: crate::uuid::to_string(&crate::uuid::random_uuid()),
            slots,
        };
        let mut luks = Luks { header, spec, hash };
        luks.set_slot(&mut region, 0, &key, pass, iter_time_ms)?;
        Ok((region, key))
    }

    /// qemu-img's `encrypt` object for `info`, keys in the order qemu-img prints them.
    pub fn info_json(&self) -> serde_json::Value {
        let h = &self.header;
        let slots: Vec<serde_json::Value> = h
            .slots
            .iter()
            .map(|s| {
                let off = u64::from(s.key_offset) * SECTOR_SIZE;
                if s.active {
                    serde_json::json!({"active": true, "iters": s.iterations, "key-offset": off, "stripes": s.stripes})
                } else {
                    serde_json::json!({"active": false, "key-offset": off})
                }
            })
            .collect();
        let mut m = serde_json::Map::new();
        m.insert("ivgen-alg".into(), self.spec.ivgen.name().into());
        m.insert("detached-header".into(), false.into());
        m.insert("hash-alg".into(), self.hash.name().into());
        m.insert("cipher-alg".into(), self.spec.alg.name().into());
        m.insert("uuid".into(), h.uuid.clone().into());
        if let Some(ih) = self.spec.ivgen_hash {
            m.insert("ivgen-hash-alg".into(), ih.name().into());
        }
        m.insert("format".into(), "luks".into());
        m.insert("cipher-mode".into(), self.spec.mode.name().into());
        m.insert("slots".into(), slots.into());
        m.insert(
            "payload-offset".into(),
            (u64::from(h.payload_offset) * SECTOR_SIZE).into(),
        );
        m.insert("master-key-iters".into(), h.mk_digest_iter.into());
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sector::{CipherAlg, IvGenAlg, Mode};

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.as_bytes().to_vec())
    }

    #[test]
    fn a_new_header_unlocks_with_its_passphrase_only() {
        let (region, key) =
            Luks::create(CipherSpec::DEFAULT, Hash::Sha256, &pass("PASS"), 1).unwrap();
        assert_eq!(region.len(), 2068480, "qemu-img's layout for aes-256-xts");
        let luks = Luks::parse(&region, 0).unwrap();
        let (slot, got) = luks.unlock(&region, &pass("PASS")).unwrap();
        assert_eq!((slot, got.as_slice()), (0, key.as_slice()));
        let e = luks.unlock(&region, &pass("pass")).unwrap_err();
        assert_eq!(e.to_string(), WRONG_PASSPHRASE);
        assert_eq!(luks.header.slots[1].key_offset, 512);
        assert_eq!(luks.info_json()["payload-offset"], 2068480);
    }

    #[test]
    fn slots_are_added_and_erased() {
        let spec = CipherSpec {
            alg: CipherAlg::Aes128,
            mode: Mode::Cbc,
            ivgen: IvGenAlg::Essiv,
            ivgen_hash: Some(Hash::Sha256),
        };
        let (mut region, key) = Luks::create(spec, Hash::Sha1, &pass("a"), 1).unwrap();
        let mut luks = Luks::parse(&region, 0).unwrap();
        assert_eq!(luks.header.cipher_mode, "cbc-essiv:sha256");
        luks.set_slot(&mut region, 3, &key, &pass("b"), 1).unwrap();
        let luks2 = Luks::parse(&region, 0).unwrap();
        assert_eq!(luks2.unlock(&region, &pass("b")).unwrap().0, 3);
        luks.erase_slot(&mut region, 0).unwrap();
        let luks3 = Luks::parse(&region, 0).unwrap();
        assert!(luks3.unlock(&region, &pass("a")).is_err());
        assert_eq!(
            luks3.unlock(&region, &pass("b")).unwrap().1.as_slice(),
            key.as_slice()
        );
    }
}
