//! Encrypted qcow2 images: crypt method 2 (LUKS1, its header in clusters named by the
//! full-disk-encryption header extension) and crypt method 1 (the legacy AES scheme).
//!
//! Guest data clusters are encrypted per 512-byte sector; the IV comes from the sector's
//! host offset for LUKS and from its guest offset for the legacy scheme (QEMU's rule).
//! Metadata (header, tables, refcounts) is never encrypted, and compressed clusters are
//! neither written nor decrypted, as in QEMU.
//!
//! An image opened without its secret is *locked*: its header is parsed and validated (so
//! `info` can show it), and every data read or write is refused. [`Crypt`] is the state;
//! [`Qcow2::read_guest`] and [`Qcow2::write_guest`] are the only places guest data meets
//! the host file (through `data_file`'s `read_data`/`write_data`).

use super::header::{ext, Header};
use super::{ioerr, Qcow2};
use crate::crypto::luks::Luks;
use crate::crypto::sector::SectorCipher;
use crate::crypto::{qcow_aes, Passphrase, MAX_LUKS_REGION_BYTES, SECTOR_SIZE};
use crate::device::{BlockDevice, StoredCodec, StoredRead, StoredRun};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// qcow2's value for the legacy AES scheme in the header's crypt method.
pub const CRYPT_AES: u32 = 1;
/// qcow2's value for LUKS.
pub const CRYPT_LUKS: u32 = 2;
/// Structure name for errors about the extension.
const EXT: &str = "qcow2 full disk encryption header extension";

/// qemu-img's message for an encrypted image opened without its secret.
pub const KEY_REQUIRED: &str = "Parameter 'encrypt.key-secret' is required for cipher";

/// The encryption of an open image.
pub(crate) struct Crypt {
    /// The data cipher; `None` while locked.
    cipher: Option<Arc<SectorCipher>>,
    /// During [`Qcow2::read_leaving_encrypted`]: the caller's buffer, and the runs of it
    /// read but not yet decrypted.
    deferred: Mutex<Option<Deferred>>,
    /// IVs from host offsets (LUKS) or guest offsets (legacy AES).
    host_iv: bool,
    /// The LUKS header and where its region is (offset, length), for `info` and `amend`.
    pub(crate) luks: Option<(Luks, u64, u64)>,
    /// The LUKS master key, kept (wiped on drop) for adding key slots.
    pub(crate) master_key: Option<Zeroizing<Vec<u8>>>,
}

/// The buffer of a [`Qcow2::read_leaving_encrypted`] call: its address and length, and the
/// runs of it left encrypted.
struct Deferred {
    base: usize,
    len: usize,
    runs: Vec<StoredRun>,
}

/// The data cipher as the convert engine's workers use it: a run's `at` is the byte offset
/// its first sector's IV derives from.
struct Decrypter(Arc<SectorCipher>);

impl StoredCodec for Decrypter {
    fn decode(&self, at: u64, data: &mut [u8]) -> Result<()> {
        self.0.decrypt(at / SECTOR_SIZE, data)
    }
}

/// Where the LUKS region of `header` is: the extension's offset and length, checked
/// against the cluster size, [`MAX_LUKS_REGION_BYTES`] and the file.
pub(crate) fn luks_region(header: &Header, file_len: u64) -> Result<(u64, u64)> {
    let e = header.extension(ext::CRYPTO).ok_or_else(|| {
        Error::corrupt(
            "qcow2 header",
            0,
            "LUKS encryption without its header extension",
        )
    })?;
    if e.data.len() != 16 {
        return Err(Error::corrupt(
            EXT,
            0,
            format!("{} bytes long, not 16", e.data.len()),
        ));
    }
    let (off, len) = (
        BigEndian::read_u64(&e.data),
        BigEndian::read_u64(&e.data[8..]),
    );
    if off == 0 || off % header.cluster_size() != 0 {
        return Err(Error::corrupt(
            EXT,
            0,
            format!("LUKS header offset {off:#x} is not a cluster-aligned offset"),
        ));
    }
    if len == 0 || len > MAX_LUKS_REGION_BYTES {
        return Err(Error::corrupt(
            EXT,
            0,
            format!("LUKS header length {len} is not between 1 and {MAX_LUKS_REGION_BYTES} bytes"),
        ));
    }
    if off.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(
            EXT,
            0,
            format!("LUKS header at {off:#x} of {len} bytes runs past the end of the file"),
        ));
    }
    Ok((off, len))
}

/// Read the encryption of the image `header` describes, unlocked with `key` when given.
/// `None` for an image that is not encrypted.
pub(crate) fn load<S: Storage>(
    storage: &S,
    header: &Header,
    file_len: u64,
    key: Option<&Passphrase>,
) -> Result<Option<Crypt>> {
    match header.crypt_method {
        0 => {
            if header.extension(ext::CRYPTO).is_some() {
                return Err(Error::corrupt(
                    EXT,
                    0,
                    "present in an image that is not LUKS-encrypted",
                ));
            }
            Ok(None)
        }
        CRYPT_AES => Ok(Some(Crypt {
            cipher: key.map(qcow_aes::cipher).transpose()?.map(Arc::new),
            deferred: Mutex::new(None),
            host_iv: false,
            luks: None,
            master_key: None,
        })),
        CRYPT_LUKS => {
            let (off, len) = luks_region(header, file_len)?;
            let region = read_region(storage, off, len)?;
            let luks = Luks::parse(&region, off)?;
            let (cipher, master_key) = match key {
                Some(k) => {
                    let mk = luks.unlock(&region, k)?.1;
                    (Some(Arc::new(luks.cipher(&mk)?)), Some(mk))
                }
                None => (None, None),
            };
            Ok(Some(Crypt {
                cipher,
                deferred: Mutex::new(None),
                host_iv: true,
                luks: Some((luks, off, len)),
                master_key,
            }))
        }
        m => Err(Error::unsupported(format!("qcow2 encryption method {m}"))),
    }
}

/// The `len` bytes of the LUKS region at `off` (bounded by [`luks_region`]).
pub(crate) fn read_region<S: Storage>(
    storage: &S,
    off: u64,
    len: u64,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut region = Zeroizing::new(vec![0u8; len as usize]);
    storage
        .read_at(&mut region, off)
        .map_err(ioerr("reading the LUKS header"))?;
    Ok(region)
}

impl Crypt {
    fn cipher(&self) -> Result<&Arc<SectorCipher>> {
        self.cipher
            .as_ref()
            .ok_or_else(|| Error::invalid(KEY_REQUIRED))
    }

    /// Start (`Some`) or end (`None`) a deferring read; returns what was deferred.
    fn set_deferred(&self, d: Option<Deferred>) -> Option<Deferred> {
        let mut guard = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, d)
    }

    /// Record `out` (whole sectors of ciphertext whose IVs start at byte `iv_base`) as left
    /// encrypted, if it lies in the buffer of a [`Qcow2::read_leaving_encrypted`] call.
    fn defer(&self, out: &[u8], iv_base: u64) -> bool {
        let mut guard = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = guard.as_mut() else {
            return false;
        };
        let start = (out.as_ptr() as usize).wrapping_sub(d.base);
        if start >= d.len || d.len - start < out.len() {
            return false; // a buffer of its own (a backing file's read, a merge)
        }
        d.runs.push(StoredRun {
            start,
            len: out.len(),
            at: iv_base,
        });
        true
    }

    /// Whether the key is in hand.
    pub(crate) fn is_unlocked(&self) -> bool {
        self.cipher.is_some()
    }

    /// qemu-img's `encrypt` object for `info`.
    pub(crate) fn info_json(&self) -> serde_json::Value {
        match &self.luks {
            Some((l, _, _)) => l.info_json(),
            None => qcow_aes::info_json(),
        }
    }
}

impl<S: Storage> Qcow2<S> {
    /// Whether the image's guest data is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.crypt.is_some()
    }

    /// Read guest bytes stored at host offset `host` (guest offset `guest`) into `out`,
    /// decrypting them when the image is encrypted.
    pub(crate) fn read_guest(&self, out: &mut [u8], host: u64, guest: u64) -> Result<()> {
        let Some(c) = &self.crypt else {
            return self.read_data(out, host);
        };
        let cipher = c.cipher()?;
        let head = host % SECTOR_SIZE;
        let iv_base = if c.host_iv { host } else { guest };
        let first = (iv_base - head) / SECTOR_SIZE;
        let len = (head + out.len() as u64).next_multiple_of(SECTOR_SIZE);
        if head == 0 && len == out.len() as u64 {
            self.read_data(out, host)?;
            if c.defer(out, iv_base) {
                return Ok(());
            }
            return cipher.decrypt(first, out);
        }
        let mut tmp = vec![0u8; len as usize];
        self.read_data(&mut tmp, host - head)?;
        cipher.decrypt(first, &mut tmp)?;
        out.copy_from_slice(&tmp[head as usize..head as usize + out.len()]);
        Ok(())
    }

    /// [`BlockDevice::read_stored`]: read `buf` as `read_at` does, but leave the whole
    /// sectors this image stores encrypted as they are, returned with the cipher for the
    /// caller's threads to decrypt.
    pub(crate) fn read_leaving_encrypted(
        &mut self,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<Option<StoredRead>> {
        let cipher = match &self.crypt {
            Some(c) => Arc::clone(c.cipher()?),
            None => return self.read_at(buf, offset).map(|()| None),
        };
        if let Some(c) = &self.crypt {
            c.set_deferred(Some(Deferred {
                base: buf.as_ptr() as usize,
                len: buf.len(),
                runs: Vec::new(),
            }));
        }
        let read = self.read_at(buf, offset);
        let deferred = self.crypt.as_ref().and_then(|c| c.set_deferred(None));
        read?;
        let runs = deferred.map(|d| d.runs).unwrap_or_default();
        Ok(Some(StoredRead {
            codec: Arc::new(Decrypter(cipher)),
            runs,
        }))
    }

    /// Write guest bytes `src` at host offset `host` (guest offset `guest`), encrypting
    /// them when the image is encrypted; sectors `src` covers only in part are read,
    /// decrypted and merged first.
    pub(crate) fn write_guest(&mut self, src: &[u8], host: u64, guest: u64) -> Result<()> {
        let Some(c) = &self.crypt else {
            return self.write_data(src, host);
        };
        let cipher = c.cipher()?;
        let ss = SECTOR_SIZE as usize;
        let head = (host % SECTOR_SIZE) as usize;
        let len = (head + src.len()).next_multiple_of(ss);
        let (host0, guest0) = (host - head as u64, guest - head as u64);
        let mut tmp = vec![0u8; len];
        if head != 0 {
            self.read_guest(&mut tmp[..ss], host0, guest0)?;
        }
        if (head + src.len()) % ss != 0 && (len > ss || head == 0) {
            let at = (len - ss) as u64;
            self.read_guest(&mut tmp[len - ss..], host0 + at, guest0 + at)?;
        }
        tmp[head..head + src.len()].copy_from_slice(src);
        let iv_base = if c.host_iv { host0 } else { guest0 };
        cipher.encrypt(iv_base / SECTOR_SIZE, &mut tmp)?;
        self.write_data(&tmp, host0)
    }

    /// Refuse compressed clusters in an encrypted image, as QEMU does.
    pub(crate) fn refuse_compressed_if_encrypted(&self) -> Result<()> {
        if self.crypt.is_some() {
            return Err(Error::unsupported(
                "compressed clusters in an encrypted image",
            ));
        }
        Ok(())
    }

    /// qemu-img's `encrypt` object for `info`, for an encrypted image.
    pub fn encrypt_info(&self) -> Option<serde_json::Value> {
        self.crypt.as_ref().map(Crypt::info_json)
    }
}

impl Crypt {
    /// The state of a LUKS image just made, with its key.
    pub(crate) fn unlocked_luks(
        luks: Luks,
        key: Zeroizing<Vec<u8>>,
        off: u64,
        len: u64,
    ) -> Result<Crypt> {
        Ok(Crypt {
            cipher: Some(Arc::new(luks.cipher(&key)?)),
            deferred: Mutex::new(None),
            host_iv: true,
            luks: Some((luks, off, len)),
            master_key: Some(key),
        })
    }

    /// The state of a legacy AES image keyed by `pass`.
    pub(crate) fn unlocked_aes(pass: &Passphrase) -> Result<Crypt> {
        Ok(Crypt {
            cipher: Some(Arc::new(qcow_aes::cipher(pass)?)),
            deferred: Mutex::new(None),
            host_iv: false,
            luks: None,
            master_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::crypto::{keyring, Passphrase};
    use crate::device::BlockDevice;
    use crate::qcow2::{create, CreateOptions};
    use crate::storage::MemStorage;

    #[test]
    fn read_stored_leaves_whole_sectors_encrypted_for_the_caller_to_decode() {
        keyring::add_secret("enc-unit", Passphrase::new(b"pw".to_vec()));
        let mut o = CreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            ..Default::default()
        };
        for (k, v) in [
            ("encrypt.format", "luks"),
            ("encrypt.key-secret", "enc-unit"),
            ("encrypt.iter-time", "1"),
            ("encrypt.cipher-alg", "twofish-128"),
        ] {
            o.set(k, v).unwrap();
        }
        let mut img = create(MemStorage::new(), &o).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 | 1).collect();
        img.write_at(&data, 8192).unwrap();
        let mut buf = vec![0u8; 40_960];
        let stored = img.read_stored(&mut buf, 4096).unwrap().unwrap();
        assert!(!stored.runs.is_empty());
        // Unallocated clusters read as zeros; the data is still ciphertext.
        assert_eq!(&buf[..4096], &[0u8; 4096][..]);
        assert_ne!(&buf[4096..4096 + 20_000], &data[..]);
        for r in &stored.runs {
            stored
                .codec
                .decode(r.at, &mut buf[r.start..r.start + r.len])
                .unwrap();
        }
        assert_eq!(&buf[4096..4096 + 20_000], &data[..]);
        let mut plain = vec![0u8; 40_960];
        img.read_at(&mut plain, 4096).unwrap();
        assert_eq!(buf, plain);
        // An unaligned read decrypts what it merges itself.
        let mut odd = vec![0u8; 1000];
        let stored = img.read_stored(&mut odd, 8192 + 100).unwrap().unwrap();
        assert!(stored.runs.is_empty());
        assert_eq!(&odd[..], &data[100..1100]);
    }
}
