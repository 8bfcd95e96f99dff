//! A bounded cache of metadata clusters (L2 tables, refcount blocks) with dirty tracking.
//!
//! Tables are cached as raw cluster bytes keyed by host offset. Eviction is least recently
//! used. The cache itself knows nothing about write ordering: it hands a dirty table back
//! to its owner, the tables layer (`tables.rs`), which writes it in the order written at
//! the top of that file (refcount blocks, sync, L2 tables, sync, L1, sync, frees).

use std::collections::{BTreeMap, HashMap};

struct Slot {
    data: Vec<u8>,
    dirty: bool,
    stamp: u64,
}

/// An LRU cache of cluster-sized tables.
pub struct TableCache {
    slots: HashMap<u64, Slot>,
    lru: BTreeMap<u64, u64>,
    clock: u64,
    capacity: usize,
}

impl TableCache {
    /// A cache holding at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        TableCache {
            slots: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            capacity: capacity.max(2),
        }
    }

    /// Make the table at `offset` the most recently used. (Sequential guest I/O looks up
    /// the same table again and again: when it is the most recent already, nothing moves.)
    fn touch(&mut self, offset: u64) {
        let Some(slot) = self.slots.get_mut(&offset) else {
            return;
        };
        if slot.stamp == self.clock {
            return;
        }
        self.clock += 1;
        self.lru.remove(&slot.stamp);
        slot.stamp = self.clock;
        self.lru.insert(self.clock, offset);
    }

    /// Whether the table at `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.slots.contains_key(&offset)
    }

    /// The cached table at `offset`, marking it recently used.
    pub fn get(&mut self, offset: u64) -> Option<&[u8]> {
        self.touch(offset);
        self.slots.get(&offset).map(|s| s.data.as_slice())
    }

    /// The cached table at `offset` for modification; marks it dirty.
    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Vec<u8>> {
        self.touch(offset);
        self.slots.get_mut(&offset).map(|s| {
            s.dirty = true;
            &mut s.data
        })
    }

    /// Whether inserting one more table would need an eviction first.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// The least recently used table: (offset, dirty).
    pub fn lru_victim(&self) -> Option<(u64, bool)> {
        let (_, &off) = self.lru.iter().next()?;
        Some((off, self.slots[&off].dirty))
    }

    /// Insert a table. The caller makes room first (see [`TableCache::is_full`]).
    pub fn insert(&mut self, offset: u64, data: Vec<u8>, dirty: bool) {
        self.remove(offset);
        self.clock += 1;
        self.lru.insert(self.clock, offset);
        self.slots.insert(
            offset,
            Slot {
                data,
                dirty,
                stamp: self.clock,
            },
        );
    }

    /// Drop a table (dirty or not) and return its data.
    pub fn remove(&mut self, offset: u64) -> Option<Vec<u8>> {
        let slot = self.slots.remove(&offset)?;
        self.lru.remove(&slot.stamp);
        Some(slot.data)
    }

    /// Offsets of all dirty tables, in ascending order.
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&o, _)| o)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether any table is dirty.
    pub fn has_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }

    /// The data of the table at `offset` without touching LRU order.
    pub fn peek(&self, offset: u64) -> Option<&[u8]> {
        self.slots.get(&offset).map(|s| s.data.as_slice())
    }

    /// Mark the table at `offset` clean (after its owner wrote it).
    pub fn mark_clean(&mut self, offset: u64) {
        if let Some(s) = self.slots.get_mut(&offset) {
            s.dirty = false;
        }
    }

    /// Drop every table.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.lru.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_table_is_the_victim() {
        let mut c = TableCache::new(2);
        c.insert(0x1000, vec![1], false);
        c.insert(0x2000, vec![2], true);
        assert!(c.is_full());
        assert_eq!(c.lru_victim(), Some((0x1000, false)));
        c.get(0x1000);
        assert_eq!(c.lru_victim(), Some((0x2000, true)));
        assert_eq!(c.dirty_offsets(), vec![0x2000]);
        c.mark_clean(0x2000);
        assert!(!c.has_dirty());
    }

    #[test]
    fn looking_up_the_most_recent_table_again_keeps_the_order() {
        let mut c = TableCache::new(3);
        c.insert(0x1000, vec![1], false);
        c.insert(0x2000, vec![2], false);
        c.get(0x2000);
        c.get(0x2000);
        assert_eq!(c.lru_victim(), Some((0x1000, false)));
        c.get(0x1000);
        c.get_mut(0x1000);
        assert_eq!(c.lru_victim(), Some((0x2000, false)));
        c.insert(0x3000, vec![3], false);
        c.get(0x9000);
        c.get(0x2000);
        assert_eq!(c.lru_victim(), Some((0x1000, true)));
        c.remove(0x1000);
        assert_eq!(c.lru_victim(), Some((0x3000, false)));
    }
}
