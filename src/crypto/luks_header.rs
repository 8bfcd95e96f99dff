//! The LUKS1 header: 592 big-endian bytes (magic, version, cipher name and mode, hash, the
//! payload offset, the key size, the master-key digest with its salt and iteration count,
//! a UUID) followed by eight key slots (state, PBKDF2 iterations and salt, where the
//! slot's anti-forensic key material starts, and its stripe count).
//!
//! [`LuksHeader::parse`] reads the fields; [`LuksHeader::validate`] checks every one of
//! them against the limits in [`super`] and the size of the region holding the header
//! before anything is derived from them, so a hostile header costs one error.

use super::sector::CipherSpec;
use super::{
    corrupt, Hash, LUKS_STRIPES, MAX_KEY_BYTES, MAX_PBKDF2_ITERATIONS, MAX_UNLOCK_ITERATIONS,
    SECTOR_SIZE,
};
use crate::error::Result;
use byteorder::{BigEndian, ByteOrder};
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32};
use nom::IResult;

/// The magic at the start of a LUKS header.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Bytes of the header with its key slots.
pub const HEADER_LEN: usize = 592;
/// Key slots in a LUKS1 header.
pub const NUM_SLOTS: usize = 8;
/// The state of a key slot in use.
pub const SLOT_ACTIVE: u32 = 0x00ac_71f3;
/// The state of a free key slot.
pub const SLOT_INACTIVE: u32 = 0x0000_dead;
/// Bytes of the master-key digest.
pub const DIGEST_LEN: usize = 20;
/// Bytes of each salt.
pub const SALT_LEN: usize = 32;
/// Bytes of the text fields holding names.
const NAME_LEN: usize = 32;
/// Bytes of the UUID text field.
const UUID_LEN: usize = 40;
/// Where the key slots start in the header.
const SLOTS_OFFSET: usize = 208;
/// Bytes of one key slot.
const SLOT_LEN: usize = 48;

/// One key slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    /// In use ([`SLOT_ACTIVE`]) or free ([`SLOT_INACTIVE`]).
    pub active: bool,
    /// PBKDF2 iterations for the passphrase.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Where the key material starts, in 512-byte sectors from the header.
    pub key_offset: u32,
    /// Anti-forensic stripes.
    pub stripes: u32,
}

/// A LUKS1 header as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// The cipher (`aes`).
    pub cipher_name: String,
    /// The mode and IV generator (`xts-plain64`).
    pub cipher_mode: String,
    /// The hash of PBKDF2 and the splitter (`sha256`).
    pub hash_spec: String,
    /// Where the encrypted payload starts, in sectors (for qcow2: the region's end).
    pub payload_offset: u32,
    /// Bytes of the master key.
    pub key_bytes: u32,
    /// PBKDF2 of the master key, to recognise it.
    pub mk_digest: [u8; DIGEST_LEN],
    /// The salt of that PBKDF2.
    pub mk_digest_salt: [u8; SALT_LEN],
    /// Its iterations.
    pub mk_digest_iter: u32,
    /// The UUID as text.
    pub uuid: String,
    /// The key slots.
    pub slots: Vec<KeySlot>,
}

/// The fields of a header as raw bytes and numbers, before any is checked.
struct RawHeader<'a> {
    version: u16,
    cipher: &'a [u8],
    mode: &'a [u8],
    hash: &'a [u8],
    payload: u32,
    key_bytes: u32,
    digest: &'a [u8],
    digest_salt: &'a [u8],
    digest_iter: u32,
    uuid: &'a [u8],
}

/// One key slot's raw fields.
struct RawSlot<'a> {
    state: u32,
    iterations: u32,
    salt: &'a [u8],
    key_offset: u32,
    stripes: u32,
}

fn raw_header(i: &[u8]) -> IResult<&[u8], RawHeader<'_>> {
    let (i, _magic) = take(MAGIC.len())(i)?;
    let (i, version) = be_u16(i)?;
    let (i, cipher) = take(NAME_LEN)(i)?;
    let (i, mode) = take(NAME_LEN)(i)?;
    let (i, hash) = take(NAME_LEN)(i)?;
    let (i, payload) = be_u32(i)?;
    let (i, key_bytes) = be_u32(i)?;
    let (i, digest) = take(DIGEST_LEN)(i)?;
    let (i, digest_salt) = take(SALT_LEN)(i)?;
    let (i, digest_iter) = be_u32(i)?;
    let (i, uuid) = take(UUID_LEN)(i)?;
    let raw = RawHeader {
        version,
        cipher,
        mode,
        hash,
        payload,
        key_bytes,
        digest,
        digest_salt,
        digest_iter,
        uuid,
    };
    Ok((i, raw))
}

fn raw_slot(i: &[u8]) -> IResult<&[u8], RawSlot<'_>> {
    let (i, state) = be_u32(i)?;
    let (i, iterations) = be_u32(i)?;
    let (i, salt) = take(SALT_LEN)(i)?;
    let (i, key_offset) = be_u32(i)?;
    let (i, stripes) = be_u32(i)?;
    let raw = RawSlot {
        state,
        iterations,
        salt,
        key_offset,
        stripes,
    };
    Ok((i, raw))
}

/// The NUL-terminated printable text of field `name` (at `at` in the header).
fn field_text(raw: &[u8], base: u64, at: usize, name: &str) -> Result<String> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt(base + at as u64, format!("{name} is not terminated")))?;
    let s = &raw[..end];
    if !s.iter().all(|b| b.is_ascii_graphic()) {
        return Err(corrupt(
            base + at as u64,
            format!("{name} is not printable text"),
        ));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

fn copy<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl LuksHeader {
    /// Parse the header at the start of `buf`, which sits at file offset `base` (for
    /// error messages). Fields are read, not yet validated (see [`validate`](Self::validate)).
    pub fn parse(buf: &[u8], base: u64) -> Result<LuksHeader> {
        if buf.len() < HEADER_LEN {
            return Err(corrupt(
                base,
                format!("{} bytes are too short for a LUKS header", buf.len()),
            ));
        }
        if buf[..MAGIC.len()] != MAGIC {
            return Err(corrupt(base, "no LUKS magic"));
        }
        let short = |_| corrupt(base, "truncated LUKS header");
        let (mut rest, raw) = raw_header(buf).map_err(short)?;
        if raw.version != 1 {
            return Err(corrupt(
                base + 6,
                format!("LUKS version {} is not supported (only LUKS1)", raw.version),
            ));
        }
        let mut slots = Vec::with_capacity(NUM_SLOTS);
        for n in 0..NUM_SLOTS {
            let (r, s) = raw_slot(rest).map_err(short)?;
            rest = r;
            let at = base + (SLOTS_OFFSET + n * SLOT_LEN) as u64;
            let active = match s.state {
                SLOT_ACTIVE => true,
                SLOT_INACTIVE => false,
                st => {
                    return Err(corrupt(
                        at,
                        format!("key slot {n} has an unknown state {st:#x}"),
                    ))
                }
            };
            slots.push(KeySlot {
                active,
                iterations: s.iterations,
                salt: copy(s.salt),
                key_offset: s.key_offset,
                stripes: s.stripes,
            });
        }
        Ok(LuksHeader {
            cipher_name: field_text(raw.cipher, base, 8, "cipher name")?,
            cipher_mode: field_text(raw.mode, base, 40, "cipher mode")?,
            hash_spec: field_text(raw.hash, base, 72, "hash")?,
            payload_offset: raw.payload,
            key_bytes: raw.key_bytes,
            mk_digest: copy(raw.digest),
            mk_digest_salt: copy(raw.digest_salt),
            mk_digest_iter: raw.digest_iter,
            uuid: field_text(raw.uuid, base, 168, "UUID")?,
            slots,
        })
    }

    /// Bytes of one slot's key material.
    pub fn material_len(&self) -> u64 {
        u64::from(self.key_bytes) * u64::from(LUKS_STRIPES)
    }

    /// Check every field against the limits and the `region_len` bytes of the region that
    /// holds the header and its key slots (at file offset `base`): the cipher, hash and key
    /// size vdisk can use, iteration counts within [`MAX_PBKDF2_ITERATIONS`], the stripe
    /// count, and key material inside the region, clear of the header and of each other.
    /// Returns the cipher and the hash.
    pub fn validate(&self, region_len: u64, base: u64) -> Result<(CipherSpec, Hash)> {
        if self.key_bytes == 0 || self.key_bytes > MAX_KEY_BYTES {
            return Err(corrupt(
                base + 108,
                format!(
                    "key size {} is not between 1 and {MAX_KEY_BYTES} bytes",
                    self.key_bytes
                ),
            ));
        }
        let spec = CipherSpec::from_luks(
            &self.cipher_name,
            &self.cipher_mode,
            self.key_bytes as usize,
        )?;
        let hash = Hash::parse(&self.hash_spec)?;
        check_iterations(self.mk_digest_iter, base + 164, "master key digest")?;
        let header_sectors = (HEADER_LEN as u64).div_ceil(SECTOR_SIZE);
        let mut spans = Vec::with_capacity(NUM_SLOTS);
        for (n, s) in self.slots.iter().enumerate() {
            let at = base + (SLOTS_OFFSET + n * SLOT_LEN) as u64;
            if s.active {
                check_iterations(s.iterations, at + 4, &format!("key slot {n}"))?;
            }
            if s.stripes != LUKS_STRIPES {
                return Err(corrupt(
                    at + 44,
                    format!("key slot {n} has {} stripes, not {LUKS_STRIPES}", s.stripes),
                ));
            }
            let start = u64::from(s.key_offset) * SECTOR_SIZE;
            let end = start + self.material_len();
            if u64::from(s.key_offset) < header_sectors {
                return Err(corrupt(
                    at + 40,
                    format!("key slot {n} overlaps the LUKS header"),
                ));
            }
            if end > region_len {
                return Err(corrupt(at + 40, format!(
                    "key slot {n} material at {start:#x}..{end:#x} lies past the end of the {region_len}-byte encryption header region"
                )));
            }
            spans.push((start, end));
        }
        let unlock_work: u64 = self
            .slots
            .iter()
            .filter(|s| s.active)
            .map(|s| u64::from(s.iterations) + u64::from(self.mk_digest_iter))
            .sum();
        if unlock_work > MAX_UNLOCK_ITERATIONS {
            return Err(corrupt(
                base + SLOTS_OFFSET as u64,
                format!("unlocking would take {unlock_work} PBKDF2 iterations over the active key slots (vdisk accepts at most {MAX_UNLOCK_ITERATIONS})"),
            ));
        }
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate().skip(i + 1) {
                if a.0 < b.1 && b.0 < a.1 {
                    return Err(corrupt(
                        base + SLOTS_OFFSET as u64,
                        format!("key slots {i} and {j} overlap"),
                    ));
                }
            }
        }
        Ok((spec, hash))
    }

    /// The header's bytes.
    pub fn write(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..6].copy_from_slice(&MAGIC);
        BigEndian::write_u16(&mut b[6..], 1);
        let put = |b: &mut [u8], at: usize, len: usize, s: &str| {
            let n = s.len().min(len - 1);
            b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(&mut b, 8, NAME_LEN, &self.cipher_name);
        put(&mut b, 40, NAME_LEN, &self.cipher_mode);
        put(&mut b, 72, NAME_LEN, &self.hash_spec);
        BigEndian::write_u32(&mut b[104..], self.payload_offset);
        BigEndian::write_u32(&mut b[108..], self.key_bytes);
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_digest_salt);
        BigEndian::write_u32(&mut b[164..], self.mk_digest_iter);
        put(&mut b, 168, UUID_LEN, &self.uuid);
        for (n, s) in self.slots.iter().enumerate() {
            let at = SLOTS_OFFSET + n * SLOT_LEN;
            let state = if s.active { SLOT_ACTIVE } else { SLOT_INACTIVE };
            BigEndian::write_u32(&mut b[at..], state);
            BigEndian::write_u32(&mut b[at + 4..], s.iterations);
            b[at + 8..at + 40].copy_from_slice(&s.salt);
            BigEndian::write_u32(&mut b[at + 40..], s.key_offset);
            BigEndian::write_u32(&mut b[at + 44..], s.stripes);
        }
        b
    }
}

fn check_iterations(n: u32, at: u64, what: &str) -> Result<()> {
    if n == 0 || n > MAX_PBKDF2_ITERATIONS {
        return Err(corrupt(
            at,
            format!(
            "{what} asks for {n} PBKDF2 iterations (vdisk accepts 1 to {MAX_PBKDF2_ITERATIONS})"
        ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as qemu-img writes it for aes-256 xts-plain64 sha256 (slot 0 active).
    pub(crate) fn sample() -> LuksHeader {
        let slots = (0..NUM_SLOTS)
            .map(|n| KeySlot {
                active: n == 0,
                iterations: if n == 0 { 1000 } else { 0 },
                salt: [n as u8; SALT_LEN],
                key_offset: 8 + 504 * n as u32,
                stripes: LUKS_STRIPES,
            })
            .collect();
        LuksHeader {
            cipher_name: "aes".into(),
            cipher_mode: "xts-plain64".into(),
            hash_spec: "sha256".into(),
            payload_offset: 4040,
            key_bytes: 64,
            mk_digest: [9; DIGEST_LEN],
            mk_digest_salt: [8; SALT_LEN],
            mk_digest_iter: 1000,
            uuid: "810bfdcc-5668-41af-b147-c258a65e6d56".into(),
            slots,
        }
    }

    const REGION: u64 = 4040 * 512;

    #[test]
    fn write_then_parse_round_trips_and_puts_fields_where_luks1_has_them() {
        let h = sample();
        let b = h.write();
        assert_eq!(&b[..8], b"LUKS\xba\xbe\x00\x01");
        assert_eq!(&b[8..12], b"aes\0");
        assert_eq!(&b[40..52], b"xts-plain64\0");
        assert_eq!(&b[72..79], b"sha256\0");
        assert_eq!(BigEndian::read_u32(&b[104..]), 4040);
        assert_eq!(BigEndian::read_u32(&b[108..]), 64);
        assert_eq!(BigEndian::read_u32(&b[208..]), SLOT_ACTIVE);
        assert_eq!(BigEndian::read_u32(&b[208 + 48..]), SLOT_INACTIVE);
        assert_eq!(BigEndian::read_u32(&b[208 + 44..]), 4000);
        let p = LuksHeader::parse(&b, 0).unwrap();
        assert_eq!(p, h);
        p.validate(REGION, 0).unwrap();
    }

    #[test]
    fn hostile_fields_are_refused_one_error_each() {
        let e = |f: &dyn Fn(&mut LuksHeader)| {
            let mut h = sample();
            f(&mut h);
            let b = h.write();
            match LuksHeader::parse(&b, 0x40000) {
                Err(e) => e.to_string(),
                Ok(h) => h.validate(REGION, 0x40000).unwrap_err().to_string(),
            }
        };
        assert!(e(&|h| h.slots[0].iterations = u32::MAX).contains("PBKDF2 iterations"));
        assert!(e(&|h| h.mk_digest_iter = 0).contains("master key digest"));
        // Each count within its own limit, but eight of them together too many.
        let every_slot_slow = |h: &mut LuksHeader| {
            h.mk_digest_iter = MAX_PBKDF2_ITERATIONS;
            for s in &mut h.slots {
                s.active = true;
                s.iterations = MAX_PBKDF2_ITERATIONS;
            }
        };
        assert!(e(&every_slot_slow).contains("unlocking would take"));
        assert!(e(&|h| h.slots[3].key_offset = 4000).contains("past the end"));
        assert!(e(&|h| h.slots[2].key_offset = 8).contains("overlap"));
        assert!(e(&|h| h.slots[1].key_offset = 0).contains("overlaps the LUKS header"));
        assert!(e(&|h| h.slots[0].stripes = 1).contains("stripes"));
        assert!(e(&|h| h.key_bytes = 1 << 30).contains("key size"));
        assert!(e(&|h| h.key_bytes = 40).contains("40-byte"));
        assert!(e(&|h| h.hash_spec = "whirlpool".into()).contains("whirlpool"));
        assert!(e(&|h| h.cipher_name = "blowfish".into()).contains("blowfish"));
        let mut b = sample().write();
        b[7] = 2;
        assert!(LuksHeader::parse(&b, 0)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let mut b = sample().write();
        BigEndian::write_u32(&mut b[208..], 7);
        assert!(LuksHeader::parse(&b, 0)
            .unwrap_err()
            .to_string()
            .contains("unknown state"));
        let mut b = sample().write();
        b[8..40].fill(b'a');
        assert!(LuksHeader::parse(&b, 0)
            .unwrap_err()
            .to_string()
            .contains("not terminated"));
        assert!(LuksHeader::parse(&b[..100], 0).is_err());
        assert!(LuksHeader::parse(&[0u8; 600], 0)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
