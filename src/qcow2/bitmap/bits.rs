//! One dirty bitmap in memory: a bit per `granularity` bytes of the guest disk, set when
//! the range may have changed. Serialized to the image a cluster at a time, bit `i` in bit
//! `i % 8` of byte `i / 8` (the layout the qcow2 bitmap data clusters use).

/// A dirty bitmap of a disk of `size` bytes, one bit per `1 << granularity_bits` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bits {
    granularity_bits: u8,
    size: u64,
    words: Vec<u64>,
}

impl Bits {
    /// An all-clean bitmap. The caller has bounded `size >> granularity_bits` (see
    /// [`super::MAX_BITMAP_BYTES`]).
    pub fn new(size: u64, granularity_bits: u8) -> Bits {
        let nbits = bit_count(size, granularity_bits);
        Bits {
            granularity_bits,
            size,
            words: vec![0; nbits.div_ceil(64) as usize],
        }
    }

    /// log2 of the bytes one bit covers.
    pub fn granularity_bits(&self) -> u8 {
        self.granularity_bits
    }

    /// The disk size the bitmap covers.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the serialized bitmap.
    pub fn serialized_len(&self) -> u64 {
        bit_count(self.size, self.granularity_bits).div_ceil(8)
    }

    fn nbits(&self) -> u64 {
        bit_count(self.size, self.granularity_bits)
    }

    /// Mark `[offset, offset + len)` dirty (clipped to the disk).
    pub fn set_range(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return;
        }
        let first = offset >> self.granularity_bits;
        let last = (end - 1) >> self.granularity_bits;
        self.set_bits(first, last + 1);
    }

    /// Set bits `[a, b)`.
    fn set_bits(&mut self, a: u64, b: u64) {
        let b = b.min(self.nbits());
        let mut i = a;
        while i < b {
            let w = (i / 64) as usize;
            let lo = i % 64;
            let hi = (b - (i - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            if let Some(word) = self.words.get_mut(w) {
                *word |= mask;
            }
            i += hi - lo;
        }
    }

    /// Whether bit `i` is set.
    fn bit(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Mark everything clean.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Mark everything dirty.
    pub fn fill(&mut self) {
        self.set_bits(0, self.nbits());
    }

    /// Whether nothing is dirty.
    pub fn is_clean(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Dirty bytes (whole granules, clipped to the disk).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_ranges().iter().map(|&(_, l)| l).sum()
    }

    /// The dirty guest ranges, merged, in order, clipped to the disk.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let g = self.granularity_bits;
        for (wi, &w) in self.words.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let mut rest = w;
            while rest != 0 {
                let lo = u64::from(rest.trailing_zeros());
                let run = u64::from((!(rest >> lo)).trailing_zeros()).min(64 - lo);
                let a = (wi as u64 * 64 + lo) << g;
                let b = (((wi as u64 * 64 + lo + run) << g).min(self.size)).max(a);
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == a => last.1 += b - a,
                    _ => out.push((a, b - a)),
                }
                rest = if lo + run >= 64 {
                    0
                } else {
                    rest & !(((1u64 << run) - 1) << lo)
                };
            }
        }
        out.retain(|&(_, l)| l > 0);
        out
    }

    /// Set every bit whose range another bitmap (of any granularity) marks dirty.
    pub fn merge_from(&mut self, other: &Bits) {
        for (off, len) in other.dirty_ranges() {
            self.set_range(off, len);
        }
    }

    /// Follow a disk resize: bits past a smaller size are dropped, new bits are clean.
    pub fn resize(&mut self, new_size: u64) {
        let keep = bit_count(new_size, self.granularity_bits).min(self.nbits());
        let mut next = Bits::new(new_size, self.granularity_bits);
        for i in 0..keep.div_ceil(64) {
            let w = self.words[i as usize];
            let valid = keep - i * 64;
            next.words[i as usize] = if valid >= 64 {
                w
            } else {
                w & ((1u64 << valid) - 1)
            };
        }
        *self = next;
    }

    /// The serialized bytes `[start, start + out.len())` of the bitmap (zero past its end).
    pub fn serialize_into(&self, start: u64, out: &mut [u8]) {
        let total = self.serialized_len();
        for (k, b) in out.iter_mut().enumerate() {
            let pos = start + k as u64;
            *b = if pos < total {
                (self.words[(pos / 8) as usize] >> ((pos % 8) * 8)) as u8
            } else {
                0
            };
        }
    }

    /// Load serialized bytes at `start` (bits past the disk end are ignored).
    pub fn deserialize_from(&mut self, start: u64, data: &[u8]) {
        let total = self.serialized_len();
        for (k, &b) in data.iter().enumerate() {
            let pos = start + k as u64;
            if pos >= total {
                break;
            }
            let w = &mut self.words[(pos / 8) as usize];
            *w |= u64::from(b) << ((pos % 8) * 8);
        }
        self.trim_tail();
    }

    /// Set every bit of the serialized bytes `[start, start + len)` (an all-ones table entry).
    pub fn fill_serialized(&mut self, start: u64, len: u64) {
        self.set_bits(
            start.saturating_mul(8),
            start.saturating_add(len).saturating_mul(8),
        );
    }

    /// Clear the bits past the last granule (a hostile data cluster may set them).
    fn trim_tail(&mut self) {
        let n = self.nbits();
        if n % 64 != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
    }

    /// The run of granules alike starting at guest `offset` (inside the disk), at most
    /// `max_len` bytes (at least 1): its length in bytes and whether it is dirty.
    pub fn run_at(&self, offset: u64, max_len: u64) -> (u64, bool) {
        let g = self.granularity_bits;
        let end = offset.saturating_add(max_len.max(1)).min(self.size);
        let dirty = self.is_dirty(offset);
        let mut i = (offset >> g) + 1;
        while (i << g) < end && self.bit(i) == dirty {
            i += 1;
        }
        (((i << g).min(end)).saturating_sub(offset).max(1), dirty)
    }

    /// Whether the granule holding guest offset `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        offset < self.size && self.bit(offset >> self.granularity_bits)
    }
}

/// Bits needed for a disk of `size` bytes at `2^granularity_bits` bytes per bit.
pub fn bit_count(size: u64, granularity_bits: u8) -> u64 {
    size.div_ceil(1u64 << granularity_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_sets_every_granule_it_touches_and_no_other() {
        let mut b = Bits::new(1 << 20, 16);
        b.set_range(65_535, 2);
        assert_eq!(b.dirty_ranges(), vec![(0, 2 << 16)]);
        b.set_range(5 << 16, 1);
        assert_eq!(b.dirty_ranges(), vec![(0, 2 << 16), (5 << 16, 1 << 16)]);
        assert!(b.is_dirty(5 << 16) && !b.is_dirty(4 << 16));
    }

    #[test]
    fn ranges_are_clipped_to_the_disk_and_merged_across_words() {
        let size = 200 * 512 + 100;
        let mut b = Bits::new(size, 9);
        b.set_range(60 * 512, 10 * 512);
        b.set_range(64 * 512, 200 * 512);
        assert_eq!(b.dirty_ranges(), vec![(60 * 512, size - 60 * 512)]);
        assert_eq!(b.dirty_bytes(), size - 60 * 512);
        b.fill();
        assert_eq!(b.dirty_ranges(), vec![(0, size)]);
    }

    #[test]
    fn serialization_puts_bit_i_in_bit_i_mod_8_of_byte_i_div_8() {
        let mut b = Bits::new(64 << 16, 16);
        b.set_range(0, 1);
        b.set_range(9 << 16, 1);
        let mut out = [0u8; 4];
        b.serialize_into(0, &mut out);
        assert_eq!(out, [0x01, 0x02, 0, 0]);
        let mut c = Bits::new(64 << 16, 16);
        c.deserialize_from(0, &out);
        assert_eq!(b, c);
    }

    #[test]
    fn deserializing_ignores_bits_past_the_disk() {
        let mut b = Bits::new(3 << 16, 16);
        b.deserialize_from(0, &[0xff, 0xff]);
        assert_eq!(b.dirty_ranges(), vec![(0, 3 << 16)]);
        b.fill_serialized(0, 100);
        assert_eq!(b.dirty_ranges(), vec![(0, 3 << 16)]);
    }

    #[test]
    fn merging_converts_between_granularities() {
        let mut fine = Bits::new(1 << 20, 12);
        fine.set_range(70_000, 1);
        let mut coarse = Bits::new(1 << 20, 16);
        coarse.merge_from(&fine);
        assert_eq!(coarse.dirty_ranges(), vec![(65_536, 65_536)]);
        let mut back = Bits::new(1 << 20, 12);
        back.merge_from(&coarse);
        assert_eq!(back.dirty_ranges(), vec![(65_536, 65_536)]);
    }

    #[test]
    fn a_run_at_an_offset_covers_the_granules_alike() {
        let mut b = Bits::new(1 << 20, 16);
        b.set_range(2 << 16, 3 << 16);
        assert_eq!(b.run_at(0, 1 << 20), (2 << 16, false));
        assert_eq!(b.run_at(100, 1 << 20), ((2 << 16) - 100, false));
        assert_eq!(b.run_at(2 << 16, 1 << 20), (3 << 16, true));
        assert_eq!(b.run_at(3 << 16, 100), (100, true));
        assert_eq!(b.run_at(5 << 16, 1 << 20), ((1 << 20) - (5 << 16), false));
    }

    #[test]
    fn resizing_drops_bits_past_a_smaller_disk_and_adds_clean_ones() {
        let mut b = Bits::new(1 << 20, 16);
        b.fill();
        b.resize(100_000);
        assert_eq!(b.dirty_ranges(), vec![(0, 100_000)]);
        b.resize(1 << 21);
        assert_eq!(b.dirty_ranges(), vec![(0, 2 << 16)]);
    }
}
