//! Making an image encrypted and changing its key slots: the `encrypt.*` options of
//! `create` ([`EncryptOptions`]) and of `amend` ([`KeySlotChange`]).
//!
//! A new LUKS image gets its header region in fresh clusters (allocated, written and
//! synced with their refcounts) before one header write sets the crypt method and the
//! extension: a cut before that write leaves an unencrypted empty image with leaked
//! clusters. A key slot change rewrites the region in place: the slot's material first,
//! then the LUKS header sector, as QEMU does.

use super::encryption::{self, Crypt, CRYPT_AES, CRYPT_LUKS};
use super::header::ext;
use super::{ioerr, Qcow2};
use crate::crypto::luks::Luks;
use crate::crypto::sector::{CipherAlg, CipherSpec, IvGenAlg, Mode};
use crate::crypto::{keyring, Hash, Passphrase};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// qemu-img's default PBKDF2 time for a key slot, in milliseconds.
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;

/// The `encrypt.*` options of `create` (and the deprecated `encryption=on`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptOptions {
    /// `luks` or `aes`; `None`: not encrypted.
    pub format: Option<String>,
    /// The ID of the secret holding the passphrase.
    pub key_secret: Option<String>,
    /// `encrypt.cipher-alg`.
    pub cipher_alg: Option<String>,
    /// `encrypt.cipher-mode`.
    pub cipher_mode: Option<String>,
    /// `encrypt.ivgen-alg`.
    pub ivgen_alg: Option<String>,
    /// `encrypt.ivgen-hash-alg`.
    pub ivgen_hash_alg: Option<String>,
    /// `encrypt.hash-alg`.
    pub hash_alg: Option<String>,
    /// `encrypt.iter-time` in milliseconds.
    pub iter_time: Option<u64>,
    /// Some `encrypt.` option besides the format was given.
    pub any_detail: bool,
}

fn bad_value(key: &str, value: &str) -> Error {
    Error::invalid(format!("Parameter '{key}' does not accept value '{value}'"))
}

impl EncryptOptions {
    /// Apply `key=value` if it is an encryption option (returns whether it was).
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        let v = Some(value.to_string());
        match key {
            "encryption" => {
                if matches!(value, "on" | "yes" | "true" | "y") {
                    self.format = Some("aes".into());
                }
                return Ok(true);
            }
            "encrypt.format" => match value {
                "luks" | "aes" => self.format = v,
                _ => return Err(bad_value("encrypt.format", value)),
            },
            "encrypt.key-secret" => self.key_secret = v,
            "encrypt.cipher-alg" => self.cipher_alg = v,
            "encrypt.cipher-mode" => self.cipher_mode = v,
            "encrypt.ivgen-alg" => self.ivgen_alg = v,
            "encrypt.ivgen-hash-alg" => self.ivgen_hash_alg = v,
            "encrypt.hash-alg" => self.hash_alg = v,
            "encrypt.iter-time" => {
                self.iter_time = Some(value.parse().map_err(|_| {
                    Error::invalid(format!(
                        "Parameter 'encrypt.iter-time' expects a number, not '{value}'"
                    ))
                })?)
            }
            _ => return Ok(false),
        }
        if key != "encrypt.format" {
            self.any_detail = true;
        }
        Ok(true)
    }

    /// Check the combination (qemu-img's messages), without needing the secret yet.
    pub fn validate(&self) -> Result<()> {
        match self.format.as_deref() {
            None if self.any_detail => Err(Error::invalid("Parameter 'encrypt.format' is missing")),
            Some("luks") => self.luks_params().map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The cipher and hash a new LUKS header gets.
    fn luks_params(&self) -> Result<(CipherSpec, Hash)> {
        let d = CipherSpec::DEFAULT;
        let alg = match self.cipher_alg.as_deref() {
            Some(a) => CipherAlg::parse(a).map_err(|_| bad_value("cipher-alg", a))?,
            None => d.alg,
        };
        let mode = match self.cipher_mode.as_deref() {
            Some(m) => Mode::parse(m).map_err(|_| bad_value("cipher-mode", m))?,
            None => d.mode,
        };
        let ivgen = match self.ivgen_alg.as_deref() {
            Some(g) => IvGenAlg::parse(g).map_err(|_| bad_value("ivgen-alg", g))?,
            None => d.ivgen,
        };
        let ivgen_hash = match (ivgen, self.ivgen_hash_alg.as_deref()) {
            (IvGenAlg::Essiv, h) => Some(
                Hash::parse(h.unwrap_or("sha256"))
                    .map_err(|_| bad_value("ivgen-hash-alg", h.unwrap_or("")))?,
            ),
            (_, _) => None,
        };
        let hash = match self.hash_alg.as_deref() {
            Some(h) => Hash::parse(h).map_err(|_| bad_value("hash-alg", h))?,
            None => Hash::Sha256,
        };
        let spec = CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash,
        };
        spec.validate()?;
        Ok((spec, hash))
    }

    /// The passphrase named by `encrypt.key-secret`.
    fn passphrase(&self) -> Result<Passphrase> {
        let id = self
            .key_secret
            .as_deref()
            .ok_or_else(|| Error::invalid(encryption::KEY_REQUIRED))?;
        keyring::secret(id)
    }

    /// Bytes of the LUKS header region a new image gets (0 when not LUKS). As qemu-img,
    /// the secret must be given and exist even to measure.
    pub fn header_region_bytes(&self) -> Result<u64> {
        if self.format.as_deref() != Some("luks") {
            return Ok(0);
        }
        self.passphrase()?;
        Ok(Luks::region_len(&self.luks_params()?.0))
    }

    /// Check that the secret exists (before anything is created).
    pub fn check_secret(&self) -> Result<()> {
        if self.format.is_some() {
            self.passphrase()?;
        }
        Ok(())
    }
}

impl<S: Storage> Qcow2<S> {
    /// Encrypt the (new, empty) image as `opts` says.
    pub(crate) fn enable_encryption(&mut self, opts: &EncryptOptions) -> Result<()> {
        let pass = opts.passphrase()?;
        match opts.format.as_deref() {
            Some("luks") => self.add_luks(opts, &pass),
            Some("aes") => {
                self.header.crypt_method = CRYPT_AES;
                self.write_header()?;
                self.crypt = Some(Crypt::unlocked_aes(&pass)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn add_luks(&mut self, opts: &EncryptOptions, pass: &Passphrase) -> Result<()> {
        let (spec, hash) = opts.luks_params()?;
        let iter_ms = opts.iter_time.unwrap_or(DEFAULT_ITER_TIME_MS);
        let (region, key) = Luks::create(spec, hash, pass, iter_ms)?;
        let len = region.len() as u64;
        let clusters = len.div_ceil(self.geo.cluster_size);
        let host = self.alloc_clusters(clusters)?;
        // The whole clusters are written: the tail past the region reads as zeros.
        let mut padded = region.clone();
        padded.resize((clusters * self.geo.cluster_size) as usize, 0);
        self.storage
            .write_at(&padded, host)
            .map_err(ioerr("writing the LUKS header"))?;
        self.flush_metadata()?;
        let luks = Luks::parse(&region, host)?;
        let mut ext_data = host.to_be_bytes().to_vec();
        ext_data.extend_from_slice(&len.to_be_bytes());
        self.header.set_extension(ext::CRYPTO, Some(ext_data));
        self.header.crypt_method = CRYPT_LUKS;
        self.write_header()?;
        self.crypt = Some(Crypt::unlocked_luks(luks, key, host, len)?);
        Ok(())
    }
}

/// The `encrypt.*` options of `amend`: add a key slot (`state=active` with
/// `new-secret`) or erase slots (`state=inactive` with `keyslot` or `old-secret`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySlotChange {
    /// `encrypt.state`: `Some(true)` active, `Some(false)` inactive.
    pub state: Option<bool>,
    /// `encrypt.new-secret`: the ID of the passphrase a new slot gets.
    pub new_secret: Option<String>,
    /// `encrypt.old-secret`: erase the slots this secret opens.
    pub old_secret: Option<String>,
    /// `encrypt.keyslot`: the one slot to change.
    pub keyslot: Option<i64>,
    /// `encrypt.iter-time` in milliseconds.
    pub iter_time: Option<u64>,
    /// Some `encrypt.` option was given.
    pub requested: bool,
    /// `amend --force`: allow overwriting an active slot, erasing the last active one
    /// (the data is lost for good) and erasing a slot that is already free, as qemu-img.
    pub force: bool,
}

impl KeySlotChange {
    /// Apply `key=value` if it is a key-slot option (returns whether it was).
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        let number = |what: &str| {
            value.parse::<i64>().map_err(|_| {
                Error::invalid(format!(
                    "Parameter '{what}' expects a number, not '{value}'"
                ))
            })
        };
        match key {
            "encrypt.state" => {
                self.state = Some(match value {
                    "active" => true,
                    "inactive" => false,
                    _ => return Err(bad_value("state", value)),
                })
            }
            "encrypt.new-secret" => self.new_secret = Some(value.to_string()),
            "encrypt.old-secret" => self.old_secret = Some(value.to_string()),
            "encrypt.keyslot" => self.keyslot = Some(number("keyslot")?),
            "encrypt.iter-time" => self.iter_time = Some(number("iter-time")?.max(0) as u64),
            _ => return Ok(false),
        }
        self.requested = true;
        Ok(true)
    }

    /// The slot named by `keyslot`, checked against the eight LUKS1 slots.
    fn slot(&self) -> Result<Option<usize>> {
        match self.keyslot {
            None => Ok(None),
            Some(n) if (0..8).contains(&n) => Ok(Some(n as usize)),
            Some(n) => Err(Error::invalid(format!(
                "Invalid keyslot {n} specified, must be between 0 and 7"
            ))),
        }
    }
}

impl<S: Storage> Qcow2<S> {
    /// Change the key slots of a LUKS image as `c` says. The slot's material is written
    /// and synced before the LUKS header sector that makes it count (or stop counting).
    pub(crate) fn amend_keyslots(&mut self, c: &KeySlotChange) -> Result<()> {
        let state = c
            .state
            .ok_or_else(|| Error::invalid("Parameter 'state' is missing"))?;
        let slot = c.slot()?;
        let Some(crypt) = self.crypt.as_ref() else {
            return Err(Error::invalid(
                "Image is not encrypted: there are no key slots to amend",
            ));
        };
        let (Some((luks, off, len)), Some(key)) = (crypt.luks.clone(), crypt.master_key.clone())
        else {
            return Err(Error::unsupported(
                "amending the key of a legacy AES-encrypted image",
            ));
        };
        let mut luks = luks;
        let mut region = encryption::read_region(&self.storage, off, len)?;
        let active: Vec<usize> = (0..8).filter(|&n| luks.header.slots[n].active).collect();
        let changed = if state {
            let id = c
                .new_secret
                .as_deref()
                .ok_or_else(|| Error::invalid("'new-secret' is required to activate a keyslot"))?;
            let pass = keyring::secret(id)?;
            let n = match slot {
                Some(n) if active.contains(&n) && !c.force => {
                    return Err(Error::invalid(format!(
                        "Refusing to overwrite active keyslot {n} - please erase it first"
                    )))
                }
                Some(n) => n,
                None => (0..8).find(|n| !active.contains(n)).ok_or_else(|| {
                    Error::invalid("Can't add a keyslot - all keyslots are in use")
                })?,
            };
            let ms = c.iter_time.unwrap_or(DEFAULT_ITER_TIME_MS);
            luks.set_slot(&mut region, n, &key, &pass, ms)?;
            vec![n]
        } else {
            let erase = self.slots_to_erase(&luks, &region, c, slot, &active)?;
            for &n in &erase {
                luks.erase_slot(&mut region, n)?;
            }
            erase
        };
        self.write_luks_changes(&luks, &region, off, &changed)?;
        if let Some(cr) = self.crypt.as_mut() {
            cr.luks = Some((luks, off, len));
        }
        Ok(())
    }

    /// The slots an erase (`state=inactive`) removes; never every active one (the data
    /// would be lost) nor a free one, as qemu-img refuses without `--force`.
    fn slots_to_erase(
        &self,
        luks: &Luks,
        region: &[u8],
        c: &KeySlotChange,
        slot: Option<usize>,
        active: &[usize],
    ) -> Result<Vec<usize>> {
        let erase = match (slot, c.old_secret.as_deref()) {
            (Some(n), _) if !active.contains(&n) && !c.force => {
                return Err(Error::invalid(format!(
                    "Given keyslot {n} is already erased (inactive) "
                )))
            }
            (Some(n), _) => {
                if active == [n] && !c.force {
                    return Err(Error::invalid(format!("Attempt to erase the only active keyslot {n} which will erase all the data in the image irreversibly - refusing operation")));
                }
                vec![n]
            }
            (None, Some(id)) => {
                let found = luks.slots_opened_by(region, &keyring::secret(id)?)?;
                if found.is_empty() {
                    return Err(Error::invalid(
                        "No keyslots match given (old) password for erase operation",
                    ));
                }
                if found.len() == active.len() && !c.force {
                    return Err(Error::invalid("All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation"));
                }
                found
            }
            (None, None) => {
                return Err(Error::invalid(
                    "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given",
                ))
            }
        };
        Ok(erase)
    }

    /// Write the material of `slots` from `region`, sync, then the LUKS header, sync.
    fn write_luks_changes(
        &mut self,
        luks: &Luks,
        region: &[u8],
        off: u64,
        slots: &[usize],
    ) -> Result<()> {
        let io = ioerr("writing the LUKS key slots");
        for &n in slots {
            if let Some(r) = luks.slot_material(n) {
                self.storage
                    .write_at(&region[r.clone()], off + r.start as u64)
                    .map_err(&io)?;
            }
        }
        self.storage.flush().map_err(&io)?;
        let header_len = crate::crypto::luks_header::HEADER_LEN;
        self.storage
            .write_at(&region[..header_len], off)
            .map_err(&io)?;
        self.storage.flush().map_err(&io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;
    use crate::qcow2::{create, CreateOptions, OpenOptions};
    use crate::storage::MemStorage;

    fn new_image(id: &str, pass: &str, extra: &[(&str, &str)]) -> Qcow2<MemStorage> {
        keyring::add_secret(id, Passphrase::new(pass.as_bytes().to_vec()));
        let mut o = CreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            ..Default::default()
        };
        let mut set = vec![
            ("encrypt.format", "luks"),
            ("encrypt.key-secret", id),
            ("encrypt.iter-time", "1"),
        ];
        set.extend_from_slice(extra);
        for (k, v) in set {
            o.set(k, v).unwrap();
        }
        create(MemStorage::new(), &o).unwrap()
    }

    fn reopen(img: &Qcow2<MemStorage>, pass: Option<&str>) -> Result<Qcow2<MemStorage>> {
        let key = pass.map(|p| Passphrase::new(p.as_bytes().to_vec()));
        Qcow2::open_with_key(
            MemStorage::from_vec(img.storage().to_vec()),
            OpenOptions::default(),
            key.as_ref(),
            true,
        )
    }

    #[test]
    fn unaligned_writes_read_back_through_the_cipher_and_never_reach_the_file_in_clear() {
        for extra in [
            &[][..],
            &[
                ("encrypt.cipher-mode", "cbc"),
                ("encrypt.ivgen-alg", "essiv"),
            ][..],
        ] {
            let mut img = new_image("unit-a", "pw", extra);
            let mut model = vec![0u8; 1 << 20];
            for (i, (off, len)) in [
                (0u64, 4096usize),
                (5000, 100),
                (4095, 3),
                (70_000, 20_000),
                (4100, 9000),
            ]
            .into_iter()
            .enumerate()
            {
                let data: Vec<u8> = (0..len).map(|k| (k * 7 + i * 31) as u8 | 0x80).collect();
                img.write_at(&data, off).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
            }
            img.flush().unwrap();
            let mut back = vec![0u8; 1 << 20];
            img.read_at(&mut back, 0).unwrap();
            assert!(back == model);
            let mut again = reopen(&img, Some("pw")).unwrap();
            let mut back2 = vec![0u8; 1 << 20];
            again.read_at(&mut back2, 0).unwrap();
            assert!(back2 == model);
            let host = img.storage().to_vec();
            assert!(!host.windows(64).any(|w| w == &model[70_000..70_064]));
        }
    }

    #[test]
    fn wrong_or_missing_keys_are_refused_and_locked_images_read_nothing() {
        let mut img = new_image("unit-b", "pw", &[]);
        img.write_at(&[1u8; 512], 0).unwrap();
        img.flush().unwrap();
        let e = reopen(&img, Some("nope")).err().unwrap().to_string();
        assert!(e.contains("Invalid password"), "{e}");
        let e = reopen(&img, None).err().unwrap().to_string();
        assert!(e.contains("encrypt.key-secret"), "{e}");
        let mut locked = Qcow2::open(
            MemStorage::from_vec(img.storage().to_vec()),
            OpenOptions::default(),
        )
        .unwrap();
        assert!(locked.encrypt_info().is_some());
        assert!(locked.read_at(&mut [0u8; 512], 0).is_err());
        assert!(locked.write_at(&[0u8; 512], 0).is_err());
    }

    #[test]
    fn key_slots_are_added_erased_and_guarded_as_qemu_img_guards_them() {
        keyring::add_secret("unit-new", Passphrase::new(b"second".to_vec()));
        let mut img = new_image("unit-c", "first", &[]);
        img.write_at(&[0xab; 4096], 8192).unwrap();
        let change = |kv: &[(&str, &str)]| {
            let mut c = KeySlotChange::default();
            for (k, v) in kv {
                c.set(k, v).unwrap();
            }
            c
        };
        let add = change(&[
            ("encrypt.state", "active"),
            ("encrypt.new-secret", "unit-new"),
            ("encrypt.iter-time", "1"),
        ]);
        img.amend_keyslots(&add).unwrap();
        let e = img
            .amend_keyslots(&change(&[
                ("encrypt.state", "active"),
                ("encrypt.new-secret", "unit-new"),
                ("encrypt.keyslot", "0"),
            ]))
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("Refusing to overwrite active keyslot 0"));
        img.amend_keyslots(&change(&[
            ("encrypt.state", "inactive"),
            ("encrypt.keyslot", "0"),
        ]))
        .unwrap();
        img.flush().unwrap();
        assert!(reopen(&img, Some("first")).is_err());
        let mut by_second = reopen(&img, Some("second")).unwrap();
        let mut buf = [0u8; 4096];
        by_second.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0xab; 4096]);
        let e = img
            .amend_keyslots(&change(&[
                ("encrypt.state", "inactive"),
                ("encrypt.keyslot", "1"),
            ]))
            .unwrap_err();
        assert!(e.to_string().contains("only active keyslot 1"), "{e}");
        let e = change(&[("encrypt.keyslot", "8"), ("encrypt.state", "inactive")]);
        assert!(img
            .amend_keyslots(&e)
            .unwrap_err()
            .to_string()
            .contains("between 0 and 7"));
        let e = img
            .amend_keyslots(&change(&[("encrypt.keyslot", "1")]))
            .unwrap_err();
        assert!(e.to_string().contains("'state' is missing"));
    }
}
