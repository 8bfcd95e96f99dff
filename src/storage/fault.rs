//! [`FaultStorage`]: in-memory storage that models a power cut.
//!
//! It keeps two images: what reads see now, and what had reached stable storage when the
//! last flush completed. A test runs an operation with a cut point `n`: the first `n`
//! mutating calls (writes, resizes, flushes) succeed and every later one fails with an
//! injected error, as if the machine lost power. [`FaultStorage::durable_image`] then gives
//! the bytes a reboot would find: unflushed writes are dropped.
//!
//! Several storages (an image and its extents or backing files) can share one
//! [`PowerSupply`]: their mutating calls are counted together and the cut hits all of them
//! at once, as a power failure hits every file of a machine.

use super::{read_from_slice, resize_vec, write_to_vec, Storage};
use std::io;
use std::sync::{Arc, Mutex};

/// The observable state of a [`FaultStorage`].
#[derive(Debug, Clone, Default)]
pub struct FaultState {
    /// What reads return now.
    pub current: Vec<u8>,
    /// The contents as of the last completed flush.
    pub durable: Vec<u8>,
    /// Mutating calls (writes, set_len, punch_hole, flushes) that succeeded.
    pub ops: u64,
    /// Writes that succeeded.
    pub writes: u64,
    /// Flushes that succeeded.
    pub flushes: u64,
    /// After this many successful mutating calls every further one fails.
    pub cut_after: Option<u64>,
    /// Whether a call has been refused because of the cut.
    pub cut_hit: bool,
}

/// One count of mutating calls shared by several [`FaultStorage`]s, and the cut point
/// that fails every call after the first `n` of them.
#[derive(Debug, Default)]
pub struct PowerSupply {
    cut_after: Option<u64>,
    /// Calls that succeeded, and whether one has been refused.
    count: Mutex<(u64, bool)>,
}

impl PowerSupply {
    /// A supply that fails after `cut_after` mutating calls (never, for `None`).
    pub fn new(cut_after: Option<u64>) -> Arc<Self> {
        Arc::new(PowerSupply {
            cut_after,
            count: Mutex::new((0, false)),
        })
    }

    /// Mutating calls that succeeded on every storage on this supply.
    pub fn ops(&self) -> u64 {
        self.lock().0
    }

    /// Whether the cut point has been reached.
    pub fn cut_hit(&self) -> bool {
        self.lock().1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, bool)> {
        self.count.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// In-memory storage with power-cut injection. See the module documentation.
#[derive(Debug, Default)]
pub struct FaultStorage {
    state: Mutex<FaultState>,
    power: Option<Arc<PowerSupply>>,
}

impl FaultStorage {
    /// A storage whose durable and current contents are `initial`.
    pub fn new(initial: Vec<u8>) -> Self {
        FaultStorage {
            state: Mutex::new(FaultState {
                durable: initial.clone(),
                current: initial,
                ..Default::default()
            }),
            power: None,
        }
    }

    /// A storage holding `initial` whose mutating calls count against `power`, shared with
    /// other storages.
    pub fn on_supply(initial: Vec<u8>, power: Arc<PowerSupply>) -> Self {
        let mut s = Self::new(initial);
        s.power = Some(power);
        s
    }

    /// Same as [`FaultStorage::new`], failing every mutating call after the first `n`.
    pub fn with_cut(initial: Vec<u8>, n: u64) -> Self {
        let s = Self::new(initial);
        s.lock().cut_after = Some(n);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of the state.
    pub fn state(&self) -> FaultState {
        self.lock().clone()
    }

    /// What survives a power cut now: the contents at the last completed flush.
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// What reads return now.
    pub fn current_image(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    /// Number of mutating calls that succeeded.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the cut point has been reached.
    pub fn cut_hit(&self) -> bool {
        self.lock().cut_hit
    }

    fn mutate(&self, f: impl FnOnce(&mut FaultState) -> io::Result<()>) -> io::Result<()> {
        let mut st = self.lock();
        let mut shared = self.power.as_ref().map(|p| (p.cut_after, p.lock()));
        let (done, cut) = match shared.as_mut() {
            Some((cut, count)) => (count.0, *cut),
            None => (st.ops, st.cut_after),
        };
        if cut.is_some_and(|cut| done >= cut) {
            st.cut_hit = true;
            if let Some((_, count)) = shared.as_mut() {
                count.1 = true;
            }
            return Err(io::Error::other("injected fault: power cut"));
        }
        f(&mut st)?;
        st.ops += 1;
        if let Some((_, count)) = shared.as_mut() {
            count.0 += 1;
        }
        Ok(())
    }
}

impl Storage for FaultStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_from_slice(&self.lock().current, buf, offset);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mutate(|st| {
            st.writes += 1;
            write_to_vec(&mut st.current, buf, offset)
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.mutate(|st| {
            st.flushes += 1;
            st.durable = st.current.clone();
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(|st| resize_vec(&mut st.current, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_are_lost_at_a_cut() {
        let s = FaultStorage::with_cut(vec![0; 8], 2);
        s.write_at(b"ab", 0).unwrap();
        s.flush().unwrap();
        assert!(s.write_at(b"cd", 2).is_err());
        assert!(s.cut_hit());
        assert_eq!(&s.durable_image(), b"ab\0\0\0\0\0\0");
    }

    #[test]
    fn a_completed_flush_makes_writes_durable() {
        let s = FaultStorage::new(Vec::new());
        s.write_at(b"xy", 1).unwrap();
        assert_eq!(s.durable_image(), Vec::<u8>::new());
        s.flush().unwrap();
        assert_eq!(&s.durable_image(), b"\0xy");
        assert_eq!(s.ops(), 2);
    }

    #[test]
    fn storages_on_one_supply_share_the_cut() {
        let power = PowerSupply::new(Some(3));
        let a = FaultStorage::on_supply(vec![0; 4], power.clone());
        let b = FaultStorage::on_supply(vec![0; 4], power.clone());
        a.write_at(b"a", 0).unwrap();
        b.write_at(b"b", 0).unwrap();
        b.flush().unwrap();
        assert!(a.flush().is_err());
        assert!(power.cut_hit() && a.cut_hit() && !b.cut_hit());
        assert_eq!(power.ops(), 3);
        assert_eq!(a.durable_image(), vec![0; 4]);
        assert_eq!(&b.durable_image(), b"b\0\0\0");
    }
}
