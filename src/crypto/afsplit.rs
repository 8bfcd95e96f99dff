//! The LUKS anti-forensic splitter: a key is stored as `stripes` blocks of its own size,
//! all of which are needed to recover it, so that wiping any one block of a key slot
//! destroys the key.
//!
//! Merging XORs the blocks one after another into an accumulator and runs the hash
//! diffusion after each but the last; the last block XORed into the accumulator gives the
//! key. Splitting draws the first `stripes - 1` blocks at random and computes the last.
//! The diffusion hashes the accumulator in digest-sized pieces, each prefixed with its
//! index as a big-endian 32-bit number, keeping as many bytes of each digest as the piece
//! has.

use super::{random_bytes, Hash};
use crate::error::{Error, Result};
use zeroize::Zeroizing;

fn xor_into(acc: &mut [u8], block: &[u8]) {
    for (a, b) in acc.iter_mut().zip(block) {
        *a ^= b;
    }
}

fn diffuse(hash: Hash, block: &mut [u8]) {
    for (i, piece) in block.chunks_mut(hash.digest_len()).enumerate() {
        let index = (i as u32).to_be_bytes();
        let d = hash.digest(&[&index[..], &*piece]);
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

fn check_sizes(key_len: usize, stripes: u32, material: usize) -> Result<()> {
    if key_len == 0 || stripes == 0 || (key_len as u64) * u64::from(stripes) != material as u64 {
        return Err(Error::invalid(format!(
            "anti-forensic material of {material} bytes is not {stripes} stripes of {key_len} bytes"
        )));
    }
    Ok(())
}

/// Recover the key of `key_len` bytes from `material` (`stripes` blocks of `key_len`).
pub fn merge(
    hash: Hash,
    key_len: usize,
    stripes: u32,
    material: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    check_sizes(key_len, stripes, material.len())?;
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    let mut blocks = material.chunks_exact(key_len);
    for _ in 1..stripes {
        if let Some(b) = blocks.next() {
            xor_into(&mut acc, b);
            diffuse(hash, &mut acc);
        }
    }
    if let Some(last) = blocks.next() {
        xor_into(&mut acc, last);
    }
    Ok(acc)
}

/// Split `key` into `stripes` blocks (random but for the last).
pub fn split(hash: Hash, key: &[u8], stripes: u32) -> Result<Zeroizing<Vec<u8>>> {
    let key_len = key.len();
    let total = key_len * stripes as usize;
    check_sizes(key_len, stripes, total)?;
    let mut material = Zeroizing::new(vec![0u8; total]);
    let (head, last) = material.split_at_mut(total - key_len);
    random_bytes(head)?;
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    for b in head.chunks_exact(key_len) {
        xor_into(&mut acc, b);
        diffuse(hash, &mut acc);
    }
    xor_into(&mut acc, key);
    last.copy_from_slice(&acc);
    Ok(material)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_back_the_key_for_every_hash() {
        for h in Hash::ALL {
            let key: Vec<u8> = (0..64u8).collect();
            let m = split(h, &key, 50).unwrap();
            assert_eq!(merge(h, 64, 50, &m).unwrap().as_slice(), key.as_slice());
            let mut broken = m.clone();
            broken[3] ^= 1;
            assert_ne!(
                merge(h, 64, 50, &broken).unwrap().as_slice(),
                key.as_slice()
            );
        }
    }

    #[test]
    fn one_stripe_is_the_key_itself() {
        let m = merge(Hash::Sha256, 4, 1, &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.as_slice(), &[1, 2, 3, 4]);
    }

    #[test]
    fn diffusion_hashes_each_piece_with_its_index() {
        // A 40-byte block with SHA-256: one whole piece and an 8-byte one.
        let mut b = [0u8; 40];
        diffuse(Hash::Sha256, &mut b);
        let d0 = Hash::Sha256.digest(&[&[0, 0, 0, 0], &[0u8; 32]]);
        let d1 = Hash::Sha256.digest(&[&[0, 0, 0, 1], &[0u8; 8]]);
        assert_eq!(&b[..32], d0.as_slice());
        assert_eq!(&b[32..], &d1[..8]);
    }

    #[test]
    fn material_of_the_wrong_size_is_refused() {
        assert!(merge(Hash::Sha1, 16, 4, &[0u8; 63]).is_err());
        assert!(merge(Hash::Sha1, 0, 4, &[]).is_err());
    }
}
