//! Grain tables: what an entry means, and a bounded cache of tables with dirty tracking.
//!
//! A grain table entry (GTE) is a little-endian `u32`: 0 means the grain is unallocated,
//! 1 means it reads as zeros (only when the extent has the zeroed-grain flag), anything
//! else is the sector where the grain (or, in a compressed extent, its grain marker)
//! starts in the extent file.
//!
//! The cache holds whole grain tables keyed by their index in the grain directory.
//! Updated entries stay in the cache, marked dirty, until [`GrainTableCache::take_dirty`]
//! hands them to the extent for writing: the extent flushes grain data first and writes
//! grain tables after, so a table on disk never points at a grain that is not there.

use super::limits::SECTOR_SIZE;

/// What one grain table entry says about its grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainEntry {
    /// Not allocated: reads as zeros (or from a parent image).
    Unallocated,
    /// Reads as zeros (zeroed-grain entry).
    Zero,
    /// Allocated at this byte offset in the extent file.
    Allocated(u64),
}

/// The zeroed-grain entry value.
pub const GTE_ZEROED: u32 = 1;

impl GrainEntry {
    /// Classify a raw entry.
    pub fn from_raw(raw: u32, zeroed_grain: bool) -> GrainEntry {
        match raw {
            0 => GrainEntry::Unallocated,
            GTE_ZEROED if zeroed_grain => GrainEntry::Zero,
            sector => GrainEntry::Allocated(u64::from(sector) * SECTOR_SIZE),
        }
    }
}

struct Slot {
    gd_index: u64,
    entries: Vec<u32>,
    dirty: bool,
    last_use: u64,
}

/// A bounded least-recently-used cache of grain tables.
pub struct GrainTableCache {
    slots: Vec<Slot>,
    capacity: usize,
    clock: u64,
}

impl GrainTableCache {
    /// An empty cache holding at most `capacity` tables (at least one).
    pub fn new(capacity: usize) -> Self {
        GrainTableCache {
            slots: Vec::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// The cached table for `gd_index`, marking it used.
    pub fn get(&mut self, gd_index: u64) -> Option<&[u32]> {
        self.clock += 1;
        let clock = self.clock;
        self.slots
            .iter_mut()
            .find(|s| s.gd_index == gd_index)
            .map(|s| {
                s.last_use = clock;
                &s.entries[..]
            })
    }

    /// Whether inserting another table would first need a victim evicted; returns the
    /// victim's index and entries if it is dirty (the caller must write it before
    /// calling [`insert`](Self::insert)).
    pub fn dirty_victim(&self) -> Option<(u64, &[u32])> {
        if self.slots.len() < self.capacity {
            return None;
        }
        let victim = self.slots.iter().min_by_key(|s| s.last_use)?;
        victim
            .dirty
            .then_some((victim.gd_index, &victim.entries[..]))
    }

    /// Add a clean table, evicting the least recently used one if full.
    pub fn insert(&mut self, gd_index: u64, entries: Vec<u32>) {
        self.clock += 1;
        if self.slots.len() >= self.capacity {
            if let Some(pos) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.last_use)
                .map(|(i, _)| i)
            {
                self.slots.swap_remove(pos);
            }
        }
        self.slots.push(Slot {
            gd_index,
            entries,
            dirty: false,
            last_use: self.clock,
        });
    }

    /// Set entry `gt_index` of cached table `gd_index` and mark the table dirty.
    /// Returns false if the table is not cached.
    pub fn set(&mut self, gd_index: u64, gt_index: usize, value: u32) -> bool {
        match self.slots.iter_mut().find(|s| s.gd_index == gd_index) {
            Some(slot) if gt_index < slot.entries.len() => {
                slot.entries[gt_index] = value;
                slot.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Whether any cached table has unwritten changes.
    pub fn has_dirty(&self) -> bool {
        self.slots.iter().any(|s| s.dirty)
    }

    /// The dirty tables (index and a copy of the entries), marking them clean.
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u32>)> {
        self.slots
            .iter_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (s.gd_index, s.entries.clone())
            })
            .collect()
    }

    /// Mark table `gd_index` clean (after the caller wrote it).
    pub fn mark_clean(&mut self, gd_index: u64) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.gd_index == gd_index) {
            slot.dirty = false;
        }
    }
}

/// Decode a grain table read from disk.
pub fn decode_table(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Encode a grain table (or grain directory) for writing.
pub fn encode_table(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_one_is_a_zero_grain_only_with_the_zeroed_grain_flag() {
        assert_eq!(GrainEntry::from_raw(0, true), GrainEntry::Unallocated);
        assert_eq!(GrainEntry::from_raw(1, true), GrainEntry::Zero);
        assert_eq!(GrainEntry::from_raw(1, false), GrainEntry::Allocated(512));
        assert_eq!(
            GrainEntry::from_raw(128, false),
            GrainEntry::Allocated(65536)
        );
    }

    #[test]
    fn tables_encode_and_decode_little_endian() {
        let bytes = encode_table(&[1, 0x0102_0304]);
        assert_eq!(bytes, [1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(decode_table(&bytes), vec![1, 0x0102_0304]);
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_table_and_reports_dirty_victims() {
        let mut cache = GrainTableCache::new(2);
        cache.insert(0, vec![0; 4]);
        cache.insert(1, vec![0; 4]);
        assert!(cache.get(0).is_some());
        assert!(cache.set(1, 2, 99));
        assert_eq!(cache.dirty_victim(), Some((1, &[0, 0, 99, 0][..])));
        cache.mark_clean(1);
        assert_eq!(cache.dirty_victim(), None);
        cache.insert(2, vec![0; 4]);
        assert!(cache.get(1).is_none());
        assert!(cache.get(0).is_some() && cache.get(2).is_some());
    }

    #[test]
    fn taking_dirty_tables_leaves_the_cache_clean() {
        let mut cache = GrainTableCache::new(4);
        cache.insert(5, vec![0; 2]);
        cache.set(5, 1, 7);
        assert!(cache.has_dirty());
        assert_eq!(cache.take_dirty(), vec![(5, vec![0, 7])]);
        assert!(!cache.has_dirty());
        assert!(!cache.set(6, 0, 1));
    }
}
